"""Checks of a land-cover model on the held-out parts of the new sources (issue #27): the NAIP city never trained
on (vegetation against NDVI, tree points on vegetation, the share of each class) and the held-out Banepa column
(building IoU). ``predict`` is any callable (C, H, W) uint8 at 0.5 m -> (H, W) class ids, C = 3 (RGB) or 4 (RGB
+ NIR), as for the other checks in train_landcover.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import banepa, naip
from .landcover_data import BUILDING, CLASSES, IGNORE, MODEL_PIXEL_M, VEG, resize


def predict_at(predict, img: np.ndarray, pixel_m: float, out_shape: tuple[int, int]) -> np.ndarray:
    """Resample to the model's pixel size, predict, and bring the classes back to ``out_shape`` (nearest): what the
    engine's --resample auto does."""
    x, _ = resize(img, None, pixel_m / MODEL_PIXEL_M)
    pred = torch.from_numpy(predict(x))[None, None].float()
    return F.interpolate(pred, size=out_shape, mode="nearest")[0, 0].byte().numpy()


def naip_city(predict, data: Path, bands: int = 3, limit: int | None = None) -> dict:
    """The held-out city: vegetation IoU against NDVI (> 0.3 vegetation, < 0.1 not, between ignored), the share
    of annotated tree points that fall on vegetation, and the share of the map in each class."""
    inter = union = hits = n_points = 0
    shares = np.zeros(len(CLASSES), np.int64)
    for chip in naip.chips(data, "val")[:limit]:
        img = naip.read_chip(chip)
        pred = predict_at(predict, img[:bands], naip.NAIP_PIXEL_M, img.shape[1:])
        truth = naip.vegetation_truth(img)
        ok = truth != 255
        veg, t = (pred == VEG) & ok, (truth == 1) & ok
        inter += int((veg & t).sum())
        union += int((veg | t).sum())
        pts = naip.tree_points(chip)
        if len(pts):
            c = np.clip(pts[:, 0].astype(int), 0, pred.shape[1] - 1)
            r = np.clip(pts[:, 1].astype(int), 0, pred.shape[0] - 1)
            hits += int((pred[r, c] == VEG).sum())
            n_points += len(pts)
        shares += np.bincount(pred.ravel(), minlength=len(CLASSES))[: len(CLASSES)]
    return {
        "city": naip.VAL_CITY,
        "vegetation_iou": inter / max(1, union),
        "tree_points_on_vegetation": hits / max(1, n_points),
        "class_shares": dict(zip(CLASSES, (shares / max(1, shares.sum())).round(4).tolist(), strict=True)),
    }


def banepa_building_iou(predict, data: Path) -> float:
    """The held-out Banepa column, at the model's pixel size (the mosaic is made there)."""
    samples = banepa.load_banepa(data, "val")
    inter = union = 0
    for s in samples:
        pred = predict(s.image) == BUILDING
        ok = s.label != IGNORE
        truth = s.label == BUILDING
        inter += int((pred & truth & ok).sum())
        union += int(((pred | truth) & ok).sum())
    return inter / max(1, union)


def format_naip(m: dict, title: str) -> str:
    shares = ", ".join(f"{k} {v:.2f}" for k, v in m["class_shares"].items())
    return (
        f"{title}: vegetation IoU vs NDVI {m['vegetation_iou']:.3f}, tree points on vegetation "
        f"{m['tree_points_on_vegetation']:.3f}; map shares {shares}"
    )
