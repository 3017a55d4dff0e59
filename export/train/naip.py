"""NAIP chips of five Californian cities (red, green, blue, NIR at 0.6 m; ../shared/data/landcover/naip_california,
Ventura et al. 2024, CC BY 4.0): weak vegetation labels from the NIR band, and the tree points for checks.

Labels (weak_labels.ndvi_label): NDVI > 0.3 is vegetation, NDVI < 0.05 "not vegetation" (a partial label: roof,
road, bare ground or water, not said which), the rest ignored. The RGB model learns them without seeing NIR (the
NIR band only makes the label); the RGB+NIR model sees NIR on some crops and not on others (NIR dropout).
One whole city is held out (VAL_CITY, all its years): the checks score it and training never reads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .landcover_data import MODEL_PIXEL_M, Sample, resize
from .weak_labels import ndvi, ndvi_label

NAIP_PIXEL_M = 0.6
CITIES = ("chico", "claremont", "long_beach", "palm_springs", "santa_monica")
VAL_CITY = "claremont"  # a suburb of the Los Angeles basin: houses, lawns, streets, parking lots, a college campus
_NAME = re.compile(r"^(?P<city>[a-z_]+)_(?P<year>\d{4})_(?P<n>\d+)$")


@dataclass
class Chip:
    path: Path
    city: str
    year: int
    n: int

    @property
    def points(self) -> Path:
        return self.path.parent.parent / "points" / (self.path.stem + ".csv")


def root(data: Path) -> Path:
    return data / "landcover/naip_california"


def chips(data: Path, split: str) -> list[Chip]:
    """Chips of the training cities (split "train") or of VAL_CITY ("val"), sorted by name."""
    out = []
    for tif in sorted((root(data) / "images").glob("*.tif")):
        m = _NAME.match(tif.stem)
        if m is None:
            continue
        if (m["city"] == VAL_CITY) == (split == "val"):
            out.append(Chip(tif, m["city"], int(m["year"]), int(m["n"])))
    return out


def read_chip(chip: Chip) -> np.ndarray:
    """(4, 256, 256) uint8: red, green, blue, NIR (the band order the SOURCE states; checked by description)."""
    import rasterio

    with rasterio.open(chip.path) as ds:
        names = tuple((d or "").lower() for d in ds.descriptions)
        if names and names[0] and names != ("red", "green", "blue", "nir"):
            raise ValueError(f"{chip.path}: bands {names}, expected red, green, blue, nir")
        return ds.read()


def tree_points(chip: Chip) -> np.ndarray:
    """(n, 2) x, y pixel coordinates (column, row) of the chip's annotated trees; none when the file is missing."""
    if not chip.points.exists():
        return np.zeros((0, 2), np.float32)
    pts = np.loadtxt(chip.points, delimiter=",", skiprows=1, ndmin=2)
    return pts.reshape(-1, 2).astype(np.float32)


def load_naip(data: Path, split: str = "train", limit: int | None = None) -> list[Sample]:
    """Training samples at the model's pixel size: (4, H, W) images (NIR kept for the RGB+NIR model) and NDVI
    labels."""
    samples = []
    for chip in chips(data, split)[:limit]:
        img = read_chip(chip)
        lab = ndvi_label(img)
        img, lab = resize(img, lab, NAIP_PIXEL_M / MODEL_PIXEL_M)
        samples.append(Sample(f"naip/{chip.path.stem}", img, lab))
    return samples


def vegetation_truth(img: np.ndarray, veg: float = 0.3, not_veg: float = 0.1) -> np.ndarray:
    """The check's reference (issue #27): 1 vegetation (NDVI > 0.3), 0 not (< 0.1), 255 between (ignored)."""
    v = ndvi(img)
    out = np.full(v.shape, 255, np.uint8)
    out[v > veg] = 1
    out[v < not_veg] = 0
    return out
