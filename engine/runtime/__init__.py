"""Inference runtimes behind one protocol: ``run(feeds) -> outputs`` for a batch of named float32 inputs.

- ``onnx.OnnxRuntime``: onnxruntime with the CPU, CUDA or TensorRT execution provider (``options.py``: device,
  threads, precision).
- ``tensorrt.TensorRTRuntime``: native TensorRT ``.engine``/``.plan`` files built by ``python -m export tensorrt``.
- ``precision.py``: the cached int8 (CPU) and fp16 (CUDA) copies of a model.

Jobs only call ``make_runtime``; a batch worker (engine.jobs.batch) keeps its sessions between tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import ModelError
from .onnx import OnnxRuntime, choose_providers
from .options import CONV_SEARCHES, DEVICES, PRECISIONS, RuntimeOptions
from .precision import CALIBRATION_TILES, Calibration
from .views import VIEWS, FlipViews

__all__ = [
    "CALIBRATION_TILES",
    "CONV_SEARCHES",
    "DEVICES",
    "PRECISIONS",
    "Calibration",
    "OnnxRuntime",
    "Runtime",
    "RuntimeOptions",
    "VIEWS",
    "choose_providers",
    "keep_sessions",
    "kept_sessions",
    "make_runtime",
]

ENGINE_SUFFIXES = (".engine", ".plan")


class Runtime(Protocol):
    """What every runtime offers the jobs."""

    providers: list[str]

    @property
    def device_label(self) -> str: ...

    @property
    def device_detail(self) -> str:
        """What ran, for the person who chose the machine: "CUDA: NVIDIA ..." or "CPU, 8 threads: no usable GPU
        because ..."."""
        ...

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The model's output for one batch, in a new array the caller keeps and may change in place (prediction
        blends it while the next batch runs: a buffer reused from run to run would be overwritten under it)."""
        ...


# Sessions kept by this process (None: none kept, the default: a job frees its session before polygonizing).
_KEPT: dict | None = None


def keep_sessions() -> None:
    """From now on this process keeps every runtime it makes, keyed by model file (and its mtime) and options:
    a batch worker (engine.jobs.batch) loads each model once and reuses its session for every task."""
    global _KEPT
    if _KEPT is None:
        _KEPT = {}


def kept_sessions() -> int:
    """How many sessions this process keeps (engine.jobs.batch reports it: one per model per worker)."""
    return len(_KEPT or {})


def make_runtime(
    model_path: Path,
    output_name: str,
    options: RuntimeOptions,
    notify=None,
    calibration: Calibration | None = None,
) -> Runtime:
    """onnxruntime for .onnx files, the native TensorRT runtime for .engine/.plan files. ``calibration`` gives
    batches of real model inputs for --precision int8 when the model has no valid int8 copy yet."""
    key = None
    if _KEPT is not None:
        path = Path(model_path).resolve()
        key = (str(path), path.stat().st_mtime_ns, output_name, options)
        if key in _KEPT:
            return _KEPT[key]
    if Path(model_path).suffix.lower() in ENGINE_SUFFIXES:
        from .tensorrt import TensorRTRuntime

        runtime = TensorRTRuntime(model_path, output_name, notify)
    else:
        runtime = OnnxRuntime(model_path, output_name, options, notify, calibration)
    if options.views not in VIEWS:
        raise ModelError(f"views must be one of {', '.join(VIEWS)}, not {options.views!r}")
    if options.views == "flips":
        runtime = FlipViews(runtime)
    if key is not None:
        _KEPT[key] = runtime
    return runtime
