"""The analyst's labels for `engine adapt`: read (polygons or points, any CRS), matched to the model's classes
by name or meaning, split by location, and cut into chips on the model's grid."""

from __future__ import annotations

import re

import fiona
import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely.geometry import mapping, shape

from engine.errors import InputError
from engine.raster_input import AlignedInputs

IGNORE = 255  # labels: valid pixels outside every polygon
NODATA = 254  # labels: where the raster has no data (neither labelled nor "kept like the base model")


NEGATION = re.compile(r"^(not|non|no)[\s_-]+", re.IGNORECASE)  # "not vegetation", "non-building", "no water"


def match_labels(values: list[str], meta, say, by_meaning: bool = True) -> tuple[dict[str, str], dict[str, str]]:
    """label value -> class name, and the new classes (value -> the base class it refines, or "" for none).

    A value matches a class by name, else (``by_meaning``) by the prompt text encoder's similarity. Values that
    match no class become new classes, and so do: a negated value ("not vegetation": its text is close to
    "vegetation", its meaning the opposite), and every value but the closest when several mean one class
    ("trees" and "shrubs" both "vegetation": the analyst tells them apart, so they become two classes, each
    counted as vegetation where the base model's answer is kept)."""
    names = {c.name.lower(): c.name for c in meta.classes}
    out: dict[str, str] = {}
    new: dict[str, str] = {}
    unknown = []
    for v in values:
        if v.lower() in names:
            out[v] = names[v.lower()]
        elif NEGATION.match(v) or not by_meaning:
            out[v], new[v] = v, ""
            why = "a negation" if by_meaning else "not a class name (matching by name only)"
            say(f"label '{v}' is {why}: a new class")
        else:
            unknown.append(v)
    if unknown:
        from engine.prompts import DEFAULT_THRESHOLD, TextEncoder, class_embeddings

        encoder = TextEncoder()
        sims = encoder.embed(unknown) @ class_embeddings(meta, encoder).T
        taken: dict[str, tuple[str, float]] = {c: (v, 2.0) for v, c in out.items()}  # exact names win
        for value, row in sorted(zip(unknown, sims, strict=True), key=lambda vr: -float(vr[1].max())):
            best = int(row.argmax())
            closest, score = meta.classes[best].name, float(row[best])
            if score < DEFAULT_THRESHOLD:
                out[value], new[value] = value, ""
                say(f"label '{value}' matches no class (closest '{closest}', {score:.2f}): a new class")
            elif closest in taken:
                out[value], new[value] = value, closest
                say(
                    f"label '{value}' means '{closest}' ({score:.2f}) as '{taken[closest][0]}' does: a new class "
                    f"of its own (counted as '{closest}' where unlabelled pixels keep the base model's answer)"
                )
            else:
                out[value] = closest
                taken[closest] = (value, score)
                say(f"label '{value}' -> class '{closest}' (by meaning, score {score:.2f})")
    return out, new


def read_labels(p) -> tuple[list[tuple[shapely.Geometry, str]], str | None]:
    """The labelled geometries in the layer's own CRS (points stay points: they are buffered in metres once
    they are on a raster's grid) and that CRS as WKT."""
    try:
        layer = fiona.open(p.labels)
    except Exception:  # fiona's DriverError and friends
        raise InputError(f"labels {p.labels} are not a vector layer OGR can read") from None
    out = []
    with layer:
        if p.class_field not in layer.schema["properties"]:
            raise InputError(
                f"labels {p.labels} have no field {p.class_field!r} "
                f"(they have: {', '.join(layer.schema['properties'])})"
            )
        kind = layer.schema["properties"][p.class_field].split(":")[0]
        if kind not in ("str", "string"):
            raise InputError(
                f"labels {p.labels}: field {p.class_field!r} is {kind}, not text: the class field holds class names "
                "(building, water, or a name of your own), so ids cannot be confused with another model's"
            )
        if len(layer) == 0:
            raise InputError(f"labels {p.labels} are an empty layer: draw labelled polygons first")
        crs = layer.crs_wkt or None
        for f in layer:
            v = f["properties"][p.class_field]
            if f.geometry is None or v is None or not str(v).strip():
                continue
            g = shape(f.geometry)
            if not g.is_empty and (g.area > 0 or g.geom_type in ("Point", "MultiPoint")):
                out.append((g, str(v).strip()))
    if len(out) < 2:
        raise InputError(
            f"labels {p.labels}: at least 2 labelled polygons are needed (found {len(out)} with a value in "
            f"{p.class_field!r})"
        )
    return out, crs


