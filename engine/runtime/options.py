"""What a caller asks of a runtime: device, threads, precision, caches. One dataclass for every runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
# fp32: the model as exported. int8: onnxruntime's static quantization, calibrated on tiles of the input and
# cached next to the model (the CPU's fast path). fp16: on the GPU only (TensorRT EP, CUDA EP, native engines).
PRECISIONS = ("fp32", "fp16", "int8")
# How onnxruntime's CUDA provider picks each convolution's cuDNN algorithm (its option cudnn_conv_algo_search).
# exhaustive (onnxruntime's own default) times every algorithm at each input shape it has not seen: the first
# batch, a short last batch, a batch whose empty tiles were left out. heuristic asks cuDNN for its pick at once.
CONV_SEARCHES = ("heuristic", "exhaustive", "default")


@dataclass(frozen=True)
class RuntimeOptions:
    device: str = "auto"
    threads: int = 0  # 0: the CPUs a container's quota or mask leaves (engine.cpus), else all physical cores
    precision: str = "fp32"
    cache_dir: Path | None = None  # TensorRT EP engine cache
    views: str = "none"  # test-time views averaged: none, flips (engine.runtime.views)
    # heuristic: an H100 ran the ukis-csmask model's 4096² job with 9.4 s in onnxruntime's run calls against
    # 0.33 s for the same tiles once warm, the pattern of exhaustive searches (bench/RESULTS.md, GPU).
    conv_search: str = "heuristic"

    @property
    def fp16(self) -> bool:
        return self.precision == "fp16"
