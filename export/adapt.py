"""Adapt a land-cover model to the analyst's own labels (``python -m engine adapt``; needs the training extra).

The analyst draws polygons (or points, buffered) in their area with a class field. Label values are matched to
the model's classes by name, then by meaning through the prompt text encoder ("woods" -> vegetation); a value
that matches no class adds an output class. The polygons are split by location: the part lying beyond the 80 %
quantile (by area) along the labels' longer extent is held out, so the held-out figures measure the map away
from the training polygons, not next to them. Chips (tile-sized windows on the model's pixel grid, read and
normalised exactly as inference reads them) are cut around the polygons; pixels outside the labels are ignored.
The base model is fine-tuned (encoder at a tenth of the learning rate, batch norm frozen: a few hundred labelled
pixels must not move its statistics) for the time budget, and per-class IoU on the held-out polygons is measured
before and after. Output: a complete model package (ONNX + metadata with its card + torch weights beside it,
so it can be adapted again) that the CLI, panel and Processing run like any other.

A package can be adapted when its torch weights sit beside it as ``<model>.pt`` (a state_dict of
export.effnet_lite.LandcoverUNet), as they do for the shipped land-cover model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import Cancelled, InputError, ModelError
from engine.model_package import DEFAULT_LANDCOVER_MODEL, load_model_package, meta_to_dict
from engine.raster_input import AlignedInputs, reference_grid
from engine.resample import plan as plan_resampling
from engine.task_options import Option

from .adapt_labels import (
    IGNORE,
    NODATA,
    cut_chips,
    match_labels,
    on_grid,
    read_labels,
    spatial_holdout,
    stack_chips,
)

NEW_CLASS_COLOURS = ("#6a3d9a", "#ff7f00", "#b15928", "#cab2d6", "#fb9a99", "#ffff99", "#a6cee3", "#33a02c")


@dataclass
class AdaptParams:
    inputs: list[Path]
    labels: Path
    out_dir: Path
    class_field: str = "class"
    model: Path = DEFAULT_LANDCOVER_MODEL
    minutes: float = 5.0
    max_steps: int | None = None  # stop earlier (tests)
    holdout: float = 0.2  # share of the labelled area held out, by location
    point_buffer_m: float = 2.0  # points become discs of this radius
    chip: int = 256
    batch: int = 4
    lr: float = 3e-4
    seed: int = 0
    threads: int = 2
    name: str | None = None  # default: <base name>-adapted
    max_chips: int = 400
    # The adapted model's pixel size: None = the base model's; a number (m) = train (and later run) at that size,
    # e.g. the analyst's finer imagery, where the base model's grid merges small objects.
    pixel_size_m: float | None = None
    # Unlabelled pixels pull towards the base model's own prediction with this weight (learning without
    # forgetting): labels of one or two classes must not teach "everything is that class".
    keep_base: float = 1.0


OPTIONS = (
    Option("inputs", "--input", "Raster(s)", "raster(s) labelled", short="-i", widget="rasters", name="INPUT"),
    Option("labels", "--labels", "Labelled polygons or points", "labelled polygons or points (GeoPackage, ...)",
           widget="vector"),
    Option("class_field", "--class-field", "Class field", "the labels' class field (default: %(default)s)",
           widget="field", parent="LABELS"),
    Option("model", "--model", "Base model (empty: the shipped land-cover model)", "base model (default: "
           "%(default)s)", widget="model", file_filter="ONNX (*.onnx)"),
    Option("minutes", "--minutes", "Training time (minutes)", "training time budget (default: %(default)s)",
           minimum=0.1),
    Option("max_steps", "--max-steps", "Stop after this many steps", "stop after this many steps (smoke tests)",
           processing=False),
    Option("holdout", "--holdout", "Share of the labels held out (by location)",
           "share of the labels held out by location (default: %(default)s)", minimum=0.05, maximum=0.9,
           advanced=True),
    Option("name", "--name", "New model's name (empty: <base>-adapted)", "new model's name (default: "
           "<base>-adapted)", advanced=True),
    Option("pixel_size_m", "--pixel-size", "New model's pixel size, m (0: the base model's)", "train (and later "
           "run) the new model at this pixel size in m (default: the base model's)", unset=0, minimum=0,
           name="PIXEL_SIZE"),
    Option("keep_base", "--keep-base", "Weight towards the base model's answer on unlabelled pixels",
           "weight pulling unlabelled pixels towards the base model's answer (default: 1; 0 = ignore them)",
           minimum=0, advanced=True),
    Option("out_dir", "--out", "Folder for the new model", "folder for the new model package", short="-o",
           widget="output_folder", name="OUTPUT"),
)  # fmt: skip


@dataclass
class AdaptResult:
    model: Path
    classes: list[str]
    label_matches: dict[str, str]  # label value -> model class (new classes map to themselves)
    new_classes: list[str]
    steps: int
    minutes: float
    holdout_iou_before: dict[str, float | None]
    holdout_iou_after: dict[str, float | None]
    train_polygons: int
    holdout_polygons: int
    messages: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"adapted model: {self.model} ({self.steps} steps, {self.minutes} min)",
                f"held-out IoU before: {self.holdout_iou_before}", f"after: {self.holdout_iou_after}"]  # fmt: skip

    def to_json(self) -> str:
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()})


def iou_per_class(model, x: np.ndarray, y: np.ndarray, names: list[str], n_model: int) -> dict[str, float | None]:
    import torch

    inter = np.zeros(len(names))
    union = np.zeros(len(names))
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), 4):
            pred = model(torch.from_numpy(x[i : i + 4])).argmax(1).numpy()
            t = y[i : i + 4]
            ok = t < len(names)
            for k in range(len(names)):
                p_k, t_k = (pred == k) & ok, (t == k) & ok
                inter[k] += (p_k & t_k).sum()
                union[k] += (p_k | t_k).sum()
    present = {k for k in range(len(names)) if (y == k).any()}
    return {
        n: (round(float(inter[k] / union[k]), 4) if k in present and union[k] else None) for k, n in enumerate(names)
    }


def _d4(t, k: int, flip: bool):
    """Rotate by k x 90 degrees and maybe flip the last two axes (images, labels, probabilities alike)."""
    t = t.rot90(k, (-2, -1))
    return t.flip(-1) if flip else t


def base_probabilities(model, x: np.ndarray) -> np.ndarray:
    """The base model's class probabilities on the training chips (float16), computed once."""
    import torch

    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), 4):
            out.append(model(torch.from_numpy(x[i : i + 4])).softmax(1).half().numpy())
    return np.concatenate(out)


