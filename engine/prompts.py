"""Class prompts: map what the analyst typed ("woods, lake, houses") to the model's classes.

Prompts and classes are embedded with the ONNX text encoder (all-MiniLM-L6-v2, exported by
`python -m export text-encoder`); each prompt goes to the class with the highest cosine similarity. A prompt whose
best class scores below the threshold is reported by name with its closest class, never silently dropped.
Several prompts may land on one class. Classes no prompt asked for fold into "other", or are dropped (nodata,
no polygons), as the user chooses. Class embeddings come from the model's metadata ("class_embeddings", written
at export time by `python -m export embed-classes`) or are computed from class names and descriptions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, ModelError
from .model_package import MODELS_DIR, ClassInfo, ModelMeta
from .outputs import top_class

DEFAULT_ENCODER = MODELS_DIR / "text_encoder"
DEFAULT_THRESHOLD = 0.5
MAX_PROMPT_CHARS = 200  # a class name or a short phrase, not a paragraph
OTHER_COLOR = "#bdbdbd"


def parse_prompts(text: str | list[str] | None) -> list[str]:
    if not text:
        return []
    items = text if isinstance(text, list) else text.replace(";", ",").split(",")
    seen, out = set(), []
    for p in (s.strip() for s in items):
        if len(p) > MAX_PROMPT_CHARS:
            raise InputError(f"prompt '{p[:40]}...' is {len(p)} characters long: at most {MAX_PROMPT_CHARS}")
        if p and p.lower() not in seen:
            seen.add(p.lower())
            out.append(p)
    return out


def class_text(c: ClassInfo) -> str:
    """What a class "says": its name and description, as the text encoder sees it."""
    return f"{c.name}: {c.description}" if c.description else c.name


class TextEncoder:
    def __init__(self, folder: Path | None = None) -> None:
        import onnxruntime as ort

        folder = Path(folder or os.environ.get("LANDSEG_TEXT_ENCODER") or DEFAULT_ENCODER)
        side = folder / "text_encoder.json"
        if not side.exists():
            raise ModelError(
                f"no text encoder in {folder}: class prompts need it; create it with "
                "`make text-encoder` (it ships in models/text_encoder/)"
            )
        self.doc = json.loads(side.read_text())
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / self.doc["tokenizer"]))
        self.tokenizer.enable_truncation(int(self.doc.get("max_tokens", 128)))
        self.tokenizer.enable_padding()
        self.session = ort.InferenceSession(str(folder / self.doc["model"]), providers=["CPUExecutionProvider"])

    def embed(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
        }
        return self.session.run(None, feeds)[0]


@dataclass
class PromptMatch:
    prompt: str
    class_name: str  # best class (for unmatched prompts: the closest one)
    score: float
    matched: bool


@dataclass
class PromptMapping:
    """Model classes -> output classes, as a (n_out, n_model) matrix applied to blended probabilities."""

    matches: list[PromptMatch]
    classes: tuple[ClassInfo, ...]  # output classes (ids 0..n-1)
    matrix: np.ndarray
    dropped: np.ndarray | None  # model classes whose pixels become nodata ("drop"), or None ("other")
    messages: list[str] = field(default_factory=list)
    other: np.ndarray | None = None  # model classes folded into "other" (its last row), or None

    def apply(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(model classes, h, w) -> (output classes, h, w), plus a mask of pixels to drop (or None).

        "other" gets the largest of its classes' probabilities, not their sum: a sum of several unasked classes
        would outvote the class a prompt asked for, and a prompt must never move pixels out of its class. So
        every pixel keeps the model's own answer, renamed; "other"'s confidence is its best class's."""
        out = np.tensordot(self.matrix, probs, axes=1)
        if self.other is not None:
            out[-1] = probs[self.other].max(axis=0)
        if self.dropped is None:
            return out, None
        return out, np.isin(top_class(probs)[0], self.dropped)  # the model's own answer was an unasked class


