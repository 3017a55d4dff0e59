"""Tree crowns from a trained detector model (task "treecrowns", metadata ``detector.kind = "centernet"``).

The image is read in overlapping windows; the detector returns a crown-centre heat map and box sizes at stride
4; peaks above the score threshold become boxes. A crown belongs to the window whose core holds its centre, so
crowns cut by a window border come out whole, once. Each crown is written as the ellipse inscribed in its box
(a crown is round; the box corners are ground), with the box's score, the CHM's maximum and mean height inside
the ellipse when a CHM is given, its area (m2) and equal-area diameter. The CHM is optional: without one the
model is told it is missing (its "chm_missing" band).
"""

from __future__ import annotations

import math

import numpy as np
import rasterio
import shapely
from rasterio.windows import Window
from shapely import affinity

from ..areas import AreaCalculator
from ..errors import Cancelled, InputError
from ..raster_input import read_error

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


def detect_crowns(params, meta, runtime, img, chm_ds, say, progress=None, cancelled=None, stretch=None) -> list[dict]:
    """Crowns of `img`: the image, or its view on the model's pixel grid (a WarpedVRT, engine.resample)."""
    det = meta.extra.get("detector", {})
    if det.get("kind") != "centernet":
        raise InputError(f"model '{meta.name}' is a treecrowns model without a known detector kind ({det})")
    stride = int(det.get("stride", 4))
    threshold = params.score_threshold if params.score_threshold is not None else float(det["score_threshold"])
    norm = meta.inputs[0].normalization
    crowns: list[dict] = []
    px = abs(img.transform.a)
    if meta.pixel_size_m and img.crs is not None and abs(px / meta.pixel_size_m - 1) > PIXEL_TOLERANCE:
        say(
            f"the image's pixels are {px:g} m, the detector was trained at {meta.pixel_size_m:g} m: crowns of "
            "other sizes in pixels are found less reliably"
        )
    area_of = AreaCalculator(img.crs)
    win = params.window
    halo = min(win // 4, max(16, math.ceil(params.max_crown_diameter_m / px)))
    core = win - 2 * halo
    rows, cols = range(0, img.height, core), range(0, img.width, core)
    n_win, k = len(rows) * len(cols), 0
    for r0 in rows:
        for c0 in cols:
            if cancelled and cancelled():
                raise Cancelled("cancelled by the user")
            k += 1
            w = Window(c0 - halo, r0 - halo, win, win).intersection(Window(0, 0, img.width, img.height))
            try:
                rgb = img.read([1, 2, 3], window=w).astype(np.float32)
                valid = img.read_masks(1, window=w) > 0
            except rasterio.errors.RasterioError as exc:
                raise read_error(params.image, exc) from None
            if stretch is not None:  # engine.value_range: 16-bit / reflectance onto the model's 8-bit range
                rgb = stretch.apply(rgb)
            if not valid.any():
                continue
            chm = None
            if chm_ds is not None:
                chm = chm_ds.heights(w)
            missing = np.full(rgb.shape[1:], 0.0 if chm is not None else 1.0, np.float32)
            raw = np.concatenate([rgb, (chm if chm is not None else np.zeros_like(missing))[None], missing[None]])
            x = norm.apply(raw)
            h, wd = x.shape[1:]
            x = np.pad(x, ((0, 0), (0, (-h) % 32), (0, (-wd) % 32)), mode="edge")[None]
            out = predict_views(lambda v: runtime.run({meta.inputs[0].name: v})[0], x, params.tta)
            boxes = decode(out, threshold, stride)
            transform = img.window_transform(w)
            cr0, cc0 = r0 - int(w.row_off), c0 - int(w.col_off)
            for x0, y0, x1, y1, score in boxes:
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                if not (cr0 <= cy < cr0 + core and cc0 <= cx < cc0 + core):
                    continue  # another window's crown
                if not (cy < valid.shape[0] and cx < valid.shape[1] and valid[int(cy), int(cx)]):
                    continue  # centred in the padding or on no-data
                crowns.append(_crown(x0, y0, x1, y1, score, transform, chm, area_of))
            if progress:
                progress(0.05 + 0.9 * k / n_win, f"crowns: window {k}/{n_win}")
    return [c for c in crowns if c["area_m2"] >= params.min_area_m2]


def _crown(x0, y0, x1, y1, score, transform, chm, area_of) -> dict:
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max(0.5, (x1 - x0) / 2), max(0.5, (y1 - y0) / 2)
    ellipse = affinity.scale(shapely.Point(cx, cy).buffer(1.0, quad_segs=8), rx, ry)
    t = transform
    geom = affinity.affine_transform(ellipse, [t.a, t.b, t.d, t.e, t.c, t.f])
    height_max = height_mean = None
    if chm is not None:
        yy, xx = np.ogrid[: chm.shape[0], : chm.shape[1]]
        inside = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1
        if inside.any():
            height_max, height_mean = round(float(chm[inside].max()), 2), round(float(chm[inside].mean()), 2)
    area = area_of(geom)
    top_x, top_y = t * (cx, cy)
    return {
        "geom": geom,
        "score": round(float(score), 4),
        "height_max": height_max,
        "height_mean": height_mean,
        "area_m2": round(area, 3),
        "diameter_m": round(2 * math.sqrt(area / math.pi), 3),
        "top_x": top_x,
        "top_y": top_y,
        "method": "detector",
    }
