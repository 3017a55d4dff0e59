"""PyTorch -> ONNX model package: export with dynamic batch and spatial axes, embed LandSeg metadata,
check the graph, optionally simplify/optimise it, and verify parity with torch on random and real inputs.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from engine.errors import LandSegError
from engine.model_package import ModelMeta, embed_metadata, parse_metadata

from .errors import ExportError

MIN_OPSET = 13  # Softmax/Split semantics the engine relies on; older opsets are not worth supporting


@dataclass
class ExportParams:
    meta: Path  # LandSeg metadata JSON (the schema in engine/model_package.py)
    out: Path
    entry: str | None = None  # "package.module:factory" returning a torch.nn.Module
    torchscript: Path | None = None  # a TorchScript file, instead of an entry point
    checkpoint: Path | None = None  # state_dict for the entry point's module
    opset: int = 17
    exporter: str = "torchscript"  # or "dynamo" (torch.export based)
    simplify: bool = False  # onnxsim, when installed
    ort_optimize: bool = False  # save onnxruntime's offline-optimised graph instead
    tolerance: float = 1e-3  # max abs difference torch vs onnxruntime
    min_agreement: float = 0.999  # argmax agreement over pixels
    real_inputs: list[Path] = field(default_factory=list)  # rasters for the parity check (first model input)
    parity_size: int = 128


@dataclass
class ParityReport:
    max_abs_diff: float
    argmax_agreement: float
    cases: list[str]

    def __str__(self) -> str:
        return (
            f"parity torch vs onnxruntime: max |diff| {self.max_abs_diff:.2e}, "
            f"argmax agreement {100 * self.argmax_agreement:.3f}% over {', '.join(self.cases)}"
        )


def read_meta(path: Path) -> tuple[dict[str, Any], ModelMeta]:
    if not Path(path).exists():
        raise ExportError(f"metadata file not found: {path} (every LandSeg model needs one; see README)")
    try:
        doc = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise ExportError(f"metadata file {path} is not valid JSON: {exc}") from None
    try:
        return doc, parse_metadata(doc, str(path))
    except LandSegError as exc:
        raise ExportError(str(exc)) from None


def load_torch_model(entry: str | None, torchscript: Path | None, checkpoint: Path | None):
    import torch

    if bool(entry) == bool(torchscript):
        raise ExportError("give exactly one of --entry module:factory or --torchscript file.pt")
    if torchscript:
        if not Path(torchscript).exists():
            raise ExportError(f"TorchScript file not found: {torchscript}")
        try:
            return torch.jit.load(str(torchscript), map_location="cpu").eval()
        except Exception as exc:
            raise ExportError(f"cannot load TorchScript {torchscript}: {str(exc).splitlines()[0]}") from None
    module_name, _, attr = str(entry).partition(":")
    if not attr:
        raise ExportError(f"entry point {entry!r} must look like package.module:factory")
    sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ExportError(f"cannot import entry point {entry!r}: {exc}") from None
    model = factory() if not isinstance(factory, torch.nn.Module) else factory
    if checkpoint:
        if not Path(checkpoint).exists():
            raise ExportError(f"checkpoint not found: {checkpoint}")
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ExportError(f"checkpoint {checkpoint} does not fit the model: {str(exc).splitlines()[0]}") from None
    return model.eval()


def _dummy_inputs(meta: ModelMeta, size: int, batch: int = 1, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, mi.n_bands, size, size, generator=g) for mi in meta.inputs)


def export_onnx(
    model, meta_doc: dict[str, Any], meta: ModelMeta, out: Path, opset: int = 17, exporter: str = "torchscript"
) -> Path:
    """Export ``model`` (inputs in the metadata's order) to ``out`` with metadata; atomic write."""
    import torch

    top = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= top:
        raise ExportError(f"opset {opset} is not supported: use {MIN_OPSET}..{top} (this onnx package's newest)")
    if exporter not in ("torchscript", "dynamo"):
        raise ExportError(f"exporter must be 'torchscript' or 'dynamo', not {exporter!r}")
    args = _dummy_inputs(meta, min(meta.tile_size, 128))
    names = [mi.name for mi in meta.inputs]
    try:
        with torch.no_grad():
            probe = model(*args)
    except Exception as exc:
        shapes = ", ".join(f"{n} {tuple(a.shape)}" for n, a in zip(names, args, strict=True))
        raise ExportError(
            f"the model fails on inputs shaped as the metadata says ({shapes}): {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(probe, torch.Tensor) or probe.ndim != 4 or probe.shape[1] != len(meta.classes):
        got = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ExportError(
            f"the model must return one (N, {len(meta.classes)}, H, W) tensor (one channel per "
            f"class in the metadata); it returned {got}"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.onnx")
    try:
        if exporter == "torchscript":
            axes = {n: {0: "N", 2: "H", 3: "W"} for n in [*names, meta.output_name]}
            torch.onnx.export(
                model,
                args,
                str(tmp),
                input_names=names,
                output_names=[meta.output_name],
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
        else:
            dim = torch.export.Dim
            shapes = tuple({0: dim("N"), 2: dim("H", min=16), 3: dim("W", min=16)} for _ in names)
            prog = torch.onnx.export(
                model,
                args,
                input_names=names,
                output_names=[meta.output_name],
                dynamic_shapes=shapes,
                opset_version=opset,
                dynamo=True,
            )
            prog.save(str(tmp))
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto, full_check=True)
        embed_metadata(proto, meta_doc)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    except ExportError:
        raise
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "nsupported" in msg or "not supported" in msg.lower() or "UnsupportedOperator" in type(exc).__name__:
            raise ExportError(
                f"operator not supported by the {exporter} exporter at opset {opset}: {msg}; "
                "try a newer --opset or --exporter dynamo"
            ) from None
        raise ExportError(f"ONNX export failed ({type(exc).__name__}): {msg}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def optimise(path: Path, simplify: bool, ort_optimize: bool) -> list[str]:
    """Optional graph clean-ups; returns what was done. Metadata is carried over."""
    done = []
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    if simplify:
        try:
            from onnxsim import simplify as onnxsim_simplify
        except ImportError:
            raise ExportError("--simplify needs onnxsim: pip install onnxsim") from None
        proto, ok = onnxsim_simplify(proto)
        if not ok:
            raise ExportError("onnxsim could not validate the simplified model")
        done.append("onnxsim")
    if ort_optimize:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # portable across providers
        tmp = path.with_name(f".{path.stem}.opt.onnx")
        so.optimized_model_filepath = str(tmp)
        onnx.save(proto, str(path))
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        proto = onnx.load(str(tmp))
        tmp.unlink()
        done.append("onnxruntime basic graph optimisation")
    if done:
        for k, v in props.items():
            if k not in {p.key for p in proto.metadata_props}:
                entry = proto.metadata_props.add()
                entry.key, entry.value = k, v
        onnx.save(proto, str(path))
    return done


def _real_batches(meta: ModelMeta, rasters: list[Path], size: int):
    """Windows of real rasters, normalised exactly as the engine does (engine.raster_input)."""
    from rasterio.windows import Window

    from engine.raster_input import AlignedInputs

    for path in rasters:
        try:
            with AlignedInputs([path], meta) as inputs:
                g = inputs.grid
                for r, c in ((0, 0), (max(0, g.height - size) // 2, max(0, g.width - size) // 2)):
                    feeds, _valid = inputs.read(Window(c, r, size, size))
                    yield f"{Path(path).name}@{r},{c}", {k: v[None] for k, v in feeds.items()}
        except LandSegError as exc:
            raise ExportError(f"real input for the parity check: {exc}") from None


def check_parity(
    model,
    onnx_path: Path,
    meta: ModelMeta,
    real_inputs: list[Path],
    size: int = 128,
    tolerance: float = 1e-3,
    min_agreement: float = 0.999,
) -> ParityReport:
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    cases: list[tuple[str, dict[str, np.ndarray]]] = []
    for seed, batch in ((0, 2), (1, 1)):
        arrays = [a.numpy() for a in _dummy_inputs(meta, size, batch=batch, seed=seed)]
        cases.append((f"random{seed}", {mi.name: a for mi, a in zip(meta.inputs, arrays, strict=True)}))
    cases.extend(_real_batches(meta, real_inputs, size))
    max_diff, agree, total = 0.0, 0, 0
    for _name, feeds in cases:
        with torch.no_grad():
            ref = model(*[torch.from_numpy(feeds[mi.name]) for mi in meta.inputs]).numpy()
        got = sess.run([meta.output_name], feeds)[0]
        if got.shape != ref.shape:
            raise ExportError(f"onnxruntime output shape {got.shape} differs from torch's {ref.shape}")
        max_diff = max(max_diff, float(np.abs(got - ref).max()))
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        total += ref.shape[0] * ref.shape[2] * ref.shape[3]
    report = ParityReport(max_diff, agree / total, [n for n, _ in cases])
    if max_diff > tolerance or report.argmax_agreement < min_agreement:
        raise ExportError(f"parity check failed: {report} (limits: {tolerance:g}, {100 * min_agreement:g}%)")
    return report


def export_package(params: ExportParams, log=print) -> tuple[Path, ParityReport]:
    meta_doc, meta = read_meta(params.meta)
    model = load_torch_model(params.entry, params.torchscript, params.checkpoint)
    path = export_onnx(model, meta_doc, meta, params.out, params.opset, params.exporter)
    for step in optimise(path, params.simplify, params.ort_optimize):
        log(f"applied {step}")
    try:
        report = check_parity(
            model, path, meta, params.real_inputs, params.parity_size, params.tolerance, params.min_agreement
        )
    except ExportError:
        path.unlink(missing_ok=True)  # a model that fails parity is not a package
        raise
    log(str(report))
    return path, report
