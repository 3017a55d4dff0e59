"""GDAL's polygonize of a whole value raster, and each polygon's confidence sum, for engine.polygonize.

One streaming C++ pass (GDALPolygonize: memory holds the regions still open on the current row, not the raster)
in pixel coordinates, so every vertex is an integer and a polygon's area is its pixel count. The polygons go to a
hidden FlatGeobuf beside the output (named like every temporary, so a killed run's copy is removed by
engine.run_lock). Confidence sums: strips of rows get each pixel's polygon id burnt in by GDAL (pixel centres:
exactly the polygon's own pixels) and the confidence is summed by id, on worker threads (GDAL and numpy's large
loops release the GIL).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.windows import Window

from .errors import Cancelled

BATCH = 4096  # polygons handed back at a time
MAX_VALUE = 1 << 16  # values are class ids (uint8) or change codes (uint16)
LAYER = "trace"


class GdalTrace:
    def __init__(
        self,
        value_path: Path,
        near: Path,
        progress: Callable[[float, str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        near = Path(near)
        self.path = near.parent / f".polygons.{os.getpid()}-{secrets.token_hex(4)}.tmp.fgb"
        self.value_path = value_path
        self.progress = progress
        self.cancelled = cancelled or (lambda: False)

    def __enter__(self) -> GdalTrace:
        from osgeo import gdal, ogr

        gdal.UseExceptions()

        def callback(complete: float, _message, _data) -> int:
            if self.progress:
                self.progress(0.6 * complete, "polygonizing")
            return 0 if self.cancelled() else 1  # 0: GDAL stops

        src = gdal.Open(str(self.value_path))
        self.height, self.width = src.RasterYSize, src.RasterXSize
        pixels = gdal.GetDriverByName("VRT").CreateCopy("", src)  # a view, not a copy of the pixels
        pixels.SetGeoTransform((0, 1, 0, 0, 0, 1))  # pixel coordinates: column, row (y down)
        band = pixels.GetRasterBand(1)
        out = ogr.GetDriverByName("FlatGeobuf").CreateDataSource(str(self.path))
        try:
            # The spatial index lets each strip's burning read only the polygons that reach it.
            layer = out.CreateLayer(LAYER, geom_type=ogr.wkbPolygon, options=["SPATIAL_INDEX=YES"])
            layer.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
            # 4-connected regions of one value; the mask band leaves no-data pixels out.
            gdal.Polygonize(band, band.GetMaskBand(), layer, 0, [], callback=callback)
            self.count = layer.GetFeatureCount()
        except BaseException as exc:
            out = None
            self.path.unlink(missing_ok=True)  # __exit__ does not run when __enter__ fails
            if isinstance(exc, RuntimeError) and self.cancelled():
                raise Cancelled("cancelled by the user") from None
            raise
        out = None  # closed: the spatial index is written
        return self

    def __exit__(self, *_exc) -> None:
        self.path.unlink(missing_ok=True)

    def confidence_sums(self, value_path: Path, conf_path: Path, strip_rows: int, workers: int) -> np.ndarray:
        """Confidence summed over each polygon's pixels, at index FID + 1 (0: pixels of no polygon).

        GDAL's burning walks every edge of a polygon for every row it fills, so the region with the longest
        outline of each value (a background that spans the map, holed by everything else) is not burnt: its sum
        is its value's total over the map minus its value's other polygons."""
        from osgeo import gdal

        longest: dict[int, tuple[int, int]] = {}  # value -> (vertices, FID)
        value_of = np.zeros(self.count, dtype=np.int64)
        for geoms, values, fids in self.polygons(report=False):
            value_of[fids] = values
            for n, v, fid in zip(shapely.get_num_coordinates(geoms), values, fids, strict=True):
                if n > longest.get(int(v), (0, -1))[0]:
                    longest[int(v)] = (int(n), int(fid))
        skipped = sorted(fid for _n, fid in longest.values())
        where = f" WHERE FID NOT IN ({', '.join(map(str, skipped))})" if skipped else ""
        sql = f"SELECT FID + 1 AS id, * FROM {LAYER}{where}"

        def strip(r0: int) -> tuple[np.ndarray, np.ndarray]:
            rows = min(strip_rows, self.height - r0)
            ids = gdal.GetDriverByName("MEM").Create("", self.width, rows, 1, gdal.GDT_Int32)
            ids.SetGeoTransform((0, 1, 0, r0, 0, 1))
            gdal.Rasterize(ids, str(self.path), SQLStatement=sql, attribute="id")
            win = Window(0, r0, self.width, rows)
            with rasterio.open(conf_path) as ds, rasterio.open(value_path) as vs:  # handles are per thread
                conf = ds.read(1, window=win).astype(np.float64).ravel()
                values = vs.read(1, window=win, masked=True)
            # float64 weights: bincount casts float32 ones element by element, 4x slower than casting first
            by_id = np.bincount(ids.ReadAsArray().ravel(), weights=conf, minlength=self.count + 1)
            valid = ~np.ma.getmaskarray(values).ravel()
            by_value = np.bincount(values.data.ravel()[valid], weights=conf[valid], minlength=MAX_VALUE)
            return by_id, by_value

        sums, totals = np.zeros(self.count + 1), np.zeros(MAX_VALUE)
        starts = range(0, self.height, strip_rows)
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="landseg-sums") as pool:
            for i, (by_id, by_value) in enumerate(pool.map(strip, starts)):
                if self.cancelled():
                    raise Cancelled("cancelled by the user")
                sums += by_id
                totals[: len(by_value)] += by_value[:MAX_VALUE]
                if self.progress:
                    self.progress(0.6 + 0.25 * (i + 1) / len(starts), "polygon confidence")
        burnt_by_value = np.bincount(value_of, weights=sums[1:], minlength=MAX_VALUE)
        for v, (_n, fid) in longest.items():  # unburnt: its sum is still 0 in `sums`
            sums[fid + 1] = totals[v] - burnt_by_value[v]
        return sums

    def polygons(self, report: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(polygons in pixel coordinates, their values, their FIDs), in batches."""
        from osgeo import ogr

        source = ogr.Open(str(self.path))
        try:
            geoms, values, fids = [], [], []
            for n, feature in enumerate(source.GetLayer(), 1):
                geoms.append(bytes(feature.GetGeometryRef().ExportToWkb()))
                values.append(feature.GetField(0))
                fids.append(feature.GetFID())
                if len(geoms) == BATCH:
                    yield shapely.from_wkb(geoms), np.asarray(values), np.asarray(fids)
                    geoms, values, fids = [], [], []
                    if report and self.progress:
                        self.progress(0.85 + 0.15 * n / max(1, self.count), "writing polygons")
            if geoms:
                yield shapely.from_wkb(geoms), np.asarray(values), np.asarray(fids)
        finally:
            source = None
