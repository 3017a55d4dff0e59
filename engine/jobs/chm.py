"""Canopy height model from airborne LiDAR (LAS/LAZ): ``python -m engine chm --lidar plot.laz --out chm.tif``.

Surface: the highest return in each cell (noise classes 7 and 18 left out). Terrain: the lowest ground return per
cell (ASPRS class 2 when the file has a ground classification; otherwise a ground filter: the lowest return per
cell, morphologically opened over ``ground_window_m`` so that crowns and roofs are cut away, and returns within
``ground_tolerance_m`` of that surface kept), interpolated linearly between cells (nearest outside their hull).
CHM = surface - terrain, at least 0, in metres. Cells without a return take the highest neighbour's surface,
else the terrain (height 0). Points are read in chunks: memory is bounded by the output grid, not the file.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from ..errors import InputError
from ..task_options import Option
from .common import JsonResult, atomic_outputs

NOISE_CLASSES = (7, 18)
GROUND_CLASS = 2
CHUNK_POINTS = 2_000_000


@dataclass
class ChmParams:
    lidar: Path
    out: Path
    resolution: float = 0.5  # m
    crs: str | None = None  # when the LAS header has none
    like: Path | None = None  # snap to this raster's grid (CRS, transform, size)
    ground_window_m: float = 10.0
    ground_tolerance_m: float = 0.5


OPTIONS = (
    Option("lidar", "--lidar", "LiDAR point cloud (LAS/LAZ)", "LAS or LAZ point cloud", widget="file",
           file_filter="LiDAR (*.las *.laz)"),
    Option("resolution", "--resolution", "Cell size (m)", "cell size in m (default: %(default)s)", minimum=0.05),
    Option("crs", "--crs", "CRS of the points (when the file has none)",
           "CRS of the points when the LAS header has none, e.g. EPSG:32611", widget="crs"),
    Option("like", "--like", "Write on this raster's grid (optional)",
           "write on this raster's grid (CRS, transform, size) instead", widget="raster", advanced=True),
    Option("out", "--out", "Canopy height model", "output GeoTIFF", short="-o", widget="output_raster",
           name="OUTPUT", result="chm", suffix=".tif"),
)  # fmt: skip


@dataclass
class ChmResult(JsonResult):
    chm: Path
    width: int
    height: int
    resolution: float
    points: int
    ground: str  # "classified" or "filtered"
    height_max: float
    seconds: float

    def lines(self) -> list[str]:
        return [f"canopy height model: {self.chm} ({self.width} x {self.height} cells of {self.resolution:g} m, "
                f"{self.points} points, ground {self.ground}, highest {self.height_max:.1f} m)"]  # fmt: skip


def _grid(params: ChmParams, header) -> tuple[rasterio.Affine, int, int, object]:
    if params.like is not None:
        with rasterio.open(params.like) as ds:
            return ds.transform, ds.width, ds.height, ds.crs
    crs = header.parse_crs() if hasattr(header, "parse_crs") else None
    if crs is None and not params.crs:
        raise InputError(f"{params.lidar} has no CRS in its header: give one with --crs (e.g. EPSG:32611)")
    r = params.resolution
    if not r > 0:
        raise InputError(f"--resolution must be positive, not {r}")
    x0, y0 = math.floor(header.mins[0] / r) * r, math.floor(header.mins[1] / r) * r
    x1, y1 = math.ceil(header.maxs[0] / r) * r, math.ceil(header.maxs[1] / r) * r
    w, h = max(1, round((x1 - x0) / r)), max(1, round((y1 - y0) / r))
    return from_origin(x0, y1, r, r), w, h, (params.crs or crs.to_wkt())


def _cells(x: np.ndarray, y: np.ndarray, transform, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    col, row = ~transform * (x, y)
    col, row = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    return row * w + col, inside


def build_chm(params: ChmParams) -> ChmResult:
    import laspy
    from scipy import ndimage
    from scipy.interpolate import griddata

    t0 = time.perf_counter()
    path = Path(params.lidar)
    if not path.exists():
        raise InputError(f"LiDAR file not found: {path}")
    try:
        reader = laspy.open(str(path))
    except Exception as exc:  # laspy raises several kinds for a file that is not LAS
        raise InputError(f"{path} is not a LAS/LAZ file laspy can read: {str(exc).splitlines()[0]}") from None
    with reader:
        transform, w, h, crs = _grid(params, reader.header)
        surface = np.full(h * w, -np.inf)
        ground_min = np.full(h * w, np.inf)
        lowest = np.full(h * w, np.inf)
        n_points, classified = 0, False
        try:
            for pts in reader.chunk_iterator(CHUNK_POINTS):
                x, y, z = np.asarray(pts.x), np.asarray(pts.y), np.asarray(pts.z)
                cls = np.asarray(pts.classification)
                keep = ~np.isin(cls, NOISE_CLASSES)
                idx, inside = _cells(x, y, transform, w, h)
                keep &= inside
                np.maximum.at(surface, idx[keep], z[keep])
                np.minimum.at(lowest, idx[keep], z[keep])
                g = keep & (cls == GROUND_CLASS)
                classified |= bool(g.any())
                np.minimum.at(ground_min, idx[g], z[g])
                n_points += len(x)
        except Exception as exc:
            raise InputError(
                f"cannot read the points of {path} (truncated or corrupt?): {str(exc).splitlines()[0]}"
            ) from None
    if n_points != reader.header.point_count:
        raise InputError(f"{path} is truncated: {n_points} of {reader.header.point_count} points could be read")
    surface, lowest, ground_min = (a.reshape(h, w) for a in (surface, lowest, ground_min))
    if not np.isfinite(surface).any():
        raise InputError(f"{path} has no points inside the output grid")
    res = abs(transform.a)
    if classified:
        ground = ground_min
    else:  # no ground classification: opened minimum surface
        size = max(3, int(round(params.ground_window_m / res)) | 1)
        filled = np.where(np.isfinite(lowest), lowest, np.nanmax(np.where(np.isfinite(lowest), lowest, np.nan)))
        opened = ndimage.grey_opening(filled, size=(size, size))
        ground = np.where(np.isfinite(lowest) & (lowest - opened <= params.ground_tolerance_m), lowest, np.inf)
    rows, cols = np.nonzero(np.isfinite(ground))
    if len(rows) == 0:
        raise InputError(f"{path}: no ground returns found to build a terrain model from")
    rr, cc = np.mgrid[0:h, 0:w]
    pts, vals = np.c_[rows, cols], ground[rows, cols]
    terrain = griddata(pts, vals, (rr, cc), method="linear") if len(rows) >= 4 else np.full((h, w), np.nan)
    gaps = ~np.isfinite(terrain)
    if gaps.any():
        terrain[gaps] = griddata(pts, vals, (rr[gaps], cc[gaps]), method="nearest")
    empty = ~np.isfinite(surface)
    if empty.any():
        neighbour = ndimage.maximum_filter(np.where(empty, -np.inf, surface), size=3)
        surface = np.where(empty, neighbour, surface)
        surface = np.where(np.isfinite(surface), surface, terrain)
    chm = np.clip(surface - terrain, 0, None).astype(np.float32)
    out = Path(params.out)
    with atomic_outputs(out.parent) as outputs:
        tmp = outputs.temp_for(out)
        profile = {"driver": "GTiff", "width": w, "height": h, "count": 1, "dtype": "float32", "crs": crs,
                   "transform": transform, "compress": "deflate", "predictor": 3}  # fmt: skip
        with rasterio.open(tmp, "w", **profile) as ds:
            ds.write(chm, 1)
            ds.set_band_description(1, "canopy height (m)")
            ds.update_tags(UNITS="metre", SOURCE=path.name, GROUND="classified" if classified else "filtered")
        outputs.commit()
    return ChmResult(
        chm=out,
        width=w,
        height=h,
        resolution=res,
        points=n_points,
        ground="classified" if classified else "filtered",
        height_max=round(float(chm.max()), 3),
        seconds=round(time.perf_counter() - t0, 3),
    )