def on_grid(labelled, layer_crs: str | None, crs, buffer_m: float) -> list[tuple[shapely.Geometry, str]]:
    """The labels in a raster's CRS, points buffered to discs of ``buffer_m``."""
    tr = None
    if layer_crs and crs is not None:
        from pyproj import CRS, Transformer

        if CRS.from_user_input(layer_crs) != CRS.from_user_input(crs.to_wkt()):
            tr = Transformer.from_crs(layer_crs, crs.to_wkt(), always_xy=True)
    out = []
    for g, v in labelled:
        if tr is not None:
            g = shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        if g.geom_type in ("Point", "MultiPoint"):
            g = g.buffer(buffer_m)
        out.append((g, v))
    return out


def spatial_holdout(geoms: list[shapely.Geometry], share: float) -> np.ndarray:
    """True for the polygons beyond the (1 - share) area quantile along the labels' longer extent."""
    x0, y0, x1, y1 = shapely.total_bounds(np.array(geoms, dtype=object))
    axis = 0 if (x1 - x0) >= (y1 - y0) else 1
    pos = np.array([g.centroid.coords[0][axis] for g in geoms])
    area = np.array([g.area for g in geoms])
    area = area if area.sum() > 0 else np.ones(len(geoms))  # points only: each counts once
    order = np.argsort(pos, kind="stable")
    cum = np.cumsum(area[order]) / area.sum()
    held = np.zeros(len(geoms), bool)
    held[order[cum > 1 - share]] = True
    if held.all() or not held.any():  # keep both sides non-empty
        held[:] = False
        held[order[-1]] = True
    return held


def model_input(feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The torch net's input: every model input's bands in the package's order (RGB, or RGB then NIR)."""
    return np.concatenate([f.astype(np.float32) for f in feeds.values()], axis=0)


def cut_chips(inputs: AlignedInputs, labelled, class_index: dict[str, int], chip: int) -> tuple[list, list]:
    """Chips around the polygons: x (bands, chip, chip) float32 normalised as inference reads it, y (chip, chip)
    uint8 with the class ids, IGNORE where unlabelled and NODATA where the raster has no data."""
    grid = inputs.grid
    inv = ~grid.transform
    seen, xs, ys = set(), [], []
    geoms = np.array([g for g, _c in labelled], dtype=object)
    ids = [class_index[c] for _g, c in labelled]
    tree = shapely.STRtree(geoms)  # thousands of polygons (a classified layer): each chip burns only its own
    for g, _c in labelled:
        cx, cy = inv * g.centroid.coords[0]
        c0, r0 = int(cx) - chip // 2, int(cy) - chip // 2
        key = (r0 // (chip // 2), c0 // (chip // 2))
        off_grid = c0 + chip <= 0 or r0 + chip <= 0 or c0 >= grid.width or r0 >= grid.height
        if key in seen or off_grid:
            continue
        seen.add(key)
        win = Window(c0, r0, chip, chip)
        at = grid.transform * Affine.translation(c0, r0)
        x0, y0 = at * (0, chip)
        x1, y1 = at * (chip, 0)
        near = tree.query(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        shapes_here = [(mapping(geoms[i]), ids[i]) for i in sorted(near)]
        lab = rasterize(shapes_here, out_shape=(chip, chip), transform=at, fill=IGNORE, dtype="uint8")
        feeds, valid = inputs.read(win)
        lab[~valid] = NODATA
        if (lab < IGNORE - 1).any():
            xs.append(model_input(feeds))
            ys.append(lab)
    return xs, ys


def sample_chips(inputs: AlignedInputs, n: int, chip: int, rng) -> list[np.ndarray]:
    """Up to ``n`` chips of the raster without labels (label-free adaptation): a regular grid of windows (all of
    them when few), those with at least half their pixels valid (or the whole raster, when it is smaller)."""
    grid = inputs.grid
    rows = range(0, max(1, grid.height - chip // 2), chip)
    cols = range(0, max(1, grid.width - chip // 2), chip)
    cells = [(r, c) for r in rows for c in cols]
    if len(cells) > 4 * n:
        cells = [cells[i] for i in np.sort(rng.choice(len(cells), 4 * n, replace=False))]
    out = []
    need = min(0.5, 0.9 * grid.width * grid.height / chip**2)  # a raster smaller than a chip: taken whole, padded
    for r, c in cells:
        feeds, valid = inputs.read(Window(c, r, chip, chip))
        if valid.mean() >= need:
            out.append(model_input(feeds))
        if len(out) >= n:
            break
    return out


def stack_chips(xs: list, ys: list, cap: int, rng) -> tuple[np.ndarray, np.ndarray]:
    if not xs:
        raise InputError("no labelled pixel lies on the input raster(s): check the labels' location and CRS")
    if len(xs) > cap:
        keep = np.sort(rng.choice(len(xs), cap, replace=False))
        xs, ys = [xs[i] for i in keep], [ys[i] for i in keep]
    return np.stack(xs), np.stack(ys)
