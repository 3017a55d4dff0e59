"""Raster inputs: open one or more rasters, align them to the first one's grid, read windows per modality.

Every raster after the first is wrapped in a WarpedVRT onto the reference grid (CRS, transform, size), so a
10 m SAR scene and a 0.1 m orthophoto can feed one model. Windows are read on demand: nothing holds a
whole raster in memory. Pixels outside a raster's footprint, nodata pixels and masked pixels are invalid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from .errors import InputError
from .model_package import ModelMeta


@dataclass(frozen=True)
class BandSource:
    """Where one model input's bands come from: raster number (0-based) and 1-based band numbers."""

    raster: int
    bands: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> BandSource:
        """``"1,2,3"`` (first raster) or ``"2:1"`` (raster 2, band 1); raster numbers are 1-based."""
        raster_s, _, bands_s = text.rpartition(":")
        try:
            raster = int(raster_s) - 1 if raster_s else 0
            bands = tuple(int(b) for b in bands_s.split(",") if b.strip())
        except ValueError:
            raise InputError(f"band mapping {text!r} is not of the form [RASTER:]BAND[,BAND...]") from None
        if raster < 0 or not bands or min(bands) < 1:
            raise InputError(f"band mapping {text!r}: raster and band numbers start at 1")
        return cls(raster, bands)

    def __str__(self) -> str:
        return f"{self.raster + 1}:{','.join(map(str, self.bands))}"


@dataclass(frozen=True)
class Grid:
    """The reference grid every output is written on (the first raster's)."""

    crs: rasterio.crs.CRS | None
    transform: rasterio.Affine
    width: int
    height: int

    @property
    def pixel_size(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top)"""
        return rasterio.windows.bounds(Window(0, 0, self.width, self.height), self.transform)


def bounds_overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """(left, bottom, right, top) boxes share some area."""
    return a[0] < b[2] and a[2] > b[0] and a[1] < b[3] and a[3] > b[1]


def overlap_grid(path_a: Path, path_b: Path, label_a: str = "before", label_b: str = "after") -> Grid:
    """The part of raster A's grid that raster B covers: the common grid of a bi-temporal pair."""
    a = _open(Path(path_a), f"{label_a} raster")
    b = _open(Path(path_b), f"{label_b} raster")
    with a, b:
        if a.crs is None or b.crs is None:
            if a.crs != b.crs or a.transform != b.transform:
                raise InputError(f"{label_a} ({path_a}) and {label_b} ({path_b}) lack a CRS and differ in grid")
            return Grid(a.crs, a.transform, a.width, a.height)
        bb = transform_bounds(b.crs, a.crs, *b.bounds)
        if not bounds_overlap(bb, tuple(a.bounds)):
            raise InputError(
                f"{label_a} ({path_a}, {a.crs.to_string()}) and {label_b} ({path_b}, "
                f"{b.crs.to_string()}) do not overlap"
            )
        win = rasterio.windows.from_bounds(*bb, transform=a.transform).round_offsets().round_lengths()
        win = win.intersection(Window(0, 0, a.width, a.height))
        if win.width < 1 or win.height < 1:
            raise InputError(f"{label_a} ({path_a}) and {label_b} ({path_b}) overlap by less than a pixel")
        return Grid(a.crs, a.window_transform(win), int(win.width), int(win.height))


def reference_grid(path: Path, label: str = "input raster") -> Grid:
    """The grid of a raster (the first input's sets the outputs' grid)."""
    with _open(Path(path), label) as ds:
        return Grid(ds.crs, ds.transform, ds.width, ds.height)


def _open(path: Path, label: str) -> rasterio.DatasetReader:
    if not path.exists():
        raise InputError(f"{label} not found: {path}")
    if path.is_dir():
        raise InputError(f"{label} is a folder, not a raster: {path}")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError:
        raise InputError(f"{label} is not a raster GDAL can read: {path}") from None


def default_mapping(meta: ModelMeta, band_counts: list[int]) -> dict[str, BandSource]:
    """Map model inputs to rasters when the user gave no explicit band mapping.

    One raster: its bands are taken in order across the model's inputs (RGB+NIR model on a 4-band file).
    As many rasters as model inputs: raster i feeds input i with all its bands.
    """
    need = [mi.n_bands for mi in meta.inputs]
    if len(band_counts) == 1:
        if band_counts[0] != sum(need):
            described = " + ".join(f"{mi.modality} ({', '.join(mi.bands)})" for mi in meta.inputs)
            raise InputError(
                f"input has {band_counts[0]} band(s) but model '{meta.name}' takes {sum(need)}: {described}; "
                "map bands explicitly, e.g. --modality rgb=1,2,3"
            )
        mapping, start = {}, 1
        for mi in meta.inputs:
            mapping[mi.modality] = BandSource(0, tuple(range(start, start + mi.n_bands)))
            start += mi.n_bands
        return mapping
    if len(band_counts) == len(meta.inputs):
        return {mi.modality: BandSource(i, tuple(range(1, band_counts[i] + 1))) for i, mi in enumerate(meta.inputs)}
    raise InputError(
        f"{len(band_counts)} rasters given for a model with {len(meta.inputs)} input(s) "
        f"({', '.join(mi.modality for mi in meta.inputs)}); map them with --modality NAME=RASTER:BANDS"
    )


