"""Train the shipped land-cover model: ``python -m export train landcover``.

Recipe (MODEL_CARD.md has the numbers): U-Net on the ImageNet EfficientNet-Lite0 encoder, 5 classes, trained at
0.5 m on the Dubai labels (6 of 7 tiles) plus weak labels from the tree data (crowns = vegetation, bare ground
away from crowns = bare land, OAM-TCD non-canopy = "not vegetation"), random scale 0.6-1.6x, strong photometric
augmentation, AdamW with warm-up and cosine decay, encoder batch-norm statistics frozen (ImageNet's: re-estimated
on the training mix they fit it and carry worse to the held-out tile and to other sites, measured in MODEL_CARD.md).
Deterministic for a seed (the batch of step k depends only on the seed and k, so a resumed run is the same run).
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

from engine.errors import InputError

from .effnet_lite import NIR_CHANNELS, LandcoverUNet, load_imagenet
from .train import banepa, naip
from .train import landcover_checks as C
from .train import landcover_data as D
from .train.augment import crop_scaled, flip_rotate, nir_jitter, photometric
from .train.loop import StepLoop, WeightAverage, resume, save_weights


@dataclass
class TrainParams:
    data: Path = field(default_factory=D.data_root)
    # The RGB package of this recipe's weights is not the shipped RGB default (it loses NEON: MODEL_CARD.md), so it
    # is written beside the run; the RGB + NIR package is the shipped one. The RGB default (v1) is made by
    # --no-nir --naip-per-batch 0 --banepa-per-batch 0 --weak-per-batch 2 --iterations 1800 --out models/...
    out: Path = Path("out/train_landcover/landcover_unet_lite0.onnx")
    out_rgbn: Path = Path("models/landcover_rgbn_unet_lite0.onnx")  # the same weights, NIR fed (with --nir)
    work: Path = Path("out/train_landcover")  # checkpoints and logs
    iterations: int = 4000
    batch: int = 8
    crop: int = 256
    weak_per_batch: int = 1  # of each batch, crops from the weak-label tree data
    naip_per_batch: int = 2  # of each batch, 2 x 2 mosaics of NAIP chips with NDVI labels (training cities)
    banepa_per_batch: int = 1  # of each batch, crops of the Banepa mosaic (buildings / "not building")
    nir: bool = True  # 5 input channels (RGB, NIR, NIR present): one net for the RGB and the RGB+NIR package
    nir_dropout: float = 0.5  # share of NAIP crops whose NIR is withheld (what the RGB package sees)
    lr: float = 1e-3
    encoder_lr_mult: float = 0.3  # the ImageNet encoder's learning rate relative to the decoder's
    box_shrink: float = D.BOX_SHRINK
    photometric_p: float = 1.0  # share of crops that get the photometric augmentation
    balanced: bool = False  # class weights ~ 1/sqrt(frequency in the Dubai training labels)
    weight_decay: float = 1e-4
    lovasz: float = 0.0  # weight of the Lovász-softmax term (a surrogate of the per-class IoU) on labelled pixels
    average: float = 0.0  # decay of an exponential moving average of the weights (0: none); the average is shipped
    encoder_bn: str = "frozen"  # the encoder's batch-norm statistics: ImageNet's ("frozen") or re-estimated ("train")
    warmup: int = 100
    seed: int = 0
    threads: int = 2
    checkpoint_every: int = 100
    eval_every: int = 1000
    resume: bool = False
    limit_images: int | None = None  # smoke tests: only this many images per source
    minutes: float | None = None  # stop (and checkpoint) after this wall time; resume continues the same run
    export: bool = True
    device: str = "cpu"  # the shipped model is trained on the CPU; "cuda" for recipe experiments
    workers: int = 0  # processes preparing batches (batch k depends only on seed and k: same batches)

    def __post_init__(self) -> None:
        # One line naming the parameter, before any data is loaded (the U-Net halves a crop five times).
        if self.crop < 32 or self.crop % 32:
            raise InputError(f"--crop must be a multiple of 32 (the encoder's stride), not {self.crop}")
        extra = self.weak_per_batch + self.naip_per_batch + self.banepa_per_batch
        parts = (self.weak_per_batch, self.naip_per_batch, self.banepa_per_batch)
        if self.batch < 1 or min(parts) < 0 or extra > self.batch:
            raise InputError(
                f"--batch must be at least 1 and --weak-per-batch + --naip-per-batch + --banepa-per-batch between 0 "
                f"and it (got {self.batch} and {extra})"
            )
        if not 0 <= self.nir_dropout <= 1:
            raise InputError(f"--nir-dropout must be a share in [0, 1], not {self.nir_dropout}")
        if self.encoder_bn not in ("frozen", "train"):
            raise InputError(f"--encoder-bn must be frozen or train, not {self.encoder_bn!r}")
        if not 0 <= self.average < 1:
            raise InputError(f"--average must be a decay in [0, 1) (0: no average), not {self.average}")
        if self.lovasz < 0:
            raise InputError(f"--lovasz must be a weight of at least 0, not {self.lovasz}")


def pad32(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % 32, (-w) % 32
    return F.pad(x, (0, pw, 0, ph), mode="replicate"), h, w


@torch.no_grad()
def predict_torch(model: LandcoverUNet, image: np.ndarray, tile: int = 512) -> np.ndarray:
    """(3, H, W) uint8 (or 4: red, green, blue, NIR, for a 5-channel net) at the model's pixel size -> (H, W) class
    ids (tiles of ``tile`` px, no blending: evaluation only; the engine does the real thing)."""
    dev = next(model.parameters()).device
    x = (torch.from_numpy(image).float().to(dev) - 127.0) / 128.0
    h, w = x.shape[-2:]
    out = torch.zeros((model.head.out_channels, h, w), device=dev)
    step = tile - 64
    for r in range(0, max(1, h - 64), step):
        for c in range(0, max(1, w - 64), step):
            r0, c0 = min(r, max(0, h - tile)), min(c, max(0, w - tile))
            patch, ph, pw = pad32(x[:, r0 : r0 + tile, c0 : c0 + tile][None])
            out[:, r0 : r0 + ph, c0 : c0 + pw] = model(patch)[0, :, :ph, :pw].softmax(0)
    return out.argmax(0).cpu().numpy().astype(np.uint8)


class Batches:
    """Batch k = f(seed, k): crops from Dubai and from the weak-label sources, augmented."""

    def __init__(self, params: TrainParams, log=print):
        t = time.time()
        self.p = params
        self.dubai = D.load_dubai(params.data, "train", params.limit_images)
        self.weak = D.load_tree_plots(params.data, params.limit_images, params.box_shrink)
        self.oam = [] if params.limit_images else D.load_oam_tcd(params.data)
        self.naip = naip.load_naip(params.data, "train", params.limit_images) if params.naip_per_batch else []
        self.banepa = banepa.load_banepa(params.data, "train") if params.banepa_per_batch else []
        self.dubai_w = np.array([s.label.size for s in self.dubai], np.float64)
        self.dubai_w /= self.dubai_w.sum()
        log(
            f"data: {len(self.dubai)} Dubai images, {len(self.weak)} tree plots, {len(self.oam)} OAM-TCD tiles, "
            f"{len(self.naip)} NAIP chips ({', '.join(c for c in naip.CITIES if c != naip.VAL_CITY)}), "
            f"{len(self.banepa)} Banepa mosaic at {D.MODEL_PIXEL_M} m ({time.time() - t:.0f} s)"
        )

    def _mosaic(self, g: torch.Generator, n: int = 5, pool: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n x n samples of ``pool`` (tree plots: 80 px each at 0.5 m) side by side, each flipped/rotated."""
        pool = self.weak if pool is None else pool
        rows = []
        for _ in range(n):
            row_i, row_l = [], []
            for _ in range(n):
                s = pool[int(torch.randint(0, len(pool), (), generator=g))]
                img, lab = flip_rotate(torch.from_numpy(s.image).float(), torch.from_numpy(s.label), g)
                size = min(img.shape[1], img.shape[2])
                row_i.append(img[:, :size, :size])
                row_l.append(lab[:size, :size])
            hh = min(t.shape[1] for t in row_i)
            rows.append((torch.cat([t[:, :hh] for t in row_i], 2), torch.cat([t[:hh] for t in row_l], 1)))
        ww = min(r[0].shape[2] for r in rows)
        return torch.cat([r[0][:, :, :ww] for r in rows], 1), torch.cat([r[1][:, :ww] for r in rows], 0)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.p.seed * 1_000_003 + step)
        imgs, labs = [], []
        p = self.p
        n_dubai = p.batch - p.weak_per_batch - p.naip_per_batch - p.banepa_per_batch
        for i in range(p.batch):
            weak = i >= p.batch - p.weak_per_batch
            source = "naip" if n_dubai <= i < n_dubai + p.naip_per_batch else "dubai"
            if n_dubai + p.naip_per_batch <= i < n_dubai + p.naip_per_batch + p.banepa_per_batch:
                source = "banepa"
            if source == "naip":
                image, label = self._mosaic(g, 2, self.naip)
            elif source == "banepa":
                s = self.banepa[0]
                image, label = torch.from_numpy(s.image).float(), torch.from_numpy(s.label)
            elif weak and self.oam and _bern(g, 0.25):
                s = self.oam[0]
                image, label = torch.from_numpy(s.image).float(), torch.from_numpy(s.label)
            elif weak:
                image, label = self._mosaic(g)
            else:
                k = int(torch.multinomial(torch.from_numpy(self.dubai_w), 1, generator=g))
                s = self.dubai[k]
                image, label = torch.from_numpy(s.image).float(), torch.from_numpy(s.label)
            scale = math.exp(float(torch.empty(()).uniform_(math.log(0.6), math.log(1.6), generator=g)))
            img, lab = crop_scaled(image, label, self.p.crop, scale, g, D.IGNORE)
            img, lab = flip_rotate(img, lab, g)
            rgb = photometric(img[:3], g) if _bern(g, self.p.photometric_p) else img[:3]
            imgs.append(self._channels(rgb, img[3:], g))
            labs.append(lab)
        x = torch.stack(imgs)
        return x, torch.stack(labs).long()

    def _channels(self, rgb: torch.Tensor, nir: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The normalised input of one crop: RGB, or with --nir RGB + NIR + "NIR present" (NIR withheld on
        --nir-dropout of the crops that have it, and zero with the flag 0 on those that never have it)."""
        x = (rgb - 127.0) / 128.0
        if not self.p.nir:
            return x
        have = len(nir) > 0 and not _bern(g, self.p.nir_dropout)
        if not have:
            return torch.cat([x, torch.zeros_like(x[:2])], 0)
        n = nir_jitter(nir, g)
        return torch.cat([x, (n - 127.0) / 128.0, torch.ones_like(x[:1])], 0)


def _averaged_miou(model: LandcoverUNet, average: WeightAverage, p: TrainParams) -> float:
    shadow = LandcoverUNet(len(D.CLASSES), in_channels=model.in_channels).to(p.device)
    average.copy_to(shadow)
    return evaluate_dubai(shadow, p.data, limit=p.limit_images)["miou"]


class _StepBatches(torch.utils.data.Dataset):
    """Batches start..end as a dataset, so DataLoader workers can prepare them ahead."""

    def __init__(self, batches: Batches, start: int, end: int):
        self.batches, self.start, self.end = batches, start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, i: int):
        return self.batches(self.start + i)


def _bern(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g)) < p


def loss_fn(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy on the 5 classes plus, for each partial label ("not vegetation", "not building"),
    -log(1 - p(the class it rules out))."""
    from .train.weak_labels import PARTIAL

    partial = target >= len(D.CLASSES)
    ce_target = torch.where(partial, torch.full_like(target, D.IGNORE), target)
    n_full = (ce_target != D.IGNORE).sum()
    ce = F.cross_entropy(logits, ce_target, weight=weight, ignore_index=D.IGNORE, reduction="sum")
    nv, n_neg = torch.zeros((), device=logits.device), 0
    probs = None
    for code, cls in PARTIAL.items():
        neg = target == code
        if neg.any():
            probs = logits.softmax(1) if probs is None else probs
            nv = nv - torch.log1p(-probs[:, cls][neg].clamp(max=1 - 1e-4)).sum()
            n_neg = n_neg + neg.sum()
    return (ce + nv) / (n_full + n_neg).clamp(min=1)


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax (Berman et al. 2018) over the fully labelled pixels of the batch, averaged over the classes
    present: cross-entropy rewards confident pixels, this rewards the IoU the card reports, which weighs a
    class's boundary errors by the class's size."""
    n_cls = logits.shape[1]
    keep = target < n_cls  # not ignored, not a partial "not vegetation" label
    if not keep.any():
        return torch.zeros((), device=logits.device)
    probs = logits.softmax(1).permute(0, 2, 3, 1)[keep]  # (P, C)
    labels = target[keep]
    losses = []
    for c in range(n_cls):
        fg = (labels == c).float()
        if fg.sum() == 0:
            continue
        errors, order = torch.sort((fg - probs[:, c]).abs(), descending=True)
        fg_sorted = fg[order]
        inter = fg_sorted.sum() - fg_sorted.cumsum(0)
        union = fg_sorted.sum() + (1 - fg_sorted).cumsum(0)
        jaccard = 1 - inter / union
        grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(errors, grad))
    return torch.stack(losses).mean()


def set_encoder_bn_eval(model: LandcoverUNet) -> None:
    for m in model.encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def lr_at(p: TrainParams, step: int) -> float:
    if step < p.warmup:
        return p.lr * (step + 1) / p.warmup
    t = (step - p.warmup) / max(1, p.iterations - p.warmup)
    return p.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def train(p: TrainParams, log=print) -> dict:
    from tqdm import tqdm

    torch.manual_seed(p.seed)
    torch.set_num_threads(p.threads)
    torch.use_deterministic_algorithms(p.device == "cpu")  # CUDA upsampling backward has no deterministic kernel
    p.work.mkdir(parents=True, exist_ok=True)
    model = LandcoverUNet(len(D.CLASSES), in_channels=NIR_CHANNELS if p.nir else 3)
    counts = load_imagenet(model.encoder)
    model.to(p.device)
    log(
        f"encoder: ImageNet EfficientNet-Lite0, {counts['loaded']} tensors loaded exactly "
        f"({counts['unused']} unused: head)"
    )
    enc = list(model.encoder.parameters())
    rest = [q for n, q in model.named_parameters() if not n.startswith("encoder.")]
    groups = [{"params": enc, "mult": p.encoder_lr_mult}, {"params": rest, "mult": 1.0}]
    opt = torch.optim.AdamW(groups, lr=p.lr, weight_decay=p.weight_decay)
    average = WeightAverage(model, p.average) if p.average else None
    ckpt = p.work / "last.pt"
    start = resume(ckpt, model, opt, p.device, log, average) if p.resume and ckpt.exists() else 0
    batches = Batches(p, log)
    weight = None
    if p.balanced:
        freq = np.bincount(np.concatenate([s.label.ravel() for s in batches.dubai]), minlength=256)[: len(D.CLASSES)]
        w = 1 / np.sqrt(freq / freq.sum())
        weight = torch.tensor(w / w.mean(), dtype=torch.float32, device=p.device)
        log("class weights: " + ", ".join(f"{c} {v:.2f}" for c, v in zip(D.CLASSES, weight.tolist(), strict=True)))
    history = []
    loader = torch.utils.data.DataLoader(
        _StepBatches(batches, start, p.iterations),
        batch_size=None,
        num_workers=p.workers,
        prefetch_factor=4 if p.workers else None,
    )
    bar = tqdm(loader, initial=start, total=p.iterations, desc="train landcover", mininterval=5)
    loop = StepLoop(model, opt, ckpt, p.iterations, p.checkpoint_every, p.minutes, bar, average)
    for step, (x, y) in enumerate(bar, start):
        model.train()
        if p.encoder_bn == "frozen":
            set_encoder_bn_eval(model)
        for group in opt.param_groups:
            group["lr"] = lr_at(p, step) * group["mult"]
        x, y = x.to(p.device), y.to(p.device)
        logits = model(x)
        loss = loss_fn(logits, y, weight)
        if p.lovasz:
            loss = loss + p.lovasz * lovasz_softmax(logits, y)
        done, stop = loop.step(step, loss)
        if done % p.eval_every == 0 and done < p.iterations:
            m = evaluate_dubai(model, p.data, limit=p.limit_images)
            history.append({"step": done, "dubai_miou": m["miou"]})
            line = f"step {done}: loss {loop.running:.3f}, Dubai val mIoU {m['miou']:.3f}"
            if average is not None:
                history[-1]["dubai_miou_average"] = _averaged_miou(model, average, p)
                line += f" (weight average {history[-1]['dubai_miou_average']:.3f})"
            log(line)
        if stop:
            log(f"stopped after {p.minutes} min at step {done}; continue with --resume")
            return {"stopped_at": done}
    minutes = (time.time() - loop.t0) / 60
    report = {"params": {k: str(v) for k, v in asdict(p).items()}, "train_minutes": round(minutes, 1)}
    report["history"] = history
    predict = lambda img: predict_torch(model.eval(), img)  # noqa: E731 (the model's weights as they are now)
    if average is not None:  # the last weights are reported beside the shipped average
        save_weights(model, p.work / "model_last_weights.pt")
        report["last_weights"] = run_checks(predict, p.data, p.limit_images, log, p.nir)
        average.copy_to(model)
        log("the weight average (shipped):")
    save_weights(model, p.work / "model.pt")
    report.update(run_checks(predict, p.data, p.limit_images, log, p.nir))
    (p.work / "report.json").write_text(json.dumps(report, indent=1))
    log(f"report: {p.work / 'report.json'}")
    if p.export:
        from .landcover_package import export_landcover

        export_landcover(p.work / "model.pt", p.out, p.data, log=log)
        if p.nir:
            export_landcover(p.work / "model.pt", p.out_rgbn, p.data, log=log, nir=True)
    return report


# --- checks ----------------------------------------------------------------------------------------------------


def confusion(pred: np.ndarray, truth: np.ndarray, n: int) -> np.ndarray:
    ok = truth < n
    return np.bincount(n * truth[ok].astype(np.int64) + pred[ok], minlength=n * n).reshape(n, n)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1) - tp
    return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)


def evaluate_dubai(model_or_predict, data: Path, pixel_factor: float = 1.0, limit: int | None = None) -> dict:
    """Validation tiles: per-class IoU, mIoU, confusion matrix (rows truth, columns prediction), scored on the
    label grid. ``pixel_factor`` 2 = the imagery resampled to double the pixel size before inference."""
    predict = model_or_predict
    if isinstance(model_or_predict, torch.nn.Module):
        model_or_predict.eval()
        predict = lambda img: predict_torch(model_or_predict, img)  # noqa: E731
    n = len(D.CLASSES)
    cm = np.zeros((n, n), np.int64)
    for jpg, png in D.dubai_files(data, "val")[:limit]:
        rgb, truth = D._read_rgb(jpg), D.dubai_mask(png)
        if pixel_factor != 1.0:  # the same ground seen by a coarser or finer sensor
            rgb, _ = D.resize(rgb, None, 1 / pixel_factor)
        pred = predict_at(predict, rgb, D.DUBAI_PIXEL_M * pixel_factor, truth.shape)
        cm += confusion(pred, truth, n)
    iou = iou_from_confusion(cm)
    return {
        "iou": dict(zip(D.CLASSES, iou.round(4).tolist(), strict=True)),
        "miou": float(np.nanmean(iou)),
        "confusion": cm.tolist(),
    }


predict_at = C.predict_at  # one resampling rule for every check


def neon_vegetation_shares(predict, data: Path, limit: int | None = None) -> dict:
    """Share of pixels classed vegetation inside the tree boxes and outside them, per held-out site."""
    acc: dict[str, list[int]] = {}
    for site, rgb_path, xml, _chm in D.neon_plots(data, "val")[:limit]:
        rgb, _ = D.read_plot(rgb_path, None)
        inside = D.box_mask(rgb.shape[1:], D.voc_boxes(xml))
        veg = predict_at(predict, rgb, D.NEON_PIXEL_M, rgb.shape[1:]) == D.VEG
        a = acc.setdefault(site, [0, 0, 0, 0])
        a[0] += int((veg & inside).sum())
        a[1] += int(inside.sum())
        a[2] += int((veg & ~inside).sum())
        a[3] += int((~inside).sum())
    return {s: {"inside": a[0] / max(1, a[1]), "outside": a[2] / max(1, a[3])} for s, a in acc.items()}


def kampala_building_iou(predict, data: Path) -> float:
    img, mask, _ = D.kampala_mosaic(data, 21)
    pred = predict_at(predict, img, D.web_mercator_pixel_m(21), mask.shape) == D.BUILDING
    ok = mask != D.IGNORE
    truth = mask == 1
    inter = int((pred & truth & ok).sum())
    union = int(((pred | truth) & ok).sum())
    return inter / max(1, union)


def run_checks(predict, data: Path, limit: int | None = None, log=print, nir: bool = False) -> dict:
    out = {"dubai_val": evaluate_dubai(predict, data, limit=limit)}
    log(format_dubai(out["dubai_val"], "Dubai validation (tile " + ", ".join(D.DUBAI_VAL_TILES) + ")"))
    for bands in (3, 4) if nir else (3,):
        key = "naip_val" if bands == 3 else "naip_val_rgbn"
        out[key] = C.naip_city(predict, data, bands, limit=limit)
        log(C.format_naip(out[key], f"NAIP {naip.VAL_CITY} (held-out city), {'RGB + NIR' if bands == 4 else 'RGB'}"))
    out["banepa_building_iou"] = C.banepa_building_iou(predict, data)
    log(f"Banepa (held-out column) building IoU {out['banepa_building_iou']:.3f}")
    if limit:
        return out
    for f in (0.5, 2.0):
        out[f"dubai_val_pixel_x{f}"] = evaluate_dubai(predict, data, pixel_factor=f)
        log(format_dubai(out[f"dubai_val_pixel_x{f}"], f"Dubai validation, pixel size x{f}"))
    out["neon_vegetation"] = neon_vegetation_shares(predict, data)
    for site, v in out["neon_vegetation"].items():
        log(f"NEON {site} (held-out plots): vegetation inside tree boxes {v['inside']:.3f}, outside {v['outside']:.3f}")
    out["kampala_building_iou"] = kampala_building_iou(predict, data)
    log(f"Kampala (z21 mosaic, check only) building IoU {out['kampala_building_iou']:.3f}")
    return out


def format_dubai(m: dict, title: str) -> str:
    per = ", ".join(f"{k} {v:.3f}" for k, v in m["iou"].items())
    return f"{title}: mIoU {m['miou']:.3f} ({per})"
