"""Training pairs for the bi-temporal change model (issue #32), made without any change-detection dataset.

LEVIR-CD and DSIFN-CD may not train a shipped model, so changes are made the way HySCDG makes them: by editing
real images. Every pair is two "dates" of one real background crop at 0.5 m:

- synthetic changes: buildings (from the Dubai labels and the Banepa OSM outlines) or vegetation patches (Dubai's
  vegetation class, NAIP's NDVI > 0.4) cut from another crop with their masks and pasted onto the background, with
  a cast shadow and a one-pixel feathered edge; which date holds them is random (construction or demolition,
  planting or felling). The label is the pasted footprint; its shadow and a 2 px ring around it are ignored
  (the shadow is not a change LEVIR-CD labels, the ring absorbs misregistration).
- no-change pairs: the same crop twice, nothing pasted (a third of the pairs).
- real pairs: the same NAIP place in two years (2016/2018/2020; training cities only), mostly no change. Where a
  pixel is green in one year and its NDVI differs by more than NAIP_NDVI_IGNORE the label is ignored (felled
  trees, but also brown lawns: nothing tells them apart), elsewhere "no change" (new roofs there are label
  noise, ~1 % of pixels).
Between the dates, what must NOT count as change is applied to every pair: independent photometric changes (gain,
gamma, hue, haze, blur, noise, JPEG: other sun, season, sensor) and a registration shift of up to 2 px.
Deterministic: pair k of a run depends only on (seed, k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import banepa, naip
from . import landcover_data as D
from .augment import crop_scaled, photometric

NO_CHANGE, CHANGE, IGNORE = 0, 1, 255
NAIP_NDVI_IGNORE = 0.2  # NDVI change between the years above which a pixel that is green in one of them ...
NAIP_GREEN = 0.25  # ... is ignored: the vegetation may really have changed
MAX_SHIFT_PX = 2
RING_PX = 2


@dataclass
class Donor:
    """An image with a mask of what can be cut from it (buildings or vegetation) and its label for background
    checks."""

    name: str
    image: np.ndarray  # (3, H, W) uint8 at 0.5 m
    building: np.ndarray  # (H, W) bool
    vegetation: np.ndarray  # (H, W) bool


@dataclass
class NaipPair:
    name: str
    a: np.ndarray  # (4, H, W) uint8 at 0.5 m, date 1
    b: np.ndarray  # date 2 (same place)


def load_donors(root, limit: int | None = None) -> list[Donor]:
    """Dubai training images (buildings and vegetation labelled) and the Banepa training mosaic (buildings)."""
    out = []
    for s in D.load_dubai(root, "train", limit):
        out.append(Donor(s.name, s.image, s.label == D.BUILDING, s.label == D.VEG))
    for s in banepa.load_banepa(root, "train")[: limit or None]:
        out.append(Donor(s.name, s.image, s.label == D.BUILDING, np.zeros(s.label.shape, bool)))
    return out


def load_naip_pairs(root, limit: int | None = None) -> list[NaipPair]:
    """Every place of the training cities in two of its years (consecutive flights), at 0.5 m."""
    by_place: dict[tuple[str, int], list] = {}
    for c in naip.chips(root, "train"):
        by_place.setdefault((c.city, c.n), []).append(c)
    out = []
    for (city, n), chips in sorted(by_place.items())[: limit or None]:
        chips.sort(key=lambda c: c.year)
        for c1, c2 in zip(chips, chips[1:], strict=False):
            a, _ = D.resize(naip.read_chip(c1), None, naip.NAIP_PIXEL_M / D.MODEL_PIXEL_M)
            b, _ = D.resize(naip.read_chip(c2), None, naip.NAIP_PIXEL_M / D.MODEL_PIXEL_M)
            out.append(NaipPair(f"naip/{city}_{n}_{c1.year}_{c2.year}", a, b))
    return out


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _i(g: torch.Generator, n: int) -> int:
    return int(torch.randint(0, max(1, n), (), generator=g))


def _crop(d: Donor, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(3, s, s) float image, building and vegetation masks (bool) of a random crop at a random scale."""
    lab = np.zeros(d.building.shape, np.uint8)
    lab[d.building] = 1
    lab[d.vegetation] = 2
    scale = math.exp(_u(g, math.log(0.7), math.log(1.4)))
    img, lab_t = crop_scaled(torch.from_numpy(d.image).float(), torch.from_numpy(lab), size, scale, g, 0)
    return img, lab_t == 1, lab_t == 2


