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

from .cli_parser import build_parser
from .errors import Cancelled, InputError, LandSegError
from .polygonize import PolygonizeOptions
from .prompts import parse_prompts
from .raster_input import BandSource
from .runtime import RuntimeOptions


def _runtime(args: argparse.Namespace) -> RuntimeOptions:
    return RuntimeOptions(device=args.device, threads=args.threads, precision=args.precision, cache_dir=args.trt_cache)


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
    keys += ("device", "threads", "precision", "resample", "dashboard")
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
