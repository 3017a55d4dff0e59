"""Individual tree crowns as polygons (score, height, area, diameter).

1. Vegetation probability from a land-cover model on the RGB image (its class named vegetation/tree/woodland/forest),
   through the same tiled engine path as land cover.
2. Candidate tree tops: local maxima of the canopy height model (CHM / nDSM) when one is given, else of the distance
   to the vegetation edge (crown centres of a vegetation mask), at least ``min_distance_m`` apart.
3. Crowns: marker-controlled watershed from the tree tops over the vegetation (and CHM > ``min_height_m``) mask, or,
   with ``sam`` (a folder written by `python -m export sam`), SAM's mask for a point prompt at each tree top.
4. The image is processed in overlapping windows; a crown belongs to the window whose core holds its tree top, so
   crowns cut by a window border come out whole and once. Remaining duplicates are removed by IoU (NMS).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry import mapping

from .. import task_options as ui
from ..areas import AreaCalculator
from ..errors import Cancelled, InputError
from ..model_choice import choose_treecrown_model, rgb_bands
from ..model_package import load_model_package
from ..outputs import geotiff_profile
from ..predict import predict_blocks
from ..raster_input import AlignedInputs, BandSource, Grid, open_raster, same_band
from ..resample import TOLERANCE as RESAMPLE_TOLERANCE
from ..resample import ground_pixel_size_m
from ..resample import plan as plan_resampling
from ..runtime import RuntimeOptions, make_runtime
from ..styles import crowns_qml, treetops_qml
from ..tiling import TileGrid, fit_overlap
from ..value_range import describe, plan_stretch
from ..vector_formats import driver_for, vector_sink
from .common import JsonResult, Messages, atomic_outputs, scratch_folder
from .crown_detector import TTA_MODES, DetectorBands, pixel_range
from .crown_shapes import SamPrompter, crown_record, suppress_overlaps, tree_tops, watershed_regions
from .landcover import GDAL_CACHE_MB

VEGETATION_NAMES = ("vegetation", "tree", "trees", "woodland", "forest", "canopy")
SCHEMA = {
    "geometry": "Polygon",
    "properties": {
        "score": "float",
        "height_max": "float",
        "height_mean": "float",
        "area_m2": "float",
        "diameter_m": "float",
        "top_x": "float",
        "top_y": "float",
        "method": "str",
    },
}
TREETOPS_LAYER = "treetops"
TREETOPS_SCHEMA = {  # one point per crown: what a tree inventory counts
    "geometry": "Point",
    "properties": {
        "score": "float",
        "height_m": "float",  # the CHM's maximum in the crown (empty without a CHM)
        "crown_diameter_m": "float",
        "crown_area_m2": "float",
        "method": "str",
    },
}


@dataclass
class TreeCrownParams:
    image: Path
    out_dir: Path
    chm: Path | None = None
    chm_scale: float = 1.0  # CHM values x this = metres (0.3048: a CHM in feet)
    chm_nodata: float | None = None  # a CHM no-data value its file does not tag (e.g. -9999)
    # A crown detector (task "treecrowns"; default: the shipped one for the pixel size, engine.model_choice), or a
    # land-cover model whose vegetation mask feeds the watershed / SAM method.
    model: Path | None = None
    vegetation_class: str | None = None  # default: the first class named like vegetation/tree/woodland
    sam: Path | None = None  # folder with sam.json, encoder.onnx, decoder.onnx
    modalities: dict[str, BandSource] = field(default_factory=dict)
    name: str = "treecrowns"
    crowns_path: Path | None = None
    vegetation_threshold: float = 0.5
    min_height_m: float = 2.0
    min_distance_m: float = 3.0  # between tree tops; about the smallest crown radius expected
    min_area_m2: float = 2.0
    max_crown_diameter_m: float = 30.0  # sets the window overlap, so no crown is cut twice
    window: int = 1024  # pixels
    iou_nms: float = 0.5
    score_threshold: float | None = None  # detector models: None = the threshold in the model's metadata
    rescale: str = "auto"  # values beyond the model's value_range (engine.value_range: auto, percentile, off)
    resample: str = "auto"  # detector: read the image at the model's pixel size when it differs by > 15 %
    # Detector models: test-time views averaged: d4 (8 turns/flips), flips (4), none (1; 8x faster), or auto: what
    # the model's metadata calibrated for the pixel size (the shipped one: d4 at 0.1 m, one view at 0.6 m).
    tta: str = "auto"
    treetops_path: Path | None = None  # default: the crowns' path with "_treetops" added
    batch: int = 4
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)


OPTIONS = (
    ui.Option("image", "--input", "RGB image", "RGB image (a file or any GDAL path)", short="-i", widget="raster",
           name="INPUT"),
    ui.Option("chm", "--chm", "Canopy height model (optional)", "canopy height model / nDSM in metres (same CRS as "
           "the image)", widget="raster"),
    ui.Option("chm_scale", "--chm-scale", "CHM units to metres (0.3048: feet)", "CHM values x this = metres "
           "(default: %(default)s; 0.3048 for a CHM in feet)", minimum=0.0001, advanced=True),
    ui.Option("chm_nodata", "--chm-nodata", "CHM no-data value (if untagged)", "a CHM no-data value its file "
           "does not tag, e.g. -9999", advanced=True),
    ui.Option("model", "--model", "Crown detector, or a land-cover model for the watershed method (empty: the "
           "shipped detector for the pixel size)", "crown detector (task treecrowns; default: the shipped 0.1 m one, "
           "the two-scale one for pixels of 0.25 m or more), or a land-cover model "
           "whose vegetation mask feeds the watershed method (e.g. models/rgb_index_baseline.onnx)", widget="model",
           file_filter=ui.MODEL_FILTER),
    ui.Option("vegetation_class", "--vegetation-class", "Vegetation class of a land-cover model (empty: by name)",
           "class of the model to use as vegetation (default: by name)", advanced=True),
    ui.Option("sam", "--sam", "SAM folder (optional)", "SAM folder from `python -m export sam` (default: watershed)",
           widget="folder"),
    ui.band_mapping("map bands to the model's input, e.g. rgb=1,2,3"),
    ui.DEVICE,
    ui.Option("min_height_m", "--min-height", "Minimum tree height (m, CHM)", "CHM: lowest tree, m (default: "
           "%(default)s)", minimum=0, name="MIN_HEIGHT"),
    ui.Option("min_distance_m", "--min-distance", "Minimum distance between tree tops (m)",
           "between tree tops, m (default: %(default)s)", minimum=0.1, name="MIN_DISTANCE"),
    ui.Option("min_area_m2", "--min-area", "Smallest crown (m²)", "smallest crown, m2 (default: %(default)s)",
           minimum=0, name="MIN_AREA", advanced=True),
    ui.Option("score_threshold", "--score-threshold", "Detector: lowest crown score (-1: the model's, chosen on "
           "validation)", "detector models: lowest crown score (default: the model's)", unset=-1, minimum=-1,
           maximum=1),
    ui.Option("tta", "--tta", "Views averaged (auto: the model's choice for the pixel size; d4: 8 turns/flips; "
           "none: 8x faster)", "detector models: views averaged, auto = the model's choice for the pixel size "
           "(default; the shipped detector: d4 at 0.1 m, none at 0.6 m), d4 = 8 turns/flips, none = 8x faster",
           choices=("auto", *TTA_MODES), advanced=True),
    ui.resample_option("detector: read the image at its own pixel size inside the model's range (0.1-0.6 m), "
                    "else at the range's nearer end (default auto; off: as it is)"),
    ui.RESCALE,
    ui.out_folder("crowns_path"),  # the treetops default to beside the crowns
    ui.name_option(),
    ui.Option("crowns_path", "--out-crowns", "Tree crowns", "crowns layer path (default: OUT/NAME.gpkg)",
           widget="output_vector", name="OUTPUT", result="crowns", suffix=".gpkg"),
    ui.Option("treetops_path", "--out-treetops", "Treetops", "treetops point layer path (default: the crowns' "
           "path with _treetops, same format)", widget="output_points", name="OUTPUT_TREETOPS", result="treetops",
           suffix="_treetops.gpkg"),
)  # fmt: skip


@dataclass
class TreeCrownResult(JsonResult):
    crowns: Path
    layer: str
    n_crowns: int
    method: str
    seconds: float
    messages: list[str] = field(default_factory=list)
    rescaling: dict = field(default_factory=dict)  # model input -> the stretch applied (engine.value_range)
    device_detail: str = ""  # runtime.device_detail: what ran, and why not a GPU
    treetops: Path | None = None  # one point per crown (layer TREETOPS_LAYER)
    treetops_layer: str = TREETOPS_LAYER

    def lines(self) -> list[str]:
        return [f"crowns: {self.crowns} (layer '{self.layer}', {self.n_crowns} crowns, {self.method}), "
                f"{self.seconds:.1f} s",
                *([f"treetops: {self.treetops} (layer '{self.treetops_layer}')"] if self.treetops else []),
                *([f"ran on:      {self.device_detail}"] if self.device_detail else [])]  # fmt: skip


def _output_paths(params) -> tuple[Path, Path]:
    """The crowns' path (as given, or OUT/NAME.gpkg) and the treetops' (as given, or beside the crowns with
    "_treetops" added, in their format); each format checked before anything runs."""
    crowns = Path(params.crowns_path) if params.crowns_path else ui.output_paths(params, OPTIONS, ("crowns_path",))[0]
    tops = Path(params.treetops_path) if params.treetops_path else crowns.with_name(
        f"{crowns.stem}_treetops{crowns.suffix}")  # fmt: skip
    driver_for(crowns, "crowns output")
    driver_for(tops, "treetops output")
    if tops.resolve() == crowns.resolve():
        raise InputError(f"--out-treetops {tops} is the crowns' own path: give it another name")
    return crowns, tops


def _vegetation_index(names: list[str], wanted: str | None) -> int:
    if wanted:
        for i, n in enumerate(names):
            if n.lower() == wanted.lower():
                return i
        raise InputError(f"the model has no class {wanted!r} (classes: {', '.join(names)})")
    for i, n in enumerate(names):
        if any(v in n.lower() for v in VEGETATION_NAMES):
            return i
    raise InputError(
        f"the model has no vegetation/tree class (classes: {', '.join(names)}); name one with --vegetation-class"
    )


MAX_PLAUSIBLE_HEIGHT_M = 120.0  # the tallest trees are ~115 m: a CHM above that is a DSM, an image or feet


UNTAGGED_NODATA = -1000.0  # heights at or below: a no-data value nobody tagged (-9999, -3.4e38)
FEET = 0.3048


class ChmSource:
    """The CHM as heights in metres on the image's grid: no-data (tagged, or given with --chm-nodata) and
    negatives read as 0 (ground), values scaled by --chm-scale (0.3048: a CHM in feet)."""

    def __init__(self, ds, scale: float = 1.0, nodata: float | None = None, src=None):
        self.ds, self.scale, self.nodata, self._src = ds, scale, nodata, src

    def heights(self, window) -> np.ndarray:
        v = self.ds.read(1, window=window, masked=True)
        if self.nodata is not None:
            v = np.ma.masked_where(v == self.nodata, v, copy=False)
        h = v.astype(np.float32).filled(0) * np.float32(self.scale)
        h[~np.isfinite(h) | (h < 0)] = 0
        return h

    def close(self) -> None:
        self.ds.close()
        if self._src is not None:
            self._src.close()


def _check_heights(ds, chm: Path, scale: float, nodata: float | None, say) -> None:
    """A CHM is one band of heights above ground in metres; anything else (an RGB layer, a DSM with elevations
    above sea level, feet, untagged no-data, an empty or flat raster) would give nonsense crowns or none: refuse
    it in one line with the fix, or say what looks wrong."""
    if ds.count != 1:
        raise InputError(f"CHM {chm} has {ds.count} bands: a canopy height model is one band of heights in metres")
    h, w = min(ds.height, 1024), min(ds.width, 1024)  # a decimated read: statistics, not every pixel
    v = ds.read(1, out_shape=(h, w), masked=True).astype(np.float64).filled(np.nan)
    v = v[np.isfinite(v)]
    if nodata is not None:
        v = v[v != nodata]
    if v.size == 0:
        raise InputError(f"CHM {chm} has no valid heights (all no-data)")
    untagged = v <= UNTAGGED_NODATA
    if untagged.any():
        value = float(np.median(v[untagged]))
        raise InputError(
            f"CHM {chm}: {untagged.mean():.1%} of it is {value:g}, a no-data value that is not tagged as one: "
            f"add --chm-nodata {value:g} (or tag it: gdal_edit.py -a_nodata {value:g} {Path(str(chm)).name})"
        )
    v = v * scale
    top = float(np.percentile(v, 99.9))
    if top > MAX_PLAUSIBLE_HEIGHT_M:
        feet = top * FEET <= MAX_PLAUSIBLE_HEIGHT_M and scale == 1.0
        hint = (f": if it is in feet, add --chm-scale {FEET}" if feet else " (a DSM or an image?): give heights "
                "above ground in metres")  # fmt: skip
        raise InputError(f"CHM {chm}: its highest values reach {top:.0f} m, not plausible tree heights{hint}")
    below = float((v < -1.0).mean())
    if below > 0.2:
        raise InputError(
            f"CHM {chm}: {below:.0%} of its heights are below -1 m: a canopy height model is height above ground "
            "(a DSM minus a terrain model of the same date and datum)"
        )
    if below > 0.01:
        say(f"CHM {Path(str(chm)).name}: {below:.1%} of its heights are below -1 m (read as ground, 0 m)")
    nonzero = v[np.abs(v) > 0.01]
    if nonzero.size:
        vals, counts = np.unique(nonzero, return_counts=True)
        k = int(counts.argmax())
        if counts[k] > 0.1 * v.size:
            say(
                f"CHM {Path(str(chm)).name}: {counts[k] / v.size:.0%} of it is exactly {vals[k] / scale:g} (a filled "
                f"block?): if that is no data, add --chm-nodata {vals[k] / scale:g}"
            )
    p99 = float(np.percentile(v, 99))
    if p99 < 0.5:
        raise InputError(f"CHM {chm} is flat (99% of it below {p99:.2f} m): no tree can be found in it")


def _open_chm(params, image_ds, say) -> ChmSource:
    chm = params.chm
    if not Path(chm).exists():
        raise InputError(f"CHM not found: {chm}")
    if params.chm_scale <= 0:
        raise InputError(f"--chm-scale must be above 0, not {params.chm_scale:g} (0.3048: a CHM in feet)")
    try:
        ds = rasterio.open(chm)
    except rasterio.errors.RasterioIOError:
        raise InputError(f"CHM is not a raster GDAL can read: {chm}") from None
    if ds.crs != image_ds.crs:
        crs = ds.crs.to_string() if ds.crs else "no CRS"
        ds.close()
        raise InputError(
            f"CHM {chm} is in {crs} but the image is in {image_ds.crs.to_string()}: "
            "reproject the CHM to the image's CRS first"
        )
    try:
        _check_heights(ds, chm, params.chm_scale, params.chm_nodata, say)
    except InputError:
        ds.close()
        raise
    if ds.transform == image_ds.transform and ds.shape == image_ds.shape:
        return ChmSource(ds, params.chm_scale, params.chm_nodata)
    vrt = WarpedVRT(
        ds,
        transform=image_ds.transform,
        width=image_ds.width,
        height=image_ds.height,
        resampling=rasterio.enums.Resampling.bilinear,
        **({"src_nodata": params.chm_nodata} if params.chm_nodata is not None else {}),
    )
    return ChmSource(vrt, params.chm_scale, params.chm_nodata, src=ds)


def run_treecrowns(
    params: TreeCrownParams,
    progress: Callable[[float, str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    notify: Callable[[str], None] | None = None,
) -> TreeCrownResult:
    t0 = time.perf_counter()
    say = Messages(notify)

    choice = choose_treecrown_model(params.image, params.model)
    if choice.message:
        say(choice.message)
    model_path = choice.model
    package = load_model_package(model_path)
    meta = package.meta
    final, tops_final = _output_paths(params)
    if meta.task == "treecrowns":
        return _run_detector(params, package, final, tops_final, say, t0, progress, cancelled)
    if meta.task != "landcover":
        raise InputError(f"tree crowns need a land-cover model for the vegetation mask; '{meta.name}' is {meta.task}")
    veg_idx = _vegetation_index([c.name for c in meta.classes], params.vegetation_class)
    method = "sam" if params.sam else "watershed"

    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024),
        AlignedInputs([params.image], meta, params.modalities or None, rescale=params.rescale) as inputs,
    ):
        for msg in inputs.messages:
            say(msg)
        grid = inputs.grid
        img_ds = inputs._datasets[0]
        chm_ds = _open_chm(params, img_ds, say) if params.chm else None
        px = grid.pixel_size[0]
        area_of = AreaCalculator(grid.crs)
        sam = SamPrompter(params.sam, ["CPUExecutionProvider"]) if params.sam else None
        try:
            with atomic_outputs(final.parent) as outputs, scratch_folder(final.parent) as work:
                # 1. vegetation probability, streamed to a temporary GeoTIFF
                veg_path = work / "vegetation.tif"
                runtime = make_runtime(package.path, meta.output_name, params.runtime, notify=say)
                tile = meta.tile_size
                tiles = TileGrid(grid.height, grid.width, tile, fit_overlap(tile, meta.overlap))
                with rasterio.open(veg_path, "w", **geotiff_profile(grid, "float32", -1.0, tiles.rows.stride)) as vds:
                    for b in predict_blocks(
                        inputs,
                        runtime.run,
                        meta,
                        tiles,
                        params.batch,
                        (lambda f, m: progress(0.5 * f, m)) if progress else None,
                        cancelled,
                    ):
                        p = b.probs[veg_idx].copy()
                        p[~b.valid] = -1.0
                        h, w = b.valid.shape
                        vds.write(p, 1, window=Window(b.col, b.row, w, h))
                # 2-4. windows: tops, crowns, ownership by core
                win = sam.size if sam else params.window
                halo = min(win // 4, max(16, math.ceil(params.max_crown_diameter_m / px)))
                core = win - 2 * halo
                if core < 16:
                    raise InputError(
                        f"window {win} px is too small for crowns up to {params.max_crown_diameter_m} m at {px:g} m/px"
                    )
                min_dist = max(1, round(params.min_distance_m / px))
                crowns: list[dict] = []
                rows = list(range(0, grid.height, core))
                cols = list(range(0, grid.width, core))
                n_win, k = len(rows) * len(cols), 0
                with rasterio.open(veg_path) as vds:
                    for r0 in rows:
                        for c0 in cols:
                            if cancelled and cancelled():
                                raise Cancelled("cancelled by the user")
                            k += 1
                            w = Window(c0 - halo, r0 - halo, win, win).intersection(
                                Window(0, 0, grid.width, grid.height)
                            )
                            veg = vds.read(1, window=w)
                            valid = veg >= 0
                            mask = veg > params.vegetation_threshold
                            chm = None
                            if chm_ds is not None:
                                chm = chm_ds.heights(w)
                                mask &= chm > params.min_height_m
                                surface = ndimage.gaussian_filter(chm, 1.0)
                            else:
                                mask = ndimage.binary_opening(mask, iterations=2)
                                surface = ndimage.gaussian_filter(ndimage.distance_transform_edt(mask), 2.0)
                            tops = tree_tops(surface, mask & valid, min_dist)
                            # core of this window, in window coordinates
                            cr0, cc0 = r0 - int(w.row_off), c0 - int(w.col_off)
                            own = [(r, c) for r, c in tops if cr0 <= r < cr0 + core and cc0 <= c < cc0 + core]
                            if not own:
                                continue
                            transform = vds.window_transform(w)
                            if sam is None:
                                markers = np.zeros(mask.shape, np.int32)
                                for i, (r, c) in enumerate(tops, start=1):
                                    markers[r, c] = i
                                labels = watershed_regions(surface, markers, mask)
                                owned = {int(markers[r, c]): (r, c) for r, c in own}
                                pieces = [(labels == lab, (r, c), None) for lab, (r, c) in owned.items()]
                            else:
                                rgb = img_ds.read([1, 2, 3], window=w).astype(np.float32)
                                pieces = [(m, rc, s) for (m, s), rc in zip(sam.masks(rgb, own), own, strict=True)]
                            for region, (r, c), score in pieces:
                                crown = crown_record(region, (r, c), transform, veg, chm, area_of, score, method)
                                if crown and crown["area_m2"] >= params.min_area_m2:
                                    crowns.append(crown)
                            if progress:
                                progress(0.5 + 0.45 * k / n_win, f"crowns: window {k}/{n_win}")
                n = _commit_crowns(crowns, params.iou_nms, outputs, final, tops_final, grid.crs)
        finally:
            if chm_ds is not None:
                chm_ds.close()
    if progress:
        progress(1.0, "done")
    seconds = round(time.perf_counter() - t0, 3)
    return TreeCrownResult(final, "crowns", n, method, seconds, say.items, inputs.rescaling, runtime.device_detail,
                           tops_final)  # fmt: skip


def _commit_crowns(crowns: list[dict], iou: float, outputs, final: Path, tops_final: Path, crs) -> int:
    """What both crown methods end with: overlaps suppressed, the crowns and their treetops with their styles,
    committed together."""
    crowns = suppress_overlaps(crowns, iou)
    wkt = crs.to_wkt() if crs else None
    with vector_sink(outputs.temp_for(final), "crowns", SCHEMA, wkt) as sink:
        sink.writerecords(
            {"geometry": mapping(cr["geom"]), "properties": {k: v for k, v in cr.items() if k != "geom"}}
            for cr in crowns
        )  # fmt: skip
    with vector_sink(outputs.temp_for(tops_final), TREETOPS_LAYER, TREETOPS_SCHEMA, wkt) as sink:
        sink.writerecords(
            {"geometry": {"type": "Point", "coordinates": (cr["top_x"], cr["top_y"])},
             "properties": {"score": cr["score"], "height_m": cr["height_max"], "crown_diameter_m": cr["diameter_m"],
                            "crown_area_m2": cr["area_m2"], "method": cr["method"]}}
            for cr in crowns
        )  # fmt: skip
    outputs.temp_for(final.with_suffix(".qml")).write_text(crowns_qml())
    outputs.temp_for(tops_final.with_suffix(".qml")).write_text(treetops_qml())
    outputs.commit()
    return len(crowns)


def _detector_bands(params, src, meta, say) -> DetectorBands:
    """The image's RGB bands and its NIR band for the detector: from the band mapping (rgb=..., nir=...), else
    from the bands' descriptions (a band described as near-infrared, raster_input.NIR_NAME), else bands 1-3 and
    no NIR. A NIR band is only used where the model has a NIR input."""
    mapping = params.modalities or {}
    unknown = set(mapping) - {"rgb", "nir"}
    if unknown:
        raise InputError(f"the crown detector's band mapping takes rgb and nir, not {', '.join(sorted(unknown))}")
    names = [(d or "").strip().lower() for d in src.descriptions]
    nir = mapping["nir"].bands[0] if "nir" in mapping else next(
        (i + 1 for i, n in enumerate(names) if same_band(n, "nir")), None)  # fmt: skip
    rgb = mapping["rgb"].bands if "rgb" in mapping else rgb_bands(names, nir)
    if rgb is None or len(rgb) != 3:
        raise InputError(f"{params.image} has {src.count} band(s): the crown detector needs red, green, blue")
    for b in (*rgb, *([nir] if nir else [])):
        if not 1 <= b <= src.count:
            raise InputError(f"{params.image} has {src.count} band(s): no band {b} (--bands)")
    if nir is not None and "nir" not in meta.inputs[0].bands:
        say(f"band {nir} of {Path(str(params.image)).name} is near-infrared, but this detector takes RGB only")
        nir = None
    elif nir is not None:
        say(f"the detector reads rgb={','.join(map(str, rgb))} and nir={nir} of {Path(str(params.image)).name}")
    return DetectorBands(tuple(rgb), nir)


def _detector_pixel(px: float | None, meta, mode: str) -> tuple[float | None, str | None]:
    """The pixel size the detector reads the image at: the image's own where it lies in the model's trained
    range (metadata detector.pixel_size_range_m, 15 % tolerance), else the nearer end of that range."""
    lo, hi = pixel_range(meta)
    if px is None or mode == "off" or lo == hi:
        return (meta.pixel_size_m if lo == hi else px), None
    if lo * (1 - RESAMPLE_TOLERANCE) <= px <= hi * (1 + RESAMPLE_TOLERANCE):
        return px, f"input {px:.3g} m is within the detector's range {lo:g}-{hi:g} m: read at its own pixel size"
    return (lo if px < lo else hi), None


def _run_detector(params, package, final: Path, tops_final: Path, say, t0, progress, cancelled) -> TreeCrownResult:
    """Crowns from a trained detector model (engine.jobs.crown_detector)."""
    from .crown_detector import detect_crowns, detector_read_bands

    if params.sam:
        raise InputError("--sam shapes crowns from the vegetation mask's tree tops; a detector model needs no SAM")
    meta = package.meta
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024), _open_image(params.image) as src:
        bands = _detector_bands(params, src, meta, say)
        # Crowns are vectors: the detector reads the image on a grid of a pixel size it was trained at (a crown
        # must be about as many pixels wide as in training) and the crowns come out in map coordinates, with
        # nothing to warp back.
        grid = Grid(src.crs, src.transform, src.width, src.height)
        target, in_range = _detector_pixel(ground_pixel_size_m(grid), meta, params.resample)
        plan = plan_resampling(grid, target, params.resample)
        g = plan.model_grid
        img = (
            WarpedVRT(
                src, crs=g.crs, transform=g.transform, width=g.width, height=g.height, resampling=plan.read_resampling
            )  # fmt: skip
            if plan.active
            else src
        )
        say(in_range or plan.message())
        mi = meta.inputs[0]
        read = detector_read_bands(meta, bands)
        stretch = None
        if mi.value_range is not None:
            stretch = plan_stretch(img, read, mi.value_range, params.rescale, str(params.image))
        chm_ds = _open_chm(params, img, say) if params.chm else None
        if stretch is not None:
            say(describe(str(params.image), read, img.dtypes[0], stretch))
        try:
            runtime = make_runtime(package.path, meta.output_name, params.runtime, notify=say)
            with atomic_outputs(final.parent) as outputs:
                crowns = detect_crowns(params, meta, runtime, img, chm_ds, say, progress, cancelled, stretch, bands)
                n = _commit_crowns(crowns, params.iou_nms, outputs, final, tops_final, img.crs)
        finally:
            if chm_ds is not None:
                chm_ds.close()
            if img is not src:
                img.close()
    if progress:
        progress(1.0, "done")
    rescaling = {mi.name: {"raster": str(params.image), "bands": read, **stretch.as_dict()}} if stretch else {}
    seconds = round(time.perf_counter() - t0, 3)
    return TreeCrownResult(final, "crowns", n, "detector", seconds, say.items, rescaling, runtime.device_detail,
                           tops_final)  # fmt: skip


def _open_image(path):
    return open_raster(path, "image")
