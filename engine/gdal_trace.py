"""GDAL's polygonize of a value raster, on threads of their own, for engine.polygonize.

One streaming C++ pass (GDALPolygonize: memory holds the regions still open on the current row, not the raster)
in pixel coordinates, so every vertex is an integer and a polygon's bounds are its region's bounding box. It
writes to hidden FlatGeobufs beside the output (named like every temporary, so a killed run's copies are removed
by engine.run_lock) and hands the polygons back in batches. GDAL releases the GIL while it traces: the regions'
statistics (engine.region_stats) are gathered meanwhile, and each polygon finds its region by (value, bounding
box): two 4-connected regions of one value cannot share a bounding box (each would hold both a left-right and a
top-bottom crossing of it, and those two would meet). Maps larger than 4096² are traced in horizontal bands, one
thread each, and the regions a seam cut are joined again (GdalTrace): 16k² of a real 0.1 m map, 79 -> 66 s.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.windows import Window

from .errors import Cancelled
from .seams import components

BATCH = 4096  # polygons handed back at a time
TRACE_CACHE_BYTES = 64 << 20  # the system GDAL's block cache while tracing (GDALSetCacheMax: process-wide)
BAND_PIXELS = 1 << 24  # maps larger than this (4096²) are traced in bands, one thread each


def available() -> bool:
    """Whether GDAL's Python bindings (osgeo) can be imported. QGIS and Debian's python3-gdal bring them; an
    environment of pip wheels alone has rasterio's own GDAL but not them (engine.polygonize then traces strips)."""
    return importlib.util.find_spec("osgeo") is not None


