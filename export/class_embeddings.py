"""Embed a model's class names and descriptions with the text encoder, into its metadata ("class_embeddings"),
so that prompt matching needs only the prompts' embeddings at run time."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from engine.errors import ModelError
from engine.model_package import METADATA_KEY, load_model_package
from engine.prompts import DEFAULT_ENCODER, TextEncoder, class_text

from .errors import ExportError


def embed_classes(model: Path, encoder_dir: Path | None = None, missing_ok: bool = False) -> bool:
    """Returns False (with missing_ok) when there is no text encoder to embed with."""
    folder = Path(encoder_dir or DEFAULT_ENCODER)
    if not (folder / "text_encoder.json").exists():
        if missing_ok:
            return False
        raise ExportError(f"no text encoder in {folder}: run `python -m export text-encoder` first")
    try:
        meta = load_model_package(model).meta
        vectors = TextEncoder(folder).embed([class_text(c) for c in meta.classes])
    except ModelError as exc:
        raise ExportError(str(exc)) from None
    proto = onnx.load(str(model))
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            doc = json.loads(p.value)
            doc["class_embeddings"] = [[round(float(v), 5) for v in row] for row in vectors]
            doc["class_embeddings_model"] = TextEncoder(folder).doc["name"]
            p.value = json.dumps(doc)
    onnx.save(proto, str(model))
    return True
