"""ONNX -> native TensorRT engine, with an optimisation profile for batch and tile size, a timing cache, and an
engine cache keyed by model hash + GPU + TensorRT version. The engine gets a sidecar JSON with the LandSeg
metadata and what it was built for, which engine.runtime.tensorrt checks before running it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from engine.model_package import METADATA_KEY, load_model_package, meta_to_dict
from engine.runtime.tensorrt import current_gpu, import_tensorrt

from .errors import ExportError


@dataclass
class TensorRTParams:
    onnx: Path
    out: Path | None = None  # default: <cache_dir>/<stem>.<key>.engine
    fp16: bool = False
    max_batch: int = 8
    opt_batch: int = 4
    tile: int | None = None  # default: the model's tile size
    workspace_mb: int = 4096
    cache_dir: Path = Path.home() / ".cache" / "landseg" / "tensorrt"


def cache_key(onnx_bytes: bytes, params: TensorRTParams, gpu: str, trt_version: str, tile: int) -> str:
    h = hashlib.sha256(onnx_bytes)
    h.update(json.dumps([params.fp16, params.max_batch, params.opt_batch, tile, gpu, trt_version]).encode())
    return h.hexdigest()[:16]


def build_engine(params: TensorRTParams, log=print) -> Path:
    try:
        trt = import_tensorrt()
    except Exception as exc:
        raise ExportError(str(exc)) from None
    package = load_model_package(params.onnx)
    meta = package.meta
    tile = params.tile or meta.tile_size
    data = Path(params.onnx).read_bytes()
    gpu = current_gpu()
    key = cache_key(data, params, gpu, trt.__version__, tile)
    out = Path(params.out or Path(params.cache_dir) / f"{Path(params.onnx).stem}.{key}.engine")
    sidecar = out.with_suffix(".json")
    if out.exists() and sidecar.exists() and json.loads(sidecar.read_text()).get("tensorrt", {}).get("key") == key:
        log(f"engine cache hit: {out}")
        return out

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT >= 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {params.onnx}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, params.workspace_mb << 20)
    if params.fp16:
        if not builder.platform_has_fast_fp16:
            log("this GPU has no fast FP16; building FP32")
        else:
            config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for mi in meta.inputs:
        c = mi.n_bands
        profile.set_shape(
            mi.name, (1, c, tile, tile), (params.opt_batch, c, tile, tile), (params.max_batch, c, tile, tile)
        )
    config.add_optimization_profile(profile)
    cache_file = Path(params.cache_dir) / "timing.cache"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    timing = config.create_timing_cache(cache_file.read_bytes() if cache_file.exists() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine for {params.onnx} (see the log above)")
    cache_file.write_bytes(memoryview(config.get_timing_cache().serialize()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(memoryview(serialized))
    os.replace(tmp, out)
    doc = meta_to_dict(meta)
    doc["tile_size"] = tile
    doc["tensorrt"] = {
        "key": key,
        "version": trt.__version__,
        "gpu": gpu,
        "fp16": params.fp16,
        "max_batch": params.max_batch,
        "onnx": str(params.onnx),
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
    }
    sidecar.write_text(json.dumps(doc, indent=1))
    log(f"engine written: {out}")
    return out


def onnx_metadata(path: Path) -> dict:
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[METADATA_KEY])
