"""Engine polygons vs gdal_polygonize on the same class map, side by side in one run.

The class map is the default model's map of the bundled urban orthophoto (real imagery), tiled k x k times to
reach the requested size, so the per-pixel cost can be compared across sizes. The engine writes every attribute
(class, ellipsoidal area m², mean confidence) and never cuts a region at a strip seam; gdal_polygonize (GDAL's
own, 8-bit class values only, no attributes beyond the value) is the floor to beat. The engine labels and traces
strips on 2 threads (`PolygonizeOptions.workers`, as a job does); `--workers 1` shows the one-thread cost.

Usage: python bench/polygonize.py [--sizes 2048,4096,8192,16384] [--workers 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.jobs.landcover import LandcoverParams, run_landcover  # noqa: E402
from engine.model_package import DEFAULT_LANDCOVER_MODEL, load_model_package  # noqa: E402
from engine.polygonize import PolygonizeOptions, polygonize  # noqa: E402

GDAL_POLYGONIZE = "/usr/bin/gdal_polygonize.py"


def tiled(src: Path, dst: Path, size: int) -> Path:
    with rasterio.open(src) as ds:
        a = ds.read(1)
        k = -(-size // a.shape[0])
        big = np.tile(a, (k, k))[:size, :size]
        prof = ds.profile | {"width": size, "height": size, "tiled": True, "blockxsize": 512, "blockysize": 512}
    with rasterio.open(dst, "w", **prof) as out:
        out.write(big, 1)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2048,4096,8192")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    classes = load_model_package(DEFAULT_LANDCOVER_MODEL).meta.classes
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        res = run_landcover(
            LandcoverParams(
                inputs=[ROOT / "data/sample/urban_river_rgb.tif"], model=DEFAULT_LANDCOVER_MODEL, out_dir=work / "map"
            )  # fmt: skip
        )
        print(f"{'size':>6} {'engine s':>9} {'gdal s':>8} {'engine/gdal':>12} {'engine µs/px':>13} {'polygons':>9}")
        for size in (int(s) for s in a.sizes.split(",")):
            cls = tiled(res.class_map, work / f"c{size}.tif", size)
            conf = tiled(res.confidence, work / f"f{size}.tif", size)
            t0 = time.perf_counter()
            n = polygonize(
                cls,
                conf,
                work / f"e{size}.gpkg",
                classes,
                PolygonizeOptions(min_area_m2=0, simplify_px=0, workers=a.workers),
            )
            t_engine = time.perf_counter() - t0
            t0 = time.perf_counter()
            subprocess.run(
                ["/usr/bin/python3", GDAL_POLYGONIZE, "-q", str(cls), "-f", "GPKG", str(work / f"g{size}.gpkg")],
                check=True,
            )
            t_gdal = time.perf_counter() - t0
            print(
                f"{size:>6} {t_engine:>9.2f} {t_gdal:>8.2f} {t_engine / t_gdal:>12.2f} "
                f"{1e6 * t_engine / size**2:>13.3f} {n:>9}"
            )


if __name__ == "__main__":
    main()