def _shadow(mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The cast shadow of a pasted footprint: the mask shifted away from the sun, minus the footprint."""
    angle = _u(g, 0, 2 * math.pi)
    length = _u(g, 1, 6)
    dy, dx = round(length * math.sin(angle)), round(length * math.cos(angle))
    shifted = torch.roll(mask, (dy, dx), (0, 1))
    return shifted & ~mask


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(mask[None, None].float(), 2 * r + 1, 1, r)[0, 0] > 0


def _paste(bg: torch.Tensor, donor: torch.Tensor, mask: torch.Tensor, g: torch.Generator):
    """bg with donor's pixels where mask is (a feathered edge, a cast shadow): (image, footprint, shadow)."""
    soft = F.avg_pool2d(mask[None, None].float(), 3, 1, 1)[0, 0]  # one-pixel feathered edge
    soft = torch.where(mask, torch.ones_like(soft), soft * 0.5)
    shadow = _shadow(mask, g) if float(torch.rand((), generator=g)) < 0.7 else torch.zeros_like(mask)
    out = bg.clone()
    out = torch.where(shadow[None], out * _u(g, 0.45, 0.75), out)
    out = out * (1 - soft[None]) + donor * soft[None]
    return out, mask, shadow


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x moved by (dy, dx) pixels, edges replicated (a registration error between the dates)."""
    h, w = x.shape[-2:]
    p = F.pad(x[None], (MAX_SHIFT_PX,) * 4, mode="replicate")[0]
    return p[..., MAX_SHIFT_PX - dy : MAX_SHIFT_PX - dy + h, MAX_SHIFT_PX - dx : MAX_SHIFT_PX - dx + w]


class ChangePairs:
    """Pair k of a run: (before (3, s, s), after (3, s, s), label (s, s) uint8 0/1/255), floats 0..255."""

    def __init__(self, donors: list[Donor], naip_pairs: list[NaipPair], size: int = 256, naip_share: float = 0.25,
                 no_change_share: float = 0.3, building_share: float = 0.75):  # fmt: skip
        self.size = size
        self.naip_share, self.no_change_share, self.building_share = naip_share, no_change_share, building_share
        self.donors = donors
        self.builders = [d for d in donors if d.building.mean() > 0.02]
        self.greens = [d for d in donors if d.vegetation.mean() > 0.02]
        self.naip = naip_pairs if naip_share else []

    @classmethod
    def training(cls, root, size: int = 256, limit: int | None = None, naip_share: float = 0.25, log=print):
        """The training pairs: Dubai's training tiles and Banepa's training columns, the NAIP training cities."""
        pairs = cls(load_donors(root, limit), load_naip_pairs(root, limit) if naip_share else [], size, naip_share)
        log(f"change pairs: {len(pairs.donors)} backgrounds ({len(pairs.builders)} with buildings, "
            f"{len(pairs.greens)} with vegetation), {len(pairs.naip)} NAIP two-year pairs")  # fmt: skip
        return pairs

    def pair(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.size
        if self.naip and float(torch.rand((), generator=g)) < self.naip_share:
            a, b, lab = self._naip(g)
        else:
            a, b, lab = self._synthetic(g)
        # what must not count as change: each date re-lit on its own, one date shifted by up to 2 px
        if float(torch.rand((), generator=g)) < 0.5:
            a, b = b, a  # construction or demolition, planting or felling (the label is symmetric)
        a = photometric(a, g, strength=0.8)
        b = photometric(b, g, strength=0.8)
        dy, dx = _i(g, 2 * MAX_SHIFT_PX + 1) - MAX_SHIFT_PX, _i(g, 2 * MAX_SHIFT_PX + 1) - MAX_SHIFT_PX
        b = _shift(b, dy, dx)
        k = _i(g, 4)
        a, b = torch.rot90(a, k, (1, 2)), torch.rot90(b, k, (1, 2))
        lab = torch.rot90(lab, k, (0, 1))
        assert a.shape == b.shape == (3, s, s)
        return a, b, lab

    def _synthetic(self, g: torch.Generator):
        s = self.size
        bg_img, bg_build, _ = _crop(self.donors[_i(g, len(self.donors))], s, g)
        lab = torch.zeros((s, s), dtype=torch.uint8)
        if float(torch.rand((), generator=g)) < self.no_change_share:
            return bg_img, bg_img.clone(), lab
        building = not self.greens or float(torch.rand((), generator=g)) < self.building_share
        donors = self.builders if building else self.greens
        d_img, d_build, d_veg = _crop(donors[_i(g, len(donors))], s, g)
        mask = d_build if building else d_veg
        # only where the background has no building of its own (a roof on a roof is no footprint)
        mask = mask & ~_dilate(bg_build, 2)
        if mask.float().mean() < 0.005:
            return bg_img, bg_img.clone(), lab
        pasted, foot, shadow = _paste(bg_img, d_img, mask, g)
        lab[foot] = CHANGE
        lab[shadow & ~foot] = IGNORE
        lab[_dilate(foot, RING_PX) & _dilate(~foot, RING_PX)] = IGNORE  # the band along the footprint's edge
        return bg_img, pasted, lab

    def _naip(self, g: torch.Generator):
        s = self.size
        p = self.naip[_i(g, len(self.naip))]
        both = torch.from_numpy(np.concatenate([p.a, p.b])).float()
        _, h, w = both.shape
        r, c = _i(g, h - s + 1), _i(g, w - s + 1)
        both = F.pad(both[:, r : r + s, c : c + s], (0, max(0, s - w), 0, max(0, s - h)), mode="constant")
        a, b = both[:4], both[4:]

        def ndvi(x):
            return (x[3] - x[0]) / (x[3] + x[0] + 1e-6)

        lab = torch.zeros((s, s), dtype=torch.uint8)
        va, vb = ndvi(a), ndvi(b)
        lab[((va - vb).abs() > NAIP_NDVI_IGNORE) & (torch.maximum(va, vb) > NAIP_GREEN)] = IGNORE
        return a[:3], b[:3], lab
