"""Raster inputs: open one or more rasters, align them to the first one's grid, read windows per modality.

Every raster after the first is wrapped in a WarpedVRT onto the reference grid (CRS, transform, size), so a
10 m SAR scene and a 0.1 m orthophoto can feed one model. Windows are read on demand: nothing holds a
whole raster in memory. Pixels outside a raster's footprint, nodata pixels and masked pixels are invalid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from .errors import InputError
from .model_package import ModelMeta
from .value_range import Stretch, describe, plan_stretch


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


def parse_modalities(text: str) -> dict[str, BandSource]:
    """``"rgb=1,2,3; nir=2:1"`` -> {modality: BandSource}: the text form of a band mapping (the panel's and
    Processing's field, a request's ``modalities`` given as a string)."""
    mapping: dict[str, BandSource] = {}
    for item in (t.strip() for t in text.replace("\n", ";").split(";")):
        if not item:
            continue
        name, sep, spec = item.partition("=")
        name = name.strip().lower()
        if not sep or not name or not spec.strip():
            raise InputError(f"band mapping {item!r}: expected NAME=[RASTER:]BANDS (e.g. rgb=1,2,3 or ndsm=2:1)")
        if name in mapping:
            raise InputError(f"modality {name!r} is mapped twice")
        mapping[name] = BandSource.parse(spec.strip())
    return mapping


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
    a = open_raster(raster_path(path_a), f"{label_a} raster")
    b = open_raster(raster_path(path_b), f"{label_b} raster")
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
    with open_raster(raster_path(path), label) as ds:
        check_georeference(ds, path, label)
        return Grid(ds.crs, ds.transform, ds.width, ds.height)


def check_georeference(ds: rasterio.DatasetReader, path, label: str) -> None:
    """A raster whose position is unknown although it names a CRS: GDAL's default geotransform (identity: pixel
    (0, 0) at the origin, 1 unit per pixel, rows going up) with a CRS, or ground control points only. Pixel
    coordinates would be written as that CRS's metres (issue #29 items 4 and 11)."""
    gcps, gcp_crs = ds.gcps
    if ds.transform != rasterio.Affine.identity():
        return
    if gcps:
        where = f", {gcp_crs.to_string()}" if gcp_crs else ""
        raise InputError(
            f"{label} {path} is placed by {len(gcps)} ground control points{where} but has no geotransform: warp it "
            "onto a grid first (gdalwarp -tps in.tif out.tif)"
        )
    if ds.crs is not None:
        raise InputError(
            f"{label} {path} names a CRS ({ds.crs.to_string()}) but has no geotransform (pixel 0,0 at the origin, "
            "1 unit per pixel): georeference it (gdal_edit.py -a_ullr ...), or drop the CRS and pass "
            "--allow-pixel-coordinates"
        )


def palette_vrt(ds: rasterio.DatasetReader, path) -> str:
    """A GDAL VRT (XML text, opened by rasterio as a dataset) of a paletted band as red, green, blue: what
    `gdal_translate -expand rgb -of VRT` writes."""
    from html import escape  # (xml.sax.saxutils would import urllib's HTTP client)

    src = path if is_gdal_virtual(path) else Path(path).resolve()
    w, h = ds.width, ds.height
    gt = ", ".join(repr(v) for v in ds.transform.to_gdal())
    srs = f"<SRS>{escape(ds.crs.to_wkt())}</SRS>" if ds.crs else ""
    nodata = ds.nodata
    bands = []
    for k, name in enumerate(("Red", "Green", "Blue"), 1):
        nd = f"<NODATA>{nodata:g}</NODATA>" if nodata is not None else ""
        bands.append(
            f'<VRTRasterBand dataType="Byte" band="{k}"><ColorInterp>{name}</ColorInterp><ComplexSource>'
            f'<SourceFilename relativeToVRT="0">{escape(str(src))}</SourceFilename><SourceBand>1</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="0" yOff="0" xSize="{w}" '
            f'ySize="{h}"/>{nd}<ColorTableComponent>{k}</ColorTableComponent></ComplexSource></VRTRasterBand>'
        )
    head = f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}">{srs}<GeoTransform>{gt}</GeoTransform>'
    return head + "".join(bands) + "</VRTDataset>"


