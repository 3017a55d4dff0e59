"""Weak labels made from the imagery itself, with negatives for every weak class (positive-only weak labels teach
"everything is vegetation"): NDVI where a NIR band exists, and the partial "not this class" labels the loss reads.
"""

from __future__ import annotations

import numpy as np

from .landcover_data import IGNORE, NOT_BUILDING, NOT_VEG, VEG

NDVI_VEG = 0.3  # above: vegetation (tree points have mean NDVI ~0.38 on the NAIP chips, random pixels ~0.01)
NDVI_NOT_VEG = 0.05  # below: not vegetation; between: ignored (mixed pixels, dry grass, shadowed canopy)
PARTIAL = {NOT_VEG: VEG, NOT_BUILDING: 0}  # partial label -> the class it rules out (0: building)


def ndvi(img: np.ndarray) -> np.ndarray:
    """(red, green, blue, nir, ...) DN -> NDVI; DN, not reflectance, but the sign and ordering hold."""
    r, n = img[0].astype(np.float32), img[3].astype(np.float32)
    return (n - r) / np.maximum(n + r, 1.0)


def ndvi_label(img: np.ndarray) -> np.ndarray:
    v = ndvi(img)
    lab = np.full(v.shape, IGNORE, np.uint8)
    lab[v > NDVI_VEG] = VEG
    lab[v < NDVI_NOT_VEG] = NOT_VEG
    return lab
