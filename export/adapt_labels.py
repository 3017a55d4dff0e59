"""The analyst's labels for `engine adapt`: read (polygons or points, any CRS), matched to the model's classes
by name or meaning, split by location, and cut into chips on the model's grid."""

from __future__ import annotations

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


def match_labels(values: list[str], meta, say) -> tuple[dict[str, str], list[str]]:
    """label value -> class name; values matching no class (by name, then by meaning) become new classes."""
    names = {c.name.lower(): c.name for c in meta.classes}
    out, unknown = {}, []
    for v in values:
        if v.lower() in names:
            out[v] = names[v.lower()]
        else:
            unknown.append(v)
    new: list[str] = []
    if unknown:
        from engine.prompts import DEFAULT_THRESHOLD, TextEncoder, class_embeddings

        encoder = TextEncoder()
        sims = encoder.embed(unknown) @ class_embeddings(meta, encoder).T
        for value, row in zip(unknown, sims, strict=True):
            best = int(row.argmax())
            closest, score = meta.classes[best].name, float(row[best])
            if score >= DEFAULT_THRESHOLD:
                out[value] = closest
                say(f"label '{value}' -> class '{closest}' (by meaning, score {score:.2f})")
            else:
                out[value] = value
                new.append(value)
                say(f"label '{value}' matches no class (closest '{closest}', {score:.2f}): a new class")
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


def cut_chips(inputs: AlignedInputs, labelled, class_index: dict[str, int], chip: int) -> tuple[list, list]:
    """Chips around the polygons: x (3, chip, chip) float32 normalised as inference reads it, y (chip, chip)
    uint8 with the class ids, IGNORE where unlabelled and NODATA where the raster has no data."""
    grid = inputs.grid
    inv = ~grid.transform
    seen, xs, ys = set(), [], []
    shapes_all = [(mapping(g), class_index[c]) for g, c in labelled]
    for g, _c in labelled:
        cx, cy = inv * g.centroid.coords[0]
        c0, r0 = int(cx) - chip // 2, int(cy) - chip // 2
        key = (r0 // (chip // 2), c0 // (chip // 2))
        off_grid = c0 + chip <= 0 or r0 + chip <= 0 or c0 >= grid.width or r0 >= grid.height
        if key in seen or off_grid:
            continue
        seen.add(key)
        win = Window(c0, r0, chip, chip)
        feeds, valid = inputs.read(win)
        at = grid.transform * Affine.translation(c0, r0)
        lab = rasterize(shapes_all, out_shape=(chip, chip), transform=at, fill=IGNORE, dtype="uint8")
        lab[~valid] = NODATA
        if (lab < IGNORE - 1).any():
            xs.append(next(iter(feeds.values())).astype(np.float32))
            ys.append(lab)
    return xs, ys


def stack_chips(xs: list, ys: list, cap: int, rng) -> tuple[np.ndarray, np.ndarray]:
    if not xs:
        raise InputError("no labelled pixel lies on the input raster(s): check the labels' location and CRS")
    if len(xs) > cap:
        keep = np.sort(rng.choice(len(xs), cap, replace=False))
        xs, ys = [xs[i] for i in keep], [ys[i] for i in keep]
    return np.stack(xs), np.stack(ys)
