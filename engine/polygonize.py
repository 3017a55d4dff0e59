"""Class map -> GeoPackage polygons, strip by strip, with bounded memory.

Each strip of rows is labelled into 4-connected components (scipy.ndimage), turned into polygons by
rasterio.features.shapes and summarised (class, area, mean confidence). Components that touch a strip seam
are kept aside, joined with their neighbours across the seam by pixel adjacency, and unioned (shapely) when the
region is complete, so a field that spans several strips comes out as one polygon with the right area and mean
confidence.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fiona
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.features import shapes
from rasterio.windows import Window
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.affinity import affine_transform
from shapely.geometry import mapping, shape

from .errors import Cancelled
from .model_package import ClassInfo

# Pixels per polygonize strip. Labelling and statistics need ~30 bytes a pixel of temporaries, so ~30 MB.
STRIP_PIXELS = 1 << 20


@dataclass(frozen=True)
class PolygonizeOptions:
    min_area_m2: float | None = None  # None: 9 pixels' area, i.e. drop specks smaller than 3x3 pixels
    simplify_px: float = 1.0  # Douglas-Peucker tolerance in pixels; removes the pixel staircase
    strip_rows: int | None = None  # None: as many rows as make STRIP_PIXELS (memory independent of width)
    # A region still growing past a seam is closed (cut at that seam) once it holds this many pixels, so one
    # huge connected region (a whole-scene background) cannot make memory grow with the raster.
    max_region_pixels: int = STRIP_PIXELS
    layer: str = "landcover"


class AreaCalculator:
    """Polygon area in square metres for projected (any linear unit) and geographic CRSs."""

    def __init__(self, crs: rasterio.crs.CRS | None) -> None:
        self.geod = None
        self.factor = 1.0
        if crs is not None and crs.is_geographic:
            from pyproj import Geod

            self.geod = Geod(ellps="WGS84")
        elif crs is not None and crs.is_projected:
            self.factor = float(crs.linear_units_factor[1]) ** 2

    def pixel_area(self, transform: Affine) -> float | None:
        """Area of one pixel in m², the same for every pixel in a projected CRS; None where it varies."""
        if self.geod is not None:
            return None
        return abs(transform.a * transform.e - transform.b * transform.d) * self.factor

    def __call__(self, geom: shapely.Geometry) -> float:
        if self.geod is not None:
            return abs(self.geod.geometry_area_perimeter(geom)[0])
        return geom.area * self.factor


def _components(cls: np.ndarray, wanted: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """Label 4-connected same-value regions; returns (labels int32, value of each label (index 0 unused))."""
    labels = np.zeros(cls.shape, dtype=np.int32)
    label_class = [0]
    for c in np.unique(cls):
        if int(c) not in wanted:
            continue
        lab, n = ndimage.label(cls == c)
        labels[lab > 0] = lab[lab > 0] + (len(label_class) - 1)
        label_class.extend([int(c)] * n)
    return labels, np.asarray(label_class, dtype=np.int32)


@dataclass
class Part:
    """A region (or the part of one seen so far) with what its mean confidence needs. Its pieces (one per strip
    it spans) are unioned once, when the region is closed: unioning at every seam would redo the growing
    geometry each time, quadratic in the region's height."""

    pieces: list[shapely.Geometry]
    cid: int
    conf_sum: float
    count: int
    touches_bottom: bool = False


def _join(parts: list[Part]) -> Part:
    """One region from parts that share edges across a seam (same class, 4-connected through the seam)."""
    if len(parts) == 1:
        return parts[0]
    return Part(
        [g for p in parts for g in p.pieces],
        parts[0].cid,
        sum(p.conf_sum for p in parts),
        sum(p.count for p in parts),
        any(p.touches_bottom for p in parts),
    )


