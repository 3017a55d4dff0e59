"""Command line: ``python -m engine landcover --input ortho.tif --out results/`` (also change, treecrowns,
chm, describe).

Exit codes: 0 success, 2 bad input or usage, 3 bad model, 4 output not writable, 130 cancelled,
1 internal error. Errors are one line on stderr (``landseg: error: ...``), never a traceback, unless
LANDSEG_DEBUG=1 is set.

``--progress jsonl`` prints one JSON object per line on stdout ({"progress": 0.42, "message": ...}, then
{"result": {...}}): the QGIS plugin runs the engine as a subprocess and reads these lines.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from .errors import Cancelled, InputError, LandSegError
from .model_package import DEFAULT_LANDCOVER_MODEL, DEFAULT_TREECROWN_MODEL
from .polygonize import PolygonizeOptions
from .prompts import parse_prompts
from .raster_input import BandSource, raster_path
from .request import TASKS as REQUEST_TASKS
from .resample import MODES as RESAMPLE_MODES
from .runtime import DEVICES, RuntimeOptions
from .tiling import BLENDS
from .value_range import RESCALE_MODES

DEFAULT_MODEL = DEFAULT_LANDCOVER_MODEL


def _modality(text: str) -> tuple[str, BandSource]:
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise argparse.ArgumentTypeError(f"expected NAME=[RASTER:]BANDS (e.g. rgb=1,2,3 or ndsm=2:1), got {text!r}")
    try:
        return name.strip().lower(), BandSource.parse(spec)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=int, help="tile size in pixels (default: the model's)")
    p.add_argument("--overlap", type=int, help="tile overlap in pixels (default: the model's)")
    p.add_argument("--batch", type=int, default=4, help="tiles per inference batch (default: %(default)s)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="default: %(default)s")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.add_argument("--fp16", action="store_true", help="FP16 with onnxruntime's TensorRT provider")
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


def _runtime(args: argparse.Namespace) -> RuntimeOptions:
    return RuntimeOptions(device=args.device, threads=args.threads, fp16=args.fp16, cache_dir=args.trt_cache)


def _modalities(args: argparse.Namespace) -> dict[str, BandSource]:
    modalities: dict[str, BandSource] = {}
    for name, src in args.modality:
        if name in modalities:
            raise InputError(f"modality {name!r} is mapped twice")
        modalities[name] = src
    return modalities


class Reporter:
    """Progress and messages for the terminal (tqdm bar) or for the plugin (JSON lines on stdout)."""

    def __init__(self, mode: str, desc: str) -> None:
        self.jsonl = mode == "jsonl"
        self.mode, self.desc = mode, desc
        self.bar = None  # started by the first progress report: messages before it (prompts, errors) stay clean

    def notify(self, msg: str) -> None:
        if self.jsonl:
            print(json.dumps({"message": msg}), flush=True)
        elif self.bar is not None:
            self.bar.write(f"landseg: {msg}", file=sys.stderr)  # above the bar, not inside it
        else:
            print(f"landseg: {msg}", file=sys.stderr)

    def progress(self, frac: float, msg: str) -> None:
        if self.mode == "bar" and self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=100,
                desc=self.desc,
                file=sys.stderr,
                leave=False,
                bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}{postfix}]",
            )
        if self.jsonl:
            print(json.dumps({"progress": round(frac, 4), "message": msg}), flush=True)
        elif self.bar is not None:
            self.bar.n = round(100 * frac, 1)
            self.bar.set_postfix_str(msg, refresh=True)

    def result(self, result, as_json: bool, lines: list[str]) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl:
            print(json.dumps({"result": json.loads(result.to_json())}), flush=True)
        elif as_json:
            print(result.to_json())
        else:
            print("\n".join(lines))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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


def _describe(args: argparse.Namespace) -> int:
    from .model_package import load_model_package, meta_to_dict

    doc = meta_to_dict(load_model_package(args.model).meta)
    # 384 numbers per class say nothing to a reader: report that they are there.
    if "class_embeddings" in doc:
        doc["class_embeddings"] = f"{len(doc['class_embeddings'])} x {len(doc['class_embeddings'][0])}"
    print(json.dumps(doc))
    return 0


def _prompts(text: str | None) -> list[str]:
    """No --prompts: every class. --prompts that holds no prompt ("", ",", "  ") is a mistake, not "every class"."""
    prompts = parse_prompts(text)
    if text is not None and not prompts:
        raise InputError(f'--prompts {text!r} holds no prompt: give class names (e.g. "trees, water") or leave it out')
    return prompts


def _landcover(args: argparse.Namespace) -> int:
    from .landcover import LandcoverParams, run_landcover

    explicit = (args.out_classes, args.out_confidence, args.out_polygons)
    if args.out is None and not all(explicit):
        raise InputError("give an output folder (--out) or all of --out-classes, --out-confidence, --out-polygons")
    params = LandcoverParams(
        inputs=args.input,
        model=args.model,
        out_dir=args.out or Path("."),
        class_map_path=args.out_classes,
        confidence_path=args.out_confidence,
        polygons_path=args.out_polygons,
        name=args.name,
        modalities=_modalities(args),
        tile=args.tile,
        overlap=args.overlap,
        batch=args.batch,
        blend=args.blend,
        runtime=_runtime(args),
        polygons=PolygonizeOptions(min_area_m2=args.min_area, simplify_px=args.simplify),
        prompts=_prompts(args.prompts),
        unasked=args.unasked,
        prompt_threshold=args.prompt_threshold,
        fuse_models=args.fuse_model,
        resample=args.resample,
        rescale=args.rescale,
        allow_pixel_coordinates=args.allow_pixel_coordinates,
    )
    rep = Reporter(args.progress, "landcover")
    try:
        result = run_landcover(params, progress=rep.progress, notify=rep.notify)
    finally:
        rep.close()
    rep.result(
        result,
        args.json,
        [
            f"class map:   {result.class_map}",
            f"confidence:  {result.confidence}",
            f"polygons:    {result.polygons} (layer '{result.layer}', {result.n_polygons} features)",
            f"device: {result.device}, tile {result.tile}, overlap {result.overlap}, {result.seconds:.1f} s",
        ],
    )
    return 0


def _change(args: argparse.Namespace) -> int:
    from .change import ChangeParams, run_change

    if args.out is None and not all((args.out_map, args.out_polygons, args.out_matrix)):
        raise InputError("give an output folder (--out) or all of --out-map, --out-polygons, --out-matrix")
    params = ChangeParams(
        before=args.before,
        after=args.after,
        model=args.model,
        out_dir=args.out or Path("."),
        name=args.name,
        method=args.method,
        modalities=_modalities(args),
        threshold=args.threshold,
        tile=args.tile,
        overlap=args.overlap,
        batch=args.batch,
        runtime=_runtime(args),
        polygons=PolygonizeOptions(min_area_m2=args.min_area, simplify_px=args.simplify, layer="change"),
        change_map_path=args.out_map,
        polygons_path=args.out_polygons,
        matrix_path=args.out_matrix,
        resample=args.resample,
        rescale=args.rescale,
        classes=[c.strip() for c in (args.classes or "").split(",") if c.strip()],
        **({} if args.min_confidence is None else {"min_confidence": args.min_confidence}),
    )
    rep = Reporter(args.progress, "change")
    try:
        result = run_change(params, progress=rep.progress, notify=rep.notify)
    finally:
        rep.close()
    rep.result(
        result,
        args.json,
        [
            f"change map:  {result.change_map}",
            f"polygons:    {result.polygons} (layer '{result.layer}', {result.n_polygons} features)",
            f"transitions: {result.matrix}",
            result.matrix_text(),
            f"changed: {result.changed_m2:.1f} m2, device {result.device}, {result.seconds:.1f} s",
        ],
    )
    return 0


def _treecrowns(args: argparse.Namespace) -> int:
    from .treecrowns import TreeCrownParams, run_treecrowns

    if args.out is None and args.out_crowns is None:
        raise InputError("give an output folder (--out) or --out-crowns")
    params = TreeCrownParams(
        image=args.input,
        out_dir=args.out or Path("."),
        chm=args.chm,
        model=args.model,
        vegetation_class=args.vegetation_class,
        sam=args.sam,
        modalities=_modalities(args),
        name=args.name,
        crowns_path=args.out_crowns,
        min_height_m=args.min_height,
        min_distance_m=args.min_distance,
        min_area_m2=args.min_area,
        score_threshold=args.score_threshold,
        tta=args.tta,
        rescale=args.rescale,
        resample=args.resample,
        runtime=RuntimeOptions(device=args.device),
    )
    rep = Reporter(args.progress, "treecrowns")
    try:
        result = run_treecrowns(params, progress=rep.progress, notify=rep.notify)
    finally:
        rep.close()
    rep.result(
        result,
        args.json,
        [
            f"crowns: {result.crowns} (layer '{result.layer}', {result.n_crowns} crowns, "
            f"{result.method}), {result.seconds:.1f} s"
        ],
    )
    return 0


def _chm(args: argparse.Namespace) -> int:
    from .chm import ChmParams, build_chm

    rep = Reporter(args.progress, "chm")
    try:
        res = build_chm(ChmParams(args.lidar, args.out, args.resolution, args.crs, args.like))
    finally:
        rep.close()
    summary = (
        f"canopy height model: {res.chm} ({res.width} x {res.height} cells of {res.resolution:g} m, "
        f"{res.points} points, ground {res.ground}, highest {res.height_max:.1f} m)"
    )
    rep.result(res, args.json, [summary])
    return 0


def _reported(args: argparse.Namespace, desc: str, run, params, with_progress: bool = True):
    """Run a job with the console/JSONL reporter; returns (reporter, result) for rep.result(...)."""
    rep = Reporter(args.progress, desc)
    try:
        res = run(params, **({"progress": rep.progress} if with_progress else {}), notify=rep.notify)
    finally:
        rep.close()
    return rep, res


def _adapt(args: argparse.Namespace) -> int:
    try:
        from export.adapt import AdaptParams, run_adapt
    except ImportError:
        raise InputError(
            "adapting needs the training code (export/) and its extra (torch): run `make dev` in the LandSeg folder"
        ) from None
    keys = ("labels", "class_field", "model", "minutes", "max_steps", "holdout", "name", "pixel_size_m", "keep_base")
    params = AdaptParams(inputs=args.input, out_dir=args.out, **{k: getattr(args, k) for k in keys})
    rep, res = _reported(args, "adapt", run_adapt, params)
    rep.result(res, args.json, [f"adapted model: {res.model} ({res.steps} steps, {res.minutes} min)"])
    return 0


def _run_request(args: argparse.Namespace) -> int:
    from .request import read_request, run_request

    doc = read_request(args.request)
    rep = Reporter(args.progress, f"run {doc.get('task') if isinstance(doc, dict) else ''}")
    try:
        answer = run_request(doc, progress=rep.progress, notify=rep.notify)
    finally:
        rep.close()
    if rep.jsonl:
        print(json.dumps({"result": answer}), flush=True)
    else:
        print(json.dumps(answer))
    return 0


def _batch(args: argparse.Namespace) -> int:
    from .batch import BatchParams, run_batch

    keys = ("task", "inputs", "model", "scheduler", "workers", "retries", "chunk_px", "tile", "overlap", "batch")
    keys += ("device", "threads", "resample", "dashboard")
    params = BatchParams(out_dir=args.out, **{k: getattr(args, k) for k in keys})
    rep, res = _reported(args, f"batch {args.task}", run_batch, params)
    lines = [f"{len(res.done)} done, {len(res.skipped)} done earlier, {len(res.failed)} failed: {res.summary}"]
    lines += [f"failed: {k}: {v}" for k, v in res.failed.items()]
    rep.result(res, args.json, lines)
    return 0 if not res.failed else 5  # some inputs failed (listed in the summary); the others are done


def _accuracy(args: argparse.Namespace) -> int:
    from .accuracy import AccuracyParams, run_accuracy

    names = [n.strip() for n in (args.class_names or "").split(",") if n.strip()]
    keys = ("reference", "class_field", "sample", "min_per_class", "seed", "name")
    params = AccuracyParams(
        class_map=args.classes, out_dir=args.out, class_names=names, **{k: getattr(args, k) for k in keys}
    )
    rep, res = _reported(args, "accuracy", run_accuracy, params, with_progress=False)
    if res.sample:
        lines = [f"sample: {res.sample} ({res.n} points; fill in the 'reference' field, then pass --reference)"]
    else:
        adj = res.area_adjusted
        lines = [
            f"overall accuracy {res.overall_accuracy:.3f} (area-adjusted {adj['overall_accuracy']:.3f} ± "
            f"{adj['overall_ci95']:.3f}), kappa {res.kappa:.3f} on {res.n} reference units"
        ]
        for c, m in res.per_class.items():
            ua, pa = (("-" if v is None else f"{v:.3f}") for v in (m["users_accuracy"], m["producers_accuracy"]))
            lines.append(f"  {c:12} user's {ua}  producer's {pa}")
        lines.append(f"report: {res.report}")
    rep.result(res, args.json, lines)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    # The jobs say it in their own words (refused, or run with --allow-pixel-coordinates and the unit named).
    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    # SIGTERM (the plugin's Cancel) becomes Cancelled, so temporary outputs are removed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(Cancelled("cancelled")))
    try:
        if args.command == "landcover":
            return _landcover(args)
        if args.command == "change":
            return _change(args)
        if args.command == "treecrowns":
            return _treecrowns(args)
        if args.command == "chm":
            return _chm(args)
        if args.command == "describe":
            return _describe(args)
        if args.command == "accuracy":
            return _accuracy(args)
        if args.command == "adapt":
            return _adapt(args)
        if args.command == "batch":
            return _batch(args)
        if args.command == "run":
            return _run_request(args)
    except LandSegError as exc:
        print(f"landseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("landseg: error: cancelled", file=sys.stderr)
        return Cancelled.exit_code
    except Exception as exc:  # a bug: still one line for the analyst, the traceback on request
        if os.environ.get("LANDSEG_DEBUG"):
            traceback.print_exc()
        print(
            f"landseg: internal error: {type(exc).__name__}: {exc} (set LANDSEG_DEBUG=1 for details)", file=sys.stderr
        )
        return 1
    return 2
