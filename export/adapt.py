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

import contextlib
import copy
import json
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from engine.errors import InputError, LandSegError, ModelError, OutputError
from engine.jobs.common import describe_os_error, exception_chain
from engine.model_choice import choose_landcover_model
from engine.model_package import load_model_package, meta_to_dict
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
    sample_chips,
    spatial_holdout,
    stack_chips,
)
from .train.adapt_recipe import BATCHNORM, Recipe

MATCH = ("meaning", "names")
FREE_LAYERS = ("decoder", "all")

NEW_CLASS_COLOURS = ("#6a3d9a", "#ff7f00", "#b15928", "#cab2d6", "#fb9a99", "#ffff99", "#a6cee3", "#33a02c")


@dataclass
class AdaptParams:
    inputs: list[Path]
    out_dir: Path
    labels: Path | None = None  # required, unless label_free_experiment
    # Label-free adaptation (batch-norm statistics of the inputs, optionally TENT) lowered every check it was
    # measured on (MODEL_CARD.md): not offered to analysts; bench/adapt_eval.py --label-free runs it.
    label_free_experiment: bool = False
    class_field: str = "class"
    model: Path | None = None  # None: the shipped land-cover model (its RGB + NIR version where inputs have NIR)
    minutes: float = 5.0  # the whole run: reading, training, checks, writing
    max_steps: int | None = None  # steps instead of the clock (tests, benches: the same result on any machine)
    holdout: float = 0.2  # share of the labelled area held out, by location
    point_buffer_m: float = 2.0  # points become discs of this radius
    chip: int = 256
    seed: int = 0
    threads: int = 2
    name: str | None = None  # default: <base name>-adapted
    max_chips: int = 400
    # The adapted model's pixel size: None = the base model's; a number (m) = train (and later run) at that size,
    # e.g. the analyst's finer imagery, where the base model's grid merges small objects.
    pixel_size_m: float | None = None
    match: str = "meaning"  # label values -> classes: by name, then by meaning ("meaning"), or by name only
    tent_steps: int = 0  # label-free: entropy-minimisation steps after the statistics (TENT; 0: none)
    # label-free: whose batch-norm statistics are re-estimated: the decoder's (trained on the base model's
    # imagery) or every layer's (the encoder's are ImageNet's, which its weights expect)
    free_layers: str = "decoder"
    recipe: Recipe = field(default_factory=Recipe)


OPTIONS = (
    Option("inputs", "--input", "Raster(s)", "raster(s) labelled", short="-i", widget="rasters", name="INPUT"),
    Option("labels", "--labels", "Labelled polygons or points", "labelled polygons or points (GeoPackage, ...)",
           widget="vector"),
    Option("class_field", "--class-field", "Class field", "the labels' class field (default: %(default)s)",
           widget="field", parent="LABELS"),
    Option("model", "--model", "Base model (empty: the shipped land-cover model)", "base model (default: the "
           "shipped land-cover model, its RGB + NIR version where the inputs have a NIR band)", widget="model",
           file_filter="ONNX (*.onnx)"),
    Option("minutes", "--minutes", "Time budget (minutes)", "time budget of the whole run (default: %(default)s)",
           minimum=0.1),
    Option("max_steps", "--max-steps", "Stop after this many steps", "train this many steps instead of by the "
           "clock (reproducible on any machine)", processing=False),
    Option("holdout", "--holdout", "Share of the labels held out (by location)",
           "share of the labels held out by location (default: %(default)s)", minimum=0.05, maximum=0.9,
           advanced=True),
    Option("name", "--name", "New model's name (empty: <base>-adapted)", "new model's name (default: "
           "<base>-adapted)", advanced=True),
    Option("pixel_size_m", "--pixel-size", "New model's pixel size, m (0: the base model's)", "train (and later "
           "run) the new model at this pixel size in m (default: the base model's)", unset=0, minimum=0,
           name="PIXEL_SIZE"),
    Option("match", "--match", "Match label values to classes", "label values -> classes: by name then meaning, "
           "or by name only (other values become new classes; default: %(default)s)", choices=MATCH,
           advanced=True),
    Option("recipe.keep_base", "--keep-base", "Weight towards the base model's answer on unlabelled pixels",
           "weight pulling unlabelled pixels towards the base model's answer (default: %(default)s; 0 = ignore "
           "them)", minimum=0, advanced=True),
    Option("recipe.lr", "--lr", "Learning rate", "peak learning rate of the decoder (default: %(default)s)",
           minimum=0, advanced=True),
    Option("recipe.batchnorm", "--batchnorm", "Batch-norm statistics", "adabn: re-estimated on the inputs, "
           "frozen: the base model's, train: learned (default: %(default)s)", choices=BATCHNORM, advanced=True),
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
    picture: Path | None = None  # the held-out chips: image | before | after | labels
    checks: list = field(default_factory=list)  # (step, held-out mIoU) during training
    best_step: int = 0

    def lines(self) -> list[str]:
        return [f"adapted model: {self.model} ({self.steps} steps, {self.minutes} min)",
                f"held-out IoU before: {self.holdout_iou_before}", f"after: {self.holdout_iou_after}"]  # fmt: skip

    def to_json(self) -> str:
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()})