def _geometry(pieces: list[shapely.Geometry], transform: Affine) -> shapely.Geometry:
    """A closed region's polygon in map coordinates from its per-strip pieces in pixel coordinates. Pixel
    corners are integers, exact in floating point, so the pieces' shared edges match exactly and the union
    needs no snapping (a precision grid makes GEOS's overlay several times slower)."""
    geom = pieces[0] if len(pieces) == 1 else shapely.union_all(pieces)
    if geom.geom_type != "Polygon":  # defensive: keep the region whole as its largest ring set
        geom = max(getattr(geom, "geoms", [geom]), key=lambda g: g.area)
    t = transform
    return affine_transform(geom, [t.a, t.b, t.d, t.e, t.c, t.f])


def _seam_groups(
    prev_bottom: np.ndarray, open_cid: np.ndarray, top: np.ndarray, label_class: np.ndarray, n_open: int
) -> np.ndarray:
    """Connected groups of open parts (nodes 0..n_open-1) and current labels (nodes n_open + label) that touch
    across the seam with the same class. Returns the group id of every node."""
    n_nodes = n_open + len(label_class)
    both = (prev_bottom >= 0) & (top > 0)
    po, cl = prev_bottom[both], top[both]
    same = open_cid[po] == label_class[cl]
    pairs = np.unique(np.stack([po[same], cl[same] + n_open]), axis=1) if same.any() else np.zeros((2, 0), int)
    graph = coo_matrix((np.ones(pairs.shape[1]), (pairs[0], pairs[1])), shape=(n_nodes, n_nodes))
    return connected_components(graph, directed=False)[1]


