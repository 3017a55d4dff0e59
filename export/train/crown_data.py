"""Training data of the tree-crown detector at two scales: NEON forest plots at 0.1 m (crowns as boxes, a CHM at
TEAK) and NAIP urban chips at 0.6 m (red, green, blue, NIR; every tree a point, no crown size).

What each source teaches (issue #31):
- NEON boxes: crown centres and crown sizes, at 0.1 m and, downsampled from mosaics of plots, at any pixel size up
  to 0.6 m, so the size head knows crowns of a few pixels too.
- NAIP points: crown centres only (the heat map; the size loss is masked out there). A NAIP crown's size is the
  size head's, learned from the NEON boxes seen at NAIP's pixel size: no NIR/green-extent rule is guessed.
Splits: NEON as the land-cover model's (SJER every 4th plot id, TEAK_057/061, SOAP never trained on); NAIP: the
land-cover model's held-out city (claremont, all years) is the test set and is only reported; every
NAIP_TUNE_EVERY-th place of the training cities (all its years) is held back to choose the score threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import landcover_data as D
from . import naip
from .augment import nir_jitter, photometric

NEON_PIXEL_M = 0.1
NAIP_PIXEL_M = naip.NAIP_PIXEL_M
PIXEL_RANGE_M = (NEON_PIXEL_M, NAIP_PIXEL_M)  # what the model is trained on; declared in its metadata
STRIDE = 4
CHM_SCALE = 10.0  # metres per input unit
NAIP_TUNE_EVERY = 10  # places n % 10 == 0 of the training cities: the threshold is chosen on them
POINT_SIGMA = 1.0  # heat-map sigma (stride cells, 2.4 m at 0.6 m) of a tree known only as a point
MOSAIC_CELL = 200  # px at 0.1 m: the piece of a plot each cell of a coarse-scale mosaic shows
BANDS = ("red", "green", "blue", "chm", "chm_missing", "nir", "nir_missing")  # the detector's input, in order


@dataclass
class Plot:
    name: str
    site: str
    rgb: np.ndarray  # (3, H, W) uint8
    chm: np.ndarray | None  # (H, W) metres
    boxes: np.ndarray  # (n, 4) x0 y0 x1 y1 px; (0, 4) for a NAIP chip
    nir: np.ndarray | None = None  # (H, W) uint8 (NAIP)
    points: np.ndarray | None = None  # (n, 2) x y px: centres without a size (NAIP)
    pixel_m: float = NEON_PIXEL_M


def load_plots(root, split: str, limit: int | None = None) -> list[Plot]:
    """NEON plots of a split ("train" or "val", as the land-cover model's)."""
    out = []
    for site, rgb_path, xml, chm_path in D.neon_plots(root, split)[:limit]:
        rgb, chm = D.read_plot(rgb_path, chm_path)
        out.append(Plot(f"{site}/{rgb_path.parent.name}/{rgb_path.stem}", site, rgb, chm, D.voc_boxes(xml)))
    return out


def load_naip(root, split: str, limit: int | None = None) -> list[Plot]:
    """NAIP chips with their tree points: "train", "tune" (held back from the training cities) or "test" (the
    held-out city)."""
    chips = naip.chips(root, "val" if split == "test" else "train")
    if split != "test":
        chips = [c for c in chips if (c.n % NAIP_TUNE_EVERY == 0) == (split == "tune")]
    out = []
    for c in chips[:limit]:
        img = naip.read_chip(c)
        out.append(Plot(f"naip/{c.path.stem}", c.city, img[:3], None, np.zeros((0, 4), np.float32), img[3],
                        naip.tree_points(c), NAIP_PIXEL_M))  # fmt: skip
    return out


def make_input(rgb, chm, nir=None) -> torch.Tensor:
    """(7, H, W) in BANDS' order: RGB (x - 127) / 128, CHM / 10 m, CHM missing, NIR (x - 127) / 128, NIR missing."""
    rgb = torch.as_tensor(rgb).float()
    x = (rgb - 127.0) / 128.0
    zero, one = torch.zeros(x.shape[1:]), torch.ones(x.shape[1:])
    c = [torch.as_tensor(chm).float() / CHM_SCALE, zero] if chm is not None else [zero, one]
    n = [(torch.as_tensor(nir).float() - 127.0) / 128.0, zero] if nir is not None else [zero, one]
    return torch.cat([x, torch.stack(c + n)], 0)


def targets(boxes: np.ndarray, points: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian centre heat map (1, s, s), log sizes (2, s, s) and their mask at stride 4; points mark centres
    (sigma POINT_SIGMA) with no size."""
    s = size // STRIDE
    heat = np.zeros((s, s), np.float32)
    wh = np.zeros((2, s, s), np.float32)
    mask = np.zeros((s, s), np.float32)
    yy, xx = np.mgrid[0:s, 0:s]

    def mark(cx: float, cy: float, sigma: float) -> tuple[int, int] | None:
        nonlocal heat
        ix, iy = int(cx), int(cy)
        if not (0 <= ix < s and 0 <= iy < s):
            return None
        heat = np.maximum(heat, np.exp(-((xx - cx + 0.5) ** 2 + (yy - cy + 0.5) ** 2) / (2 * sigma**2)))
        heat[iy, ix] = 1.0
        return ix, iy

    for x0, y0, x1, y1 in boxes:
        w, h = x1 - x0, y1 - y0
        if w < 2 or h < 2:
            continue
        at = mark((x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE, max(0.8, min(w, h) / STRIDE / 6))
        if at is not None:
            wh[:, at[1], at[0]] = np.log([w, h])
            mask[at[1], at[0]] = 1.0
    for x, y in points:
        mark(x / STRIDE, y / STRIDE, POINT_SIGMA)
    return torch.from_numpy(heat)[None], torch.from_numpy(wh), torch.from_numpy(mask)


def transform_boxes(boxes: np.ndarray, k: int, flip: bool, size: int) -> np.ndarray:
    """Boxes after torch.rot90(k, dims=(1, 2)) then a horizontal flip, on a size x size crop."""
    b = boxes.copy()
    for _ in range(k % 4):  # rot90 counter-clockwise: (x, y) -> (y, size - x)
        x0, y0, x1, y1 = b.T
        b = np.stack([y0, size - x1, y1, size - x0], 1)
    if flip:
        x0, y0, x1, y1 = b.T
        b = np.stack([size - x1, y0, size - x0, y1], 1)
    return b


def transform_points(points: np.ndarray, k: int, flip: bool, size: int) -> np.ndarray:
    """Points (x, y) after the same rotation and flip (a point is a box of no size)."""
    b = transform_boxes(np.concatenate([points, points], 1), k, flip, size)
    return b[:, :2]


def _crop_boxes(boxes: np.ndarray, r: int, c: int, h: int, w: int, keep: float = 0.5) -> np.ndarray:
    """Boxes in a crop's pixels, clipped to it; a box keeps its place if at least ``keep`` of it is inside."""
    b = boxes - [c, r, c, r]
    clipped = np.stack([b[:, 0].clip(0, w), b[:, 1].clip(0, h), b[:, 2].clip(0, w), b[:, 3].clip(0, h)], 1)
    area = lambda x: (x[:, 2] - x[:, 0]).clip(0) * (x[:, 3] - x[:, 1]).clip(0)  # noqa: E731
    inside = area(clipped) >= keep * np.maximum(area(b), 1e-6)
    return clipped[inside & (area(clipped) > 0)].reshape(-1, 4)


def _randint(g: torch.Generator, n: int) -> int:
    return int(torch.randint(0, max(1, n), (), generator=g))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


class CrownBatches:
    """Batch k of a run, from (seed, k) alone (deterministic, resumable): ``naip_per_batch`` NAIP chips (pixel
    size jittered 0.5-0.7 m, NIR withheld on ``nir_drop`` of them), the rest NEON crops, ``coarse`` of them
    mosaics of one site's plots downsampled to a pixel size between 0.15 and 0.6 m (log-uniform), the others at
    0.1 m. The CHM (TEAK) is withheld on ``chm_drop`` of the crops that have one."""

    def __init__(self, p, log=print):
        self.p = p
        self.plots = load_plots(p.data, "train", p.limit_images)
        self.by_site: dict[str, list[Plot]] = {}
        for q in self.plots:
            self.by_site.setdefault(q.site, []).append(q)
        self.naip = load_naip(p.data, "train", p.limit_images) if p.naip_per_batch else []
        log(f"data: {len(self.plots)} NEON training plots ({sum(len(q.boxes) for q in self.plots)} tree boxes), "
            f"{len(self.naip)} NAIP chips ({sum(len(q.points) for q in self.naip)} tree points)")  # fmt: skip

    def __call__(self, step: int):
        g = torch.Generator().manual_seed(self.p.seed * 1_000_003 + step)
        items = []
        for i in range(self.p.batch):
            if i < self.p.naip_per_batch and self.naip:
                items.append(self._naip(g))
            else:
                items.append(self._neon(g))
        s = self.p.crop
        xs, heats, whs, masks = [], [], [], []
        for rgb, chm, nir, boxes, points in items:
            k = _randint(g, 4)
            flip = float(torch.rand((), generator=g)) < 0.5
            extra = [t for t in (chm, nir) if t is not None]
            stack = torch.rot90(torch.cat([rgb, *(t[None] for t in extra)]), k, (1, 2))
            if flip:
                stack = stack.flip(2)
            rgb = photometric(stack[:3], g, strength=0.7)
            j = 3
            if chm is not None:
                chm, j = stack[j], j + 1
            if nir is not None:
                nir = nir_jitter(stack[j], g)
            xs.append(make_input(rgb, chm, nir))
            ht, wh, m = targets(transform_boxes(boxes, k, flip, s), transform_points(points, k, flip, s), s)
            heats.append(ht)
            whs.append(wh)
            masks.append(m)
        return torch.stack(xs), torch.stack(heats), torch.stack(whs), torch.stack(masks)

    def _neon(self, g: torch.Generator):
        """(rgb, chm or None, None, boxes, no points) of a NEON crop at 0.1 m or a coarser mosaic."""
        s = self.p.crop
        q = self.plots[_randint(g, len(self.plots))]
        use_chm = q.chm is not None and float(torch.rand((), generator=g)) >= self.p.chm_drop
        if float(torch.rand((), generator=g)) >= self.p.coarse:
            r, c = _randint(g, q.rgb.shape[1] - s + 1), _randint(g, q.rgb.shape[2] - s + 1)
            rgb = torch.from_numpy(q.rgb[:, r : r + s, c : c + s]).float()
            chm = torch.from_numpy(q.chm[r : r + s, c : c + s]).float() if use_chm else None
            pad = (0, s - rgb.shape[2], 0, s - rgb.shape[1])
            rgb = F.pad(rgb, pad)
            chm = F.pad(chm, pad) if chm is not None else None
            return rgb, chm, None, _crop_boxes(q.boxes, r, c, s, s), np.zeros((0, 2), np.float32)
        factor = math.exp(_uniform(g, math.log(1.5), math.log(NAIP_PIXEL_M / NEON_PIXEL_M)))
        src = round(s * factor)
        n = math.ceil(src / MOSAIC_CELL)
        cell = MOSAIC_CELL
        rgb = np.zeros((3, n * cell, n * cell), np.uint8)
        chm = np.zeros((n * cell, n * cell), np.float32) if use_chm else None
        boxes = []
        site = self.by_site[q.site]
        for a in range(n):
            for b in range(n):
                p = site[_randint(g, len(site))]
                r, c = _randint(g, p.rgb.shape[1] - cell + 1), _randint(g, p.rgb.shape[2] - cell + 1)
                piece = p.rgb[:, r : r + cell, c : c + cell]
                rgb[:, a * cell : a * cell + piece.shape[1], b * cell : b * cell + piece.shape[2]] = piece
                if chm is not None:
                    hp = p.chm[r : r + cell, c : c + cell]
                    chm[a * cell : a * cell + hp.shape[0], b * cell : b * cell + hp.shape[1]] = hp
                bx = _crop_boxes(p.boxes, r, c, piece.shape[1], piece.shape[2])
                boxes.append(bx + [b * cell, a * cell, b * cell, a * cell])
        boxes = np.concatenate(boxes)
        boxes = _crop_boxes(boxes, 0, 0, src, src) * (s / src)
        t = torch.from_numpy(rgb[:, :src, :src]).float()[None]
        rgb_t = F.interpolate(t, size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0]
        chm_t = None
        if chm is not None:
            ct = torch.from_numpy(chm[:src, :src])[None, None]
            chm_t = F.interpolate(ct, size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0, 0]
        return rgb_t, chm_t, None, boxes.astype(np.float32), np.zeros((0, 2), np.float32)

    def _naip(self, g: torch.Generator):
        """(rgb, None, nir or None, no boxes, points) of a NAIP chip, its pixel size jittered 0.5-0.7 m."""
        s = self.p.crop
        q = self.naip[_randint(g, len(self.naip))]
        scale = math.exp(_uniform(g, math.log(0.85), math.log(1.2)))
        img = torch.from_numpy(np.concatenate([q.rgb, q.nir[None]])).float()[None]
        size = max(8, round(img.shape[-1] * scale))
        img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=scale < 1, align_corners=False)[0]
        pts = q.points * (size / q.rgb.shape[-1])
        r, c = _randint(g, size - s + 1), _randint(g, size - s + 1)
        img = img[:, r : r + s, c : c + s]
        img = F.pad(img, (0, s - img.shape[2], 0, s - img.shape[1]))
        pts = pts - [c, r]
        pts = pts[(pts[:, 0] >= 0) & (pts[:, 1] >= 0) & (pts[:, 0] < s) & (pts[:, 1] < s)]
        nir = img[3] if float(torch.rand((), generator=g)) >= self.p.nir_drop else None
        return img[:3], None, nir, np.zeros((0, 4), np.float32), pts.astype(np.float32)
