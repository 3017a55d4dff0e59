"""GDAL's polygonize of a whole value raster, on a thread of its own, for engine.polygonize.

One streaming C++ pass (GDALPolygonize: memory holds the regions still open on the current row, not the raster)
in pixel coordinates, so every vertex is an integer and a polygon's bounds are its region's bounding box. It
writes to a hidden FlatGeobuf beside the output (named like every temporary, so a killed run's copy is removed by
engine.run_lock) and hands the polygons back in batches. GDAL releases the GIL while it traces: the regions'
statistics (engine.region_stats) are gathered meanwhile, and each polygon finds its region by (value, bounding
box): two 4-connected regions of one value cannot share a bounding box (each would hold both a left-right and a
top-bottom crossing of it, and those two would meet).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import shapely

from .errors import Cancelled

BATCH = 4096  # polygons handed back at a time


class GdalTrace:
    def __init__(self, value_path: Path, near: Path, cancelled: Callable[[], bool] | None = None) -> None:
        self.path = Path(near).parent / f".polygons.{os.getpid()}-{secrets.token_hex(4)}.tmp.fgb"
        self.value_path = value_path
        self.cancelled = cancelled or (lambda: False)
        self.stop = False  # set when the caller fails: GDAL stops at its next row
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._trace, name="landseg-trace")

    def __enter__(self) -> GdalTrace:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop = True
        self.thread.join()
        self.path.unlink(missing_ok=True)

    def _trace(self) -> None:
        src = pixels = band = out = layer = None
        try:
            from osgeo import gdal, ogr

            gdal.UseExceptions()
            src = gdal.Open(str(self.value_path))
            pixels = gdal.GetDriverByName("VRT").CreateCopy("", src)  # a view, not a copy of the pixels
            pixels.SetGeoTransform((0, 1, 0, 0, 0, 1))  # pixel coordinates: column, row (y down)
            band = pixels.GetRasterBand(1)
            out = ogr.GetDriverByName("FlatGeobuf").CreateDataSource(str(self.path))
            layer = out.CreateLayer("trace", geom_type=ogr.wkbPolygon, options=["SPATIAL_INDEX=NO"])
            layer.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
            # 4-connected regions of one value; the mask band leaves no-data pixels out. Returning 0 stops GDAL.
            go = lambda *_: 0 if self.stop or self.cancelled() else 1  # noqa: E731
            gdal.Polygonize(band, band.GetMaskBand(), layer, 0, [], callback=go)
        except BaseException as exc:  # handed to the caller's thread by polygons()
            # Without its frames: they hold the layer and dataset, and a layer freed after its dataset (at
            # interpreter exit) crashes GDAL's Python bindings: a cancelled run must not take its process down.
            self.error = exc.with_traceback(None)
        finally:
            # GDAL's objects go child first: the layer before its data source, the band before its dataset.
            layer = None
            out = None  # closes the file
            band = None
            pixels = None
            src = None

    def polygons(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(polygons in pixel coordinates, their values), in batches, once GDAL has finished."""
        self.thread.join()
        if self.cancelled():
            raise Cancelled("cancelled by the user")
        if self.error is not None:
            raise self.error
        from osgeo import ogr

        source = ogr.Open(str(self.path))
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
        finally:
            source = None


def match(geoms: np.ndarray, values: np.ndarray, regions: dict) -> Iterator[tuple[shapely.Geometry, int, float]]:
    """(polygon, value, mean confidence) for GDAL's polygons whose region is among `regions` ((value, row start,
    row stop, column start, column stop) -> (pixels, confidence sum)); the others are values not asked for or
    specks below the minimum area."""
    bounds = shapely.bounds(geoms).astype(np.int64)  # pixel edges: integers, exact
    for geom, v, (c0, r0, c1, r1) in zip(geoms, values, bounds, strict=True):
        stats = regions.get((int(v), int(r0), int(r1), int(c0), int(c1)))
        if stats is not None:
            yield geom, int(v), stats[1] / stats[0]
