"""Command line: ``python -m engine landcover --input ortho.tif --out results/``.

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
from .polygonize import PolygonizeOptions
from .raster_input import BandSource
from .runtime import DEVICES, RuntimeOptions

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "rgb_index_baseline.onnx"


def _modality(text: str) -> tuple[str, BandSource]:
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise argparse.ArgumentTypeError(f"expected NAME=[RASTER:]BANDS (e.g. rgb=1,2,3 or ndsm=2:1), got {text!r}")
    try:
        return name.strip().lower(), BandSource.parse(spec)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="landseg", description="LandSeg inference engine")
    sub = parser.add_subparsers(dest="command", required=True)
    lc = sub.add_parser("landcover", help="land-cover class map, confidence and polygons from rasters")
    lc.add_argument(
        "--input",
        "-i",
        action="append",
        required=True,
        type=Path,
        help="input raster; repeat for several (the first sets the output grid)",
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
    lc.add_argument("--tile", type=int, help="tile size in pixels (default: the model's)")
    lc.add_argument("--overlap", type=int, help="tile overlap in pixels (default: the model's)")
    lc.add_argument("--batch", type=int, default=4, help="tiles per inference batch (default: %(default)s)")
    lc.add_argument("--device", choices=DEVICES, default="auto", help="default: %(default)s")
    lc.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    lc.add_argument("--min-area", type=float, help="drop polygons smaller than this, in m2 (default: 9 pixels)")
    lc.add_argument("--simplify", type=float, default=1.0, help="simplify tolerance in pixels (default: 1)")
    lc.add_argument("--progress", choices=("bar", "jsonl", "none"), default="bar")
    lc.add_argument("--json", action="store_true", help="print the result as JSON")
    ds = sub.add_parser("describe", help="validate a model package and print its metadata as JSON")
    ds.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    return parser


def _describe(args: argparse.Namespace) -> int:
    from .model_package import load_model_package, meta_to_dict

    print(json.dumps(meta_to_dict(load_model_package(args.model).meta)))
    return 0


def _landcover(args: argparse.Namespace) -> int:
    from .landcover import LandcoverParams, run_landcover

    modalities: dict[str, BandSource] = {}
    for name, src in args.modality:
        if name in modalities:
            raise InputError(f"modality {name!r} is mapped twice")
        modalities[name] = src
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
        modalities=modalities,
        tile=args.tile,
        overlap=args.overlap,
        batch=args.batch,
        runtime=RuntimeOptions(device=args.device, threads=args.threads),
        polygons=PolygonizeOptions(min_area_m2=args.min_area, simplify_px=args.simplify),
    )
    jsonl = args.progress == "jsonl"

    def notify(msg: str) -> None:
        if jsonl:
            print(json.dumps({"message": msg}), flush=True)
        else:
            print(f"landseg: {msg}", file=sys.stderr)

    bar = None
    if args.progress == "bar":
        from tqdm import tqdm

        bar = tqdm(total=1000, unit="‰", desc="landcover", file=sys.stderr, leave=False)

    def progress(frac: float, msg: str) -> None:
        if jsonl:
            print(json.dumps({"progress": round(frac, 4), "message": msg}), flush=True)
        elif bar is not None:
            bar.n = int(frac * 1000)
            bar.set_postfix_str(msg, refresh=True)

    try:
        result = run_landcover(params, progress=progress, notify=notify)
    finally:
        if bar is not None:
            bar.close()
    if jsonl:
        print(json.dumps({"result": json.loads(result.to_json())}), flush=True)
    elif args.json:
        print(result.to_json())
    else:
        print(f"class map:   {result.class_map}")
        print(f"confidence:  {result.confidence}")
        print(f"polygons:    {result.polygons} (layer '{result.layer}', {result.n_polygons} features)")
        print(f"device: {result.device}, tile {result.tile}, overlap {result.overlap}, {result.seconds:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (the plugin's Cancel) becomes Cancelled, so temporary outputs are removed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(Cancelled("cancelled")))
    try:
        if args.command == "landcover":
            return _landcover(args)
        if args.command == "describe":
            return _describe(args)
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
