"""Many rasters, or one raster too big for one process, on Dask distributed (``python -m engine batch``).

The engine does not schedule anything itself: every input (or every chunk of a large mosaic) is one Dask task,
run by ``dask.distributed`` on a LocalCluster sized to this machine or on any cluster whose scheduler address is
given (SSH, Kubernetes, HPC queues, cloud). A worker process keeps its model sessions between tasks
(engine.runtime.keep_sessions), so a model is loaded once per worker, not once per input.

Large mosaics (land cover): a raster with more than ``chunk_px`` pixels on a side (on the model's grid) is cut
into chunks that reproduce the single run's tiles exactly (engine.jobs.batch_worker). One stitch task copies the
chunks' cores into one class map and confidence, brings them back to the input's grid as a single run does, and
polygonizes once: a region crossing chunk edges is one polygon.

Resumable: ``<out>/batch_manifest.json`` records every finished input and chunk (rewritten atomically after
each); running the same command again does only what is missing. A failing input is retried (``retries``), then
reported with its error in ``<out>/batch_summary.json`` while the others finish. One batch per output folder
(engine.run_lock).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..cpus import available_cpus
from ..errors import InputError, LandSegError
from ..run_lock import folder_lock
from ..task_options import DEVICE, MODEL_FILTER, Option, resample_option, tiling_options
from ..task_options import RUNTIME as _RUNTIME
from .batch_worker import plan_mosaic, run_chunk, run_one, stitch
from .common import JsonResult, Messages

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
    precision: str = "fp32"  # land cover: int8 is calibrated once (the first worker) and shared by all
    dashboard: bool = True
    upload_engine: bool = False  # --scheduler: ship this engine to the workers (client.upload_file)


# BatchParams holds these runtime options as its own fields (each worker makes its RuntimeOptions).
_THREADS, _PRECISION = (
    dataclasses.replace(o, field=o.field.removeprefix("runtime."))
    for o in _RUNTIME
    if o.field in ("runtime.threads", "runtime.precision")
)
OPTIONS = (
    Option("task", "", "Task run on every input", "the task run on every input", choices=TASKS),
    Option("inputs", "--inputs", "Raster layers", 'rasters or glob patterns ("tiles/*.tif"); repeatable',
           widget="rasters", name="INPUT"),
    Option("inputs", "", "Files matching (e.g. /data/tiles/*.tif; ',' between patterns)", widget="text_list",
           name="PATTERN", cli=False),
    Option("model", "--model", "Model (empty: the task's shipped model)", "model (default: the task's shipped "
           "model)", widget="model", file_filter=MODEL_FILTER),
    Option("scheduler", "--scheduler", "Dask scheduler address (empty: local)",
           "a Dask scheduler address (tcp://host:8786); default: a LocalCluster here"),
    Option("workers", "--workers", "Local workers (0: one per 2 cores)",
           "LocalCluster workers (default: one per 2 cores)", minimum=0),
    Option("retries", "--retries", "Retries of a failing input", "retries of a failing input before it is reported "
           "(default: %(default)s)", minimum=0, advanced=True),
    Option("chunk_px", "--chunk-px", "Chunk size for large rasters (model pixels)", "land cover: rasters larger "
           "than this on a side are cut into chunks run in parallel (default: %(default)s)", minimum=256),
    *tiling_options(),
    dataclasses.replace(DEVICE, field="device"),
    dataclasses.replace(_THREADS, help="onnxruntime threads per worker (0: its share)"),
    _PRECISION,
    resample_option("auto: every input at the model's pixel size when it differs by more than 15%% (default)"),
    Option("dashboard", "--no-dashboard", "Dask dashboard", "no Dask dashboard", negate=True, processing=False),
    Option("upload_engine", "--upload-engine", "Upload the engine to the cluster's workers",
           "with --scheduler: ship this engine to the workers (for clusters one cannot pip install on); the "
           "model then comes from this checkout's path, which the workers must see", advanced=True),
    Option("out_dir", "--out", "Output folder", "output folder (one subfolder per input)", short="-o",
           widget="output_folder", name="OUTPUT"),
)  # fmt: skip


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

    def lines(self) -> list[str]:
        counts = f"{len(self.done)} done, {len(self.skipped)} done earlier, {len(self.failed)} failed"
        return [f"{counts}: {self.summary}", *(f"failed: {k}: {v}" for k, v in self.failed.items())]


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


def local_workers(p: BatchParams, cores: int) -> int:
    """LocalCluster workers: as asked, else one per 2 of the CPUs this process may use."""
    return p.workers or max(1, cores // 2)


def _dask():
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise InputError(
            "batch runs need dask.distributed: pip install 'landseg[dask]' (or run `make setup`)"
        ) from None
    return Client, LocalCluster


def _cluster_client(p: BatchParams, paths: list[Path], out: Path, say):
    """A client of the cluster at --scheduler, checked (engine version, shared paths) before anything is written."""
    from .cluster import check_cluster

    Client, _ = _dask()
    try:
        client = Client(p.scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise InputError(f"--scheduler {p.scheduler}: cannot connect ({exc})") from None
    try:
        if p.upload_engine and p.model is None:  # an uploaded engine has no models folder: this one's, by path
            from .batch_worker import default_model

            p.model = default_model(p.task).resolve()
        readable = [Path(os.path.abspath(x)) for x in [*paths, *([p.model] if p.model else [])]]
        info = check_cluster(client, p.scheduler, readable, Path(os.path.abspath(out)), p.upload_engine, say)
    except BaseException:
        client.close()
        raise
    return client, info


def _client(p: BatchParams, say):
    Client, LocalCluster = _dask()
    cores = available_cpus()  # not the host's count inside a container's quota or CPU mask
    n = local_workers(p, cores)
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
    if not p.inputs:
        raise InputError("no input: give raster layers or a file pattern (--inputs)")
    paths = expand_inputs(p.inputs)
    out = Path(p.out_dir)
    if p.upload_engine and not p.scheduler:
        raise InputError("--upload-engine ships the engine to a cluster's workers: it needs --scheduler ADDRESS")
    if p.scheduler:  # the workers' working folders are not this one: every path they get is absolute
        paths, out = [Path(os.path.abspath(x)) for x in paths], Path(os.path.abspath(out))
        p.model = Path(os.path.abspath(p.model)) if p.model else None
    remote, info = _cluster_client(p, paths, out, say) if p.scheduler else (None, None)
    try:
        return _run_batch(p, paths, out, remote, info, say, progress, t0)
    finally:
        if remote is not None:
            remote.close()


def _run_batch(p, paths, out, remote, info, say, progress, t0) -> BatchResult:
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
        client, cluster = (remote, None) if remote is not None else _client(p, say) if todo else (None, None)
        failed: dict[str, str] = {}
        done: list[str] = []
        dashboard = None
        try:
            if client is not None:
                if info is not None:
                    dashboard = info.dashboard
                else:
                    dashboard = client.dashboard_link if p.dashboard else None
                if dashboard:
                    say(f"Dask dashboard: {dashboard}")
                if todo:
                    done, failed = _submit_all(client, p, todo, plans, out, manifest, progress, say)
        finally:
            if client is not None and remote is None:
                client.close()
            if cluster is not None:
                cluster.close()
        summary = out / SUMMARY
        workers = local_workers(p, available_cpus()) if info is None else info.workers
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
    """A worker's error whole, on one line (a summary line each): Dask's own messages run over several lines,
    and their first line alone can stop mid-sentence."""
    text = " ".join(str(exc).split())
    if isinstance(exc, LandSegError):
        return text
    # An error the client could not rebuild arrives as Exception('InputError("...")'): its words, not its repr
    wrapped = re.fullmatch(r"""(\w+)\((['"])(.*)\2\)""", text) if type(exc) is Exception else None
    if wrapped:
        name, said = wrapped.group(1), wrapped.group(3).replace('\\"', '"').replace("\\'", "'")
        known = {c.__name__ for c in (LandSegError, *LandSegError.__subclasses__())}
        return said if name in known else f"{name}: {said}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _submit_all(client, p, todo, plans, out, manifest, progress, say):
    from dask.distributed import as_completed

    futures = {}  # future -> (manifest key, input, kind)
    # Task keys unique to this run: a scheduler that outlives a run must not hand back an earlier run's result.
    run = uuid.uuid4().hex[:8]
    for path in todo:
        dest = str(out / path.stem)
        mosaic = plans[path]
        if mosaic is None:
            f = client.submit(run_one, p, str(path), dest, retries=p.retries, key=f"input-{path.stem}-{run}")
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
                run_chunk, p, str(path), mosaic, c, scratch, retries=p.retries, key=f"chunk-{path.stem}-{c.key}-{run}"
            )
            futures[f] = (key, path, "chunk")
            parts.append(f)
        s = client.submit(stitch, p, str(path), mosaic, parts, dest, retries=p.retries, key=f"stitch-{path.stem}-{run}")
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
    for path in todo:  # a stitched mosaic's chunks go; a failed one's stay for the next run to reuse
        if str(path) in done and plans[path] is not None:
            shutil.rmtree(out / ".chunks" / path.stem, ignore_errors=True)
    return done, failed