def polygonize(
    class_path: Path,
    conf_path: Path,
    gpkg_path: Path,
    classes: tuple[ClassInfo, ...],
    options: PolygonizeOptions = PolygonizeOptions(),
    progress: Callable[[float, str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> int:
    """Land-cover polygons (class_id, class_name, area_m2, mean_conf); returns the number of features."""
    props = {c.id: {"class_id": c.id, "class_name": c.name} for c in classes}
    return polygonize_values(
        class_path,
        conf_path,
        gpkg_path,
        props,
        {"class_id": "int32", "class_name": "str"},
        options,
        progress,
        cancelled,
    )


def polygonize_values(
    value_path: Path,
    conf_path: Path,
    gpkg_path: Path,
    value_props: dict[int, dict],
    schema_props: dict[str, str],
    options: PolygonizeOptions = PolygonizeOptions(),
    progress: Callable[[float, str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    conf_field: str = "mean_conf",
) -> int:
    """Polygons of the regions of ``value_path`` whose value is a key of ``value_props``; each feature gets
    those properties plus area (m2) and mean confidence. Returns the number of features."""
    wanted = set(value_props)
    schema = {"geometry": "Polygon", "properties": {**schema_props, "area_m2": "float", conf_field: "float"}}
    class_path = value_path
    with rasterio.open(class_path) as cds, rasterio.open(conf_path) as fds:
        height, width, crs = cds.height, cds.width, cds.crs
        area_of = AreaCalculator(crs)
        min_area = options.min_area_m2
        if min_area is None:
            min_area = 9 * area_of(shapely.box(0, 0, abs(cds.transform.a), abs(cds.transform.e)))
        tolerance = options.simplify_px * abs(cds.transform.a)
        strip_rows = options.strip_rows or max(16, STRIP_PIXELS // width)
        # Below this many pixels a region cannot reach the minimum area (projected CRS: every pixel has the
        # same area), so no polygon is built for it. The tolerance keeps a region of exactly the minimum area.
        min_area *= 1 - 1e-9
        px_area = area_of.pixel_area(cds.transform)
        min_pixels = min_area / px_area if px_area else 0.0
        n_written = 0
        batch: list[tuple[shapely.Geometry, dict]] = []

        def emit(geom: shapely.Geometry, cid: int, conf_mean: float) -> None:
            area = area_of(geom)
            if area < min_area:
                return
            props = {**value_props[cid], "area_m2": round(area, 3), conf_field: round(conf_mean, 4)}
            batch.append((geom, props))

        def flush(sink) -> None:
            """Write the strip's polygons in one go (per-record writes cost more than the polygons)."""
            nonlocal n_written
            if not batch:
                return
            geoms = np.array([g for g, _ in batch], dtype=object)
            if tolerance > 0:
                geoms = shapely.simplify(geoms, tolerance, preserve_topology=True)
            sink.writerecords(
                [{"geometry": mapping(g), "properties": p} for g, (_, p) in zip(geoms, batch, strict=True)]
            )
            n_written += len(batch)
            batch.clear()

        # Regions cut by the seam above the current strip, and which of them each pixel of that seam belongs
        # to. Joining goes by pixel adjacency across the seam, so only regions that really touch are unioned,
        # and only one seam's worth is ever held: memory depends on the raster's width, not its height.
        open_parts: list[Part] = []
        prev_bottom = np.full(width, -1, dtype=np.int64)
        # GDAL >= 3.6 builds the GeoPackage R-tree in a thread fed from memory; off, it is built on close.
        with (
            fiona.Env(OGR_GPKG_ALLOW_THREADED_RTREE="NO"),
            fiona.open(
                gpkg_path, "w", driver="GPKG", layer=options.layer, schema=schema, crs=crs.to_wkt() if crs else None
            ) as sink,
        ):

            def close(part: Part) -> None:
                if part.count > 0 and part.count >= min_pixels:
                    emit(_geometry(part.pieces, cds.transform), part.cid, part.conf_sum / part.count)

            for r0 in range(0, height, strip_rows):
                if cancelled and cancelled():
                    raise Cancelled("cancelled by the user")
                r1 = min(height, r0 + strip_rows)
                win = Window(0, r0, width, r1 - r0)
                cls = cds.read(1, window=win)
                conf = fds.read(1, window=win)
                labels, label_class = _components(cls, wanted)
                n_lab, n_open = len(label_class), len(open_parts)
                counts = np.bincount(labels.ravel(), minlength=n_lab)
                conf_sums = np.bincount(labels.ravel(), weights=conf.ravel().astype(np.float64), minlength=n_lab)
                bottom = set(np.unique(labels[-1]).tolist()) if r1 < height else set()
                group = _seam_groups(
                    prev_bottom, np.array([p.cid for p in open_parts], dtype=np.int64), labels[0], label_class, n_open
                )
                members: dict[int, list[Part]] = defaultdict(list)
                for i, part in enumerate(open_parts):
                    members[int(group[i])].append(part)
                # Specks wholly inside the strip that are too small to be written get no polygon at all;
                # regions on a seam may still grow, so they are always kept.
                build = counts >= min_pixels
                build[list(bottom)] = True
                if r0 > 0:
                    build[labels[0]] = True
                build[0] = False
                # Pixel coordinates (column, row): see _geometry.
                to_pixels = Affine.translation(0, r0)
                for geom, lab in shapes(labels, mask=build[labels], connectivity=4, transform=to_pixels):
                    lab = int(lab)
                    part = Part(
                        [shape(geom)], int(label_class[lab]), float(conf_sums[lab]), int(counts[lab]), lab in bottom
                    )
                    members[int(group[n_open + lab])].append(part)
                next_open: list[Part] = []
                carried: dict[int, int] = {}  # group id -> index in next_open
                for gid, parts in members.items():
                    region = _join(parts)
                    if region.touches_bottom and region.count <= options.max_region_pixels:
                        region.touches_bottom = False  # relative to the strip it was found in
                        carried[gid] = len(next_open)
                        next_open.append(region)
                    else:
                        close(region)
                last = labels[-1]
                prev_bottom = np.full(width, -1, dtype=np.int64)
                if carried:
                    index_of_group = np.full(int(group.max()) + 1, -1, dtype=np.int64)
                    index_of_group[np.fromiter(carried, np.int64)] = np.fromiter(carried.values(), np.int64)
                    lut = index_of_group[group]
                    prev_bottom[last > 0] = lut[n_open + last[last > 0]]
                open_parts = next_open
                flush(sink)
                if progress:
                    progress(r1 / height, f"polygonizing rows {r1}/{height}")
    return n_written
