"""Class-wise confidence-guided fusion of several models (or of one model per modality).

Each model's probabilities are mapped into one common class space (by class name, or through the prompts),
then, class by class, the most confident model wins: fused[c] = max over models of p_m[c], renormalised over
classes. A model that lacks a class says nothing about it (probability 0 there), so an RGB model and a SAR model
with different class lists can be combined. All models run on the same tiles in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from .errors import InputError
from .model_package import ClassInfo, ModelMeta
from .predict import softmax
from .prompts import OTHER_COLOR, PromptMapping


def common_classes(metas: list[ModelMeta], mappings: list[PromptMapping | None]) -> tuple[ClassInfo, ...]:
    """Union of the models' (prompt-mapped) class names, in order of first appearance; "other" last."""
    names: list[ClassInfo] = []
    for meta, mapping in zip(metas, mappings, strict=True):
        for c in mapping.classes if mapping else meta.classes:
            if c.name not in [n.name for n in names]:
                names.append(c)
    other = [c for c in names if c.name == "other"]
    ordered = [c for c in names if c.name != "other"] + other
    return tuple(
        ClassInfo(i, c.name, c.color if c.name != "other" else OTHER_COLOR, c.description)
        for i, c in enumerate(ordered)
    )


def to_common(meta: ModelMeta, mapping: PromptMapping | None, common: tuple[ClassInfo, ...]) -> np.ndarray:
    """(n_common, n_model_classes) matrix taking one model's probabilities into the common class space."""
    own = mapping.classes if mapping else meta.classes
    base = mapping.matrix if mapping else np.eye(len(meta.classes), dtype=np.float32)
    names = [c.name for c in common]
    out = np.zeros((len(common), len(meta.classes)), np.float32)
    for row, c in zip(base, own, strict=True):
        out[names.index(c.name)] += row
    return out


class FusedInputs:
    """Every model's inputs for one window, keyed "<model>:<input>"; valid where all models have data."""

    def __init__(self, inputs: list) -> None:
        self.inputs = inputs
        self.grid = inputs[0].grid

    def may_have_data(self, window: Window) -> bool:
        return all(inp.may_have_data(window) for inp in self.inputs)

    def read(self, window: Window):
        feeds, valid = {}, None
        for i, inp in enumerate(self.inputs):
            f, v = inp.read(window)
            feeds.update({f"{i}:{k}": a for k, a in f.items()})
            valid = v if valid is None else valid & v
        return feeds, valid


@dataclass
class FusedModel:
    runs: list  # each model's run(feeds) -> (N, C_m, H, W)
    metas: list[ModelMeta]
    matrices: list[np.ndarray]  # (n_common, C_m)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        fused = None
        for i, (run, meta, m) in enumerate(zip(self.runs, self.metas, self.matrices, strict=True)):
            own = {k.split(":", 1)[1]: v for k, v in feeds.items() if k.startswith(f"{i}:")}
            out = np.require(run(own), dtype=np.float32, requirements=["W", "C"])
            if meta.output_kind == "logits":
                out = softmax(out)
            p = np.einsum("kc,nchw->nkhw", m, out)
            fused = p if fused is None else np.maximum(fused, p)
        fused /= np.maximum(fused.sum(axis=1, keepdims=True), 1e-12)
        return fused


def check_fusable(metas: list[ModelMeta]) -> None:
    for m in metas:
        if m.task != "landcover" or m.text_input is not None:
            raise InputError(f"model '{m.name}' cannot be fused: fusion takes land-cover models with fixed classes")
