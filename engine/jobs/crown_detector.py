"""Tree crowns from a trained detector model (task "treecrowns", metadata ``detector.kind = "centernet"``).

The image is read in overlapping windows; the detector returns a crown-centre heat map and box sizes at stride
4; peaks above the score threshold become boxes. A crown belongs to the window whose core holds its centre, so
crowns cut by a window border come out whole, once. Each crown is written as the ellipse inscribed in its box
(a crown is round; the box corners are ground), with the box's score, the CHM's maximum and mean height inside
the ellipse when a CHM is given, its area (m2) and equal-area diameter. The CHM and a NIR band are optional:
without them the model is told they are missing (its "chm_missing" / "nir_missing" bands).

Per window the work is vectorised: the ellipses are built as one array of rings (shapely.polygons), areas come
from the ellipse formula in metric CRSs, and heights are read from each crown's bounding box only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import rasterio
import shapely
from rasterio.windows import Window

from ..areas import AreaCalculator
from ..errors import Cancelled, InputError
from ..raster_input import Grid, read_error
from ..resample import ground_pixel_size_m

PIXEL_TOLERANCE = 0.15


def decode(out: np.ndarray, threshold: float, stride: int, max_boxes: int = 500) -> np.ndarray:
    """(3, h, w) detector output -> (n, 5) x0 y0 x1 y1 score in input pixels (local maxima of the heat map)."""
    from scipy import ndimage

    heat = 1 / (1 + np.exp(-out[0].astype(np.float64)))
    peaks = (ndimage.maximum_filter(heat, size=3, mode="constant") == heat) & (heat >= threshold)
    ys, xs = np.nonzero(peaks)
    order = np.argsort(-heat[ys, xs])[:max_boxes]
    ys, xs = ys[order], xs[order]
    w, h = np.exp(out[1, ys, xs]), np.exp(out[2, ys, xs])
    cx, cy = (xs + 0.5) * stride, (ys + 0.5) * stride
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, heat[ys, xs]], 1)


TTA_MODES = ("d4", "flips", "none")


def _dihedral(mode: str) -> list[tuple[int, bool]]:
    """(quarter turns, horizontal flip) of each test-time view."""
    if mode == "d4":
        return [(k, f) for k in range(4) for f in (False, True)]
    if mode == "flips":
        return [(0, False), (0, True), (2, False), (2, True)]
    return [(0, False)]


def predict_views(run, x: np.ndarray, mode: str) -> np.ndarray:
    """Detector output averaged over rotated/flipped views of x (1, c, h, w) -> (3, h', w').

    Why: with a few dozen training plots the heat map's peaks move with the view; averaging the views' crown
    probabilities (and log sizes, sizes swapped back for quarter turns) found +8 F1 points on the validation
    plots (see MODEL_CARD).
    """
    heat, size = None, None
    views = _dihedral(mode)
    for k, flip in views:
        v = np.rot90(x, k, axes=(2, 3))
        v = np.ascontiguousarray(v[..., ::-1] if flip else v)
        o = run(v)
        o = o[..., ::-1] if flip else o
        o = np.rot90(o, -k, axes=(1, 2))
        if k % 2:
            o = o[[0, 2, 1]]
        p = 1 / (1 + np.exp(-o[0].astype(np.float64)))
        heat = p if heat is None else heat + p
        size = o[1:].astype(np.float64) if size is None else size + o[1:]
    heat = np.clip(heat / len(views), 1e-6, 1 - 1e-6)
    return np.concatenate([np.log(heat / (1 - heat))[None], size / len(views)])


@dataclass(frozen=True)
class ScaleSettings:
    """What the detector uses at one pixel size: its score threshold and test-time views."""

    threshold: float
    tta: str
    pixel_m: float | None = None


def scale_settings(det: dict, pixel_m: float | None) -> ScaleSettings:
    """The settings calibrated at the pixel size nearest to ``pixel_m`` (metadata ``detector.scales``: one entry
    per training scale, e.g. 0.1 m with 8 views, 0.6 m with one); a model without scales has one setting."""
    scales = det.get("scales") or []
    if not scales or pixel_m is None:
        return ScaleSettings(float(det["score_threshold"]), det.get("tta", "d4"))
    best = min(scales, key=lambda e: abs(math.log(pixel_m / float(e["pixel_m"]))))
    return ScaleSettings(float(best["score_threshold"]), best.get("tta", "none"), float(best["pixel_m"]))


@dataclass(frozen=True)
class DetectorBands:
    """Where the detector's optional bands come from in the image: RGB band numbers and the NIR band (or none)."""

    rgb: tuple[int, int, int] = (1, 2, 3)
    nir: int | None = None


