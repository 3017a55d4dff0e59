"""The command line's argument parser: one subcommand per task (engine.cli runs them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import InputError
from .model_package import DEFAULT_LANDCOVER_MODEL, DEFAULT_TREECROWN_MODEL
from .raster_input import BandSource, raster_path
from .request import TASKS as REQUEST_TASKS
from .resample import MODES as RESAMPLE_MODES
from .runtime import DEVICES, PRECISIONS
from .tiling import BLENDS
from .value_range import RESCALE_MODES

DEFAULT_MODEL = DEFAULT_LANDCOVER_MODEL

DEFAULT_MODEL = DEFAULT_LANDCOVER_MODEL


def _modality(text: str) -> tuple[str, BandSource]:
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise argparse.ArgumentTypeError(f"expected NAME=[RASTER:]BANDS (e.g. rgb=1,2,3 or ndsm=2:1), got {text!r}")
    try:
        return name.strip().lower(), BandSource.parse(spec)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _precision_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 (default); int8: quantized on the CPU, calibrated on this raster the first time and cached "
        "next to the model; fp16: GPU only",
    )
    p.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help=argparse.SUPPRESS)


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=int, help="tile size in pixels (default: the model's)")
    p.add_argument("--overlap", type=int, help="tile overlap in pixels (default: the model's)")
    p.add_argument("--batch", type=int, default=4, help="tiles per inference batch (default: %(default)s)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="default: %(default)s")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    _precision_option(p)
    p.add_argument("--trt-cache", type=Path, help="engine/timing cache folder for onnxruntime's TensorRT provider")
    p.add_argument("--min-area", type=float, help="drop polygons smaller than this, in m2 (default: 9 pixels)")
    p.add_argument("--simplify", type=float, default=1.0, help="simplify tolerance in pixels (default: 1)")
    _resample_option(p, "auto: infer at the model's pixel size when the input's differs by more than 15%% (default)")
    _rescale_option(p)
    p.add_argument("--progress", choices=("bar", "jsonl", "none"), default="bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _resample_option(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--resample", choices=RESAMPLE_MODES, default="auto", help=help_text)


def _rescale_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rescale",
        choices=RESCALE_MODES,
        default="auto",
        help="values outside the model's range (16-bit, reflectance): auto = 2-98%% stretch per band when they "
        "do not fit (default), percentile = always, off = never (then an error)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="landseg", description="LandSeg inference engine")
    sub = parser.add_subparsers(dest="command", required=True)
    lc = sub.add_parser("landcover", help="land-cover class map, confidence and polygons from rasters")
    lc.add_argument(
        "--input",
        "-i",
        action="append",
        required=True,
        type=raster_path,
        help="input raster (a file, or any GDAL path: /vsizip/..., /vsicurl/...); repeat for several",
    )
    lc.add_argument(
        "--modality",
        "-m",
        action="append",
        type=_modality,
        default=[],
        metavar="NAME=[RASTER:]BANDS",
        help="map bands to a model input, e.g. rgb=1,2,3  nir=1:4  ndsm=2:1 (numbers start at 1)",
    )
    lc.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="ONNX model package (default: %(default)s)")
    lc.add_argument("--out", "-o", type=Path, help="output folder (or give all three --out-* paths)")
    lc.add_argument("--out-classes", type=Path, help="class-map GeoTIFF path (default: OUT/NAME_classes.tif)")
    lc.add_argument("--out-confidence", type=Path, help="confidence GeoTIFF path (default: OUT/NAME_confidence.tif)")
    lc.add_argument("--out-polygons", type=Path, help="polygon GeoPackage path (default: OUT/NAME.gpkg)")
    lc.add_argument("--name", default="landcover", help="output base name (default: %(default)s)")
    lc.add_argument("--prompts", help='class prompts, e.g. "woods, lake, houses" (default: all model classes)')
    lc.add_argument(
        "--unasked",
        choices=("other", "drop"),
        default="other",
        help="classes no prompt asks for: fold into 'other' or drop (default: other)",
    )
    lc.add_argument(
        "--prompt-threshold",
        type=float,
        default=0.5,
        help="lowest prompt-class similarity that counts as a match (default: 0.5)",
    )
    lc.add_argument(
        "--allow-pixel-coordinates",
        action="store_true",
        help="run on a raster without georeference: coordinates in pixels, area_m2 in square pixels",
    )
    lc.add_argument(
        "--fuse-model",
        action="append",
        type=Path,
        default=[],
        metavar="MODEL",
        help="another land-cover model to fuse with --model, class by class by confidence (repeatable)",
    )
    _common_options(lc)
    lc.add_argument(
        "--blend", choices=BLENDS, default="cosine",
        help="blending of overlapping tiles: cosine ramps over the overlap (default), gaussian (MONAI's), constant",
    )  # fmt: skip
    ch = sub.add_parser("change", help="change between a 'before' and an 'after' raster")
    ch.add_argument("--before", action="append", required=True, type=raster_path, help="raster of the first date")
    ch.add_argument("--after", action="append", required=True, type=raster_path, help="raster of the second date")
    ch.add_argument(
        "--method",
        choices=("postclass", "direct"),
        default="postclass",
        help="postclass: land-cover model on both dates; direct: a bi-temporal change model",
    )
    ch.add_argument("--modality", "-m", action="append", type=_modality, default=[], metavar="NAME=[RASTER:]BANDS")
    ch.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ch.add_argument("--out", "-o", type=Path, help="output folder")
    ch.add_argument("--name", default="change")
    ch.add_argument("--out-map", type=Path, help="change raster path (default: OUT/NAME_map.tif)")
    ch.add_argument("--out-polygons", type=Path, help="change polygons path (default: OUT/NAME.gpkg)")
    ch.add_argument("--out-matrix", type=Path, help="transition matrix CSV (default: OUT/NAME_transitions.csv)")
    ch.add_argument("--threshold", type=float, default=0.5, help="direct method: change probability threshold")
    ch.add_argument("--classes", help="postclass: report changes from or to these classes only, e.g. building,road")
    ch.add_argument(
        "--min-confidence",
        type=float,
        help="postclass: joint confidence (before x after) a change needs (default: tuned, see MODEL_CARD.md)",
    )
    _common_options(ch)

    tc = sub.add_parser("treecrowns", help="individual tree crowns from an RGB image (+ optional CHM/nDSM)")
    tc.add_argument("--input", "-i", required=True, type=raster_path, help="RGB image (a file or any GDAL path)")
    tc.add_argument("--chm", type=Path, help="canopy height model / nDSM in metres (same CRS as the image)")
    tc.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_TREECROWN_MODEL,
        help="crown detector (task treecrowns; default: %(default)s), or a land-cover model whose vegetation "
        "mask feeds the watershed method (e.g. models/rgb_index_baseline.onnx)",
    )
    tc.add_argument("--vegetation-class", help="class of the model to use as vegetation (default: by name)")
    tc.add_argument("--sam", type=Path, help="SAM folder from `python -m export sam` (default: watershed)")
    tc.add_argument("--modality", "-m", action="append", type=_modality, default=[], metavar="NAME=[RASTER:]BANDS")
    tc.add_argument("--out", "-o", type=Path, help="output folder")
    tc.add_argument("--name", default="treecrowns")
    tc.add_argument("--out-crowns", type=Path, help="crowns GeoPackage path (default: OUT/NAME.gpkg)")
    tc.add_argument("--min-height", type=float, default=2.0, help="CHM: lowest tree, m (default: 2)")
    tc.add_argument("--min-distance", type=float, default=3.0, help="between tree tops, m (default: 3)")
    tc.add_argument("--min-area", type=float, default=2.0, help="smallest crown, m2 (default: 2)")
    tc.add_argument("--score-threshold", type=float, help="detector models: lowest crown score (default: the model's)")
    tc.add_argument(
        "--tta",
        choices=("d4", "flips", "none"),
        default="d4",
        help="detector models: views averaged, d4 = 8 turns/flips (default), none = 8x faster, fewer crowns found",
    )
    tc.add_argument("--device", choices=DEVICES, default="auto")
    _resample_option(
        tc, "detector: read the image at the model's pixel size (0.1 m) when it differs by more than 15%% (default)"
    )
    _rescale_option(tc)
    tc.add_argument("--progress", choices=("bar", "jsonl", "none"), default="bar")
    tc.add_argument("--json", action="store_true")

    cm = sub.add_parser("chm", help="canopy height model (m) from a LiDAR LAS/LAZ file")
    cm.add_argument("--lidar", required=True, type=Path, help="LAS or LAZ point cloud")
    cm.add_argument("--out", "-o", required=True, type=Path, help="output GeoTIFF")
    cm.add_argument("--resolution", type=float, default=0.5, help="cell size in m (default: %(default)s)")
    cm.add_argument("--crs", help="CRS of the points when the LAS header has none, e.g. EPSG:32611")
    cm.add_argument("--like", type=Path, help="write on this raster's grid (CRS, transform, size) instead")
    cm.add_argument("--progress", choices=("bar", "jsonl", "none"), default="bar")
    cm.add_argument("--json", action="store_true")

    ad = sub.add_parser("adapt", help="fine-tune a land-cover model on your labelled polygons (needs torch)")
    ad.add_argument("--input", "-i", action="append", required=True, type=raster_path, help="raster(s) labelled")
    ad.add_argument("--labels", required=True, type=Path, help="labelled polygons or points (GeoPackage, ...)")
    ad.add_argument("--class-field", default="class", help="the labels' class field (default: class)")
    ad.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="base model (default: %(default)s)")
    ad.add_argument("--minutes", type=float, default=5.0, help="training time budget (default: 5)")
    ad.add_argument("--max-steps", type=int, help="stop after this many steps (smoke tests)")
    ad.add_argument("--holdout", type=float, default=0.2, help="share of the labels held out by location (0.2)")
    ad.add_argument("--name", help="new model's name (default: <base>-adapted)")
    ad.add_argument(
        "--pixel-size", type=float, dest="pixel_size_m",
        help="train (and later run) the new model at this pixel size in m (default: the base model's)",
    )  # fmt: skip
    ad.add_argument(
        "--keep-base", type=float, default=1.0,
        help="weight pulling unlabelled pixels towards the base model's answer (default: 1; 0 = ignore them)",
    )  # fmt: skip
    ad.add_argument("--out", "-o", required=True, type=Path, help="folder for the new model package")
    ad.add_argument("--progress", choices=("bar", "jsonl", "none"), default="bar")
    ad.add_argument("--json", action="store_true")

    rq = sub.add_parser(
        "run", help="run a typed request (JSON: version, task, params) and print the JSON result",
        description="Tasks: " + ", ".join(f"{k} ({v.help})" for k, v in REQUEST_TASKS.items())
        + ". params are the fields of the task's parameters dataclass (engine/request.py).",
    )  # fmt: skip
    rq.add_argument("--request", required=True, help="request file, or - for standard input")
    rq.add_argument("--progress", choices=("bar", "jsonl", "none"), default="none")

    bt = sub.add_parser("batch", help="a task on many rasters or on one huge mosaic, with Dask distributed")
    bt.add_argument("task", choices=("landcover", "treecrowns"), help="the task run on every input")
    bt.add_argument(
        "--inputs", action="append", required=True, help='rasters or glob patterns ("tiles/*.tif"); repeatable'
    )
    bt.add_argument("--out", "-o", required=True, type=Path, help="output folder (one subfolder per input)")
    bt.add_argument("--model", type=Path, help="model (default: the task's shipped model)")
    bt.add_argument("--scheduler", help="a Dask scheduler address (tcp://host:8786); default: a LocalCluster here")
    bt.add_argument("--workers", type=int, default=0, help="LocalCluster workers (default: one per 2 cores)")
    bt.add_argument("--retries", type=int, default=1, help="retries of a failing input before it is reported (1)")
    bt.add_argument(
        "--chunk-px", type=int, default=8192,
        help="land cover: rasters larger than this on a side are cut into chunks run in parallel (8192)",
    )  # fmt: skip
    bt.add_argument("--tile", type=int, help="tile size in pixels (default: the model's)")
    bt.add_argument("--overlap", type=int, help="tile overlap in pixels (default: the model's)")
    bt.add_argument("--batch", type=int, default=4, help="tiles per inference call (default: 4)")
    bt.add_argument("--device", choices=DEVICES, default="auto")
    bt.add_argument("--threads", type=int, default=0, help="onnxruntime threads per worker (0: its share)")
    _precision_option(bt)
    _resample_option(bt, "auto: every input at the model's pixel size when it differs by more than 15%% (default)")
    bt.add_argument("--no-dashboard", dest="dashboard", action="store_false", help="no Dask dashboard")
    bt.add_argument("--progress", choices=("bar", "jsonl", "none"), default="bar")
    bt.add_argument("--json", action="store_true")

    ac = sub.add_parser("accuracy", help="accuracy of a class map against reference points/polygons, or a sample")
    ac.add_argument("--classes", required=True, type=raster_path, help="class map (LandSeg's, or any classified)")
    ac.add_argument("--reference", type=Path, help="reference points or polygons (GeoPackage, Shapefile, ...)")
    ac.add_argument("--class-field", default="class", help="the reference layer's class field (default: class)")
    ac.add_argument("--class-names", help="names of class ids 0,1,2... for a map without LandSeg class tags")
    ac.add_argument("--sample", type=int, help="draw a stratified random sample of N points to label instead")
    ac.add_argument("--min-per-class", type=int, default=50, help="sample: fewest points a class gets (50)")
    ac.add_argument("--seed", type=int, default=0)
    ac.add_argument("--out", "-o", required=True, type=Path, help="output folder")
    ac.add_argument("--name", default="accuracy")
    ac.add_argument("--progress", choices=("bar", "jsonl", "none"), default="bar")
    ac.add_argument("--json", action="store_true")

    ds = sub.add_parser("describe", help="validate a model package and print its metadata as JSON")
    ds.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    return parser
