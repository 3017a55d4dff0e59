"""The overlapping tile grid and its blending weights.

Tiles of size T start every S = T - O pixels (O: overlap). Each tile's prediction is multiplied by a
separable window and the blended value is sum(w * p) / sum(w). Blend modes (``BLENDS``): ``cosine`` (default)
ramps up (raised cosine) over the overlap and is flat in the middle, with no taper on the raster's outer edges;
``gaussian`` is MONAI's importance map (sigma = 0.125 T, the same for every tile); ``constant`` averages.
Because the grid is a product of row and column positions and the window is separable, sum(w) at a pixel is
the product of two 1-D sums, which we precompute instead of accumulating a weight raster.

Anchoring (``anchored_offsets``): the grid's first tile starts ``row_offset``/``col_offset`` pixels before the
raster's corner (those pixels are padding, invalid), so that tiles sit on a lattice fixed in the CRS (multiples
of the stride from the CRS origin) rather than at the raster's corner: a raster, a crop of it, a batch chunk and
an overlapping raster on the same pixel lattice then see the same tiles and get the same classes (issue #29,
"crop stability"). Axes work in these shifted ("virtual") coordinates; ``tiles()`` gives real read windows.

Every pixel belongs to exactly one output *block*: block (i, j) spans rows [i*S, i*S + S) (to the raster
edge for the last row) and likewise columns. Block (i, j) is final as soon as tile (i, j) has been added,
when tiles are visited row by row: that is what lets the predictor stream results to disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from .errors import InputError

# GeoTIFF tiles must be multiples of 16; output blocks are written as whole GeoTIFF tiles.
BLOCK_MULTIPLE = 16


def fit_overlap(tile: int, overlap: int) -> int:
    """Smallest overlap >= the requested one that makes the stride a multiple of 16."""
    if tile < 2 * BLOCK_MULTIPLE:
        raise InputError(f"tile size {tile} is too small (minimum {2 * BLOCK_MULTIPLE})")
    stride = (tile - overlap) // BLOCK_MULTIPLE * BLOCK_MULTIPLE
    # Blending assumes at most two tiles share a pixel along each axis: overlap <= stride.
    if overlap < 0 or tile - stride > stride:
        raise InputError(f"overlap {overlap} must be >= 0 and at most half the tile size ({tile})")
    return tile - stride


def requested_overlap(tile: int, overlap: int | None, model_overlap: int) -> int:
    """The overlap to use: the model's (fitted to the block constraint) when none was asked for; one that was
    asked for is used exactly as given, or refused in one line naming the constraint (never changed silently:
    more overlap is more tiles, and time)."""
    if overlap is None:
        return fit_overlap(tile, model_overlap)
    fitted = fit_overlap(tile, overlap)
    if fitted != overlap:
        lower = tile - (tile - fitted + BLOCK_MULTIPLE)
        options = " or ".join(str(o) for o in (lower, fitted) if 0 <= o <= tile // 2)
        raise InputError(
            f"overlap {overlap} with tile {tile} gives a stride of {tile - overlap} pixels; the stride (tile - "
            f"overlap) must be a multiple of {BLOCK_MULTIPLE} (output blocks are whole GeoTIFF tiles): use overlap "
            f"{options}"
        )
    return overlap


def fit_tile(tile: int, overlap: int, height: int, width: int, multiple: int = 32) -> tuple[int, int]:
    """(tile, overlap) for a raster smaller than one tile: a tile just large enough (a multiple of 32, the
    networks' total stride), so the model is not fed a tile that is mostly replicated edge pixels."""
    need = -(-max(height, width) // multiple) * multiple
    if need >= tile:
        return tile, overlap
    t = max(2 * BLOCK_MULTIPLE, need)
    return t, fit_overlap(t, min(overlap, t // 4))


BLENDS = ("cosine", "gaussian", "constant")


def gaussian_window(length: int, sigma_scale: float = 0.125) -> np.ndarray:
    """MONAI's gaussian importance map along one axis: exp(-x^2 / 2 sigma^2), x centred, sigma = 0.125 T.
    (MONAI also clamps the 2-D map at 1e-3; the corners where that differs hold weights below 1e-3 of the
    centre's, where a pixel's value comes from one tile either way.)"""
    x = np.arange(length, dtype=np.float64) - (length - 1) / 2.0
    return np.exp(-(x**2) / (2 * (sigma_scale * length) ** 2))


def ramp_window(length: int, overlap: int, taper_start: bool, taper_end: bool) -> np.ndarray:
    """1-D blending weights: raised-cosine ramps over ``overlap`` pixels, 1 in between, never 0."""
    w = np.ones(length, dtype=np.float64)
    if overlap > 0:
        t = (np.arange(overlap) + 0.5) / overlap
        ramp = 0.5 - 0.5 * np.cos(np.pi * t)
        if taper_start:
            w[:overlap] = ramp
        if taper_end:
            w[length - overlap :] = ramp[::-1]
    return w


@dataclass(frozen=True)
class Axis:
    """Tile positions along one axis."""

    size: int  # raster size along the axis
    tile: int
    overlap: int
    blend: str = "cosine"

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def n(self) -> int:
        return max(1, math.ceil((self.size - self.tile) / self.stride) + 1) if self.size > self.tile else 1

    def start(self, i: int) -> int:
        return i * self.stride

    def window(self, i: int) -> np.ndarray:
        if self.blend == "gaussian":
            return gaussian_window(self.tile)
        if self.blend == "constant":
            return np.ones(self.tile, dtype=np.float64)
        # No taper on the raster's outer edges: no neighbour shares those pixels.
        return ramp_window(self.tile, self.overlap, taper_start=i > 0, taper_end=i < self.n - 1)

    def block(self, i: int) -> tuple[int, int]:
        """[start, stop) of the output block owned by tile i."""
        start = self.start(i)
        stop = self.size if i == self.n - 1 else start + self.stride
        return start, stop

    def weight_sum(self) -> np.ndarray:
        """sum of window weights at each position 0..size-1."""
        total = np.zeros(self.start(self.n - 1) + self.tile, dtype=np.float64)
        for i in range(self.n):
            total[self.start(i) : self.start(i) + self.tile] += self.window(i)
        return total[: self.size]


ANCHORS = ("crs", "raster")


def check_anchor(anchor: str) -> None:
    if anchor not in ANCHORS:
        raise InputError(f"--anchor must be one of {', '.join(ANCHORS)}, not {anchor!r}")


def anchored_offsets(transform, stride: int, anchor: str = "crs") -> tuple[int, int]:
    """(row, column) offset in [0, stride) of a raster's corner on the CRS-fixed tile lattice: the tiles of a
    north-up grid start at whole multiples of ``stride`` pixels from the CRS origin. ``anchor="raster"`` (or a
    rotated grid, whose pixel lattice has no such origin): (0, 0), tiles from the raster's corner."""
    check_anchor(anchor)
    if anchor == "raster" or transform is None or transform.b or transform.d or not transform.a or not transform.e:
        return 0, 0
    # The corner's position in pixels from the CRS origin; a raster and its crop differ by whole pixels, so the
    # fractional part is shared and floor() of a tolerant value gives both the same lattice.
    col = transform.c / transform.a
    row = transform.f / transform.e
    return int(math.floor(row + 1e-6)) % stride, int(math.floor(col + 1e-6)) % stride


@dataclass(frozen=True)
class TileGrid:
    height: int
    width: int
    tile: int
    overlap: int
    blend: str = "cosine"
    row_offset: int = 0  # the first tile starts this many pixels above the raster (anchored_offsets)
    col_offset: int = 0

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise InputError(f"--blend must be one of {', '.join(BLENDS)}, not {self.blend!r}")
        if self.overlap != fit_overlap(self.tile, self.overlap):
            raise InputError(f"stride {self.tile - self.overlap} must be a multiple of {BLOCK_MULTIPLE}")
        stride = self.tile - self.overlap
        if not (0 <= self.row_offset < stride and 0 <= self.col_offset < stride):
            raise InputError(f"tile offsets ({self.row_offset}, {self.col_offset}) must be in [0, {stride})")

    @property
    def rows(self) -> Axis:
        """Tile positions down the grid, in shifted coordinates (row 0 = ``row_offset`` pixels above the raster)."""
        return Axis(self.height + self.row_offset, self.tile, self.overlap, self.blend)

    @property
    def cols(self) -> Axis:
        return Axis(self.width + self.col_offset, self.tile, self.overlap, self.blend)

    def __len__(self) -> int:
        return self.rows.n * self.cols.n

    def tiles(self):
        """(i, j, read window in raster pixels: may start before the raster) in row-major order."""
        rows, cols = self.rows, self.cols
        for i in range(rows.n):
            for j in range(cols.n):
                yield (
                    i,
                    j,
                    Window(cols.start(j) - self.col_offset, rows.start(i) - self.row_offset, self.tile, self.tile),
                )

    def weights(self, i: int, j: int) -> np.ndarray:
        return np.outer(self.rows.window(i), self.cols.window(j)).astype(np.float32)