def is_gdal_virtual(path: str | Path) -> bool:
    """/vsizip/, /vsicurl/, /vsis3/ ... and URLs: paths GDAL opens that are not files on this disk."""
    s = str(path)
    return s.startswith("/vsi") or "://" in s


def raster_path(text: str | Path) -> str | Path:
    """A raster argument as given: GDAL virtual paths stay strings (Path would fold their double slashes)."""
    return str(text) if is_gdal_virtual(text) else Path(text)


def open_raster(path: str | Path, label: str) -> rasterio.DatasetReader:
    virtual = is_gdal_virtual(path)
    if not virtual and not Path(path).exists():
        raise InputError(f"{label} not found: {path}")
    if not virtual and Path(path).is_dir():
        raise InputError(f"{label} is a folder, not a raster: {path}")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        why = "not found or not" if virtual else "not"  # one space either way (issue #29: "is  not")
        raise InputError(f"{label} is {why} a raster GDAL can read: {path} ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_error(path, exc: BaseException) -> InputError:
    """A failed read of an opened raster (truncated file, broken compression): an input problem, exit 2."""
    cause = exc.__cause__ or exc.__context__ or exc  # rasterio's "Read failed. See previous exception"
    return InputError(f"reading {path} failed (truncated or corrupt raster?): {_first_line(cause)}")


# The names a near-infrared band goes by in band descriptions (GDAL 3.6 has no NIR colour interpretation).
NIR_NAME = re.compile(r"^(nir\d*|near[ _-]?infra[- ]?red|near[ _-]?ir|b8|infrared)$")


def same_band(description: str, band: str) -> bool:
    """A band description names a model band (case-insensitive; any of NIR_NAME for "nir")."""
    d = description.strip().lower()
    return bool(NIR_NAME.match(d)) if band.lower() == "nir" else d == band.lower()


def _by_description(meta: ModelMeta, names: list[str]) -> dict[str, BandSource] | None:
    """Each model band found by name among one raster's band descriptions (a red, green, blue, NIR file for an
    RGB model), or None where one is missing."""
    mapping = {}
    for mi in meta.inputs:
        bands = []
        for b in mi.bands:
            hits = [i + 1 for i, n in enumerate(names) if same_band(n, b)]
            if not hits:
                return None
            bands.append(hits[0])
        mapping[mi.modality] = BandSource(0, tuple(bands))
    return mapping


def default_mapping(
    meta: ModelMeta, band_counts: list[int], descriptions: list[str] | None = None
) -> dict[str, BandSource]:
    """Map model inputs to rasters when the user gave no explicit band mapping.

    One raster: its bands are taken in order across the model's inputs (RGB+NIR model on a 4-band file); with
    more bands than the model takes, by their descriptions where they name the model's bands.
    As many rasters as model inputs: raster i feeds input i with all its bands.
    """
    need = [mi.n_bands for mi in meta.inputs]
    if len(band_counts) == 1:
        named = _by_description(meta, descriptions) if descriptions and band_counts[0] > sum(need) else None
        if named is not None:
            return named
        if band_counts[0] != sum(need):
            described = " + ".join(f"{mi.modality} ({', '.join(mi.bands)})" for mi in meta.inputs)
            raise InputError(
                f"input has {band_counts[0]} band(s) but model '{meta.name}' takes {sum(need)}: {described}; "
                "map bands explicitly with --modality rgb=1,2,3"
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
        rescale: str = "auto",  # engine.value_range: values that do not fit the model's value_range
    ) -> None:
        if not paths:
            raise InputError("no input raster given")
        self.paths = [raster_path(p) for p in paths]
        self.meta = meta
        self._datasets: list[rasterio.DatasetReader] = []
        self._sources: list = []
        self.palette_messages: list[str] = []
        try:
            self._open_all(resampling, grid)
            counts = [ds.count for ds in self._datasets]
            names = [d or "" for d in self._datasets[0].descriptions]
            self.mapping = dict(mapping) if mapping else default_mapping(meta, counts, names)
            self._check_mapping(counts)
            self._plan_rescaling(rescale)
        except BaseException:
            self.close()
            raise

    def _label(self, i: int) -> str:
        return f"input raster {i + 1}" if len(self.paths) > 1 else "input raster"

    def _open_all(self, resampling: Resampling, grid: Grid | None) -> None:
        wants_rgb = any(mi.modality == "rgb" for mi in self.meta.inputs)
        for i, p in enumerate(self.paths):
            ds = open_raster(p, self._label(i))
            if wants_rgb and ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette:
                # Palette indices are no colours: classified as they are, they mean nothing (issue #29 item 8).
                expanded = rasterio.open(palette_vrt(ds, p))
                ds.close()
                ds = expanded
                self.palette_messages.append(
                    f"{self._label(i)} {Path(str(p)).name} is paletted (a colour table on band 1): read as its "
                    "red, green and blue"
                )
            self._datasets.append(ds)
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

    def _plan_rescaling(self, mode: str) -> None:
        self.stretches: dict[str, Stretch] = {}
        self.rescaling: dict[str, dict] = {}  # for the JSON result
        self.messages: list[str] = list(self.palette_messages)
        for mi in self.meta.inputs:
            if mi.value_range is None:
                continue
            src_map = self.mapping[mi.modality]
            bands = list(src_map.bands[: mi.value_range_bands or mi.n_bands])
            ds = self._datasets[src_map.raster]
            label = f"{self.paths[src_map.raster]}"
            st = plan_stretch(ds, bands, mi.value_range, mode, label)
            if st is not None:
                self.stretches[mi.name] = st
                self.rescaling[mi.name] = {"raster": label, "bands": bands, **st.as_dict()}
                self.messages.append(describe(label, bands, ds.dtypes[bands[0] - 1], st))

    COARSE_SIDE = 1024  # the data map's longest side (engine.predict skips tiles with no data in it)

    def may_have_data(self, window: Window) -> bool:
        """False only when no pixel of the window can be valid: a coarse map of where every input has data
        (each cell the maximum of the masks it covers, so a single valid pixel keeps its cell), built once."""
        if not any(self._needs_mask):
            return True
        if getattr(self, "_coarse", None) is None:
            g = self.grid
            f = max(1, int(np.ceil(max(g.height, g.width) / self.COARSE_SIDE)))
            shape = (int(np.ceil(g.height / f)), int(np.ceil(g.width / f)))
            coarse = np.ones(shape, bool)
            for src, needs in zip(self._sources, self._needs_mask, strict=True):
                if not needs:
                    continue
                # Strips of f full-resolution rows, each reduced to one coarse row by a block maximum: a
                # decimated read would sample, and miss data narrower than a cell.
                for k, r in enumerate(range(0, g.height, f)):
                    h = min(f, g.height - r)
                    try:
                        m = src.read_masks(1, window=Window(0, r, g.width, h)) > 0
                    except rasterio.errors.RasterioError as exc:
                        raise read_error(src.name, exc) from None
                    m = np.pad(m, ((0, 0), (0, shape[1] * f - g.width)))
                    coarse[k] &= m.reshape(h, shape[1], f).any(axis=(0, 2))
            self._coarse, self._coarse_f = coarse, f
        f = self._coarse_f
        r0, c0 = max(0, int(window.row_off) // f - 1), max(0, int(window.col_off) // f - 1)
        r1 = int(np.ceil((window.row_off + window.height) / f)) + 1
        c1 = int(np.ceil((window.col_off + window.width) / f)) + 1
        return bool(self._coarse[r0:r1, c0:c1].any())

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
            try:
                raw = src.read(list(src_map.bands), window=inner)
                masks = src.read_masks(list(src_map.bands), window=inner) if self._needs_mask[src_map.raster] else None
            except rasterio.errors.RasterioError as exc:
                raise read_error(self.paths[src_map.raster], exc) from None
            if masks is not None:
                raw_valid &= np.all(masks > 0, axis=0)
            if raw.dtype.kind == "f":  # NaN / Inf are no-data always, tagged or not
                raw_valid &= np.isfinite(raw).all(axis=0)
            raws[mi.name] = (mi, raw)
        valid[pad[0][0] : h - pad[0][1], pad[1][0] : w - pad[1][1]] &= raw_valid
        for name, (mi, raw) in raws.items():
            if name in self.stretches:
                raw = self.stretches[name].apply(raw)
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
