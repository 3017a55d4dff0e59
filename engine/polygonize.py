"""Class map -> polygons (class, area m², mean confidence), with bounded memory.

By default GDAL traces the whole map on a thread of its own (engine.gdal_trace: one streaming C++ pass, a region
is never cut, pixel coordinates) while strips of rows are labelled by runs (engine.region_stats) for each region's
pixel count, confidence sum and bounding box, joined across strip seams (engine.seams); each polygon finds its
region by (value, bounding box). Then area (ellipsoidal m²), minimum area, simplification, writing.

With `max_region_pixels` (a cap on a region's size, for scenes whose one background region would not fit in
memory), or where GDAL's Python bindings are missing (a pip-only environment; no cap then), strips of rows are
labelled into 4-connected components (scipy.ndimage) and traced here (rasterio.features.shapes); components that
touch a seam are joined with their neighbours across it by pixel adjacency and unioned (shapely) when the region
is complete, or closed at a seam once past the cap.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import shapes
from rasterio.windows import Window
from shapely.affinity import affine_transform
from shapely.geometry import mapping

from .areas import AreaCalculator
from .errors import Cancelled
from .gdal_trace import GdalTrace, band_count, match
from .gdal_trace import available as gdal_available
from .model_package import ClassInfo
from .region_stats import region_strip
from .seams import Part, Strip, join_seam, strips
from .vector_formats import vector_sink

# Strips are traced in pixel coordinates (the map transform is applied once per closed region); the first
# strip's transform is the identity, which rasterio would warn about as "not georeferenced".
warnings.filterwarnings("ignore", message="Dataset has no geotransform", category=NotGeoreferencedWarning)

# Pixels per strip, rounded up to whole rows of the raster's blocks (a 16384-wide map of 512² blocks: 8 Mpx).
# Run-length statistics need ~8 bytes a pixel of temporaries, the strip tracer's labelling ~30.
STRIP_PIXELS = 1 << 20
# At most this many pixels a strip: whole block rows of a very wide map (40000 px x 512 rows: 20 Mpx, two
# strips at once) peaked near 1 GB; such maps get strips of a divisor of the block height instead.
STRIP_MAX_PIXELS = 8 << 20


def strip_height(width: int, block_rows: int) -> int:
    """Rows per strip: whole rows of the raster's blocks (each block decoded once), unless that passes
    STRIP_MAX_PIXELS; then the largest divisor of the block height (at least 16 rows) within it, so strips
    still meet each block row at the same few places (decoded block_rows / rows times)."""
    rows = max(16, STRIP_PIXELS // max(1, width))
    whole = -(-rows // block_rows) * block_rows
    if whole * width <= STRIP_MAX_PIXELS:
        return whole
    fits = [d for d in range(16, block_rows + 1) if block_rows % d == 0 and d * width <= STRIP_MAX_PIXELS]
    return max(fits) if fits else max(16, min(rows, block_rows))


@dataclass(frozen=True)
class PolygonizeOptions:
    min_area_m2: float | None = None  # None: 9 pixels' area, i.e. drop specks smaller than 3x3 pixels
    simplify_px: float = 1.0  # Douglas-Peucker tolerance in pixels; removes the pixel staircase
    strip_rows: int | None = None  # None: as many rows as make STRIP_PIXELS (memory independent of width)
    # None (default): a region is never cut; its pieces are vectors (memory grows with its outline, which the
    # written polygon needs anyway). A number closes a region still growing past a seam once it holds that many
    # pixels (the pieces then share a seam edge), for scenes whose one background region would not fit.
    max_region_pixels: int | None = None
    layer: str = "landcover"
    workers: int = 2  # threads: strips labelled and traced at a time (joining seams stays in order); simplifying
    # Bands GDAL traces at once (engine.gdal_trace), their regions joined at the seams. None: one per worker on
    # maps larger than 4096², one below that.
    trace_bands: int | None = None


def _present(cls: np.ndarray, wanted: set[int]) -> list[int]:
    """The wanted values that occur in the strip (a histogram for 8-bit maps: one pass, no sort)."""
    seen = np.flatnonzero(np.bincount(cls.ravel(), minlength=256)) if cls.dtype == np.uint8 else np.unique(cls)
    return [int(v) for v in seen if int(v) in wanted]


def _components(cls: np.ndarray, values: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Label 4-connected same-value regions of ``values``; returns (labels int32, value of each label (index 0
    unused)). Other values get label 0."""
    from scipy import ndimage  # here: only the strip tracer (max_region_pixels) labels with it

    labels = np.zeros(cls.shape, dtype=np.int32)
    label_class = [0]
    lab = np.empty(cls.shape, dtype=np.int32)
    for c in values:
        mask = cls == c
        n = ndimage.label(mask, output=lab)
        if n:
            np.add(lab, len(label_class) - 1, out=lab, where=mask)
            np.copyto(labels, lab, where=mask)  # regions of different values are disjoint
            label_class.extend([c] * n)
    return labels, np.asarray(label_class, dtype=np.int32)


