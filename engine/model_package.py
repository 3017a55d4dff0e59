"""The LandSeg model package: an ONNX graph plus metadata describing how to feed and read it.

Metadata lives in the ONNX file's ``metadata_props`` under the key ``landseg`` (a JSON document), so a
single ``.onnx`` file is a complete package. A sidecar ``<model>.json`` next to the file, when present,
takes precedence: it lets users describe third-party ONNX files without rewriting them.

Schema (``format: landseg-model/1``)::

    {
      "format": "landseg-model/1",
      "name": "rgb-indices-baseline",
      "task": "landcover",
      "inputs": [
        {"name": "rgb", "modality": "rgb", "bands": ["red", "green", "blue"],
         "normalization": {"type": "scale_offset", "scale": 0.00392157, "offset": 0.0}}
      ],
      "output": {"name": "scores", "kind": "logits"},
      "classes": [{"id": 0, "name": "woodland", "color": "#2e7d32", "description": "trees"}],
      "tile_size": 512, "overlap": 64, "pixel_size_m": 0.1
    }

``normalization`` is either ``scale_offset`` (x*scale + offset) or ``mean_std`` ((x - mean) / std), each
value a number or one number per band. Nothing assumes 8-bit data: a uint16 model says so here.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError
from .onnx_signature import GraphSignature, read_signature

FORMAT = "landseg-model/1"


def _models_dir() -> Path:
    """The shipped models: ``models/`` beside ``engine/`` (a checkout, the QGIS plugin folder), or the installed
    wheel's package data (``landseg_models``, pyproject.toml)."""
    beside = Path(__file__).resolve().parent.parent / "models"
    if beside.is_dir():
        return beside
    try:
        import landseg_models
    except ImportError:
        return beside
    return Path(landseg_models.__file__).resolve().parent