def class_embeddings(meta: ModelMeta, encoder: TextEncoder | None) -> np.ndarray:
    stored = meta.extra.get("class_embeddings")
    if stored is not None:
        arr = np.asarray(stored, dtype=np.float32)
        if arr.shape[0] != len(meta.classes):
            raise ModelError(
                f"model '{meta.name}': class_embeddings has {arr.shape[0]} rows for {len(meta.classes)} classes"
            )
        return arr / np.linalg.norm(arr, axis=1, keepdims=True)
    if encoder is None:
        raise ModelError("no text encoder to embed the model's classes")
    return encoder.embed([class_text(c) for c in meta.classes])


def map_prompts(
    prompts: list[str],
    meta: ModelMeta,
    encoder: TextEncoder | None = None,
    unasked: str = "other",
    threshold: float = DEFAULT_THRESHOLD,
) -> PromptMapping:
    if unasked not in ("other", "drop"):
        raise InputError(f"unasked classes must be 'other' or 'drop', not {unasked!r}")
    encoder = encoder or TextEncoder()
    sims = encoder.embed(prompts) @ class_embeddings(meta, encoder).T
    matches, asked = [], []
    messages = []
    for prompt, row in zip(prompts, sims, strict=True):
        best = int(row.argmax())
        ok = bool(row[best] >= threshold)
        matches.append(PromptMatch(prompt, meta.classes[best].name, round(float(row[best]), 3), ok))
        if ok:
            messages.append(f"prompt '{prompt}' -> {meta.classes[best].name} ({row[best]:.2f})")
            if best not in asked:
                asked.append(best)
        else:
            messages.append(
                f"no class of this model matches '{prompt}' (closest: {meta.classes[best].name}, {row[best]:.2f})"
            )
    if not asked:
        raise InputError("; ".join(messages))
    asked.sort()
    out_classes = [
        ClassInfo(i, meta.classes[c].name, meta.classes[c].color, meta.classes[c].description)
        for i, c in enumerate(asked)
    ]
    n_model = len(meta.classes)
    rest = [c for c in range(n_model) if c not in asked]
    rows = len(asked) + (1 if rest and unasked == "other" else 0)
    matrix = np.zeros((rows, n_model), np.float32)
    for i, c in enumerate(asked):
        matrix[i, c] = 1.0
    if rest and unasked == "other":
        matrix[-1, rest] = 1.0
        others = ", ".join(meta.classes[c].name for c in rest)
        out_classes.append(ClassInfo(len(asked), "other", OTHER_COLOR, f"classes not asked for: {others}"))
    dropped = np.asarray(rest) if rest and unasked == "drop" else None
    other = np.asarray(rest) if rest and unasked == "other" else None
    return PromptMapping(matches, tuple(out_classes), matrix, dropped, messages, other)


PALETTE = [
    "#1b9e77",
    "#d95f02",
    "#7570b3",
    "#e7298a",
    "#66a61e",
    "#e6ab02",
    "#a6761d",
    "#666666",
    "#1f78b4",
    "#b2df8a",
    "#fb9a99",
    "#cab2d6",
]


@dataclass
class OpenVocabulary:
    """For models that take prompt embeddings as an input (per-pixel embeddings . prompt embeddings = logits,
    as in LandSegmenter): every prompt is a class; the engine feeds their embeddings."""

    classes: tuple[ClassInfo, ...]
    embeddings: np.ndarray  # (classes, dim) float32
    input_name: str

    def wrap(self, run):
        feed = {self.input_name: self.embeddings}
        return lambda feeds: run({**feeds, **feed})


def open_vocabulary(meta: ModelMeta, prompts: list[str], encoder: TextEncoder | None = None) -> OpenVocabulary:
    """Prompts (or, without prompts, the model's default class names) as the classes of an open-vocabulary model."""
    encoder = encoder or TextEncoder()
    if prompts:
        classes = tuple(ClassInfo(i, p, PALETTE[i % len(PALETTE)]) for i, p in enumerate(prompts))
    else:
        classes = meta.classes
    emb = encoder.embed([class_text(c) for c in classes]).astype(np.float32)
    dim = meta.extra["text_input"].get("dim")
    if dim is not None and emb.shape[1] != int(dim):
        raise ModelError(f"model '{meta.name}' expects {dim}-d text embeddings; the text encoder gives {emb.shape[1]}")
    return OpenVocabulary(classes, emb, meta.text_input)