def band_count(height: int, width: int, workers: int, bands: int | None = None) -> int:
    """How many horizontal bands GDAL traces at once: one for maps up to BAND_PIXELS (joining costs more than
    it saves there), else one per worker; never bands thinner than 64 rows."""
    if bands is None:
        bands = workers if height * width > BAND_PIXELS else 1
    return max(1, min(bands, height // 64))


class GdalTrace:
    """GDAL's polygonize of the map, in ``bands`` horizontal bands traced on threads of their own (GDAL's trace is
    one thread: on a 16k² speckled map it took 64 s of 79). Regions cut by a band seam are joined again before
    they are handed back (`polygons`): pieces on either side of the seam that hold the two pixels of a seam
    column with one value are one 4-connected region; their union is the region's polygon, and its bounding
    box the region's."""

    def __init__(
        self, value_path: Path, near: Path, cancelled: Callable[[], bool] | None = None, bands: int = 1
    ) -> None:
        with rasterio.open(value_path) as ds:
            self.height, self.width = ds.height, ds.width
        n = max(1, min(bands, self.height))
        edges = [round(k * self.height / n) for k in range(n + 1)]
        self.bands = list(zip(edges[:-1], edges[1:], strict=True))  # rows [r0, r1)
        self.seams = np.array(edges[1:-1], dtype=np.int64)
        tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.paths = [Path(near).parent / f".polygons.{tag}{k:x}.tmp.fgb" for k in range(n)]
        self.value_path = value_path
        self.cancelled = cancelled or (lambda: False)
        self.stop = False  # set when the caller fails: GDAL stops at its next row
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._trace, args=(k,), name=f"landseg-trace-{k}") for k in range(n)]

    def __enter__(self) -> GdalTrace:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop = True
        for t in self.threads:
            t.join()
        for path in self.paths:
            path.unlink(missing_ok=True)

    def _trace(self, k: int) -> None:
        src = pixels = band = out = layer = None
        r0, r1 = self.bands[k]
        try:
            from osgeo import gdal, ogr

            gdal.UseExceptions()
            # The osgeo bindings load a GDAL of their own (the system's): its block cache defaults to 5 % of RAM
            # and is not rasterio.Env's. Tracing reads each block once, so a small cache costs nothing: a 40000²
            # sparse map peaked at 2.2 GB with the default (issue #29 item 12).
            gdal.SetCacheMax(TRACE_CACHE_BYTES)
            src = gdal.Open(str(self.value_path))
            # A view of the band's rows, not a copy of the pixels; pixel coordinates (column, row; y down).
            pixels = gdal.Translate("", src, format="VRT", srcWin=[0, r0, self.width, r1 - r0])
            pixels.SetGeoTransform((0, 1, 0, r0, 0, 1))
            band = pixels.GetRasterBand(1)
            out = ogr.GetDriverByName("FlatGeobuf").CreateDataSource(str(self.paths[k]))
            layer = out.CreateLayer("trace", geom_type=ogr.wkbPolygon, options=["SPATIAL_INDEX=NO"])
            layer.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
            # 4-connected regions of one value; the mask band leaves no-data pixels out. Returning 0 stops GDAL.
            go = lambda *_: 0 if self.stop or self.cancelled() else 1  # noqa: E731
            gdal.Polygonize(band, band.GetMaskBand(), layer, 0, [], callback=go)
            # The file is written when it is closed, and a failing write there (a full disk) raises nothing in
            # the bindings: GDAL's error state says (read in this thread, where the close runs).
            layer = None
            gdal.ErrorReset()
            out = None
            if gdal.GetLastErrorType() >= gdal.CE_Failure:
                from .gdal_errors import write_failure

                raise write_failure(self.paths[k], gdal.GetLastErrorMsg().strip())
        except RuntimeError as exc:  # what the osgeo bindings raise for a GDAL error while tracing
            from .gdal_errors import full_disk_error

            failed = full_disk_error(self.paths[k], exc) or OSError(f"GDAL could not trace the polygons: {exc}")
            self.errors.append(failed)
            self.stop = True
        except BaseException as exc:  # handed to the caller's thread by polygons()
            # Without its frames: they hold the layer and dataset, and a layer freed after its dataset (at
            # interpreter exit) crashes GDAL's Python bindings: a cancelled run must not take its process down.
            self.errors.append(exc.with_traceback(None))
            self.stop = True  # the other bands stop too
        finally:
            # GDAL's objects go child first: the layer before its data source, the band before its dataset.
            layer = None
            out = None  # closes the file
            band = None
            pixels = None
            src = None

    def polygons(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(polygons in pixel coordinates, their values), in batches, once GDAL has finished: whole regions,
        those cut by a band seam joined again."""
        for t in self.threads:
            t.join()
        if self.cancelled():
            raise Cancelled("cancelled by the user")
        if self.errors:
            raise self.errors[0]
        cut: list[tuple[np.ndarray, np.ndarray]] = []
        for path in self.paths:
            for geoms, values in _read(path):
                if not len(self.seams):
                    yield geoms, values
                    continue
                bounds = shapely.bounds(geoms)
                on_seam = np.isin(bounds[:, 1], self.seams) | np.isin(bounds[:, 3], self.seams)
                if not on_seam.all():
                    yield geoms[~on_seam], values[~on_seam]
                if on_seam.any():
                    cut.append((geoms[on_seam], values[on_seam]))
        if cut:
            geoms, values = (np.concatenate(c) for c in zip(*cut, strict=True))
            yield from _batches(*self._joined(geoms, values))

    def _joined(self, pieces: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pieces on band seams joined into their regions: across a seam, the piece holding the pixel above and
        the one holding the pixel below (same value) are one region. Pixel centres are never on an outline, so
        each lies in exactly one piece (none for no-data pixels)."""
        tree = shapely.STRtree(pieces)
        shapely.prepare(pieces)  # point-in-polygon on prepared pieces: 0.08 s a seam instead of 6 s at 16k²

        def holder(points: np.ndarray) -> np.ndarray:
            """The piece holding each point (-1: none, a no-data pixel)."""
            point, piece = tree.query(points)  # by bounding box, then the exact test on prepared pieces
            inside = shapely.contains_properly(pieces[piece], points[point])
            found = np.full(len(points), -1)
            found[point[inside]] = piece[inside]
            return found

        pairs = []
        with rasterio.open(self.value_path) as ds:
            for s in self.seams.tolist():
                above, below = ds.read(1, window=Window(0, s - 1, self.width, 2))
                xs = np.flatnonzero(above == below) + 0.5
                if not len(xs):
                    continue
                piece_a = holder(shapely.points(xs, np.full(len(xs), s - 0.5)))  # the pixel above the seam
                piece_b = holder(shapely.points(xs, np.full(len(xs), s + 0.5)))  # and the one below it
                both = (piece_a >= 0) & (piece_b >= 0)
                pairs.append(np.unique(np.stack([piece_a[both], piece_b[both]]), axis=1))
        n = len(pieces)
        edges = np.concatenate(pairs, axis=1) if pairs else np.zeros((2, 0), dtype=np.int64)
        n_groups, group = components(n, edges[0], edges[1])
        order = np.argsort(group, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0])
        joined = np.empty(n_groups, dtype=object)
        joined_values = np.empty(n_groups, dtype=values.dtype)
        for members in np.split(order, starts[1:]):
            g = group[members[0]]
            joined[g] = pieces[members[0]] if len(members) == 1 else _union(pieces[members])
            joined_values[g] = values[members[0]]
        return joined, joined_values


