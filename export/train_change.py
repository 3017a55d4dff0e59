"""Train the bi-temporal change model: ``python -m export train change`` (issue #32).

A siamese U-Net: one ImageNet EfficientNet-Lite0 encoder (the land-cover model's) sees both dates with shared
weights; at each of its five scales the absolute difference of the two dates' features goes to a U-Net decoder
that ends in a change logit at full resolution. Why this shape: shared weights put both dates in one feature
space, so a change is a difference there rather than in colour (the ImageNet features already shrug off much of a
change of light); the absolute difference is symmetric, so construction and demolition are one class and the
order of the dates does not matter; the skips keep small footprints (one house at 0.5 m). FC-Siam-diff (Daudt et
al. 2018) is the same idea on a smaller encoder.

Training pairs: export/train/change_pairs.py (synthetic changes pasted into real Dubai / Banepa / NAIP crops, and
real NAIP two-year pairs as "no change"). Never LEVIR-CD or DSIFN-CD: they only score the result
(bench/change_eval.py). Validation: synthetic pairs made from the held-out Dubai tile and the held-out NAIP city
(claremont, 2018 vs 2020: the false-change rate). The decision threshold is chosen on those, not on LEVIR/DSIFN.
Deterministic for a seed, resumable (``--resume``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .effnet_lite import DecoderBlock, Lite0Encoder, load_imagenet
from .train import change_pairs as P
from .train import landcover_data as D
from .train.loop import StepLoop, resume, save_weights

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


class SiameseChangeNet(nn.Module):
    """(before, after): (N, 3, H, W) each, normalised (x - 127) / 128 -> (N, 2, H, W) logits of "no change" (0)
    and "change"."""

    def __init__(self, decoder=(128, 64, 48, 32)):
        super().__init__()
        self.encoder = Lite0Encoder(3)
        c = self.encoder.channels
        self.dec = nn.ModuleList(
            [
                DecoderBlock(c[4], c[3], decoder[0]),
                DecoderBlock(decoder[0], c[2], decoder[1]),
                DecoderBlock(decoder[1], c[1], decoder[2]),
                DecoderBlock(decoder[2], c[0], decoder[3]),
            ]
        )
        self.head = nn.Conv2d(decoder[3], 1, 1)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        n = before.shape[0]
        feats = self.encoder(torch.cat([before, after], 0))  # one pass for both dates: shared weights
        diff = [(f[:n] - f[n:]).abs() for f in feats]
        y = diff[4]
        for block, skip in zip(self.dec, (diff[3], diff[2], diff[1], diff[0]), strict=True):
            y = block(y, skip)
        logit = F.interpolate(self.head(y), scale_factor=2.0, mode="bilinear", align_corners=False)
        return torch.cat([torch.zeros_like(logit), logit], 1)


@dataclass
class ChangeTrainParams:
    data: Path = field(default_factory=D.data_root)
    out: Path = Path("models/change_siamese_lite0.onnx")
    work: Path = Path("out/train_change")
    iterations: int = 2000  # ~2x a land-cover step (two dates through the encoder): about 100 min on 2 cores
    batch: int = 8
    crop: int = 256
    lr: float = 1e-3
    encoder_lr_mult: float = 0.3
    naip_share: float = 0.25  # of the pairs: real NAIP two-year pairs (no change); the rest synthetic
    dice_weight: float = 0.5
    seed: int = 0
    threads: int = 2
    checkpoint_every: int = 100
    resume: bool = False
    limit_images: int | None = None
    minutes: float | None = None
    device: str = "cpu"
    export: bool = True


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.0) / 128.0


def change_loss(logits: torch.Tensor, label: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """Binary cross-entropy on labelled pixels + soft Dice on the change class (changes are a few % of pixels)."""
    z = logits[:, 1] - logits[:, 0]
    valid = label != P.IGNORE
    y = (label == P.CHANGE).float()
    bce = F.binary_cross_entropy_with_logits(z[valid], y[valid]) if valid.any() else z.sum() * 0
    p = torch.sigmoid(z) * valid
    inter = (p * y).sum()
    dice = 1 - (2 * inter + 1) / (p.sum() + (y * valid).sum() + 1)
    return bce + dice_weight * dice


class PairBatches:
    def __init__(self, p: ChangeTrainParams, log=print):
        self.p = p
        self.pairs = P.ChangePairs.training(p.data, p.crop, p.limit_images, p.naip_share, log)

    def __call__(self, step: int):
        g = torch.Generator().manual_seed(self.p.seed * 1_000_003 + step)
        a, b, y = zip(*(self.pairs.pair(g) for _ in range(self.p.batch)), strict=True)
        return normalise(torch.stack(a)), normalise(torch.stack(b)), torch.stack(y)


@torch.no_grad()
def predict_pair(model: SiameseChangeNet, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Change probability (H, W) of two (3, H, W) 0..255 images."""
    ta, tb = (normalise(torch.from_numpy(np.ascontiguousarray(x)).float())[None] for x in (a, b))
    h, w = ta.shape[-2:]
    pad = (0, (-w) % 32, 0, (-h) % 32)
    z = model(F.pad(ta, pad, mode="replicate"), F.pad(tb, pad, mode="replicate"))[0, :, :h, :w]
    return torch.softmax(z, 0)[1].numpy()


