"""Inference runtimes. onnxruntime with execution providers picked by availability.

``device``: ``auto`` (TensorRT EP -> CUDA EP -> CPU, whichever this onnxruntime build has), ``cpu``,
``cuda`` or ``tensorrt``. Asking for a GPU provider this build or machine does not have runs on the CPU and
says so through ``notify`` rather than failing: an analyst's batch should still finish.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
_PROVIDER = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


@dataclass(frozen=True)
class RuntimeOptions:
    device: str = "auto"
    threads: int = 0  # 0: onnxruntime's default (all physical cores)
    fp16: bool = False  # TensorRT EP only
    cache_dir: Path | None = None  # TensorRT EP engine cache


def choose_providers(device: str, available: list[str]) -> tuple[list[str], str | None]:
    """Return (providers in priority order, message for the user or None)."""
    if device not in DEVICES:
        raise ModelError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    wanted = {
        "auto": ["tensorrt", "cuda", "cpu"],
        "tensorrt": ["tensorrt", "cuda", "cpu"],
        "cuda": ["cuda", "cpu"],
        "cpu": ["cpu"],
    }[device]
    providers = [_PROVIDER[d] for d in wanted if _PROVIDER[d] in available or d == "cpu"]
    message = None
    if device in ("cuda", "tensorrt") and _PROVIDER[device] not in available:
        fallback = providers[0].replace("ExecutionProvider", "")
        message = (
            f"device '{device}' requested but this onnxruntime has no {_PROVIDER[device]} "
            f"(available: {', '.join(available)}); running on {fallback} instead"
        )
    return providers, message


class OnnxRuntime:
    """Runs a batch of named float32 inputs through an ONNX graph and returns one named output."""

    def __init__(
        self,
        model_path: str | Path,
        output_name: str,
        options: RuntimeOptions = RuntimeOptions(),
        notify: Callable[[str], None] | None = None,
    ) -> None:
        import onnxruntime as ort

        ort.set_default_logger_severity(4)  # errors reach the user once, as our one line, not as ORT's log
        providers, message = choose_providers(options.device, ort.get_available_providers())
        if message and notify:
            notify(message)
        so = ort.SessionOptions()
        if options.threads:
            so.intra_op_num_threads = options.threads
        so.log_severity_level = 4
        provider_options = []
        for p in providers:
            if p == "TensorrtExecutionProvider":
                opts = {"trt_fp16_enable": options.fp16}
                if options.cache_dir:
                    opts.update(
                        trt_engine_cache_enable=True,
                        trt_engine_cache_path=str(options.cache_dir),
                        trt_timing_cache_enable=True,
                    )
                provider_options.append(opts)
            else:
                provider_options.append({})
        try:
            self.session = ort.InferenceSession(
                str(model_path), so, providers=providers, provider_options=provider_options
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"onnxruntime cannot load model {model_path}: {first}") from None
        self.providers = self.session.get_providers()
        self.output_name = output_name
        self.model_path = model_path

    @property
    def device_label(self) -> str:
        return self.providers[0].replace("ExecutionProvider", "")

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        try:
            return self.session.run([self.output_name], feeds)[0]
        except Exception as exc:  # onnxruntime's own InvalidArgument/Fail/RuntimeException types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
            raise ModelError(f"model {self.model_path} failed on its input ({shapes}): {first}") from None


# Sessions kept by this process (None: none kept, the default: a job frees its session before polygonizing).
_KEPT: dict | None = None


def keep_sessions() -> None:
    """From now on this process keeps every runtime it makes, keyed by model file (and its mtime) and options:
    a batch worker (engine.batch) loads each model once and reuses its session for every task."""
    global _KEPT
    if _KEPT is None:
        _KEPT = {}


def kept_sessions() -> int:
    """How many sessions this process keeps (engine.batch reports it: one per model per worker)."""
    return len(_KEPT or {})


def make_runtime(model_path: Path, output_name: str, options: RuntimeOptions, notify=None):
    """onnxruntime for .onnx files, the native TensorRT runtime for .engine/.plan files."""
    key = None
    if _KEPT is not None:
        path = Path(model_path).resolve()
        key = (str(path), path.stat().st_mtime_ns, output_name, options)
        if key in _KEPT:
            return _KEPT[key]
    if Path(model_path).suffix.lower() in (".engine", ".plan"):
        from .trt_runtime import TensorRTRuntime

        runtime = TensorRTRuntime(model_path, output_name, notify)
    else:
        runtime = OnnxRuntime(model_path, output_name, options, notify)
    if key is not None:
        _KEPT[key] = runtime
    return runtime