def _union(pieces: np.ndarray) -> shapely.Polygon:
    """One region's pieces (each within its band, touching the next only along a seam) as one polygon. Their
    shells are unioned (an overlay: the pieces share the seam's edge but not its vertices, which GEOS's cheaper
    coverage union refuses; pixel coordinates are integers, so it is exact) and their holes added back as they
    are: a piece's hole never reaches its band's edge, so the union leaves it a hole, and unioning the holes too
    would cost an overlay of every ring (23 s for a 16k² map's background region, against well under one).
    Tolerance 0 drops the vertices the seam left on straight edges: the polygon GDAL would have traced whole."""
    shells = shapely.polygons(shapely.get_exterior_ring(pieces))
    merged = shapely.simplify(shapely.union_all(shells), 0)
    if merged.geom_type != "Polygon":  # pieces joined only at a seam always make one polygon; never cut a region
        return shapely.simplify(shapely.union_all(pieces), 0)
    holes = [*merged.interiors, *(ring for piece in pieces for ring in piece.interiors)]
    return shapely.Polygon(merged.exterior, holes)


def _read(path: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A traced band's polygons and values, in batches."""
    from osgeo import ogr

    if path.stat().st_size == 0:  # GDAL writes nothing at all for a band without data (a sparse mosaic's)
        return
    source = ogr.Open(str(path))
    try:
        yield from _features(source, path)
    finally:
        source = None


def _features(source, path: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    try:
        geoms, values = [], []
        for feature in source.GetLayer():
            geoms.append(bytes(feature.GetGeometryRef().ExportToWkb()))
            values.append(feature.GetField(0))
            if len(geoms) == BATCH:
                yield shapely.from_wkb(geoms), np.asarray(values)
                geoms, values = [], []
        if geoms:
            yield shapely.from_wkb(geoms), np.asarray(values)
    except (shapely.errors.GEOSException, AttributeError) as exc:  # a cut-off file: geometries end mid-ring
        raise OSError(
            f"the traced polygons in {path.name} are cut off ({exc}): a full disk or a file-size limit"
        ) from None


def _batches(geoms: np.ndarray, values: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for k in range(0, len(geoms), BATCH):
        yield geoms[k : k + BATCH], values[k : k + BATCH]


def match(geoms: np.ndarray, values: np.ndarray, regions: dict) -> Iterator[tuple[shapely.Geometry, int, float]]:
    """(polygon, value, mean confidence) for GDAL's polygons whose region is among `regions` ((value, row start,
    row stop, column start, column stop) -> (pixels, confidence sum)); the others are values not asked for or
    specks below the minimum area."""
    bounds = shapely.bounds(geoms).astype(np.int64)  # pixel edges: integers, exact
    for geom, v, (c0, r0, c1, r1) in zip(geoms, values, bounds, strict=True):
        stats = regions.get((int(v), int(r0), int(r1), int(c0), int(c1)))
        if stats is not None:
            yield geom, int(v), stats[1] / stats[0]
