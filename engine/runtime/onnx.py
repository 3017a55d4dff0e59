"""onnxruntime with execution providers picked by availability.

``device``: ``auto`` (TensorRT EP -> CUDA EP -> CPU, whichever this onnxruntime build has), ``cpu``,
``cuda`` or ``tensorrt``. Asking for a GPU provider this build or machine does not have runs on the CPU and
says so through ``notify`` rather than failing: an analyst's batch should still finish.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..cpus import default_threads
from ..errors import ModelError
from .graph_cache import optimized_graph
from .options import CONV_SEARCHES, DEVICES, PRECISIONS, RuntimeOptions
from .precision import Calibration, checked_model

_PROVIDER = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


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


def no_gpu_reason(device: str, available: list[str], version: str) -> str:
    """Why a run is on the CPU, in the words an analyst can act on."""
    if device == "cpu":
        return "--device cpu was asked for"
    if _PROVIDER["cuda"] not in available and _PROVIDER["tensorrt"] not in available:
        return (
            f"this onnxruntime ({version}) is the CPU build: 'Set up LandSeg' installs onnxruntime-gpu where "
            "nvidia-smi finds an NVIDIA GPU"
        )
    return "the GPU providers were not chosen"


def provider_options(providers: list[str], options: RuntimeOptions) -> list[dict]:
    """onnxruntime's options for each provider, in the order of ``providers``."""
    if options.conv_search not in CONV_SEARCHES:
        raise ModelError(f"conv search must be one of {', '.join(CONV_SEARCHES)}, not {options.conv_search!r}")
    out: list[dict] = []
    for p in providers:
        opts: dict = {}
        if p == "TensorrtExecutionProvider":
            opts = {"trt_fp16_enable": options.fp16}
            if options.cache_dir:
                opts.update(
                    trt_engine_cache_enable=True,
                    trt_engine_cache_path=str(options.cache_dir),
                    trt_timing_cache_enable=True,
                )
        elif p == "CUDAExecutionProvider":
            opts = {"cudnn_conv_algo_search": options.conv_search.upper()}
        out.append(opts)
    return out


def _provider_failure(printed: str) -> str | None:
    """onnxruntime prints (to stdout) when a provider fails to start and it falls back to the next one, e.g.
    the TensorRT provider without TensorRT's libraries: its first line of substance, or None."""
    if "EP Error" not in printed:
        return None
    lines = [ln.strip() for ln in printed.splitlines() if ln.strip() and not ln.strip().startswith("*")]
    reason = next((ln for ln in lines if "EP Error" in ln), lines[0] if lines else "")
    reason = reason.split(" when using ", 1)[0]  # the provider list: said by the caller's own line
    return reason.split(") ", 1)[-1][:200]  # after the C++ source location and signature, where there is one


class OnnxRuntime:
    """Runs a batch of named float32 inputs through an ONNX graph and returns one named output."""

    def __init__(
        self,
        model_path: str | Path,
        output_name: str,
        options: RuntimeOptions = RuntimeOptions(),
        notify: Callable[[str], None] | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        import onnxruntime as ort

        ort.set_default_logger_severity(4)  # errors reach the user once, as our one line, not as ORT's log
        if hasattr(ort, "disable_telemetry_events"):  # no telemetry (and no line about it on stderr: #29 item 11)
            ort.disable_telemetry_events()
        available = ort.get_available_providers()
        providers, message = choose_providers(options.device, available)
        if message and notify:
            notify(message)
        self._no_gpu = no_gpu_reason(options.device, available, ort.__version__)
        self.model_path = model_path
        so = ort.SessionOptions()
        threads = options.threads or default_threads()  # a container's quota or CPU mask, where there is one
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 4
        self.precision_check: dict = {}  # an int8 copy's agreement with fp32 (precision.checked_model)
        self.session, failure = self._session(ort, so, Path(model_path), providers, options, calibration, notify)
        if failure:  # onnxruntime's own retry would drop every provider option: this one keeps them
            self._no_gpu = f"the {providers[0].replace('ExecutionProvider', '')} provider did not start ({failure})"
            self.session, _ = self._session(ort, so, Path(model_path), providers[1:], options, calibration, notify)
            if notify:
                ran = self.session.get_providers()[0].replace("ExecutionProvider", "")
                notify(f"{providers[0].replace('ExecutionProvider', '')} provider did not start ({failure}); "
                       f"running on {ran}")  # fmt: skip
        self.session.disable_fallback()  # a provider failing mid-run raises (one line, below), never prints
        self.providers = self.session.get_providers()
        self.output_name = output_name
        # The precision that runs: int8 asked for falls back to fp32 when its copy does not agree (precision.py)
        self.precision = self.precision_check.get("used", options.precision)
        self.threads = threads or so.intra_op_num_threads or os.cpu_count() or 1

    def _session(self, ort, so, model: Path, providers: list[str], options: RuntimeOptions, calibration, notify):
        """(session, why the first provider failed to start or None). onnxruntime prints that failure on stdout,
        where --json writes its result, and retries without it: both are caught here."""
        model = self._model_for(model, options.precision, providers[0], calibration, notify)
        # CPU: the saved optimized graph (graph_cache.py), loaded with optimization off, starts in a fifth of the
        # time; should it not load, the model itself does (optimized now)
        saved = optimized_graph(model) if providers[0] == "CPUExecutionProvider" else model
        level = ort.GraphOptimizationLevel

        def session_of(path: Path, optimize: ort.GraphOptimizationLevel):
            so.graph_optimization_level = optimize
            return ort.InferenceSession(
                str(path), so, providers=providers, provider_options=provider_options(providers, options)
            )

        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                try:
                    session = session_of(saved, level.ORT_DISABLE_ALL if saved != model else level.ORT_ENABLE_ALL)
                except Exception:  # onnxruntime raises its own Fail/InvalidGraph/... types
                    if saved == model:
                        raise
                    session = session_of(model, level.ORT_ENABLE_ALL)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"onnxruntime cannot load model {model}: {first}") from None
        return session, _provider_failure(printed.getvalue()) if len(providers) > 1 else None

    def _model_for(self, model: Path, precision: str, provider: str, calibration, notify) -> Path:
        """The file to load: fp16 is the GPU's (the TensorRT EP builds FP16 from the fp32 graph itself; the
        CUDA EP runs a float16 copy); int8 is a calibrated, cached copy on any provider."""
        if precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if precision == "fp16":
            if provider == "CPUExecutionProvider":
                raise ModelError(
                    "--precision fp16 needs a GPU (--device cuda or tensorrt); on the CPU use --precision int8"
                )
            if provider == "TensorrtExecutionProvider":
                return model
        path, record = checked_model(model, precision, calibration, notify)
        self.precision_check = {k: record[k] for k in ("agreement", "check_tiles", "used") if k in record}
        return path

    @property
    def device_label(self) -> str:
        device = self.providers[0].replace("ExecutionProvider", "")
        return device if self.precision == "fp32" else f"{device} {self.precision}"

    @property
    def device_detail(self) -> str:
        first = self.providers[0]
        if first in (_PROVIDER["cuda"], _PROVIDER["tensorrt"]):
            from .tensorrt import current_gpu

            name = "TensorRT" if first == _PROVIDER["tensorrt"] else "CUDA"
            return f"{name}: {current_gpu()}"
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        return f"CPU, {threads}: no usable GPU because {self._no_gpu}"

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        try:
            return self.session.run([self.output_name], feeds)[0]
        except Exception as exc:  # onnxruntime's own InvalidArgument/Fail/RuntimeException types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
            raise ModelError(f"model {self.model_path} failed on its input ({shapes}): {first}") from None