def validation_pairs(data: Path, n: int = 48, size: int = 256, seed: int = 12345) -> list:
    """Synthetic pairs made from the held-out Dubai tile only (donors and backgrounds), fixed by the seed."""
    donors = [P.Donor(s.name, s.image, s.label == D.BUILDING, s.label == D.VEG) for s in D.load_dubai(data, "val")]
    pairs = P.ChangePairs(donors, [], size, naip_share=0.0)
    g = torch.Generator().manual_seed(seed)
    return [tuple(t.numpy() for t in pairs.pair(g)) for _ in range(n)]


def f1_counts(prob: np.ndarray, label: np.ndarray, t: float) -> tuple[int, int, int]:
    valid = label != P.IGNORE
    pred, truth = (prob > t) & valid, (label == P.CHANGE) & valid
    return int((pred & truth).sum()), int(pred.sum()), int(truth.sum())


def prf(tp: int, n_pred: int, n_truth: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_truth if n_truth else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def validate(model: SiameseChangeNet, data: Path, limit: int | None = None, log=print) -> dict:
    """The threshold (best F1 on the held-out synthetic pairs, with the held-out NAIP city's false change kept
    under 3 %), and the figures at it."""
    model.eval()
    val = validation_pairs(data, 8 if limit else 48)
    probs = [predict_pair(model, a, b) for a, b, _ in val]
    naip_pairs = []
    by_place: dict[int, dict] = {}  # place -> year -> chip
    for c in P.naip.chips(data, "val")[: (limit or None)]:
        by_place.setdefault(c.n, {})[c.year] = c
    for _place, years in sorted(by_place.items()):
        if 2018 in years and 2020 in years:
            a, b = (P.naip.read_chip(years[y])[:3] for y in (2018, 2020))
            naip_pairs.append(predict_pair(model, a, b))
    report: dict = {"synthetic_val_pairs": len(val), "naip_val_pairs": len(naip_pairs)}
    rows = {}
    for t in THRESHOLDS:
        counts = np.sum([f1_counts(p, y, t) for p, (_, _, y) in zip(probs, val, strict=True)], axis=0)
        false = float(np.mean([(p > t).mean() for p in naip_pairs])) if naip_pairs else 0.0
        rows[t] = {**dict(zip(("precision", "recall", "f1"), prf(*counts), strict=True)), "naip_changed": false}
        log(f"threshold {t}: synthetic val precision {rows[t]['precision']:.3f} recall {rows[t]['recall']:.3f} "
            f"F1 {rows[t]['f1']:.3f}; NAIP claremont 2018 vs 2020 changed {false:.2%}")  # fmt: skip
    ok = [t for t in THRESHOLDS if rows[t]["naip_changed"] <= 0.03] or [max(THRESHOLDS)]
    best = max(ok, key=lambda t: rows[t]["f1"])
    report.update({"threshold": best, "by_threshold": {str(t): v for t, v in rows.items()}})
    log(f"threshold {best} (best synthetic-val F1 with the held-out NAIP city's changed area <= 3 %)")
    return report


def train_change(p: ChangeTrainParams, log=print) -> dict:
    from tqdm import tqdm

    torch.manual_seed(p.seed)
    torch.set_num_threads(p.threads)
    torch.use_deterministic_algorithms(p.device == "cpu")
    p.work.mkdir(parents=True, exist_ok=True)
    model = SiameseChangeNet()
    load_imagenet(model.encoder)
    model.to(p.device)
    enc = list(model.encoder.parameters())
    rest = [q for n, q in model.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.AdamW(
        [{"params": enc, "mult": p.encoder_lr_mult}, {"params": rest, "mult": 1.0}], lr=p.lr, weight_decay=1e-4
    )
    ckpt = p.work / "last.pt"
    start = resume(ckpt, model, opt, p.device, log) if p.resume and ckpt.exists() else 0
    batches = PairBatches(p, log)
    bar = tqdm(range(start, p.iterations), initial=start, total=p.iterations, desc="train change", mininterval=5)
    loop = StepLoop(model, opt, ckpt, p.iterations, p.checkpoint_every, p.minutes, bar)
    for step in bar:
        model.train()
        for m in model.encoder.modules():  # ImageNet's statistics, as the land-cover model keeps them
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        warm = min(1.0, (step + 1) / 100)
        cos = 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * step / p.iterations))
        for group in opt.param_groups:
            group["lr"] = p.lr * warm * cos * group["mult"]
        a, b, y = (t.to(p.device) for t in batches(step))
        done, stop = loop.step(step, change_loss(model(a, b), y, p.dice_weight))
        if stop:
            log(f"stopped after {p.minutes} min at step {done}; continue with --resume")
            return {"stopped_at": done}
    save_weights(model, p.work / "model.pt")
    report: dict = {
        "params": {k: str(v) for k, v in asdict(p).items()},
        "train_minutes": round((time.time() - loop.t0) / 60, 1),
    }
    report.update(validate(model, p.data, p.limit_images, log))
    (p.work / "report.json").write_text(json.dumps(report, indent=1))
    return report