def _polygon(geojson: dict) -> shapely.Polygon:
    """A GeoJSON polygon (rasterio.features.shapes) as a shapely Polygon, built from arrays in one call: shapely's
    GeoJSON constructor walks the coordinates in Python, a third of polygonizing's time."""
    rings = [np.asarray(r, dtype=np.float64) for r in geojson["coordinates"]]
    if len(rings) == 1:
        return shapely.polygons(rings[0])
    return shapely.polygons(rings[0], holes=[shapely.linearrings(r) for r in rings[1:]])


def _geometry(pieces: list[shapely.Geometry], transform: Affine) -> shapely.Geometry:
    """A closed region's polygon in map coordinates from its per-strip pieces in pixel coordinates. Pixel
    corners are integers, exact in floating point, so the pieces' shared edges match exactly and the union
    needs no snapping (a precision grid makes GEOS's overlay several times slower)."""
    # (GEOS's faster coverage union refuses these pieces: their shared seam edges are not noded alike.)
    geom = pieces[0] if len(pieces) == 1 else shapely.union_all(pieces)
    if geom.geom_type != "Polygon":  # defensive: keep the region whole as its largest ring set
        geom = max(getattr(geom, "geoms", [geom]), key=lambda g: g.area)
    t = transform
    return affine_transform(geom, [t.a, t.b, t.d, t.e, t.c, t.f])


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