class AlignedInputs:
    """Open rasters aligned to the first one's grid; read (bands, h, w) windows per model input."""

    def __init__(
        self,
        paths: list[str | Path],
        meta: ModelMeta,
        mapping: dict[str, BandSource] | None = None,
        resampling: Resampling = Resampling.bilinear,
        grid: Grid | None = None,  # target grid; None: the first raster's
    ) -> None:
        if not paths:
            raise InputError("no input raster given")
        self.paths = [Path(p) for p in paths]
        self.meta = meta
        self._datasets: list[rasterio.DatasetReader] = []
        self._sources: list = []
        try:
            self._open_all(resampling, grid)
            counts = [ds.count for ds in self._datasets]
            self.mapping = dict(mapping) if mapping else default_mapping(meta, counts)
            self._check_mapping(counts)
        except BaseException:
            self.close()
            raise

    def _label(self, i: int) -> str:
        return f"input raster {i + 1}" if len(self.paths) > 1 else "input raster"

    def _open_all(self, resampling: Resampling, grid: Grid | None) -> None:
        for i, p in enumerate(self.paths):
            self._datasets.append(_open(p, self._label(i)))
        ref = self._datasets[0]
        self.grid = grid or Grid(ref.crs, ref.transform, ref.width, ref.height)
        g = self.grid
        for i, ds in enumerate(self._datasets):
            if ds.crs == g.crs and ds.transform == g.transform and ds.shape == (g.height, g.width):
                self._sources.append(ds)
                continue
            if ds.crs is None or g.crs is None:
                raise InputError(
                    f"{self._label(i)} ({self.paths[i]}) and {self._label(0)} ({self.paths[0]}) are on different "
                    "grids and at least one has no CRS, so they cannot be aligned"
                )
            if not bounds_overlap(transform_bounds(ds.crs, g.crs, *ds.bounds), g.bounds):
                raise InputError(
                    f"{self._label(i)} ({self.paths[i]}, {ds.crs.to_string()}) does not overlap "
                    f"{self._label(0)} ({self.paths[0]}, {g.crs.to_string()})"
                )
            self._sources.append(
                WarpedVRT(ds, crs=g.crs, transform=g.transform, width=g.width, height=g.height, resampling=resampling)
            )
        # Mask reads double the I/O, so only read them where a band can actually be invalid.
        self._needs_mask = [
            isinstance(src, WarpedVRT) or any(MaskFlags.all_valid not in f for f in src.mask_flag_enums)
            for src in self._sources
        ]

    def _check_mapping(self, counts: list[int]) -> None:
        known = {mi.modality for mi in self.meta.inputs}
        for name in self.mapping:
            if name not in known:
                raise InputError(
                    f"modality {name!r} is not an input of model '{self.meta.name}' "
                    f"(it takes: {', '.join(sorted(known))})"
                )
        for mi in self.meta.inputs:
            src = self.mapping.get(mi.modality)
            if src is None:
                raise InputError(f"model input {mi.modality!r} ({', '.join(mi.bands)}) has no bands mapped to it")
            if src.raster >= len(self.paths):
                raise InputError(
                    f"modality {mi.modality!r} refers to raster {src.raster + 1}, "
                    f"but only {len(self.paths)} raster(s) were given"
                )
            for b in src.bands:
                if b > counts[src.raster]:
                    raise InputError(
                        f"modality {mi.modality!r} asks for band {b} of {self.paths[src.raster]}, "
                        f"which has {counts[src.raster]} band(s)"
                    )
            if len(src.bands) != mi.n_bands:
                raise InputError(
                    f"model input {mi.modality!r} takes {mi.n_bands} band(s) ({', '.join(mi.bands)}) but "
                    f"{len(src.bands)} were mapped from {self.paths[src.raster]} (bands {src})"
                )

    def read(self, window: Window) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Read a window (may extend past the raster: edge-padded) for every model input.

        Returns ({input name: float32 (bands, h, w) normalised}, valid (h, w) bool). Invalid pixels are 0 in
        the model input so padding and nodata do not leak extreme values into neighbours.
        """
        h, w = int(window.height), int(window.width)
        r0, c0 = int(window.row_off), int(window.col_off)
        rr0, cc0 = max(r0, 0), max(c0, 0)
        rr1, cc1 = min(r0 + h, self.grid.height), min(c0 + w, self.grid.width)
        inner = Window(cc0, rr0, cc1 - cc0, rr1 - rr0)
        pad = ((rr0 - r0, r0 + h - rr1), (cc0 - c0, c0 + w - cc1))
        valid = np.zeros((h, w), dtype=bool)
        valid[pad[0][0] : h - pad[0][1], pad[1][0] : w - pad[1][1]] = True
        feeds: dict[str, np.ndarray] = {}
        raw_valid = np.ones((inner.height, inner.width), dtype=bool)
        raws = {}
        for mi in self.meta.inputs:
            src_map = self.mapping[mi.modality]
            src = self._sources[src_map.raster]
            raw = src.read(list(src_map.bands), window=inner)
            if self._needs_mask[src_map.raster]:
                masks = src.read_masks(list(src_map.bands), window=inner)
                raw_valid &= np.all(masks > 0, axis=0)
            if raw.dtype.kind == "f":  # NaN / Inf are no-data always, tagged or not
                raw_valid &= np.isfinite(raw).all(axis=0)
            raws[mi.name] = (mi, raw)
        valid[pad[0][0] : h - pad[0][1], pad[1][0] : w - pad[1][1]] &= raw_valid
        for name, (mi, raw) in raws.items():
            x = mi.normalization.apply(raw)
            x[:, ~raw_valid] = 0.0
            if any(p for pp in pad for p in pp):
                x = np.pad(x, ((0, 0), *pad), mode="edge")
            feeds[name] = x
        return feeds, valid

    def close(self) -> None:
        for s in self._sources:
            if isinstance(s, WarpedVRT):
                s.close()
        for ds in self._datasets:
            ds.close()

    def __enter__(self) -> AlignedInputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
