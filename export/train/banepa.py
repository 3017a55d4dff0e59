"""Banepa (Nepal) OpenAerialMap chips with OpenStreetMap building outlines (../shared/data/landcover/banepa_buildings;
imagery (c) OpenAerialMap contributors / HOT, CC BY 4.0; outlines (c) OpenStreetMap contributors, ODbL).

The 48 labelled chips are a 6 x 8 block of zoom-19 web-mercator tiles (512 px, ~0.13 m): they are stitched into
one mosaic so crops see whole streets. Only buildings are labelled: inside an outline is building, outside it
"not building" (a partial label: the outlines are near-complete but not guaranteed, so nothing else is claimed),
and a ring of 0.5 m along every outline is ignored (outline vs roof-edge alignment). The easternmost column of
tiles (VAL_COLUMN) is held out for the checks.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .landcover_data import BUILDING, IGNORE, MODEL_PIXEL_M, NOT_BUILDING, Sample, resize

VAL_COLUMN = 386695  # web-mercator tile x of the held-out column (8 chips)
_NAME = re.compile(r"OAM-(\d+)-(\d+)-19")
EDGE_M = 0.5


def root(data: Path) -> Path:
    return data / "landcover/banepa_buildings"


def _tiles(data: Path) -> dict[tuple[int, int], Path]:
    out = {}
    for tif in sorted((root(data) / "images").glob("OAM-*-19.tif")):
        m = _NAME.match(tif.stem)
        if m:
            out[(int(m[1]), int(m[2]))] = tif
    return out


def _outlines(data: Path) -> list:
    import fiona
    from shapely.geometry import shape

    with fiona.open(root(data) / "buildings_osm.geojson") as src:
        return [shape(f["geometry"]) for f in src if f["geometry"] is not None]


def _chip_label(tif: Path, outlines: list) -> tuple[np.ndarray, np.ndarray, float]:
    """(3, H, W) image, (H, W) label and the chip's ground pixel size in metres."""
    import rasterio
    from rasterio.features import rasterize
    from scipy.ndimage import binary_dilation, binary_erosion

    with rasterio.open(tif) as ds:
        img = ds.read()[:3]
        transform, shape = ds.transform, (ds.height, ds.width)
        lat = ds.xy(ds.height // 2, ds.width // 2)[1]
    pixel_m = abs(transform.a) * 111_320.0 * np.cos(np.radians(lat))
    inside = rasterize(((g, 1) for g in outlines), out_shape=shape, transform=transform, fill=0).astype(bool)
    edge = max(1, round(EDGE_M / pixel_m))
    ring = binary_dilation(inside, iterations=edge) & ~binary_erosion(inside, iterations=edge)
    lab = np.full(shape, NOT_BUILDING, np.uint8)
    lab[inside] = BUILDING
    lab[ring] = IGNORE
    return img, lab, pixel_m


def load_banepa(data: Path, split: str = "train") -> list[Sample]:
    """One mosaic of the split's tiles (train: every column but VAL_COLUMN; val: that column) at the model's pixel
    size."""
    tiles = {k: v for k, v in _tiles(data).items() if (k[0] == VAL_COLUMN) == (split == "val")}
    if not tiles:
        return []
    outlines = _outlines(data)
    xs, ys = sorted({k[0] for k in tiles}), sorted({k[1] for k in tiles})
    size = 512
    img = np.zeros((3, len(ys) * size, len(xs) * size), np.uint8)
    lab = np.full(img.shape[1:], IGNORE, np.uint8)
    pixel_m = []
    for (x, y), tif in tiles.items():
        i, la, pm = _chip_label(tif, outlines)
        r, c = ys.index(y) * size, xs.index(x) * size
        img[:, r : r + size, c : c + size] = i
        lab[r : r + size, c : c + size] = la
        pixel_m.append(pm)
    img, lab = resize(img, lab, float(np.mean(pixel_m)) / MODEL_PIXEL_M)
    return [Sample(f"banepa/{split}", img, lab)]
