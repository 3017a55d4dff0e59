"""A Dask cluster that `engine batch --scheduler ADDRESS` did not start: checked before anything is submitted.

Dask pickles each task by reference (``engine.jobs.batch_worker.run_one``), and the scheduler unpickles the task
graph too: every worker and the scheduler must import the same engine. Inputs, model and output folder are
passed as paths, so every worker must see them at the same paths (shared storage). The probe runs there through
``client.run`` / ``client.run_on_scheduler``; it is compiled from source in a module of its own so that it is
pickled by value and runs where the engine is missing (that is what it reports).
"""

from __future__ import annotations

import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import InputError

_PROBE_SOURCE = """
def probe(readable, writable):
    import os, sys, tempfile
    out = {"python": sys.version.split()[0], "engine": None, "error": None, "unreadable": [], "unwritable": None}
    try:
        import engine
        out["engine"] = engine.__version__
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["unreadable"] = [p for p in readable if not os.access(p, os.R_OK)]
    if writable is not None:  # the folder, or the nearest folder above it that exists: nothing is left there
        folder = writable
        while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".landseg-probe-"):
                pass
        except OSError as exc:
            out["unwritable"] = f"{writable} ({exc.strerror or exc})"
    return out
"""


def _probe_function():
    namespace = {"__name__": "landseg_cluster_probe"}  # not importable on a worker: cloudpickle sends it by value
    exec(compile(_PROBE_SOURCE, "<landseg cluster probe>", "exec"), namespace)
    return namespace["probe"]


@dataclass
class ClusterInfo:
    workers: int
    dashboard: str | None


def engine_zip(folder: Path) -> Path:
    """The engine package as a zip for ``client.upload_file`` (Dask puts an uploaded .zip on sys.path)."""
    root = Path(__file__).resolve().parents[1]
    path = folder / f"landseg_engine-{__version__}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(root.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix in (".py", ".json"):
                zf.write(f, Path("engine") / f.relative_to(root))
    return path


def dashboard_link(client) -> str | None:
    """The cluster's own dashboard (None when its scheduler runs none); Client.dashboard_link guesses port 8787
    when the scheduler has no dashboard service."""
    info = client.scheduler_info()
    port = info.get("services", {}).get("dashboard")
    if not port:
        return None
    host = info["address"].split("://", 1)[-1].rsplit(":", 1)[0]
    return f"http://{host}:{port}/status"


def check_cluster(client, address: str, readable: list[Path], writable: Path, upload: bool, say) -> ClusterInfo:
    """Probe the scheduler and every worker; raise InputError (one line, the fix) unless all can run the batch."""
    workers = client.scheduler_info().get("workers", {})
    if not workers:
        raise InputError(f"--scheduler {address}: the scheduler has no workers: start some (`dask worker {address}`)")
    if upload:
        with tempfile.TemporaryDirectory(prefix="landseg-upload-") as tmp:
            z = engine_zip(Path(tmp))
            client.upload_file(str(z))
        say(f"engine {__version__} uploaded to {len(workers)} workers (--upload-engine)")
    probe = _probe_function()
    paths = [str(p) for p in readable]
    answers = {"the scheduler": client.run_on_scheduler(probe, [], None)}  # it unpickles the graph, reads no file
    answers |= {f"worker {w}": a for w, a in client.run(probe, paths, str(writable)).items()}
    lacking = {k: a for k, a in answers.items() if a["engine"] != __version__}
    if lacking:
        where, a = next(iter(lacking.items()))
        has = f"landseg {a['engine']}" if a["engine"] else "no landseg"
        upload_hint = "" if upload else ", or pass --upload-engine"
        raise InputError(
            f"--scheduler {address}: {len(lacking)} of {len(answers)} cluster processes lack landseg {__version__} "
            f"({where} has {has}, Python {a['python']}): pip install landseg=={__version__} on them{upload_hint}"
        )
    for where, a in answers.items():
        if a["unreadable"]:
            raise InputError(
                f"--scheduler {address}: {where} cannot read {a['unreadable'][0]}: every worker must see the "
                "inputs and the model at the same paths (shared storage)"
            )
        if a["unwritable"]:
            raise InputError(
                f"--scheduler {address}: {where} cannot write the output folder {a['unwritable']}: it must be "
                "on storage every worker shares"
            )
    say(f"cluster {address}: {len(workers)} workers, engine {__version__} on each; inputs, model and output shared")
    return ClusterInfo(len(workers), dashboard_link(client))
