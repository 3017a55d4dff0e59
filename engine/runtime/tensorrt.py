"""Native TensorRT runtime for `.engine` / `.plan` files built by `python -m export tensorrt`.

Same interface as runtime.OnnxRuntime (``run(feeds) -> ndarray``). A TensorRT engine only runs on the GPU model
and TensorRT version it was built with; the sidecar JSON records both and is checked first, so the user gets a
"rebuild it" message instead of a deserialisation failure.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise ModelError(
            "TensorRT is not installed (pip install tensorrt; it needs an NVIDIA GPU and driver). "
            "Alternatives: run the .onnx model with --device tensorrt (onnxruntime-gpu's TensorRT provider) "
            "or --device cuda"
        ) from None
    return tensorrt


def current_gpu() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "no GPU"


def check_compatible(info: dict[str, Any], gpu: str, trt_version: str, engine_path: Path) -> None:
    """Raise a clear ModelError when the engine was built for another GPU or TensorRT version."""
    built_gpu, built_trt = info.get("gpu", "?"), info.get("version", "?")
    if built_gpu != gpu or built_trt != trt_version:
        onnx = info.get("onnx", "the .onnx model")
        raise ModelError(
            f"TensorRT engine {engine_path} was built for {built_gpu} with TensorRT {built_trt}, but this machine "
            f"has {gpu} with TensorRT {trt_version}; rebuild it: python -m export tensorrt --onnx {onnx}"
        )


def read_sidecar(engine_path: Path) -> dict[str, Any]:
    side = Path(engine_path).with_suffix(".json")
    if not side.exists():
        raise ModelError(
            f"TensorRT engine {engine_path} has no sidecar {side.name} with its LandSeg metadata; "
            "build engines with `python -m export tensorrt`"
        )
    try:
        return json.loads(side.read_text())
    except ValueError as exc:
        raise ModelError(f"{side} is not valid JSON: {exc}") from None


class TensorRTRuntime:
    """Runs a serialized TensorRT engine; device buffers are torch CUDA tensors."""

    def __init__(self, engine_path: str | Path, output_name: str, notify=None) -> None:
        trt = import_tensorrt()
        self.path = Path(engine_path)
        info = read_sidecar(self.path).get("tensorrt", {})
        check_compatible(info, current_gpu(), trt.__version__, self.path)
        try:
            import torch
        except ImportError:
            raise ModelError("the TensorRT runtime needs PyTorch with CUDA for its device buffers") from None
        self.torch = torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ModelError(f"TensorRT could not load {self.path}; rebuild it with `python -m export tensorrt`")
        self.context = self.engine.create_execution_context()
        self.output_name = output_name
        self.stream = torch.cuda.Stream()
        self.providers = ["TensorRT (native engine)"]

    @property
    def device_label(self) -> str:
        return "TensorRT"

    @property
    def device_detail(self) -> str:
        return f"TensorRT engine: {current_gpu()}"

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        keep = []
        for name, arr in feeds.items():
            t = torch.from_numpy(np.ascontiguousarray(arr)).cuda()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = torch.empty(shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        with torch.cuda.stream(self.stream):
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ModelError(f"TensorRT failed to run {self.path}")
        self.stream.synchronize()
        return out.cpu().numpy()
