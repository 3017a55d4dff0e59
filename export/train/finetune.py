"""Fine-tuning a trained model on a few chips of new imagery within a time budget (``engine adapt``, issue #28):
batch-norm statistics re-estimated on that imagery (AdaBN), class-balanced chip sampling, a warm-up + cosine
learning rate over the budget (by the clock, or by steps when a step count is given), light augmentation, and
the best state on the held-out chips kept (stop when it stops improving).

Why these: a model trained in one city carries that city's feature statistics in its batch norms; on other
imagery every layer sees shifted inputs, and a few hundred steps of gradient descent cannot undo that as well
as recomputing the statistics does (Li et al. 2016, AdaBN). Labels are few and uneven (a dozen building polygons
against one large "background" one): chips are drawn so that each class gets the same share of draws. The
learning rate has to be high to move the map in minutes, and decay to zero by the end so the last state is a
settled one. Everything here is measured in bench/adapt_eval.py (table in MODEL_CARD.md).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .adapt_recipe import Recipe
from .loop import WeightAverage

IGNORE = 255  # labels: valid pixels outside every polygon (the base model's answer is kept there)
NODATA = 254  # labels: the raster has no data here (nothing learned)


def _bn_layers(model: torch.nn.Module, encoder: bool = True) -> list[torch.nn.BatchNorm2d]:
    """The batch norms (``encoder`` False: those outside the encoder, i.e. the decoder's)."""
    return [m for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and (encoder or not n.startswith("encoder."))]  # fmt: skip


@torch.no_grad()
def adapt_batchnorm(model: torch.nn.Module, chips: np.ndarray, batch: int = 8, encoder: bool = True) -> int:
    """AdaBN: batch-norm running mean/variance recomputed (a cumulative average) over ``chips`` of the target
    imagery (``encoder`` False: the decoder's only; the shipped models were trained with the encoder's
    statistics frozen at ImageNet's). Returns the number of chips seen."""
    layers = _bn_layers(model, encoder)
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every chip counts the same
    model.eval()
    for m in layers:
        m.train()
    for i in range(0, len(chips), batch):
        model(torch.from_numpy(chips[i : i + batch]))
    for m, mom in zip(layers, saved, strict=True):
        m.momentum = mom
    model.eval()
    return len(chips)


def set_train_mode(model: torch.nn.Module, batchnorm: str) -> None:
    """train: as the shipped models were trained (encoder statistics frozen, the decoder's learned from the
    batches); otherwise (frozen, or statistics from AdaBN) every batch norm keeps its statistics."""
    model.train()
    for m in _bn_layers(model, encoder=batchnorm != "train"):
        m.eval()


def chip_weights(y: np.ndarray, n_classes: int, balance: bool) -> np.ndarray:
    """Sampling probability per chip: uniform, or each class's pixels get the same total weight (a chip with the
    only few pixels of a rare class is drawn as often as all chips of the common one together)."""
    if not balance:
        return np.full(len(y), 1.0 / len(y))
    counts = np.stack([np.bincount(c.ravel(), minlength=256)[:n_classes] for c in y]).astype(np.float64)
    total = counts.sum(0)
    present = total > 0
    w = (counts[:, present] / total[present]).sum(1)
    w = 0.5 * w / w.sum() + 0.5 / len(y)  # half balanced, half uniform: common classes still seen in context
    return w / w.sum()


def class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """Cross-entropy weights 1 / sqrt(share of the labelled pixels), mean 1 over the labelled classes: a class
    with 2 % of the pixels (a few meadows among forest) counts about 5x, not 50x (which would paint it
    everywhere)."""
    counts = np.bincount(y.ravel(), minlength=256)[:n_classes].astype(np.float64)
    w = np.ones(n_classes)
    present = counts > 0
    w[present] = 1 / np.sqrt(counts[present] / counts[present].sum())
    w[present] /= w[present].mean()
    return torch.tensor(w, dtype=torch.float32)


def lr_factor(frac: float, warmup: float) -> float:
    if frac < warmup:
        return max(0.05, frac / warmup)
    t = (frac - warmup) / max(1e-6, 1 - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def d4(t: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Rotate by k x 90 degrees and maybe flip the last two axes (images, labels, probabilities alike)."""
    t = t.rot90(k, (-2, -1))
    return t.flip(-1) if flip else t


@torch.no_grad()
def probabilities(model: torch.nn.Module, x: np.ndarray, batch: int = 4) -> np.ndarray:
    """Class probabilities (float16) of ``model`` on chips, computed once."""
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i : i + batch])).softmax(1).half().numpy()
                           for i in range(0, len(x), batch)])  # fmt: skip


@torch.no_grad()
def iou_per_class(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, names: list[str]) -> dict[str, float | None]:
    """IoU per class on labelled pixels (classes without a labelled pixel: None)."""
    inter = np.zeros(len(names))
    union = np.zeros(len(names))
    model.eval()
    for i in range(0, len(x), 4):
        pred = model(torch.from_numpy(x[i : i + 4])).argmax(1).numpy()
        t = y[i : i + 4]
        ok = t < len(names)
        for k in range(len(names)):
            p_k, t_k = (pred == k) & ok, (t == k) & ok
            inter[k] += (p_k & t_k).sum()
            union[k] += (p_k | t_k).sum()
    present = {k for k in range(len(names)) if (y == k).any()}
    return {n: (round(float(inter[k] / union[k]), 4) if k in present and union[k] else None)
            for k, n in enumerate(names)}  # fmt: skip


def mean_iou(iou: dict[str, float | None]) -> float:
    vals = [v for v in iou.values() if v is not None]
    return float(np.mean(vals)) if vals else 0.0


@dataclass
class FineTuneResult:
    steps: int
    best_step: int
    checks: list[tuple[int, float]]  # (step, held-out mIoU)
    stopped_early: bool


def fine_tune(
    model: torch.nn.Module,
    xt: np.ndarray,
    yt: np.ndarray,
    recipe: Recipe,
    *,
    groups: np.ndarray,  # (n_out, n_base) 0/1: which base class each output class belongs to (keep_base)
    base_prob: np.ndarray | None,
    holdout: tuple[np.ndarray, np.ndarray, list[str]] | None,
    seconds: float,
    max_steps: int | None,
    seed: int,
    progress: Callable[[float, str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    start_score: float | None = None,  # the hold-out mIoU of the model as given, when the caller measured it
) -> FineTuneResult:
    """Train ``model`` in place; with a hold-out, the best checked state is loaded at the end."""
    from engine.errors import Cancelled

    n_out = groups.shape[0]
    enc = list(model.encoder.parameters())
    rest = [q for n, q in model.named_parameters() if not n.startswith("encoder.")]
    groups_ = [{"params": rest, "lr": recipe.lr}]
    if recipe.encoder_lr > 0:
        groups_.append({"params": enc, "lr": recipe.lr * recipe.encoder_lr})
    for q in enc:  # a frozen encoder is not back-propagated through at all: steps twice as fast
        q.requires_grad_(recipe.encoder_lr > 0)
    opt = torch.optim.AdamW(groups_, weight_decay=recipe.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    probs = chip_weights(yt, n_out, recipe.balance)
    weight = class_weights(yt, n_out) if recipe.class_weights else None
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    grp = torch.from_numpy(groups.astype(np.float32))
    t0 = time.time()

    def frac_done(step: int) -> float:
        if max_steps is not None:
            return step / max(1, max_steps)
        return (time.time() - t0) / max(1e-6, seconds)

    average = WeightAverage(model, recipe.ema) if recipe.ema > 0 else None

    def scored() -> float:  # the held-out mIoU of the averaged weights when they are kept, else the current ones
        if average is None:
            return mean_iou(iou_per_class(model, *holdout))
        live = copy.deepcopy(model.state_dict())
        average.copy_to(model)
        score = mean_iou(iou_per_class(model, *holdout))
        model.load_state_dict(live)
        return score

    def current_state() -> dict:
        return copy.deepcopy(average.state if average is not None else model.state_dict())

    checks: list[tuple[int, float]] = []
    best_score, best_state, best_step, since = -1.0, None, 0, 0
    if holdout is not None and recipe.evals:
        best_score = mean_iou(iou_per_class(model, *holdout)) if start_score is None else start_score
        best_state, best_step = copy.deepcopy(model.state_dict()), 0
        checks.append((0, round(best_score, 4)))
    next_check = 1
    step, stopped = 0, False
    while frac_done(step) < 1.0:
        if cancelled and cancelled():
            raise Cancelled("cancelled by the user")
        f = lr_factor(frac_done(step), recipe.warmup)
        for group, lr in zip(opt.param_groups, base_lrs, strict=True):
            group["lr"] = lr * f
        set_train_mode(model, recipe.batchnorm)
        idx = rng.choice(len(xt), recipe.batch, p=probs)
        x, y = torch.from_numpy(xt[idx]), torch.from_numpy(yt[idx]).long()
        if recipe.jitter:
            gain = 1 + recipe.jitter * (2 * torch.rand((len(idx), 1, 1, 1), generator=g) - 1)
            off = recipe.jitter * 0.5 * (2 * torch.rand((len(idx), 1, 1, 1), generator=g) - 1)
            x = x * gain + off
        k = int(torch.randint(0, 4, (), generator=g))
        flip = float(torch.rand((), generator=g)) < 0.5
        x, y = d4(x, k, flip), d4(y, k, flip)
        logits = model(x)
        target = torch.where(y == NODATA, torch.full_like(y, IGNORE), y)
        if (target != IGNORE).any():
            loss = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
        else:
            loss = logits.sum() * 0
        if base_prob is not None and recipe.keep_base > 0:
            free = y == IGNORE  # valid pixels outside every label: keep the base model's answer there
            if free.any():
                b = d4(torch.from_numpy(base_prob[idx]).float(), k, flip)
                # Output classes summed into the base class they come from (new subclasses of "vegetation"
                # count as vegetation). Classes of their own count as none and are not renormalised away: mass
                # moved to them where nothing is labelled is penalised (else "trees" spreads over the ground).
                logp = torch.einsum("nkhw,kb->nbhw", logits.softmax(1), grp).clamp_min(1e-6).log()
                kl = F.kl_div(logp, b, reduction="none").sum(1)
                loss = loss + recipe.keep_base * kl[free].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if average is not None:
            average.update(model)
        step += 1
        frac = min(1.0, frac_done(step))
        if progress:
            progress(frac, f"adapting: step {step}, loss {loss.item():.3f}")
        if holdout is not None and recipe.evals and frac >= next_check / (recipe.evals + 1):
            next_check = int(frac * (recipe.evals + 1)) + 1
            score = scored()
            checks.append((step, round(score, 4)))
            if score > best_score:
                best_score, best_state, best_step, since = score, current_state(), step, 0
            else:
                since += 1
                if recipe.patience and since >= recipe.patience:
                    stopped = True
                    break
    for q in enc:
        q.requires_grad_(True)
    if holdout is not None and recipe.evals:
        score = scored()
        checks.append((step, round(score, 4)))
        if score >= best_score:
            best_state, best_step = current_state(), step
        model.load_state_dict(best_state)
    else:
        best_step = step
        if average is not None:
            average.copy_to(model)
    model.eval()
    return FineTuneResult(step, best_step, checks, stopped)


def entropy_step_tent(model: torch.nn.Module, chips: np.ndarray, steps: int, lr: float, seed: int) -> int:
    """TENT (Wang et al. 2021): minimise the prediction entropy on unlabelled chips, updating only the batch
    norms' affine parameters (statistics from the batch). Returns the steps done."""
    params = [q for m in _bn_layers(model) for q in (m.weight, m.bias) if q is not None]
    for q in model.parameters():
        q.requires_grad_(False)
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        model.train()
        idx = rng.choice(len(chips), min(4, len(chips)), replace=False)
        p = model(torch.from_numpy(chips[idx])).softmax(1)
        loss = -(p * p.clamp_min(1e-6).log()).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for q in model.parameters():
        q.requires_grad_(True)
    model.eval()
    return steps