def _torch():
    try:
        import torch
    except ImportError:
        raise InputError(
            "adapting a model needs the training extra (torch): run `make dev`, or "
            "`.venv/bin/pip install -c constraints.txt -r requirements-export.txt`"
        ) from None
    return torch


def _base_model(p: AdaptParams, say) -> Path:
    if p.model is not None:
        return Path(p.model)
    choice = choose_landcover_model(list(p.inputs[:1]), None, {})
    if choice.message:
        say(choice.message)
    return choice.model


def _read_chips(p: AdaptParams, meta, pixel_m: float, say, per_input) -> None:
    """Open every input on the new model's grid and hand it to ``per_input(path, inputs)``."""
    for path in p.inputs:  # each input is an area of its own (a plot, a tile, a scene)
        ref = reference_grid(path)
        plan = plan_resampling(ref, pixel_m, "auto")
        say(f"{Path(path).name}: {plan.message()}")
        kw = {"grid": plan.model_grid, "resampling": plan.read_resampling} if plan.active else {}
        with AlignedInputs([path], meta, **kw) as inputs:
            for m in inputs.messages:
                say(m)
            per_input(path, inputs)


def run_adapt(p: AdaptParams, progress=None, cancelled=None, notify=None) -> AdaptResult:
    torch = _torch()
    from .effnet_lite import landcover_unet_for
    from .train.finetune import adapt_batchnorm, fine_tune, iou_per_class, mean_iou, probabilities

    t0 = time.time()
    budget = p.minutes * 60
    messages: list[str] = []

    def say(m: str) -> None:
        messages.append(m)
        if notify:
            notify(m)

    if p.recipe.batchnorm not in BATCHNORM:
        raise InputError(f"--batchnorm must be one of {', '.join(BATCHNORM)}, not {p.recipe.batchnorm!r}")
    if p.match not in MATCH:
        raise InputError(f"--match must be one of {', '.join(MATCH)}, not {p.match!r}")
    model_path = _base_model(p, say)
    base = load_model_package(model_path)
    meta = base.meta
    weights = model_path.with_suffix(".pt")
    if meta.task != "landcover" or not weights.exists():
        raise ModelError(
            f"model {model_path} cannot be adapted: it needs its torch weights beside it ({weights.name}, a "
            "LandcoverUNet state_dict), as the shipped land-cover models have"
        )
    pixel_m = p.pixel_size_m or meta.pixel_size_m
    rng = np.random.default_rng(p.seed)
    torch.manual_seed(p.seed)
    torch.set_num_threads(p.threads)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = landcover_unet_for(state, len(meta.classes))  # 3-band or RGB(+NIR) weights
    model.load_state_dict(state)
    if p.labels is None and not p.label_free_experiment:
        raise InputError(
            "adapting needs --labels (labelled polygons or points): label-free adaptation (the batch-norm "
            "statistics of the inputs) lowered the map's accuracy on every check it was measured on "
            "(MODEL_CARD.md, 'Label-free adaptation'), so it is not offered"
        )
    if p.labels is None:
        return _label_free(p, model, meta, model_path, pixel_m, rng, say, messages, t0, progress)

    labelled, layer_crs = read_labels(p)
    label_map, new_parent = match_labels(sorted({c for _g, c in labelled}), meta, say, p.match == "meaning")
    new = sorted(new_parent)
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
    # Split by location in the first raster's CRS (metres, usually), not the layer's: in degrees, longitude
    # and latitude are not the same length and the areas that weigh the split are not areas.
    first_crs = reference_grid(p.inputs[0]).crs
    held = spatial_holdout([g for g, _c in on_grid(labelled, layer_crs, first_crs, p.point_buffer_m)], p.holdout)
    say(
        f"labels: {int((~held).sum())} polygons to train on, {int(held.sum())} held out (the far {p.holdout:.0%} "
        "by location)"
    )
    xt, yt, xh, yh = [], [], [], []

    def cut(path, inputs):
        here = on_grid(labelled, layer_crs, inputs.grid.crs, p.point_buffer_m)
        for part, xs, ys in ((False, xt, yt), (True, xh, yh)):
            chosen = [gc for gc, h in zip(here, held, strict=True) if h == part]
            if chosen:
                cx, cy = cut_chips(inputs, chosen, class_index, p.chip)
                xs += cx
                ys += cy

    _read_chips(p, meta, pixel_m, say, cut)
    xt, yt = stack_chips(xt, yt, p.max_chips, rng)
    xh, yh = stack_chips(xh, yh, p.max_chips // 4, rng)
    say(f"{len(xt)} training chips, {len(xh)} held-out chips of {p.chip} px at {pixel_m:.3g} m")
    n_train, n_hold = int((~held).sum()), int(held.sum())
    n_old = len(meta.classes)
    before = iou_per_class(model, xh, yh, names)
    shown = np.sort(np.argsort(-(yh < NODATA).sum((1, 2)), kind="stable")[:PICTURE_CHIPS])  # most labelled
    pred_before = _predict(model, xh[shown])
    # One labelled class: the held-out check is that class's recall, blind to it spreading over everything
    # else, so it chooses nothing (no AdaBN by it, no best state: the last one is kept), and the steps are
    # gentler (batch norm frozen, lr x 0.3): at the full rate the tree boxes of 5 NEON plots turned 49 % of the
    # open ground of 4 others into vegetation (base 28 %), against 34 % this way (tests/test_adapt.py).
    one_class = len(set(label_map.values())) < 2
    train_bn = "frozen" if one_class and p.recipe.batchnorm == "auto" else p.recipe.batchnorm
    if one_class:
        say("one labelled class: the held-out labels are reported, not used to choose the batch norms or the "
            "state; batch norm frozen, learning rate x 0.3")  # fmt: skip
    start_score = None  # the held-out check of the state training starts from, once measured here
    if train_bn in ("auto", "adabn"):
        kept = copy.deepcopy(model.state_dict())
        base_check = mean_iou(iou_per_class(model, xh[:CHECK_CHIPS], yh[:CHECK_CHIPS], names))
        n = adapt_batchnorm(model, np.concatenate([xt, xh]))
        adabn_check = mean_iou(iou_per_class(model, xh[:CHECK_CHIPS], yh[:CHECK_CHIPS], names))
        start_score = adabn_check
        if p.recipe.batchnorm == "auto" and adabn_check < base_check:
            model.load_state_dict(kept)
            train_bn, start_score = "train", base_check
            say(f"batch-norm statistics of the inputs (AdaBN) lowered the held-out mIoU ({base_check:.3f} -> "
                f"{adabn_check:.3f}): the base model's kept, learned from the batches as in its training")  # fmt: skip
        else:
            train_bn = "frozen"
            say(f"batch-norm statistics re-estimated on {n} chips of the inputs (AdaBN; held-out mIoU "
                f"{base_check:.3f} -> {adabn_check:.3f}), then frozen")  # fmt: skip
    base_prob = probabilities(model, xt) if p.recipe.keep_base > 0 else None
    groups = np.zeros((len(names), n_old), np.float32)
    groups[np.arange(n_old), np.arange(n_old)] = 1
    for v in new:
        if new_parent[v]:
            groups[names.index(v), names.index(new_parent[v])] = 1
    if new:  # more outputs: the old rows kept, the new ones start near "never" (or as the class they refine)
        old = model.head
        model.head = torch.nn.Conv2d(old.in_channels, len(names), 1)
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.weight[:n_old] = old.weight
            model.head.bias.fill_(float(old.bias.min()) - 2.0)
            model.head.bias[:n_old] = old.bias
            for v in new:
                if new_parent[v]:
                    k, j = names.index(v), names.index(new_parent[v])
                    model.head.weight[k] = old.weight[j]
                    model.head.bias[k] = old.bias[j] - 1.0
    spent = time.time() - t0
    seconds = max(0.2 * budget, budget - spent - EXPORT_SECONDS)
    check = None if one_class else (xh[:CHECK_CHIPS], yh[:CHECK_CHIPS], names)

    def prog(frac, msg):
        if progress:
            progress(min(0.95, 0.05 + 0.9 * frac), msg)

    recipe_used = replace(p.recipe, batchnorm=train_bn, lr=p.recipe.lr * (ONE_CLASS_LR if one_class else 1.0))
    res = fine_tune(model, xt, yt, recipe_used, groups=groups, base_prob=base_prob, holdout=check, seconds=seconds,
                    max_steps=p.max_steps, seed=p.seed, progress=prog, cancelled=cancelled,
                    start_score=start_score)  # fmt: skip
    if res.stopped_early:
        say(f"stopped at step {res.steps}: the held-out IoU stopped improving")
    if res.best_step != res.steps:
        say(f"kept the state of step {res.best_step}, the best on the held-out labels")
    after = iou_per_class(model, xh, yh, names)
    for n in names:
        if before.get(n) is not None or after.get(n) is not None:
            say(f"held-out IoU {n}: before {before.get(n)}, after {after.get(n)}")
    if mean_iou(after) < mean_iou(before):
        say("the adapted model is worse than the base model on the held-out labels: more labels, or labels closer "
            "to the held-out area, will help; the base model stays the better choice there")  # fmt: skip
    out_dir = Path(p.out_dir)
    name = p.name or f"{meta.name}-adapted"
    picture = out_dir / f"{name}_holdout.png"
    minutes = round((time.time() - t0) / 60, 2)
    recipe = asdict(p.recipe) | {"batchnorm_used": train_bn, "steps": res.steps, "best_step": res.best_step,
                                 "chip": p.chip, "pixel_size_m": pixel_m, "seed": p.seed,
                                 "augmentation": f"rotations, flips, gain/offset jitter {p.recipe.jitter}"}  # fmt: skip
    card = {
        "summary": f"{meta.name} fine-tuned on {n_train} labelled polygons ({Path(p.labels).name}) for "
        f"{res.steps} steps ({minutes} min)",
        "data": {"inputs": [str(x) for x in p.inputs], "labels": str(p.labels), "class_field": p.class_field,
                 "label_matches": label_map, "new_classes": {v: new_parent[v] or None for v in new}},
        "recipe": recipe,
        "holdout": f"the far {p.holdout:.0%} of the labelled area along its longer extent ({n_hold} polygons); "
        "also used to keep the best state",
        "holdout_iou_before": before,
        "holdout_iou_after": after,
        "holdout_checks": res.checks,
        "holdout_picture": picture.name,
    }  # fmt: skip
    with package_writes(out_dir, name):
        holdout_picture(picture, xh[shown], yh[shown], pred_before, _predict(model, xh[shown]), meta, names)
        onnx_path = _write_package(model, meta, model_path, names, name, pixel_m, out_dir, card, Path(p.labels).name)
    say(f"held-out picture (image | before | after | labels): {picture}")
    if progress:
        progress(1.0, "done")
    return AdaptResult(onnx_path, names, label_map, new, res.steps, minutes, before, after, n_train, n_hold, messages,
                       picture, res.checks, res.best_step)  # fmt: skip


PICTURE_CHIPS = 3
ONE_CLASS_LR = 0.3  # labels of one class: the learning rate's share
CHECK_CHIPS = 48  # held-out chips of the checks during training (all of them for the figures before/after)
EXPORT_SECONDS = 20  # kept from the budget for the export and parity check


def _predict(model, x: np.ndarray) -> np.ndarray:
    torch = _torch()
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i : i + 1])).argmax(1).numpy() for i in range(len(x))])


