"""Geometric and photometric augmentation on (3, H, W) float tensors in 0..255, driven by one torch.Generator
so that a training run is reproducible step by step (and after a resume).

The photometric part is deliberately strong: the model sees one desert city and must work on other sensors,
seasons and light (hue/saturation, per-channel gain, gamma, grey, haze, blur, noise, JPEG).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _p(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g)) < p


def crop_scaled(image: torch.Tensor, label: torch.Tensor, size: int, scale: float, g: torch.Generator, fill: int):
    """A random crop that covers size/scale source pixels, resampled to size x size (image bilinear, label
    nearest); padded with ``fill`` (label) and edge-replicated image where the source is smaller."""
    src = max(8, round(size / scale))
    _, h, w = image.shape
    if h < src or w < src:
        ph, pw = max(0, src - h), max(0, src - w)
        image = F.pad(image[None], (0, pw, 0, ph), mode="replicate")[0]
        label = F.pad(label, (0, pw, 0, ph), value=fill)
        _, h, w = image.shape
    r = int(torch.randint(0, h - src + 1, (), generator=g))
    c = int(torch.randint(0, w - src + 1, (), generator=g))
    img = image[:, r : r + src, c : c + src][None]
    lab = label[r : r + src, c : c + src][None, None].float()
    img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=src > size, align_corners=False)[0]
    lab = F.interpolate(lab, size=(size, size), mode="nearest")[0, 0].to(torch.uint8)
    return img, lab


def flip_rotate(img: torch.Tensor, lab: torch.Tensor, g: torch.Generator):
    k = int(torch.randint(0, 4, (), generator=g))
    img, lab = torch.rot90(img, k, (1, 2)), torch.rot90(lab, k, (0, 1))
    if _p(g, 0.5):
        img, lab = img.flip(2), lab.flip(1)
    return img, lab


def _hue_rotate(x: torch.Tensor, angle: float) -> torch.Tensor:
    # Rotation about the grey axis in YIQ: hue changes, brightness and saturation do not.
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
    return torch.einsum("ij,jhw->ihw", m, x)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    y = F.pad(x[:, None], (r, r, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.pad(y, (0, 0, r, r), mode="replicate")
    return F.conv2d(y, k.view(1, 1, -1, 1))[:, 0]


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    arr = x.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return torch.from_numpy(np.asarray(Image.open(buf)).copy()).permute(2, 0, 1).float()


def photometric(x: torch.Tensor, g: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """x: (3, H, W) float 0..255 -> same, randomly re-lit and degraded."""
    if strength <= 0:
        return x
    if _p(g, 0.8):
        gains = torch.tensor([_u(g, 1 - 0.25 * strength, 1 + 0.25 * strength) for _ in range(3)])
        x = x * gains[:, None, None] * _u(g, 1 - 0.3 * strength, 1 + 0.3 * strength)
    if _p(g, 0.5):
        mean = x.mean()
        x = (x - mean) * _u(g, 0.6, 1.4) + mean
    if _p(g, 0.1):
        x = x.mean(0, keepdim=True).expand(3, -1, -1).clone()
    elif _p(g, 0.7):
        grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        x = grey + (x - grey) * _u(g, 0.3, 1.6)
    if _p(g, 0.5):
        x = _hue_rotate(x, math.radians(_u(g, -25, 25) * strength))
    x = x.clamp(0, 255)
    if _p(g, 0.5):
        x = 255.0 * (x / 255.0) ** _u(g, 0.65, 1.5)
    if _p(g, 0.25):
        a = _u(g, 0.05, 0.4)
        haze = torch.tensor([_u(g, 180, 235), _u(g, 185, 240), _u(g, 195, 255)])[:, None, None]
        x = x * (1 - a) + haze * a
    if _p(g, 0.3):
        x = _blur(x, _u(g, 0.4, 1.6))
    if _p(g, 0.3):
        x = x + torch.randn(x.shape, generator=g) * _u(g, 1, 8)
    if _p(g, 0.2):
        x = _jpeg(x, int(_u(g, 30, 90)))
    return x.clamp(0, 255)


def nir_jitter(nir: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A NIR band (float 0..255) with its own gain (0.75-1.25) and gamma (0.7-1.4): other sensors' NIR DN are
    not NAIP's, the only NIR the models train on."""
    n = (nir * _u(g, 0.75, 1.25)).clamp(0, 255)
    return 255.0 * (n / 255.0) ** _u(g, 0.7, 1.4)
