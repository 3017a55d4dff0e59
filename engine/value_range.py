"""Input values against the range a model was trained on: check, and stretch where they do not fit.

A model package may state the raw values its input expects (``value_range``, e.g. [0, 255] for 8-bit imagery).
Imagery often comes as 16-bit counts or float reflectance instead; fed as is, a uint16 RGB saturates every
pixel (a map that is 100 % one class, no warning). So before anything runs, each mapped band's statistics are
read from a decimated view of the whole raster (one read, memory bounded) and compared with the range:

- ``auto`` (default): values inside the range go as they are; values beyond it, or a raster that uses less than
  a twentieth of it (0–1 reflectance for a 0–255 model), are stretched per band, linearly from the band's 2nd to
  98th percentile onto the range and clipped (the rule QGIS uses to display such rasters). The stretch is the
  same for every tile, and is reported in the log and the JSON result (``rescaling``).
- ``percentile``: always that stretch.
- ``off``: never; values beyond the range are a one-line error that names the band and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rasterio.enums import Resampling
from rasterio.errors import RasterioError

from .errors import InputError

RESCALE_MODES = ("auto", "percentile", "off")
PERCENTILES = (2.0, 98.0)
SAMPLE_SIDE = 1024  # the statistics come from at most this many pixels a side
TOO_DARK = 1 / 20  # a raster whose 99th percentile uses less than this part of the range is stretched


@dataclass(frozen=True)
class Stretch:
    """Per-band linear map low..high -> target range, clipped."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    target: tuple[float, float]

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """(bands, h, w) raw values -> float32 in the target range (the first len(low) bands; others as they are)."""
        out = raw.astype(np.float32, copy=True)
        a, b = self.target
        n = len(self.low)
        lo = np.asarray(self.low, np.float32)[:, None, None]
        span = np.maximum(np.asarray(self.high, np.float32)[:, None, None] - lo, 1e-12)
        out[:n] = np.clip(a + (out[:n] - lo) / span * (b - a), a, b)
        return out

    def as_dict(self) -> dict:
        return {
            "rule": f"percentile {PERCENTILES[0]:g}-{PERCENTILES[1]:g} per band",
            "from": [[round(lo, 4), round(hi, 4)] for lo, hi in zip(self.low, self.high, strict=True)],
            "to": list(self.target),
        }


def band_sample(src, bands: list[int]) -> np.ndarray:
    """(bands, n) finite, unmasked values of a decimated read of the whole raster."""
    f = max(1, int(np.ceil(max(src.height, src.width) / SAMPLE_SIDE)))
    shape = (len(bands), max(1, src.height // f), max(1, src.width // f))
    try:
        data = src.read(bands, out_shape=shape, masked=True, resampling=Resampling.nearest)
    except RasterioError as exc:
        raise InputError(f"reading {src.name} failed (truncated or corrupt raster?): {exc}") from None
    ok = ~np.ma.getmaskarray(data).any(axis=0) & np.isfinite(data.filled(0)).all(axis=0)
    return np.asarray(data.filled(0))[:, ok].astype(np.float64)


def plan_stretch(src, bands: list[int], value_range: tuple[float, float], mode: str, label: str) -> Stretch | None:
    """The stretch for these bands of `src` (None: use as they are); `label` names the raster in errors."""
    if mode not in RESCALE_MODES:
        raise InputError(f"rescale must be one of {', '.join(RESCALE_MODES)}, not {mode!r}")
    lo, hi = value_range
    dtypes = {src.dtypes[b - 1] for b in bands}
    if mode == "auto" and dtypes == {"uint8"} and lo <= 0 and hi >= 255:
        return None  # 8-bit data always fits an 8-bit range: skip the statistics read
    sample = band_sample(src, bands)
    if sample.shape[1] == 0:
        return None  # no valid pixel: the job reports an empty result, nothing to stretch
    vmin, vmax = sample.min(axis=1), sample.max(axis=1)
    p99 = np.percentile(sample, 99, axis=1)
    beyond = (vmin < lo - 1e-6 * (hi - lo)) | (vmax > hi + 1e-6 * (hi - lo))
    dark = p99 - lo < TOO_DARK * (hi - lo)
    if mode == "off":
        if beyond.any():
            k = int(np.argmax(beyond))
            raise InputError(
                f"{label} band {bands[k]} ({src.dtypes[bands[k] - 1]}) holds values {vmin[k]:g}..{vmax[k]:g} but "
                f"the model expects {lo:g}..{hi:g}: pass --rescale auto (percentile stretch), or convert the raster"
            )
        return None
    if mode == "auto" and not (beyond.any() or dark.all()):
        return None
    p_lo, p_hi = np.percentile(sample, PERCENTILES, axis=1)
    p_hi = np.where(p_hi > p_lo, p_hi, p_lo + 1)  # a constant band maps to the bottom of the range
    return Stretch(tuple(map(float, p_lo)), tuple(map(float, p_hi)), (lo, hi))


def describe(label: str, bands: list[int], dtype: str, stretch: Stretch) -> str:
    spans = ", ".join(f"band {b} {lo:g}..{hi:g}" for b, lo, hi in zip(bands, stretch.low, stretch.high, strict=False))
    a, b = stretch.target
    return f"{label} ({dtype}) does not fit the model's {a:g}..{b:g}: stretched per band ({spans} -> {a:g}..{b:g})"