def _work_strip(
    class_path: Path, conf_path: Path, r0: int, r1: int, height: int, wanted: set[int], min_pixels: float
) -> Strip:
    """Label one strip, summarise its regions and build polygons for those that can matter: big enough, or
    on a seam (they may still grow). Opens its own dataset handles: GDAL's are not shared by threads."""
    with rasterio.open(class_path) as cds:
        win = Window(0, r0, cds.width, r1 - r0)
        cls = cds.read(1, window=win)
    values = _present(cls, wanted)
    if not values:  # a strip without any wanted value (no-data margins)
        return Strip(r0, r1)
    with rasterio.open(conf_path) as fds:
        conf = fds.read(1, window=win)
    labels, label_class = _components(cls, values)
    n_lab = len(label_class)
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n_lab)
    # float64 weights: bincount casts float32 ones element by element, 4x slower than casting first
    conf_sums = np.bincount(flat, weights=conf.astype(np.float64).ravel(), minlength=n_lab)
    bottom = np.zeros(n_lab, dtype=bool)
    if r1 < height:
        bottom[labels[-1]] = True
    build = (counts >= min_pixels) | bottom
    if r0 > 0:
        build[labels[0]] = True
    build[0] = False
    parts = []
    # Pixel coordinates (column, row): see _geometry.
    for geom, lab in shapes(labels, mask=build[labels], connectivity=4, transform=Affine.translation(0, r0)):
        lab = int(lab)
        part = Part([_polygon(geom)], int(label_class[lab]), float(conf_sums[lab]), int(counts[lab]), bool(bottom[lab]))
        parts.append((lab, part))
    return Strip(r0, r1, label_class, labels[0].copy(), labels[-1].copy(), parts)


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
    with rasterio.open(value_path) as cds:
        height, width, crs, transform = cds.height, cds.width, cds.crs, cds.transform
        block_rows = cds.block_shapes[0][0]
    area_of = AreaCalculator(crs)
    min_area = options.min_area_m2
    if min_area is None:
        t, c, r = transform, width // 2, height // 2  # the centre pixel (the origin may be off the map)
        min_area = 9 * area_of(shapely.Polygon([t * xy for xy in ((c, r), (c + 1, r), (c + 1, r + 1), (c, r + 1))]))
    tolerance = options.simplify_px * abs(transform.a)
    # Whole rows of the raster's blocks: a strip cutting through a block row would have each block decoded again
    # for every strip it meets (8 times over for 64-row strips of a 16384-wide map of 512² blocks).
    strip_rows = options.strip_rows or strip_height(width, block_rows)
    # Below this many pixels a region cannot reach the minimum area (projected CRS: every pixel has the
    # same area), so no polygon is built for it. The tolerance keeps a region of exactly the minimum area.
    min_area *= 1 - 1e-9
    min_pixels = min_area / area_of.largest_pixel_area(transform, width, height)
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
            geoms = simplified(geoms, tolerance, options.workers)
        geoms = shapely.orient_polygons(geoms)  # OGC / RFC 7946: shells counter-clockwise, holes clockwise
        sink.writerecords([{"geometry": mapping(g), "properties": p} for g, (_, p) in zip(geoms, batch, strict=True)])
        n_written += len(batch)
        batch.clear()

    def close(part: Part) -> None:
        if part.count > 0 and part.count >= min_pixels:
            emit(_geometry(part.pieces, transform), part.cid, part.conf_sum / part.count)

    def work(r0: int, r1: int) -> Strip:
        return _work_strip(value_path, conf_path, r0, r1, height, wanted, min_pixels)

    def each_strip(work: Callable[[int, int], Strip], close: Callable[[Part], None], after, share: float) -> None:
        """Strips in order, their regions joined across seams (engine.seams); `share` of the progress."""
        open_parts: list[Part] = []
        prev_bottom = np.full(width, -1, dtype=np.int64)
        for strip in strips(work, height, strip_rows, options.workers):
            if cancelled and cancelled():
                raise Cancelled("cancelled by the user")
            if strip.label_class is None:
                for part in open_parts:  # nothing below continues them: they are complete
                    close(part)
                open_parts = []
                prev_bottom = np.full(width, -1, dtype=np.int64)
            else:
                open_parts, prev_bottom = join_seam(strip, open_parts, prev_bottom, close, options.max_region_pixels)
            after()
            if progress:
                progress(share * strip.r1 / height, f"polygonizing rows {strip.r1}/{height}")

    with vector_sink(gpkg_path, options.layer, schema, crs.to_wkt() if crs else None) as sink:
        # Strips traced here: regions past the cap closed at a seam; without osgeo, no cap (the same regions as
        # GDAL's trace, at more memory for a huge region's outline pieces).
        if options.max_region_pixels is not None or not gdal_available():
            each_strip(work, close, lambda: flush(sink), 1.0)
            return n_written
        # GDAL traces the whole map (no region is ever cut) while the regions' statistics are gathered.
        asked = np.zeros(1 << 16, dtype=bool)
        asked[list(wanted)] = True
        regions: dict[tuple[int, ...], tuple[int, float]] = {}  # (value, box) -> (pixels, confidence sum)

        def keep(part: Part) -> None:
            if part.count >= min_pixels:
                regions[(part.cid, *part.box)] = (part.count, part.conf_sum)

        def stats(r0: int, r1: int) -> Strip:
            return region_strip(value_path, conf_path, r0, r1, height, asked, min_pixels)

        bands = band_count(height, width, options.workers, options.trace_bands)
        with GdalTrace(value_path, gpkg_path, cancelled, bands) as trace:
            each_strip(stats, keep, lambda: None, 0.8)
            for geoms, values in trace.polygons():
                found = list(match(geoms, values, regions))
                mapped = _to_map(np.array([g for g, _v, _m in found], dtype=object), transform) if found else []
                for geom, (_g, value, conf_mean) in zip(mapped, found, strict=True):
                    emit(geom, value, conf_mean)
                flush(sink)
    return n_written


def simplified(geoms: np.ndarray, tolerance: float, workers: int) -> np.ndarray:
    """Topology-preserving simplification of a batch of polygons, shared out among ``workers`` threads: shapely
    releases the GIL, and on real speckled maps simplifying is the largest part of polygonizing (a 4096² map's
    14.6k polygons: 1.70 s on one thread, 0.78 s on two). Largest polygons first, dealt in turn, so the shares
    weigh alike. Each polygon is simplified on its own either way: the result is the same."""
    if workers <= 1 or len(geoms) < 2 * workers:
        return shapely.simplify(geoms, tolerance, preserve_topology=True)
    order = np.argsort(-shapely.get_num_coordinates(geoms), kind="stable")
    shares = [order[k::workers] for k in range(workers)]
    out = np.empty(len(geoms), dtype=object)

    def simplify(share: np.ndarray) -> np.ndarray:
        return shapely.simplify(geoms[share], tolerance, preserve_topology=True)

    with ThreadPoolExecutor(workers, thread_name_prefix="landseg-simplify") as pool:
        for share, done in zip(shares, pool.map(simplify, shares), strict=True):
            out[share] = done
    return out


def _to_map(geoms: np.ndarray, t: Affine) -> np.ndarray:
    """Polygons from pixel to map coordinates, all vertices at once."""
    matrix = np.array([[t.a, t.d], [t.b, t.e]])
    return shapely.transform(geoms, lambda xy: xy @ matrix + (t.c, t.f))
