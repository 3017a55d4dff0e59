"""Resampling to the model's pixel size: infer where the model was trained, write back on the input's grid.

A model trained at 0.5 m sees a 0.05 m orthophoto as 10x magnified and misreads it. When the input's ground
pixel size differs from the model's ``pixel_size_m`` by more than ``TOLERANCE``, the job reads the input
resampled onto a "model grid" (same CRS and footprint, the model's pixel size; ``average`` when shrinking, so
fine detail is area-averaged rather than aliased, ``bilinear`` when enlarging), infers there, and warps the class
map (nearest) and confidence (bilinear) back onto the input grid strip by strip: memory stays bounded by width.

The ground pixel size is measured geodesically at the raster's centre, so web-mercator rasters (whose CRS
units are stretched by 1/cos(latitude)) and geographic rasters (degrees) are handled too.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from .errors import InputError
from .raster_input import Grid
from .tiling import check_anchor

TOLERANCE = 0.15  # relative pixel-size difference the models tolerate (their training used 0.6-1.6x scale jitter)
MODES = ("auto", "off")


def ground_pixel_size_m(grid: Grid) -> float | None:
    """Mean ground size (m) of one pixel at the grid's centre; None without a CRS."""
    if grid.crs is None:
        return None
    from pyproj import CRS, Geod, Transformer

    crs = CRS.from_user_input(grid.crs.to_wkt())
    t = grid.transform
    cx, cy = t * (grid.width / 2, grid.height / 2)
    px, py = t * (grid.width / 2 + 1, grid.height / 2)
    qx, qy = t * (grid.width / 2, grid.height / 2 + 1)
    if crs.is_geographic:
        lon, lat = [cx, px, qx], [cy, py, qy]
    else:
        to_ll = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
        lon, lat = to_ll.transform([cx, px, qx], [cy, py, qy])
    geod = Geod(ellps="WGS84")
    dx = geod.inv(lon[0], lat[0], lon[1], lat[1])[2]
    dy = geod.inv(lon[0], lat[0], lon[2], lat[2])[2]
    size = math.sqrt(dx * dy)
    return size if size > 0 and math.isfinite(size) else None


@dataclass(frozen=True)
class ResamplePlan:
    input_grid: Grid
    model_grid: Grid  # the input grid itself when no resampling is done
    input_pixel_m: float | None
    model_pixel_m: float | None
    reason: str = ""  # why not resampled (off, unknown sizes, within tolerance)

    @property
    def active(self) -> bool:
        return self.model_grid is not self.input_grid

    @property
    def read_resampling(self) -> Resampling:
        return Resampling.average if self.factor > 1 else Resampling.bilinear

    @property
    def factor(self) -> float:
        """Model pixel / input pixel (> 1: the model grid is coarser)."""
        if not self.input_pixel_m or not self.model_pixel_m:
            return 1.0
        return self.model_pixel_m / self.input_pixel_m

    def message(self) -> str:
        if self.active:
            how = "averaged" if self.factor > 1 else "bilinear"
            return (
                f"resampled: input {_m(self.input_pixel_m)} -> model {_m(self.model_pixel_m)} "
                f"({self.model_grid.width} x {self.model_grid.height} px, {how}); outputs on the input grid"
            )
        return f"not resampled: {self.reason}"

    def as_dict(self) -> dict:
        return {
            "resampled": self.active,
            "input_pixel_m": None if self.input_pixel_m is None else round(self.input_pixel_m, 4),
            "model_pixel_m": self.model_pixel_m,
            "message": self.message(),
        }


def _m(v: float | None) -> str:
    return "unknown" if v is None else f"{v:.3g} m"