MODELS_DIR = _models_dir()
# The shipped models (MODEL_CARD.md): the trained land-cover default, and the colour rule kept as a named fallback.
DEFAULT_LANDCOVER_MODEL = MODELS_DIR / "landcover_unet_lite0.onnx"
# The same weights fed red, green, blue and near-infrared: chosen when the input has a NIR band (engine.model_choice).
RGBN_LANDCOVER_MODEL = MODELS_DIR / "landcover_rgbn_unet_lite0.onnx"
COLOUR_RULE_MODEL = MODELS_DIR / "rgb_index_baseline.onnx"
DEFAULT_TREECROWN_MODEL = MODELS_DIR / "treecrowns_centernet_lite0.onnx"  # the trained crown detector
# The two-scale detector (NEON at 0.1 m and downsampled, NAIP tree points at 0.6 m; RGB + optional CHM and NIR):
# chosen for coarse imagery (engine.model_choice.choose_treecrown_model); at 0.1 m the one above stays ahead.
COARSE_TREECROWN_MODEL = MODELS_DIR / "treecrowns_2scale_centernet_lite0.onnx"
METADATA_KEY = "landseg"
TASKS = ("landcover", "change", "treecrowns")
MODALITIES = ("rgb", "nir", "ndsm", "dsm", "sar", "multispectral", "any")
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class Normalization:
    """Per-band affine normalisation applied to raw raster values before they reach the model."""

    scale: tuple[float, ...]
    offset: tuple[float, ...]

    @classmethod
    def from_dict(cls, d: dict[str, Any], n_bands: int, where: str) -> Normalization:
        kind = d.get("type")

        def per_band(key: str) -> tuple[float, ...]:
            if key not in d:
                raise ModelError(f"{where}: normalization of type {kind!r} needs {key!r}")
            v = d[key]
            vals = [float(v)] * n_bands if isinstance(v, (int, float)) else [float(x) for x in v]
            if len(vals) != n_bands:
                raise ModelError(f"{where}: normalization {key!r} has {len(vals)} values for {n_bands} bands")
            return tuple(vals)

        if kind == "scale_offset":
            return cls(per_band("scale"), per_band("offset"))
        if kind == "mean_std":
            mean, std = per_band("mean"), per_band("std")
            if any(s == 0 for s in std):
                raise ModelError(f"{where}: normalization std must not be 0")
            return cls(tuple(1.0 / s for s in std), tuple(-m / s for m, s in zip(mean, std, strict=False)))
        raise ModelError(f"{where}: normalization type must be 'scale_offset' or 'mean_std', not {kind!r}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(bands, h, w) raw values -> float32 model input."""
        scale = np.asarray(self.scale, dtype=np.float32)[:, None, None]
        offset = np.asarray(self.offset, dtype=np.float32)[:, None, None]
        return x.astype(np.float32) * scale + offset


@dataclass(frozen=True)
class ModelInput:
    name: str
    modality: str
    bands: tuple[str, ...]
    normalization: Normalization
    date: str | None = None  # change models: "before" or "after"
    # Raw values the model was trained on, e.g. (0, 255) for 8-bit imagery; None: not stated, not checked.
    # The first `value_range_bands` bands are checked (a crown detector's CHM bands are metres, not colours).
    value_range: tuple[float, float] | None = None
    value_range_bands: int | None = None

    @property
    def n_bands(self) -> int:
        return len(self.bands)


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    color: str
    description: str = ""

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelMeta:
    name: str
    task: str
    inputs: tuple[ModelInput, ...]
    output_name: str
    output_kind: str  # "logits" or "probabilities"
    classes: tuple[ClassInfo, ...]
    tile_size: int
    overlap: int
    pixel_size_m: float | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def text_input(self) -> str | None:
        """Open-vocabulary models: the graph input that takes (classes, dim) prompt embeddings."""
        ti = self.extra.get("text_input")
        return str(ti["name"]) if isinstance(ti, dict) and "name" in ti else None

    def class_by_id(self, cid: int) -> ClassInfo:
        for c in self.classes:
            if c.id == cid:
                return c
        raise KeyError(cid)


def _items(doc: dict, key: str, where: str) -> list:
    """A metadata list that must hold at least one entry (inputs, classes)."""
    items = _require(doc, key, where)
    if not isinstance(items, list) or not items:
        raise ModelError(f"{where}: {key!r} must be a non-empty list")
    return items


def _require(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ModelError(f"{where}: missing required field {key!r}")
    return d[key]


def parse_metadata(doc: dict[str, Any], where: str = "model metadata") -> ModelMeta:
    """Validate a metadata document; every problem is reported with the field it concerns."""
    if not isinstance(doc, dict):
        raise ModelError(f"{where}: must be a JSON object")
    fmt = doc.get("format", FORMAT)
    if fmt != FORMAT:
        raise ModelError(f"{where}: unsupported format {fmt!r} (expected {FORMAT!r})")
    task = _require(doc, "task", where)
    if task not in TASKS:
        raise ModelError(f"{where}: task {task!r} is not one of {', '.join(TASKS)}")

    inputs = []
    for i, ri in enumerate(_items(doc, "inputs", where)):
        w = f"{where}: inputs[{i}]"
        name = str(_require(ri, "name", w))
        modality = str(ri.get("modality", name))
        if modality not in MODALITIES:
            raise ModelError(f"{w}: modality {modality!r} is not one of {', '.join(MODALITIES)}")
        bands = tuple(str(b) for b in _require(ri, "bands", w))
        if not bands:
            raise ModelError(f"{w}: 'bands' must list at least one band")
        norm = Normalization.from_dict(_require(ri, "normalization", w), len(bands), w)
        date = ri.get("date")
        if date not in (None, "before", "after"):
            raise ModelError(f"{w}: date must be 'before' or 'after', not {date!r}")
        vr, vr_bands = ri.get("value_range"), ri.get("value_range_bands")
        if vr is not None:
            if not (isinstance(vr, list) and len(vr) == 2 and all(isinstance(v, (int, float)) for v in vr)):
                raise ModelError(f"{w}: value_range must be [low, high], not {vr!r}")
            if not vr[0] < vr[1]:
                raise ModelError(f"{w}: value_range low must be below high, not {vr!r}")
            vr = (float(vr[0]), float(vr[1]))
        if vr_bands is not None and not (isinstance(vr_bands, int) and 1 <= vr_bands <= len(bands)):
            raise ModelError(f"{w}: value_range_bands must be 1..{len(bands)}, not {vr_bands!r}")
        inputs.append(ModelInput(name, modality, bands, norm, date, vr, vr_bands))
    if len({(i.modality, i.date) for i in inputs}) != len(inputs):
        raise ModelError(f"{where}: two inputs share one modality (and date)")
    if task == "change" and {i.date for i in inputs} != {"before", "after"}:
        raise ModelError(f"{where}: a change model needs inputs with date 'before' and inputs with date 'after'")

    out = _require(doc, "output", where)
    output_name = str(_require(out, "name", f"{where}: output"))
    output_kind = out.get("kind", "logits")
    if output_kind not in ("logits", "probabilities"):
        raise ModelError(f"{where}: output kind must be 'logits' or 'probabilities'")

    classes = []
    for i, rc in enumerate(_items(doc, "classes", where)):
        w = f"{where}: classes[{i}]"
        color = str(rc.get("color", "#808080"))
        if not _COLOR.match(color):
            raise ModelError(f"{w}: color {color!r} is not #rrggbb")
        cid = int(rc.get("id", i))
        if cid != i:
            # Class ids are output channel indices: the engine relies on id == channel.
            raise ModelError(f"{w}: id {cid} must equal its position {i} (output channel)")
        classes.append(ClassInfo(cid, str(_require(rc, "name", w)), color, str(rc.get("description", ""))))
    if len(classes) > 254:
        raise ModelError(f"{where}: at most 254 classes (255 is the class-map nodata value)")

    tile = int(doc.get("tile_size", 512))
    overlap = int(doc.get("overlap", tile // 8))
    if tile < 32 or not 0 <= overlap <= tile // 2:
        raise ModelError(f"{where}: tile_size must be >= 32 and 0 <= overlap <= tile_size/2")
    known = {
        "format",
        "name",
        "task",
        "inputs",
        "output",
        "classes",
        "tile_size",
        "overlap",
        "pixel_size_m",
        "description",
    }
    return ModelMeta(
        name=str(doc.get("name", "unnamed")),
        task=task,
        inputs=tuple(inputs),
        output_name=output_name,
        output_kind=output_kind,
        classes=tuple(classes),
        tile_size=tile,
        overlap=overlap,
        pixel_size_m=float(doc["pixel_size_m"]) if doc.get("pixel_size_m") is not None else None,
        description=str(doc.get("description", "")),
        extra={k: v for k, v in doc.items() if k not in known},
    )


def meta_to_dict(meta: ModelMeta) -> dict[str, Any]:
    """Inverse of parse_metadata (normalisation written as scale/offset)."""
    return {
        "format": FORMAT,
        "name": meta.name,
        "task": meta.task,
        "description": meta.description,
        "inputs": [
            {
                "name": i.name,
                "modality": i.modality,
                "bands": list(i.bands),
                "normalization": {
                    "type": "scale_offset",
                    "scale": list(i.normalization.scale),
                    "offset": list(i.normalization.offset),
                },
                **({"date": i.date} if i.date else {}),
                **({"value_range": list(i.value_range)} if i.value_range else {}),
                **({"value_range_bands": i.value_range_bands} if i.value_range_bands else {}),
            }
            for i in meta.inputs
        ],
        "output": {"name": meta.output_name, "kind": meta.output_kind},
        "classes": [asdict(c) for c in meta.classes],
        "tile_size": meta.tile_size,
        "overlap": meta.overlap,
        "pixel_size_m": meta.pixel_size_m,
        **meta.extra,
    }


@dataclass(frozen=True)
class ModelPackage:
    path: Path
    meta: ModelMeta
    # What the graph fixes of its image inputs' shape (None: any): a batch-1 export, a fixed tile size.
    fixed_batch: int | None = None
    fixed_tile: int | None = None


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def load_model_package(path: str | Path) -> ModelPackage:
    """Load and validate an ONNX model and its metadata; check metadata against the graph's I/O."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.suffix.lower() in (".engine", ".plan"):
        from .runtime.tensorrt import read_sidecar  # a TensorRT engine: metadata only in its sidecar

        return ModelPackage(path, parse_metadata(read_sidecar(path), str(sidecar_path(path))))
    if path.suffix.lower() != ".onnx":
        raise ModelError(f"model file must be an .onnx file (or a TensorRT .engine/.plan): {path}")
    try:
        sig = read_signature(path)  # names, shapes and metadata only: the weights are skipped, not parsed
    except (OSError, ValueError) as exc:
        raise ModelError(f"model file is not a valid ONNX model: {path} ({type(exc).__name__})") from None
    if not sig.n_nodes:
        raise ModelError(f"model file is not a valid ONNX model (empty graph): {path}")

    side = sidecar_path(path)
    if side.exists():
        where = str(side)
        try:
            doc = json.loads(side.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"model metadata {side} is not valid JSON: {exc}") from None
    else:
        where = f"{path} metadata"
        props = sig.metadata
        from .deepness import is_deepness, landseg_metadata

        if METADATA_KEY not in props and is_deepness(props):  # a Deepness model, run as it is
            return _checked(path, parse_metadata(landseg_metadata(props, sig, where), where), sig, where)
        if METADATA_KEY not in props:
            raise ModelError(
                f"model {path} has no LandSeg metadata (no '{METADATA_KEY}' entry in its ONNX metadata "
                f"and no sidecar {side.name}); export it with `python -m export`"
            )
        try:
            doc = json.loads(props[METADATA_KEY])
        except ValueError as exc:
            raise ModelError(f"{where}: not valid JSON: {exc}") from None
    return _checked(path, parse_metadata(doc, where), sig, where)


def _checked(path: Path, meta: ModelMeta, sig: GraphSignature, where: str) -> ModelPackage:
    """The metadata checked against the graph's inputs and outputs."""
    graph_inputs = {i.name: i for i in sig.inputs}  # initializers (weights) are not among them
    real_inputs = set(graph_inputs)
    for mi in meta.inputs:
        if mi.name not in real_inputs:
            raise ModelError(f"{where}: input {mi.name!r} is not an input of the ONNX graph ({sorted(real_inputs)})")
        dims = graph_inputs[mi.name].dims
        if len(dims) == 4 and dims[1] is not None and dims[1] != mi.n_bands:
            raise ModelError(
                f"{where}: input {mi.name!r} lists {mi.n_bands} bands but the graph takes {dims[1]} channels"
            )
    text = meta.text_input
    if text is not None and text not in real_inputs:
        raise ModelError(f"{where}: text_input {text!r} is not an input of the ONNX graph ({sorted(real_inputs)})")
    extra_inputs = real_inputs - {mi.name for mi in meta.inputs} - {text}
    if extra_inputs:
        raise ModelError(f"{where}: graph inputs {sorted(extra_inputs)} are not described in the metadata")
    outputs = [o.name for o in sig.outputs]
    if meta.output_name not in outputs:
        raise ModelError(f"{where}: output {meta.output_name!r} is not an output of the graph ({outputs})")
    dims = graph_inputs[meta.inputs[0].name].dims
    batch = dims[0] if len(dims) == 4 else None
    h, w = (dims[2], dims[3]) if len(dims) == 4 else (None, None)
    if (h is None) != (w is None) or (h is not None and h != w):
        raise ModelError(f"{where}: the graph takes tiles of {h} x {w} pixels; LandSeg's tiles are square")
    return ModelPackage(path, meta, batch, h)


def embed_metadata(model_proto: Any, meta: ModelMeta | dict[str, Any]) -> None:
    """Write the metadata into an onnx.ModelProto in place (validating it first)."""
    doc = meta_to_dict(meta) if isinstance(meta, ModelMeta) else meta
    parse_metadata(doc)
    for p in list(model_proto.metadata_props):
        if p.key == METADATA_KEY:
            model_proto.metadata_props.remove(p)
    entry = model_proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(doc)
