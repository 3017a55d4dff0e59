"""Vector outputs in the format the output's extension names: GeoPackage (default), FlatGeobuf, Shapefile,
GeoParquet. One writer interface (``vector_sink``) for every job, so polygons, change polygons and crowns carry
the same attributes (and ``.qml`` styles) whatever the format.

GeoPackage, FlatGeobuf and Shapefile are written by fiona (GDAL). GeoParquet is not in the GDAL that the
fiona/pyogrio wheels bundle, so the features go to a hidden GeoPackage first and geopandas/pyarrow write the
GeoParquet file from it (an optional extra: ``.venv/bin/pip install geopandas pyarrow``). Shapefile limits apply
there: field names are cut to 10 characters (``height_mean`` becomes ``height_mea``), 2 GB per file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

DRIVERS = {".gpkg": "GPKG", ".fgb": "FlatGeobuf", ".shp": "ESRI Shapefile", ".parquet": "GeoParquet"}
# The files a Shapefile is made of, moved and removed together with its .shp.
SIDECARS = {".shp": (".shx", ".dbf", ".prj", ".cpg")}


def driver_for(path: str | Path, what: str = "polygons output") -> str:
    """The format of a vector output, from its extension; a one-line error for any other extension, and for
    GeoParquet when its libraries are missing (checked before a run writes anything)."""
    suffix = Path(path).suffix.lower()
    if suffix not in DRIVERS:
        kinds = "GeoPackage, FlatGeobuf, Shapefile, GeoParquet"
        raise OutputError(f"{what} {path} must end in {', '.join(DRIVERS)} ({kinds})")
    if DRIVERS[suffix] == "GeoParquet":
        try:
            import geopandas  # noqa: F401
            import pyarrow  # noqa: F401
        except ImportError:
            raise OutputError(
                f"{what} {path}: GeoParquet needs geopandas and pyarrow (`.venv/bin/pip install geopandas pyarrow`); "
                "or write .gpkg, .fgb or .shp"
            ) from None
    return DRIVERS[suffix]


def companions(path: Path) -> list[Path]:
    """The other files that belong to a vector output (a Shapefile's .shx, .dbf, ...)."""
    return [path.with_suffix(s) for s in SIDECARS.get(path.suffix.lower(), ())]


@contextmanager
def vector_sink(path: str | Path, layer: str, schema: dict, crs_wkt: str | None) -> Iterator:
    """A fiona collection open for writing ``path`` in the format its extension names."""
    import fiona

    path = Path(path)
    driver = driver_for(path)
    if driver == "GeoParquet":
        staging = path.with_name(f".{path.stem}.{os.getpid()}.staging.gpkg")
        try:
            with fiona.open(staging, "w", driver="GPKG", layer=layer, schema=schema, crs=crs_wkt) as sink:
                yield sink
            import geopandas

            geopandas.read_file(staging, layer=layer).to_parquet(path)
        finally:
            if staging.exists():
                staging.unlink()
        return
    # A Shapefile's layer is its file name; FlatGeobuf stores the name given (else the temporary file's).
    kw = {"layer": layer} if driver != "ESRI Shapefile" else {}
    # GDAL >= 3.6 builds the GeoPackage R-tree in a thread fed from memory; off, it is built on close.
    with (
        fiona.Env(OGR_GPKG_ALLOW_THREADED_RTREE="NO"),
        fiona.open(path, "w", driver=driver, schema=schema, crs=crs_wkt, **kw) as sink,
    ):
        yield sink