def detect_crowns(
    params, meta, runtime, img, chm_ds, say, progress=None, cancelled=None, stretch=None, bands=DetectorBands()
) -> list[dict]:
    """Crowns of `img`: the image, or its view on the model's pixel grid (a WarpedVRT, engine.resample)."""
    det = meta.extra.get("detector", {})
    if det.get("kind") != "centernet":
        raise InputError(f"model '{meta.name}' is a treecrowns model without a known detector kind ({det})")
    stride = int(det.get("stride", 4))
    px = abs(img.transform.a)
    ground_px = ground_pixel_size_m(Grid(img.crs, img.transform, img.width, img.height))
    settings = scale_settings(det, ground_px)
    threshold = params.score_threshold if params.score_threshold is not None else settings.threshold
    tta = settings.tta if params.tta == "auto" else params.tta
    model_bands = meta.inputs[0].bands
    norm = meta.inputs[0].normalization
    lo, hi = pixel_range(meta)
    if ground_px is not None and not lo * (1 - PIXEL_TOLERANCE) <= ground_px <= hi * (1 + PIXEL_TOLERANCE):
        trained = f"{lo:g} m" if lo == hi else f"{lo:g}-{hi:g} m"
        say(
            f"the image's pixels are {ground_px:.3g} m, the detector was trained at {trained}: crowns of "
            "other sizes in pixels are found less reliably"
        )
    area_of = AreaCalculator(img.crs)
    crowns: list[dict] = []
    win = params.window
    halo = min(win // 4, max(16, math.ceil(params.max_crown_diameter_m / px)))
    core = win - 2 * halo
    rows, cols = range(0, img.height, core), range(0, img.width, core)
    n_win, k = len(rows) * len(cols), 0
    read = detector_read_bands(meta, bands)
    for r0 in rows:
        for c0 in cols:
            if cancelled and cancelled():
                raise Cancelled("cancelled by the user")
            k += 1
            w = Window(c0 - halo, r0 - halo, win, win).intersection(Window(0, 0, img.width, img.height))
            try:
                valid = img.read_masks(bands.rgb[0], window=w) > 0
                if not valid.any():
                    continue
                data = img.read(read, window=w).astype(np.float32)
            except rasterio.errors.RasterioError as exc:
                raise read_error(params.image, exc) from None
            if stretch is not None:  # engine.value_range: 16-bit / reflectance onto the model's 8-bit range
                data = stretch.apply(data)
            rgb, nir = data[:3], (data[3] if len(read) > 3 else None)
            chm = chm_ds.heights(w) if chm_ds is not None else None
            x = model_input(model_bands, norm, rgb, chm, nir)
            h, wd = x.shape[1:]
            x = np.pad(x, ((0, 0), (0, (-h) % 32), (0, (-wd) % 32)), mode="edge")[None]
            out = predict_views(lambda v: runtime.run({meta.inputs[0].name: v})[0], x, tta)
            boxes = decode(out, threshold, stride, max_boxes=max(500, (h * wd) // (stride * stride * 8)))
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            cr0, cc0 = r0 - int(w.row_off), c0 - int(w.col_off)
            mine = (cr0 <= cy) & (cy < cr0 + core) & (cc0 <= cx) & (cx < cc0 + core)  # else another window's
            inside = (cy < valid.shape[0]) & (cx < valid.shape[1])
            mine &= inside
            mine[mine] &= valid[cy[mine].astype(int), cx[mine].astype(int)]  # not centred in padding or no-data
            crowns += crown_records(boxes[mine], img.window_transform(w), chm, area_of)
            if progress:
                progress(0.05 + 0.9 * k / n_win, f"crowns: window {k}/{n_win}")
    return [c for c in crowns if c["area_m2"] >= params.min_area_m2]


def detector_read_bands(meta, bands: DetectorBands) -> list[int]:
    """The image bands a window read takes: RGB, and NIR where the model has a NIR input and the image one."""
    return [*bands.rgb, *([bands.nir] if "nir" in meta.inputs[0].bands and bands.nir else [])]


def pixel_range(meta) -> tuple[float, float]:
    """The pixel sizes (m) the detector was trained at: metadata ``detector.pixel_size_range_m``, else its one
    pixel size."""
    rng = meta.extra.get("detector", {}).get("pixel_size_range_m")
    if rng:
        return float(rng[0]), float(rng[1])
    return float(meta.pixel_size_m), float(meta.pixel_size_m)


def model_input(bands: tuple[str, ...], norm, rgb, chm, nir) -> np.ndarray:
    """The normalised model input. An absent optional band is 0 after normalisation, as in training
    (export.train.crown_data.make_input): its raw 0 would normalise to -0.99 for an 8-bit NIR band."""
    x = norm.apply(_channels(bands, rgb, chm, nir))
    for band, value in (("chm", chm), ("nir", nir)):
        if value is None and band in bands:
            x[bands.index(band)] = 0.0
    return x


def _channels(bands: tuple[str, ...], rgb: np.ndarray, chm: np.ndarray | None, nir: np.ndarray | None) -> np.ndarray:
    """The model's raw input bands in its order (before normalisation): the image's, and the optional ones with
    their "missing" flags."""
    zero = np.zeros(rgb.shape[1:], np.float32)
    one = np.ones(rgb.shape[1:], np.float32)
    have = {"red": rgb[0], "green": rgb[1], "blue": rgb[2],
            "chm": chm if chm is not None else zero, "chm_missing": zero if chm is not None else one,
            "nir": nir if nir is not None else zero, "nir_missing": zero if nir is not None else one}  # fmt: skip
    missing = [b for b in bands if b not in have]
    if missing:
        raise InputError(f"the detector asks for bands the engine cannot give: {', '.join(missing)}")
    return np.stack([have[b] for b in bands])


_RING = np.stack([np.cos(np.linspace(0, 2 * np.pi, 33)), np.sin(np.linspace(0, 2 * np.pi, 33))], 1)


def crown_records(boxes: np.ndarray, transform, chm: np.ndarray | None, area_of) -> list[dict]:
    """(n, 5) boxes of one window -> crown records: the inscribed ellipses built at once (one array of rings),
    heights from each crown's bounding box of the CHM."""
    if len(boxes) == 0:
        return []
    x0, y0, x1, y1, score = boxes.T
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = np.maximum(0.5, (x1 - x0) / 2), np.maximum(0.5, (y1 - y0) / 2)
    col = cx[:, None] + rx[:, None] * _RING[None, :, 0]
    row = cy[:, None] + ry[:, None] * _RING[None, :, 1]
    t = transform
    xs, ys = t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f
    if t.a * t.e - t.b * t.d < 0:  # north-up: rows run south, so the ring is turned to run anticlockwise on the map
        xs, ys = xs[:, ::-1], ys[:, ::-1]
    geoms = shapely.polygons(np.stack([xs, ys], -1))
    areas = area_of.many(geoms)
    top_x, top_y = t.a * cx + t.b * cy + t.c, t.d * cx + t.e * cy + t.f
    hmax = hmean = [None] * len(boxes)
    if chm is not None:
        hmax, hmean = _heights(chm, cx, cy, rx, ry)
    return [
        {
            "geom": geoms[i],
            "score": round(float(score[i]), 4),
            "height_max": hmax[i],
            "height_mean": hmean[i],
            "area_m2": round(float(areas[i]), 3),
            "diameter_m": round(2 * math.sqrt(float(areas[i]) / math.pi), 3),
            "top_x": float(top_x[i]),
            "top_y": float(top_y[i]),
            "method": "detector",
        }
        for i in range(len(boxes))
    ]


def _heights(chm: np.ndarray, cx, cy, rx, ry) -> tuple[list, list]:
    """CHM maximum and mean inside each ellipse (pixel centres), None where no pixel centre falls inside."""
    hmax, hmean = [], []
    h, w = chm.shape
    for x, y, a, b in zip(cx, cy, rx, ry, strict=True):
        r0, r1 = max(0, int(y - b)), min(h, int(math.ceil(y + b)) + 1)
        c0, c1 = max(0, int(x - a)), min(w, int(math.ceil(x + a)) + 1)
        yy, xx = np.ogrid[r0:r1, c0:c1]
        inside = ((xx + 0.5 - x) / a) ** 2 + ((yy + 0.5 - y) / b) ** 2 <= 1
        v = chm[r0:r1, c0:c1][inside]
        hmax.append(round(float(v.max()), 2) if v.size else None)
        hmean.append(round(float(v.mean()), 2) if v.size else None)
    return hmax, hmean
