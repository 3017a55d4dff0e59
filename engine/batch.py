"""Many rasters, or one raster too big for one process, on Dask distributed (``python -m engine batch``).

The engine does not schedule anything itself: every input (or every chunk of a large mosaic) is one Dask task,
run by ``dask.distributed`` on a LocalCluster sized to this machine or on any cluster whose scheduler address is
given (SSH, Kubernetes, HPC queues, cloud). A worker process keeps its model sessions between tasks
(engine.runtime.keep_sessions), so a model is loaded once per worker, not once per input.

Large mosaics (land cover): a raster with more than ``chunk_px`` pixels on a side (on the model's grid) is cut
into chunks. Chunks are cut on the model's grid (the input warped to the model's pixel size by a GDAL VRT, as a
single run reads it), their cores start on the single run's tile grid, and each is read with a halo of whole
tile strides at least one tile wide: every core pixel is then blended from exactly the tiles, with exactly the
weights, of the single run. One stitch task copies the cores into one class map and confidence, brings them back
to the input's grid as a single run does, and polygonizes once: a region crossing chunk edges is one polygon.

Resumable: ``<out>/batch_manifest.json`` records every finished input and chunk (rewritten atomically after
each); running the same command again does only what is missing. A failing input is retried (``retries``), then
reported with its error in ``<out>/batch_summary.json`` while the others finish. One batch per output folder
(engine.run_lock).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import InputError, LandSegError
from .jobs import JsonResult, Messages
from .run_lock import folder_lock

TASKS = ("landcover", "treecrowns")
MANIFEST = "batch_manifest.json"
SUMMARY = "batch_summary.json"
MANIFEST_VERSION = 1


@dataclass
class BatchParams:
    task: str
    inputs: list[str]  # files or glob patterns ("tiles/*.tif")
    out_dir: Path
    model: Path | None = None  # None: the task's default model
    scheduler: str | None = None  # a Dask scheduler address; None: a LocalCluster on this machine
    workers: int = 0  # LocalCluster workers; 0: one per 2 cores (each runs onnxruntime on its share of cores)
    retries: int = 1  # a failing input is tried this many more times before it is reported
    chunk_px: int = 8192  # land cover: rasters larger than this on a side are cut into chunks of this size
    resample: str = "auto"
    tile: int | None = None
    overlap: int | None = None
    batch: int = 4
    device: str = "auto"
    threads: int = 0  # onnxruntime threads per worker; 0: the worker's share of this machine's cores
    dashboard: bool = True


@dataclass
class BatchResult(JsonResult):
    out_dir: Path
    summary: Path
    done: list[str]
    skipped: list[str]  # finished by an earlier run (from the manifest)
    failed: dict[str, str]  # input -> its one-line error
    workers: int
    scheduler: str
    dashboard: str | None
    seconds: float
    messages: list[str] = field(default_factory=list)


# --- the work items ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """A window of a large raster on the model's grid: the core this chunk owns and the window read (core plus
    halo), as (col_off, row_off, width, height) in model-grid pixels."""

    row: int
    col: int
    core: tuple[int, int, int, int]
    read: tuple[int, int, int, int]

    @property
    def key(self) -> str:
        return f"r{self.row}c{self.col}"


@dataclass(frozen=True)
class Mosaic:
    """How one large raster is cut: the tile grid every chunk shares with the single run, and the chunks."""

    tile: int
    overlap: int
    warp: bool  # the input is read resampled onto the model's grid
    chunks: tuple[Chunk, ...]


def expand_inputs(patterns: list[str]) -> list[Path]:
    out: list[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(os.path.expanduser(pat))) if glob.has_magic(pat) else [pat]
        if not hits:
            raise InputError(f"--inputs {pat!r} matches no file")
        for h in hits:
            p = Path(h)
            if not p.exists() and not str(p).startswith("/vsi"):
                raise InputError(f"input {p} does not exist")
            if p not in out:
                out.append(p)
    stems = [p.stem for p in out]
    dup = {s for s in stems if stems.count(s) > 1}
    if dup:
        raise InputError(f"inputs share the name {sorted(dup)[0]!r}: their outputs would collide; rename one")
    return out


def plan_chunks(width: int, height: int, chunk_px: int, tile: int, overlap: int) -> list[Chunk]:
    """Cores of about ``chunk_px`` (a whole number of tile strides) tiling the raster; each is read with a halo
    of k strides, k * stride >= tile, so the tiles that touch its core are exactly the single run's."""
    stride = tile - overlap
    core = max(1, chunk_px // stride) * stride
    halo = -(-tile // stride) * stride
    chunks = []
    for i, r0 in enumerate(range(0, height, core)):
        for j, c0 in enumerate(range(0, width, core)):
            w, h = min(core, width - c0), min(core, height - r0)
            rc0, rr0 = max(0, c0 - halo), max(0, r0 - halo)
            rc1, rr1 = min(width, c0 + w + halo), min(height, r0 + h + halo)
            chunks.append(Chunk(i, j, (c0, r0, w, h), (rc0, rr0, rc1 - rc0, rr1 - rr0)))
    return chunks


def _model_grid(p: BatchParams, path: Path):
    """(model meta, resampling plan) of a land-cover run on ``path``, as run_landcover makes them."""
    from .model_package import load_model_package
    from .raster_input import reference_grid
    from .resample import plan as plan_resampling

    meta = load_model_package(_landcover_model(p)).meta
    return meta, plan_resampling(reference_grid(path), meta.pixel_size_m, p.resample)


def plan_mosaic(p: BatchParams, path: Path) -> Mosaic | None:
    """The chunks of a raster too large for one task (land cover only), or None."""
    from .tiling import fit_tile, requested_overlap

    if p.task != "landcover":
        return None
    try:
        meta, rplan = _model_grid(p, path)
    except LandSegError:  # an unreadable input: its task fails and is reported like any other failure
        return None
    g = rplan.model_grid
    if max(g.width, g.height) <= p.chunk_px:
        return None
    tile = p.tile or meta.tile_size
    overlap = requested_overlap(tile, p.overlap, meta.overlap)
    if p.tile is None:
        tile, overlap = fit_tile(tile, overlap, g.height, g.width)
    return Mosaic(tile, overlap, rplan.active, tuple(plan_chunks(g.width, g.height, p.chunk_px, tile, overlap)))


# --- what a worker runs ----------------------------------------------------------------------------------------


def _runtime_options(p: BatchParams):
    from .runtime import RuntimeOptions, keep_sessions

    keep_sessions()  # this worker keeps the model sessions it makes: loaded once, used for every task
    return RuntimeOptions(device=p.device, threads=p.threads)


def run_one(p: BatchParams, path: str, out: str) -> dict:
    """One whole input -> its outputs in ``out`` (a folder of its own)."""
    t0 = time.perf_counter()
    if p.task == "landcover":
        from .landcover import LandcoverParams, run_landcover

        res = run_landcover(
            LandcoverParams(
                inputs=[Path(path)],
                model=_landcover_model(p),
                out_dir=Path(out),
                name=Path(path).stem,
                tile=p.tile,
                overlap=p.overlap,
                batch=p.batch,
                runtime=_runtime_options(p),
                resample=p.resample,
            )  # fmt: skip
        )
        outputs = {"class_map": str(res.class_map), "confidence": str(res.confidence), "polygons": str(res.polygons)}
    else:
        from .treecrowns import TreeCrownParams, run_treecrowns

        res = run_treecrowns(
            TreeCrownParams(
                image=Path(path),
                out_dir=Path(out),
                name=Path(path).stem,
                model=p.model,
                batch=p.batch,
                runtime=_runtime_options(p),
                resample=p.resample,
            )  # fmt: skip
        )
        outputs = {"crowns": str(res.crowns)}
    return {"outputs": outputs, "seconds": round(time.perf_counter() - t0, 3), **_worker()}


def _worker() -> dict:
    from .runtime import kept_sessions

    return {"worker_pid": os.getpid(), "sessions": kept_sessions()}


def _landcover_model(p: BatchParams) -> Path:
    from .model_package import DEFAULT_LANDCOVER_MODEL

    return Path(p.model or DEFAULT_LANDCOVER_MODEL)


def run_chunk(p: BatchParams, path: str, mosaic: Mosaic, chunk: Chunk, out: str) -> dict:
    """One chunk (core + halo on the model's grid, read through GDAL VRTs) -> its class map and confidence."""
    from osgeo import gdal

    from .landcover import LandcoverParams, run_landcover

    t0 = time.perf_counter()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    gdal.UseExceptions()
    source = str(path)
    if mosaic.warp:  # the input on the model's grid, read with the resampling a single run uses
        _meta, rplan = _model_grid(p, Path(path))
        g = rplan.model_grid
        t = g.transform
        bounds = (t.c, t.f + g.height * t.e, t.c + g.width * t.a, t.f)
        source = str(folder / "model_grid.vrt")
        gdal.Warp(
            source, str(path), format="VRT", width=g.width, height=g.height, outputBounds=bounds,
            resampleAlg=rplan.read_resampling.name,
        )  # fmt: skip
    vrt = folder / f"{chunk.key}.vrt"
    gdal.Translate(str(vrt), source, format="VRT", srcWin=list(chunk.read))
    res = run_landcover(
        LandcoverParams(
            inputs=[vrt],
            model=_landcover_model(p),
            out_dir=folder,
            name=chunk.key,
            tile=mosaic.tile,
            overlap=mosaic.overlap,
            batch=p.batch,
            runtime=_runtime_options(p),
            resample="off",
            polygonize=False,
        )  # fmt: skip
    )
    return {
        "outputs": {"class_map": str(res.class_map), "confidence": str(res.confidence)},
        "seconds": round(time.perf_counter() - t0, 3),
        **_worker(),
    }


def stitch(p: BatchParams, path: str, mosaic: Mosaic, parts: list[dict], out: str) -> dict:
    """Chunk cores -> one class map and confidence on the model's grid -> the input's grid (as a single run
    brings them back), polygonized once, cloud-optimized, styled."""
    import rasterio
    from rasterio.windows import Window

    from .jobs import atomic_outputs, scratch_folder
    from .outputs import PredictionWriter, to_cog
    from .polygonize import PolygonizeOptions, polygonize
    from .resample import warp_back
    from .styles import class_raster_qml, confidence_qml, polygon_qml

    t0 = time.perf_counter()
    meta, rplan = _model_grid(p, Path(path))
    classes = meta.classes
    stride = mosaic.tile - mosaic.overlap
    stem = Path(path).stem
    finals = [Path(out) / f"{stem}_classes.tif", Path(out) / f"{stem}_confidence.tif", Path(out) / f"{stem}.gpkg"]
    with atomic_outputs(Path(out)) as outputs, contextlib.ExitStack() as stack:
        tmp = [outputs.temp_for(f) for f in finals]
        model_paths = tmp[:2]
        if rplan.active:
            scratch = stack.enter_context(scratch_folder(Path(out)))
            model_paths = [scratch / "classes.tif", scratch / "confidence.tif"]
        writer = PredictionWriter(*model_paths, rplan.model_grid, classes, stride)
        try:
            for chunk, part in zip(mosaic.chunks, parts, strict=True):
                c0, r0, w, h = chunk.core
                with (
                    rasterio.open(part["outputs"]["class_map"]) as sc,
                    rasterio.open(part["outputs"]["confidence"]) as sf,
                ):
                    for y in range(0, h, 1024):  # strips: memory stays bounded whatever the chunk size
                        win = Window(c0 - chunk.read[0], r0 - chunk.read[1] + y, w, min(1024, h - y))
                        writer.write_maps(r0 + y, c0, sc.read(1, window=win), sf.read(1, window=win))
        finally:
            writer.close()
        if rplan.active:
            writer = PredictionWriter(*tmp[:2], rplan.input_grid, classes, stride)
            try:
                warp_back(rplan, *model_paths, writer)
            finally:
                writer.close()
        n_poly = polygonize(tmp[0], tmp[1], tmp[2], classes, PolygonizeOptions())
        to_cog(tmp[0], "NEAREST")
        to_cog(tmp[1], "AVERAGE")
        for final, qml in zip(finals, (class_raster_qml(classes), confidence_qml(), polygon_qml(classes)), strict=True):
            outputs.temp_for(final.with_suffix(".qml")).write_text(qml, encoding="utf-8")
        outputs.commit()
    return {
        "outputs": {"class_map": str(finals[0]), "confidence": str(finals[1]), "polygons": str(finals[2])},
        "n_polygons": n_poly,
        "chunks": len(mosaic.chunks),
        "seconds": round(time.perf_counter() - t0, 3),
    }


# --- the driver ------------------------------------------------------------------------------------------------


class Manifest:
    """Finished items, rewritten atomically after each one: a crash loses at most the items in flight."""

    def __init__(self, folder: Path, p: BatchParams):
        self.path = folder / MANIFEST
        self.items: dict[str, dict] = {}
        if self.path.exists():
            try:
                doc = json.loads(self.path.read_text())
            except (OSError, ValueError):
                doc = {}
            if doc.get("version") == MANIFEST_VERSION and doc.get("task") == p.task:
                self.items = doc.get("items", {})
        self.task = p.task

    def done(self, key: str) -> dict | None:
        item = self.items.get(key)
        if item and all(Path(v).exists() for v in item.get("outputs", {}).values()):
            return item
        return None

    def record(self, key: str, item: dict) -> None:
        self.items[key] = item
        doc = {"version": MANIFEST_VERSION, "task": self.task, "items": self.items}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.path)


def _client(p: BatchParams, say):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise InputError("batch runs need dask.distributed: run `make setup` (it is in requirements.txt)") from None
    if p.scheduler:
        try:
            client = Client(p.scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise InputError(f"--scheduler {p.scheduler}: cannot connect ({exc})") from None
        return client, None
    cores = os.cpu_count() or 1
    n = p.workers or max(1, cores // 2)
    if not p.threads:  # each worker's onnxruntime uses its share of the cores, not all of them
        p.threads = max(1, cores // n)
    import dask

    # Worker processes spawn fresh interpreters; the engine must be importable there.
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    # A task holds the GIL in onnxruntime/GDAL for seconds: not a blocked event loop worth a warning.
    dask.config.set({"distributed.admin.tick.limit": "60s"})
    cluster = LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True,
        dashboard_address=":0" if p.dashboard else None, silence_logs=50,  # failures are reported once, by the summary
    )  # fmt: skip
    say(f"LocalCluster: {n} workers x 1 task, onnxruntime {p.threads} threads each")
    return Client(cluster), cluster


def run_batch(
    p: BatchParams,
    progress: Callable[[float, str], None] | None = None,
    notify: Callable[[str], None] | None = None,
) -> BatchResult:
    t0 = time.perf_counter()
    say = Messages(notify)
    if p.task not in TASKS:
        raise InputError(f"batch task must be one of {', '.join(TASKS)}, not {p.task!r}")
    if p.retries < 0 or p.chunk_px < 256:
        raise InputError("--retries must be >= 0 and --chunk-px at least 256")
    paths = expand_inputs(p.inputs)
    out = Path(p.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):  # two batches into one folder: the second stops here, naming the first
        manifest = Manifest(out, p)
        plans, skipped = {}, []
        for path in paths:
            plans[path] = plan_mosaic(p, path)
            if manifest.done(str(path)):
                skipped.append(str(path))
        todo = [x for x in paths if str(x) not in skipped]
        say(f"{len(paths)} inputs: {len(skipped)} done by an earlier run, {len(todo)} to do")
        client, cluster = _client(p, say) if todo else (None, None)
        failed: dict[str, str] = {}
        done: list[str] = []
        dashboard = None
        try:
            if client is not None:
                dashboard = client.dashboard_link if p.dashboard else None
                if dashboard:
                    say(f"Dask dashboard: {dashboard}")
                done, failed = _submit_all(client, p, todo, plans, out, manifest, progress, say)
        finally:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
        summary = out / SUMMARY
        workers = p.workers or (max(1, (os.cpu_count() or 1) // 2) if not p.scheduler else 0)
        result = BatchResult(
            out_dir=out, summary=summary, done=done, skipped=skipped, failed=failed, workers=workers,
            scheduler=p.scheduler or "LocalCluster", dashboard=dashboard,
            seconds=round(time.perf_counter() - t0, 3), messages=say.items,
        )  # fmt: skip
        doc = json.loads(result.to_json()) | {"params": {k: str(v) for k, v in asdict(p).items()}}
        doc["items"] = {k: manifest.items.get(k) for k in map(str, paths)}
        tmp = summary.with_name(f".{summary.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, summary)
    if progress:
        progress(1.0, "done")
    return result


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, LandSegError):
        return str(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _submit_all(client, p, todo, plans, out, manifest, progress, say):
    from dask.distributed import as_completed

    futures = {}  # future -> (manifest key, input, kind)
    for path in todo:
        dest = str(out / path.stem)
        mosaic = plans[path]
        if mosaic is None:
            f = client.submit(run_one, p, str(path), dest, retries=p.retries, key=f"input-{path.stem}-{time.time_ns()}")
            futures[f] = (str(path), path, "input")
            continue
        say(f"{path.name}: {len(mosaic.chunks)} chunks of up to {p.chunk_px} px on the model's grid")
        parts = []
        for c in mosaic.chunks:
            key = f"{path}#{c.key}"
            prev = manifest.done(key)
            if prev:
                parts.append(prev)
                continue
            scratch = str(out / ".chunks" / path.stem / c.key)  # a folder per chunk: one run per folder
            f = client.submit(
                run_chunk, p, str(path), mosaic, c, scratch, retries=p.retries, key=f"chunk-{path.stem}-{c.key}"
            )
            futures[f] = (key, path, "chunk")
            parts.append(f)
        s = client.submit(stitch, p, str(path), mosaic, parts, dest, retries=p.retries, key=f"stitch-{path.stem}")
        futures[s] = (str(path), path, "stitch")
    total, n_done = len(futures), 0
    done, failed = [], {}
    for f in as_completed(list(futures)):
        key, path, kind = futures[f]
        n_done += 1
        if f.status == "finished":
            item = f.result()
            manifest.record(key, item | {"finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            if kind != "chunk":
                done.append(str(path))
                say(f"{path.name}: done ({item['seconds']} s)")
        else:
            exc = f.exception()
            if str(path) not in failed:  # a failed chunk fails its stitch too: report the first cause
                failed[str(path)] = _error_line(exc)
                say(f"{path.name}: failed after {p.retries + 1} tries: {failed[str(path)]}")
        if progress:
            progress(n_done / total, f"{n_done}/{total} tasks, {len(failed)} failed")
    import shutil

    for path in todo:  # a stitched mosaic's chunks go; a failed one's stay for the next run to reuse
        if str(path) in done and plans[path] is not None:
            shutil.rmtree(out / ".chunks" / path.stem, ignore_errors=True)
    return done, failed