def holdout_picture(path: Path, x, y, before, after, meta, names) -> None:
    """Rows of held-out chips: image | before | after | labels (unlabelled: white; no data: black in all)."""
    from PIL import Image, ImageColor

    colours = [ImageColor.getrgb(c.color) for c in meta.classes] + [
        ImageColor.getrgb(NEW_CLASS_COLOURS[i % 8]) for i in range(len(names) - len(meta.classes))
    ]
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(colours)] = colours
    lut[IGNORE] = 255
    lut[NODATA] = 0
    rows = []
    for i in range(len(x)):
        off = y[i] == NODATA
        rgb = np.clip(x[i][:3] * 128 + 127, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        rgb[off] = 0
        b, a = lut[before[i]], lut[after[i]]
        b[off] = a[off] = 0
        gap = np.full((rgb.shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([rgb, gap, b, gap, a, gap, lut[y[i]]], 1))
    Image.fromarray(np.concatenate(rows, 0) if rows else np.zeros((8, 8, 3), np.uint8)).save(path)


@contextlib.contextmanager
def package_writes(out_dir: Path, name: str):
    """The new package's files appear whole or not at all: on any failure the files of this package (and the
    folder, when this run made it) are removed, and a write error (a full disk) is one line, exit 4."""
    made = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out_dir}: {describe_os_error(exc, out_dir.parent)}") from None
    before = set(out_dir.iterdir())
    try:
        yield
    except BaseException as exc:
        for f in set(out_dir.iterdir()) - before:
            f.unlink(missing_ok=True)
        if made:
            shutil.rmtree(out_dir, ignore_errors=True)
        # export_onnx's ExportError carries the OSError that stopped it as its context
        os_error = any(isinstance(e, OSError) for e in exception_chain(exc))
        if isinstance(exc, LandSegError) and not os_error:
            raise
        if os_error or "writ" in str(exc).lower():  # torch.save: "PytorchStreamWriter failed ..."
            why = describe_os_error(exc, out_dir)
            raise OutputError(f"writing the model package in {out_dir} failed: {why}") from None
        raise


def _write_package(model, meta, model_path, names, name, pixel_m, out_dir, card, source) -> Path:
    torch = _torch()
    from .class_embeddings import embed_classes
    from .landcover_package import RgbnInputs
    from .torch_export import check_parity, export_onnx, read_meta

    onnx_path = out_dir / f"{name}.onnx"
    doc = meta_to_dict(meta)
    doc.pop("class_embeddings", None)  # recomputed below for the new class list
    old_classes = {c["name"]: c for c in doc["classes"]}
    doc["classes"] = [
        old_classes.get(n, {"id": i, "name": n, "color": NEW_CLASS_COLOURS[(i - len(meta.classes)) % 8],
                            "description": f"added from the labels' class '{n}'"}) | {"id": i}
        for i, n in enumerate(names)
    ]  # fmt: skip
    doc["name"] = name
    doc["pixel_size_m"] = pixel_m
    doc["description"] = f"{meta.name} adapted to {source}; see the card"
    doc["card"] = {"base_model": str(model_path), **card}
    meta_path = out_dir / f".{name}.meta.json"
    meta_path.write_text(json.dumps(doc))
    meta_doc, new_meta = read_meta(meta_path)
    meta_path.unlink()
    model.eval()
    graph = RgbnInputs(model).eval() if len(new_meta.inputs) > 1 else model
    with warnings.catch_warnings():  # torch.onnx's notes on constant folding mean nothing to an analyst
        warnings.simplefilter("ignore", UserWarning)
        export_onnx(graph, meta_doc, new_meta, onnx_path)
    check_parity(graph, onnx_path, new_meta, [], size=128)
    torch.save(model.state_dict(), onnx_path.with_suffix(".pt"))
    embed_classes(onnx_path, missing_ok=True)
    return onnx_path


def _label_free(p, model, meta, model_path, pixel_m, rng, say, messages, t0, progress) -> AdaptResult:
    """No labels: the batch-norm statistics re-estimated on chips of the inputs (AdaBN), then optionally TENT."""
    from .train.finetune import adapt_batchnorm, entropy_step_tent

    chips: list[np.ndarray] = []
    per = max(1, p.max_chips // len(p.inputs))
    _read_chips(p, meta, pixel_m, say, lambda _path, inputs: chips.extend(sample_chips(inputs, per, p.chip, rng)))
    if not chips:
        raise InputError("no chip of the input raster(s) has valid data for label-free adaptation")
    x = np.stack(chips)
    if p.free_layers not in FREE_LAYERS:
        raise InputError(f"--free-layers must be one of {', '.join(FREE_LAYERS)}, not {p.free_layers!r}")
    n = adapt_batchnorm(model, x, encoder=p.free_layers == "all")
    say(f"label-free: the {p.free_layers} batch-norm statistics re-estimated on {n} chips of the inputs (AdaBN)")
    if p.tent_steps:
        entropy_step_tent(model, x, p.tent_steps, 1e-4, p.seed)
        say(f"label-free: {p.tent_steps} entropy-minimisation steps (TENT) on the batch norms' scales and shifts")
    out_dir = Path(p.out_dir)
    name = p.name or f"{meta.name}-adapted"
    minutes = round((time.time() - t0) / 60, 2)
    source = ", ".join(Path(i).name for i in p.inputs)
    card = {
        "summary": f"{meta.name} with batch-norm statistics from {n} chips of {source}"
        " (label-free adaptation, AdaBN" + (f" + {p.tent_steps} TENT steps)" if p.tent_steps else ")"),
        "data": {"inputs": [str(i) for i in p.inputs], "labels": None},
        "recipe": {"label_free": "adabn" + ("+tent" if p.tent_steps else ""), "layers": p.free_layers,
                   "chips": n, "chip": p.chip,
                   "tent_steps": p.tent_steps, "pixel_size_m": pixel_m, "seed": p.seed},
    }  # fmt: skip
    names = [c.name for c in meta.classes]
    with package_writes(out_dir, name):
        onnx_path = _write_package(model, meta, model_path, names, name, pixel_m, out_dir, card, source)
    if progress:
        progress(1.0, "done")
    return AdaptResult(onnx_path, names, {}, [], p.tent_steps, minutes, {}, {}, 0, 0, messages)
