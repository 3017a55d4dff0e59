"""The one stage that decides a run's classes: class prompts, open-vocabulary prompts, fusion of several models
and the "other"/drop folding all happen here, once, before any pixel is read. Everything after it (prediction,
writers, polygons, styles, the result) only reads the class table it returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .fusion import check_fusable, common_classes, to_common
from .model_package import ClassInfo, ModelMeta, ModelPackage, load_model_package
from .prompts import OpenVocabulary, PromptMapping, PromptMatch, map_prompts, open_vocabulary, parse_prompts


@dataclass
class ClassSpace:
    classes: tuple[ClassInfo, ...]  # the final class table: ids, names and colours of every output
    run_meta: ModelMeta  # what the predictor runs with: the model's metadata with these classes
    mapping: PromptMapping | None = None  # model classes -> asked classes (+ other / drop), applied per block
    vocab: OpenVocabulary | None = None  # an open-vocabulary model: the prompts' embeddings it is fed
    fused: list[ModelPackage] = field(default_factory=list)  # the other models fused with the first
    metas: list[ModelMeta] = field(default_factory=list)  # every fused model's metadata, the first one first
    matrices: list[np.ndarray] | None = None  # fusion: each model's classes -> the common ones
    matches: list[PromptMatch] = field(default_factory=list)  # how each prompt was matched


def class_space(
    meta: ModelMeta,
    prompts: list[str],
    unasked: str,
    threshold: float,
    fuse_models: list,
    say: Callable[[str], None],
) -> ClassSpace:
    prompts = parse_prompts(prompts)  # a request's list gets the CLI's cleaning: trimmed, no repeats, length
    if meta.text_input is not None:  # open vocabulary: the prompts are the classes
        vocab = open_vocabulary(meta, prompts)
        say(f"open-vocabulary model: classes {', '.join(c.name for c in vocab.classes)}")
        space = ClassSpace(vocab.classes, dataclasses.replace(meta, classes=vocab.classes), vocab=vocab)
    elif prompts:
        mapping = map_prompts(prompts, meta, unasked=unasked, threshold=threshold)
        for msg in mapping.messages:
            say(msg)
        space = ClassSpace(mapping.classes, meta, mapping=mapping, matches=list(mapping.matches))
    else:
        space = ClassSpace(meta.classes, meta)
    if not fuse_models:
        return space
    space.fused = [load_model_package(p) for p in fuse_models]
    metas = [meta] + [f.meta for f in space.fused]
    check_fusable(metas)
    if prompts and unasked == "drop":
        raise InputError("--unasked drop cannot be combined with model fusion; use 'other'")
    mappings = [space.mapping] + [
        map_prompts(prompts, m, unasked="other", threshold=threshold) if prompts else None for m in metas[1:]
    ]
    for m, extra in zip(metas[1:], mappings[1:], strict=True):
        if extra is not None:
            for msg in extra.messages:
                say(f"{m.name}: {msg}")
            space.matches += extra.matches
    classes = common_classes(metas, mappings)
    space.classes = classes
    space.metas = metas
    space.matrices = [to_common(m, mp, classes) for m, mp in zip(metas, mappings, strict=True)]
    space.run_meta = dataclasses.replace(meta, classes=classes, output_kind="probabilities")
    space.mapping = None  # applied inside the fused model
    say(f"fusing {len(metas)} models class-wise by confidence: {', '.join(m.name for m in metas)}")
    return space
