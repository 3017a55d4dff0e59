"""Run the LandSeg engine in its own Python, as a subprocess, and follow its JSON-lines progress.

Why a subprocess: inside QGIS (desktop and qgis_process) the rasterio/shapely wheels can bind to the GDAL/GEOS
that QGIS itself loaded and crash or misbehave; a separate interpreter (the engine's venv) keeps the libraries
apart, keeps QGIS responsive and makes Cancel a plain SIGTERM (the engine then removes its temporary files).
This module imports no qgis, so it is tested on its own as well.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

PLUGIN_DIR = Path(__file__).resolve().parent
# Environment variables of the QGIS process that would point the engine's own GDAL/PROJ at QGIS's data files.
_DROP_ENV = ("PYTHONPATH", "PYTHONHOME", "GDAL_DATA", "GDAL_DRIVER_PATH", "PROJ_LIB", "PROJ_DATA", "GDAL_SKIP")


class EngineError(Exception):
    """The engine failed; the message is its one-line error, meant for the user."""


class EngineCancelled(EngineError):
    pass


def engine_root() -> Path:
    """Folder that contains the `engine` package: the plugin itself when packaged, the checkout in development."""
    if (PLUGIN_DIR / "engine").is_dir():
        return PLUGIN_DIR
    return PLUGIN_DIR.parent


def default_model() -> Path:
    # engine.model_package.DEFAULT_LANDCOVER_MODEL (not imported: the plugin keeps out of the engine's imports)
    return engine_root() / "models" / "landcover_unet_lite0.onnx"


# Model files the engine runs: ONNX packages, and native TensorRT engines (with their .json sidecar).
MODEL_SUFFIXES = (".onnx", ".engine", ".plan")
MODEL_FILTER = "Models (*.onnx *.engine *.plan)"


def installed_models(extra_dir: str | None = None) -> list[Path]:
    folders = [engine_root() / "models"] + ([Path(extra_dir)] if extra_dir else [])
    found: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            found.extend(sorted(p for p in folder.iterdir() if p.suffix.lower() in MODEL_SUFFIXES))
    return found


SETUP_HINT = "open the LandSeg panel (Plugins > LandSeg > LandSeg panel) and press 'Set up LandSeg'"


def engine_python(configured: str | None = None) -> str:
    """The Python that has the engine's dependencies.

    Order: LANDSEG_PYTHON, the plugin setting, the environment "Set up LandSeg" made (engine_setup.py: in the
    user's data folder), then a `.venv` next to the engine (what `make setup` creates in a checkout).
    QGIS's own sys.executable is not it (it is the qgis binary, or Python without the engine's wheels).
    """
    from .engine_setup import installed_env

    candidates = [os.environ.get("LANDSEG_PYTHON"), configured, installed_env()]
    candidates += [str(p / ".venv" / "bin" / "python") for p in (engine_root(), PLUGIN_DIR)]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return str(c)
    raise EngineError(
        f"LandSeg's engine is not set up yet: {SETUP_HINT} (it installs the engine's Python environment; or "
        "point the environment variable LANDSEG_PYTHON or the QGIS setting landseg/python, Settings > Options > "
        "Advanced, to a Python with the engine's requirements)"
    )


def engine_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env["PYTHONPATH"] = str(engine_root())
    env["PYTHONUNBUFFERED"] = "1"
    return env


def describe_model(model: str | Path, python: str | None = None) -> dict[str, Any]:
    """The model's metadata (validated by the engine)."""
    proc = subprocess.run(
        [engine_python(python), "-m", "engine", "describe", "--model", str(model)],
        capture_output=True,
        text=True,
        cwd=engine_root(),
        env=engine_env(),
        timeout=120,
    )
    if proc.returncode != 0:
        raise EngineError(_last_error(proc.stderr) or f"engine exited with code {proc.returncode}")
    return json.loads(proc.stdout)


def _last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("landseg:"):
            return ln.removeprefix("landseg: error: ").removeprefix("landseg: ")
    return lines[-1] if lines else ""


def run_engine(
    job: dict[str, Any] | list[str],
    progress: Callable[[float, str], None] | None = None,
    message: Callable[[str], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    python: str | None = None,
    accept: tuple[int, ...] = (0, 5),  # exit codes that carry a result (5: a batch with some inputs failed)
    whole_answer: bool = False,  # requests: the whole answer (result and its lines), not only the result
) -> dict[str, Any]:
    """Run a request (`python -m engine run --request -`, the JSON on stdin) or CLI arguments, following the
    engine's JSON-lines progress; returns the task's result object."""
    is_request = isinstance(job, dict)
    args = ["run", "--request", "-"] if is_request else list(job)
    cmd = [engine_python(python), "-m", "engine", *args, "--progress", "jsonl"]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=engine_root(),
        env=engine_env(),
    )
    try:
        proc.stdin.write(json.dumps(job) if is_request else "")  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
    except BrokenPipeError:  # the engine stopped before reading it: its stderr says why
        pass
    lines: queue.Queue = queue.Queue()
    stderr_parts: list[str] = []

    def pump_stdout() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line)
        lines.put(None)

    def pump_stderr() -> None:
        stderr_parts.append(proc.stderr.read())  # type: ignore[union-attr]

    threads = [threading.Thread(target=f, daemon=True) for f in (pump_stdout, pump_stderr)]
    for t in threads:
        t.start()
    result: dict[str, Any] | None = None
    cancelled = False
    while True:
        if not cancelled and is_cancelled and is_cancelled():
            cancelled = True
            proc.send_signal(signal.SIGTERM)
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if line is None:
            break
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a library printed something; not ours
        if "progress" in event and progress:
            progress(float(event["progress"]), str(event.get("message", "")))
        elif "message" in event and message:
            message(str(event["message"]))
        elif "result" in event:
            result = event["result"]
    code = proc.wait()
    for t in threads:
        t.join(5)
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    if cancelled or code == 130:
        raise EngineCancelled("cancelled")
    if code not in accept or result is None:
        raise EngineError(_last_error("".join(stderr_parts)) or f"engine exited with code {code}")
    if is_request and not whole_answer:  # the answer: {"version", "task", "result", "lines"}
        return result["result"]
    return result


# The typed request seam (engine/request.py): the front ends send a task's parameters dataclass as JSON, never CLI
# strings; forms.build_request makes them from the engine's task table.
REQUEST_VERSION = 1  # engine.request.REQUEST_VERSION