def plan(grid: Grid, model_pixel_m: float | None, mode: str = "auto", anchor: str = "raster") -> ResamplePlan:
    """``anchor="crs"``: the model grid's pixels sit on a lattice fixed in the CRS (whole model pixels from the CRS
    origin: _lattice_grid) instead of starting at the raster's corner, so a raster and a crop of it (or any
    raster over the same ground) are resampled into the same model pixels."""
    if mode not in MODES:
        raise InputError(f"--resample must be one of {', '.join(MODES)}, not {mode!r}")
    check_anchor(anchor)
    px = ground_pixel_size_m(grid)
    if mode == "off":
        return ResamplePlan(grid, grid, px, model_pixel_m, "--resample off")
    if model_pixel_m is None:
        return ResamplePlan(grid, grid, px, None, "the model does not state its pixel size")
    if px is None:
        return ResamplePlan(grid, grid, None, model_pixel_m, "the input has no CRS, so its pixel size is unknown")
    f = model_pixel_m / px
    if abs(f - 1) <= TOLERANCE:
        return ResamplePlan(
            grid, grid, px, model_pixel_m, f"input {_m(px)} is within 15% of the model's {_m(model_pixel_m)}"
        )
    t = grid.transform
    if anchor == "crs" and not t.b and not t.d:
        return ResamplePlan(grid, _lattice_grid(grid, f, model_pixel_m), px, model_pixel_m)
    width, height = max(1, math.ceil(grid.width / f)), max(1, math.ceil(grid.height / f))
    mgrid = Grid(grid.crs, t * rasterio.Affine.scale(f), width, height)
    return ResamplePlan(grid, mgrid, px, model_pixel_m)


def _lattice_grid(grid: Grid, f: float, model_pixel_m: float) -> Grid:
    """The model grid covering ``grid`` whose pixel edges are whole multiples of the model pixel in CRS units.
    In a metric CRS that is the model's pixel size itself (0.5 m: the ground size measured at the raster's centre
    differs from it by the projection's scale factor, 0.9996 on a UTM central meridian, which would move the
    lattice from one crop to the next); elsewhere (degrees, web mercator away from the equator) the model pixel
    in CRS units, rounded to 3 significant digits so that it does not move with the centre either."""
    t = grid.transform
    size = abs(t.a) * f
    size = model_pixel_m if abs(size / model_pixel_m - 1) < 0.01 else float(f"{size:.3g}")
    px, py = size * math.copysign(1, t.a), size * math.copysign(1, t.e)
    # Corners in model pixels from the CRS origin (columns along x, rows along y / py: down for north-up).
    c0 = math.floor(t.c / px + 1e-6)
    r0 = math.floor(t.f / py + 1e-6)
    c1 = math.ceil((t.c + grid.width * t.a) / px - 1e-6)
    r1 = math.ceil((t.f + grid.height * t.e) / py - 1e-6)
    transform = rasterio.Affine(px, 0.0, c0 * px, 0.0, py, r0 * py)
    return Grid(grid.crs, transform, max(1, c1 - c0), max(1, r1 - r0))


@contextmanager
def _closing(writer):
    try:
        yield writer
    finally:
        writer.close()


def warp_back(
    plan_: ResamplePlan,
    src_class: Path,
    src_conf: Path,
    dst_class: Path,
    dst_conf: Path,
    classes,  # the class table (model_package.ClassInfo) the maps are written with
    block: int,  # GeoTIFF block size of the written maps
    rows_per_strip: int = 512,
) -> None:
    """Model-grid class map + confidence -> new ones on the input grid, strip by strip."""
    from .outputs import PredictionWriter

    g = plan_.input_grid
    kw = {"crs": g.crs, "transform": g.transform, "width": g.width, "height": g.height}
    with (
        rasterio.open(src_class) as cds,
        rasterio.open(src_conf) as fds,
        WarpedVRT(cds, resampling=Resampling.nearest, **kw) as cv,
        WarpedVRT(fds, resampling=Resampling.bilinear, **kw) as fv,
        _closing(PredictionWriter(dst_class, dst_conf, g, classes, block)) as writer,
    ):
        for r0 in range(0, g.height, rows_per_strip):
            win = Window(0, r0, g.width, min(rows_per_strip, g.height - r0))
            cls = cv.read(1, window=win)
            conf = fv.read(1, window=win, masked=True).filled(-1.0).astype(np.float32)
            invalid = (cls == cds.nodata) | (conf < 0)
            cls[invalid] = cds.nodata
            conf[invalid] = fds.nodata
            writer.write_maps(r0, 0, cls, conf)