def run_adapt(p: AdaptParams, progress=None, cancelled=None, notify=None) -> AdaptResult:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        raise InputError(
            "adapting a model needs the training extra (torch): run `make dev`, or "
            "`.venv/bin/pip install -c constraints.txt -r requirements-export.txt`"
        ) from None
    from .effnet_lite import landcover_unet_for
    from .torch_export import check_parity, export_onnx, read_meta

    t0 = time.time()
    messages: list[str] = []

    def say(m: str) -> None:
        messages.append(m)
        if notify:
            notify(m)

    base = load_model_package(p.model)
    meta = base.meta
    weights = Path(p.model).with_suffix(".pt")
    if meta.task != "landcover" or not weights.exists():
        raise ModelError(
            f"model {p.model} cannot be adapted: it needs its torch weights beside it ({weights.name}, a "
            "LandcoverUNet state_dict), as the shipped land-cover model has"
        )
    labelled, layer_crs = read_labels(p)
    label_map, new = match_labels(sorted({c for _g, c in labelled}), meta, say)
    if len(set(label_map.values())) < 2 and new:
        raise InputError(
            f"labels {p.labels} hold one class only ({new[0]!r}), and the model does not have it: label at least "
            "one other class beside it, so the model learns where it ends"
        )
    if len(set(label_map.values())) < 2:
        say(
            f"labels hold one class only ({next(iter(label_map.values()))}): the other classes keep the base "
            "model's answers where nothing is labelled"
        )
    names = [c.name for c in meta.classes] + new
    class_index = {v: names.index(label_map[v]) for v in label_map}
    held = spatial_holdout([g for g, _c in labelled], p.holdout)
    say(
        f"labels: {int((~held).sum())} polygons to train on, {int(held.sum())} held out (the far {p.holdout:.0%} "
        "by location)"
    )
    rng = np.random.default_rng(p.seed)
    pixel_m = p.pixel_size_m or meta.pixel_size_m
    xt, yt, xh, yh = [], [], [], []
    for path in p.inputs:  # each input is an area of its own (a plot, a tile, a scene)
        ref = reference_grid(path)
        here = on_grid(labelled, layer_crs, ref.crs, p.point_buffer_m)
        plan = plan_resampling(ref, pixel_m, "auto")
        say(f"{Path(path).name}: {plan.message()}")
        kw = {"grid": plan.model_grid, "resampling": plan.read_resampling} if plan.active else {}
        with AlignedInputs([path], meta, **kw) as inputs:
            for m in inputs.messages:
                say(m)
            for part, xs, ys in ((False, xt, yt), (True, xh, yh)):
                chosen = [gc for gc, h in zip(here, held, strict=True) if h == part]
                cx, cy = cut_chips(inputs, chosen, class_index, p.chip)
                xs += cx
                ys += cy
    xt, yt = stack_chips(xt, yt, p.max_chips, rng)
    xh, yh = stack_chips(xh, yh, p.max_chips // 4, rng)
    say(f"{len(xt)} training chips, {len(xh)} held-out chips of {p.chip} px at {pixel_m:.3g} m")
    n_train, n_hold = int((~held).sum()), int(held.sum())

    torch.manual_seed(p.seed)
    torch.set_num_threads(p.threads)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = landcover_unet_for(state, len(meta.classes))  # 3-band or RGB(+NIR) weights
    model.load_state_dict(state)
    before = iou_per_class(model, xh, yh, names, len(meta.classes))
    t_train = time.time()
    base_prob = base_probabilities(model, xt) if p.keep_base > 0 else None
    n_old = len(meta.classes)
    if new:  # more outputs: the old rows kept, the new ones start near "never"
        old = model.head
        model.head = torch.nn.Conv2d(old.in_channels, len(names), 1)
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.weight[: old.out_channels] = old.weight
            model.head.bias.fill_(float(old.bias.min()) - 2.0)
            model.head.bias[: old.out_channels] = old.bias
    enc = list(model.encoder.parameters())
    rest = [q for n, q in model.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.AdamW([{"params": enc, "lr": p.lr * 0.1}, {"params": rest, "lr": p.lr}], weight_decay=1e-4)
    budget = p.minutes * 60
    step = 0
    g = torch.Generator().manual_seed(p.seed)
    while time.time() - t_train < budget and (p.max_steps is None or step < p.max_steps):
        if cancelled and cancelled():
            raise Cancelled("cancelled by the user")
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        idx = torch.randint(0, len(xt), (p.batch,), generator=g).numpy()
        x, y = torch.from_numpy(xt[idx]), torch.from_numpy(yt[idx]).long()
        b = None if base_prob is None else torch.from_numpy(base_prob[idx]).float()
        k = int(torch.randint(0, 4, (), generator=g))
        flip = float(torch.rand((), generator=g)) < 0.5
        x, y = _d4(x, k, flip), _d4(y, k, flip)
        logits = model(x)
        ce_target = torch.where(y == NODATA, torch.full_like(y, IGNORE), y)
        loss = F.cross_entropy(logits, ce_target, ignore_index=IGNORE)
        if b is not None:
            free = y == IGNORE  # valid pixels outside every label: keep the base model's answer there
            if free.any():
                kl = F.kl_div(logits[:, :n_old].log_softmax(1), _d4(b, k, flip), reduction="none").sum(1)
                loss = loss + p.keep_base * kl[free].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if progress:
            frac = (time.time() - t_train) / budget
            if p.max_steps:
                frac = max(frac, step / p.max_steps)
            progress(min(0.95, 0.05 + 0.9 * frac), f"adapting: step {step}, loss {loss.item():.3f}")
    after = iou_per_class(model, xh, yh, names, len(names))
    minutes = round((time.time() - t0) / 60, 2)
    for n in names:
        if before.get(n) is not None or after.get(n) is not None:
            say(f"held-out IoU {n}: before {before.get(n)}, after {after.get(n)}")

    out_dir = Path(p.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = p.name or f"{meta.name}-adapted"
    onnx_path = out_dir / f"{name}.onnx"
    doc = meta_to_dict(meta)
    doc.pop("class_embeddings", None)  # recomputed below for the new class list
    old_classes = {c["name"]: c for c in doc["classes"]}
    doc["classes"] = [
        old_classes.get(
            n,
            {
                "id": i,
                "name": n,
                "color": NEW_CLASS_COLOURS[(i - len(meta.classes)) % 8],
                "description": f"added from the labels' class '{n}'",
            },
        )
        | {"id": i}  # fmt: skip
        for i, n in enumerate(names)
    ]
    doc["name"] = name
    doc["pixel_size_m"] = pixel_m
    doc["description"] = f"{meta.name} adapted to {Path(p.labels).name}; see the card"
    doc["card"] = {
        "summary": f"{meta.name} fine-tuned on {n_train} labelled polygons ({Path(p.labels).name}) for "
        f"{step} steps ({minutes} min)",
        "base_model": str(p.model),
        "data": {
            "inputs": [str(x) for x in p.inputs],
            "labels": str(p.labels),
            "class_field": p.class_field,
            "label_matches": label_map,
        },  # fmt: skip
        "recipe": {
            "steps": step,
            "batch": p.batch,
            "chip": p.chip,
            "lr": p.lr,
            "encoder_lr": p.lr * 0.1,
            "batchnorm": "frozen",
            "augmentation": "rotations, flips",
            "keep_base": p.keep_base,
            "pixel_size_m": pixel_m,
            "seed": p.seed,
        },  # fmt: skip
        "holdout": f"the far {p.holdout:.0%} of the labelled area along its longer extent ({n_hold} polygons)",
        "holdout_iou_before": before,
        "holdout_iou_after": after,
    }
    meta_path = out_dir / f".{name}.meta.json"
    meta_path.write_text(json.dumps(doc))
    meta_doc, new_meta = read_meta(meta_path)
    meta_path.unlink()
    model.eval()
    export_onnx(model, meta_doc, new_meta, onnx_path)
    check_parity(model, onnx_path, new_meta, [], size=128)
    torch.save(model.state_dict(), onnx_path.with_suffix(".pt"))
    from .class_embeddings import embed_classes

    embed_classes(onnx_path, missing_ok=True)
    if progress:
        progress(1.0, "done")
    return AdaptResult(onnx_path, names, label_map, new, step, minutes, before, after, n_train, n_hold, messages)
