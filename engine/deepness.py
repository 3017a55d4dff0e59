"""ONNX models made for the Deepness QGIS plugin run as they are: their metadata becomes a LandSeg package.

Deepness keeps its metadata in the ONNX file's ``metadata_props``, each value JSON-encoded: ``model_type``
("Segmentor", "Detector", "Regressor", "Recognition", "Superresolution"), ``class_names`` ({"0": "background",
...}), ``resolution`` (cm per pixel), ``tiles_size`` (px), ``tiles_overlap`` (% of the tile),
``standardization_mean`` / ``standardization_std`` (applied after scaling 8-bit values to 0..1), ``seg_thresh``,
``det_conf``, ``det_iou_thresh``. Deepness feeds the first C channels of the layer (C: the graph input's channel
count), scaled to 0..1, then standardised, as NCHW float32.

Which task each model type maps to:
- ``Segmentor`` with one output channel per class (probabilities): ``landcover``.
- ``Segmentor`` with a single output channel (a binary mask), ``Detector`` (YOLO boxes), ``Regressor``,
  ``Recognition``, ``Superresolution``: no LandSeg task reads their outputs; loading one says so in one line.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import ModelError
from .onnx_signature import GraphSignature

DEEPNESS_KEYS = ("model_type", "class_names", "resolution", "tiles_size", "tiles_overlap")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def is_deepness(props: dict[str, str]) -> bool:
    return "model_type" in props or "class_names" in props


def _value(props: dict[str, str], key: str, default: Any = None) -> Any:
    if key not in props:
        return default
    raw = props[key]
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # some exporters write plain strings ("Segmentor")


def landseg_metadata(props: dict[str, str], sig: GraphSignature, where: str) -> dict[str, Any]:
    """The LandSeg metadata document (engine.model_package schema) equivalent to a Deepness model's."""
    model_type = str(_value(props, "model_type", "Segmentor"))
    if model_type.lower() != "segmentor":
        raise ModelError(
            f"{where}: a Deepness {model_type!r} model; LandSeg runs Deepness segmentors (as land cover) only"
        )
    inputs = sig.inputs  # less the initializers (weights)
    if len(inputs) != 1 or len(sig.outputs) != 1:
        raise ModelError(f"{where}: a Deepness segmentor has one input and one output")
    in_dims, out_dims = inputs[0].dims, sig.outputs[0].dims
    if len(in_dims) != 4 or in_dims[1] is None:
        raise ModelError(f"{where}: the input must be (batch, channels, height, width) with a fixed channel count")
    channels = in_dims[1]
    n_out = out_dims[1] if len(out_dims) == 4 else None
    names = _value(props, "class_names", None)
    if isinstance(names, dict):
        classes = [str(names[k]) for k in sorted(names, key=lambda k: int(k))]
    elif isinstance(names, list):
        classes = [str(n) for n in names]
    else:
        classes = [f"class_{i}" for i in range(n_out or 0)]
    if n_out == 1:
        raise ModelError(
            f"{where}: a one-channel (binary mask) Deepness segmentor; LandSeg needs one output channel per class"
        )
    if n_out is not None and n_out != len(classes):
        raise ModelError(f"{where}: class_names lists {len(classes)} classes but the model outputs {n_out} channels")
    if not classes:
        raise ModelError(f"{where}: no class_names, and the output's channel count is not fixed")
    tile = int(_value(props, "tiles_size", in_dims[2] or 512))
    if in_dims[2] is not None and in_dims[2] != tile:
        raise ModelError(f"{where}: tiles_size {tile} but the graph takes {in_dims[2]} x {in_dims[3]} tiles")
    overlap = round(tile * float(_value(props, "tiles_overlap", 15)) / 100)
    mean = _value(props, "standardization_mean", None)
    std = _value(props, "standardization_std", None)
    mean = [float(m) for m in mean] if isinstance(mean, list) else [0.0] * channels
    std = [float(s) for s in std] if isinstance(std, list) else [1.0] * channels
    if len(mean) < channels or len(std) < channels or any(s == 0 for s in std[:channels]):
        raise ModelError(f"{where}: standardization_mean/std need {channels} values and no zero std")
    rgb = channels == 3
    resolution = _value(props, "resolution", None)
    return {
        "name": str(_value(props, "name", sig.name or "deepness-model")),
        "task": "landcover",
        "description": f"Deepness {model_type} (metadata read from the ONNX file)",
        "inputs": [
            {
                "name": inputs[0].name,
                "modality": "rgb" if rgb else "multispectral",
                "bands": ["red", "green", "blue"] if rgb else [f"band{i + 1}" for i in range(channels)],
                # x / 255, then (x - mean) / std, as Deepness feeds it
                "normalization": {
                    "type": "scale_offset",
                    "scale": [1.0 / (255.0 * s) for s in std[:channels]],
                    "offset": [-m / s for m, s in zip(mean[:channels], std[:channels], strict=True)],
                },
                "value_range": [0, 255],
            }
        ],
        "output": {"name": sig.outputs[0].name, "kind": "probabilities"},
        "classes": [{"id": i, "name": n, "color": PALETTE[i % len(PALETTE)]} for i, n in enumerate(classes)],
        "tile_size": tile,
        "overlap": min(overlap, tile // 2),
        "pixel_size_m": float(resolution) / 100.0 if resolution is not None else None,
        "deepness": {k: _value(props, k) for k in props if k != "landseg"},
    }
