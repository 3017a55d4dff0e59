"""Is the engine linear in raster size? Per-pixel cost of inference and of polygons at 2k² and 16k², one run.

The default land-cover model on the bundled real orthophoto (`data/sample/urban_river_rgb.tif`, 0.1 m) tiled to
each size (`engine_bench.make_raster`), at its own pixel size (`--resample off`, so every pixel is inferred), in
a fresh process per size. Inference = reading, normalising, the model, blending and writing the GeoTIFFs (the
job's `timings.inference`); polygons = `engine.polygonize` alone on that run's class map (the job builds its
COGs alongside it). Issue #14's target: 16k² per-pixel cost within 15 % of 2k² for both. Inference is also given
per pixel the model sees (tiles x tile²): a small raster's tiles overlap more of it (2048² at tile 512: 1.56x its
pixels; 16384²: 1.34x).

    .venv/bin/python bench/scaling.py [--sizes 2048,16384] [--precision fp32|int8] [--work /tmp/landseg-scaling]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine_bench import make_raster  # noqa: E402 (bench/ is on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2048,16384")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/landseg-scaling"))
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    from engine.model_package import DEFAULT_LANDCOVER_MODEL, load_model_package
    from engine.polygonize import PolygonizeOptions, polygonize
    from engine.tiling import TileGrid

    classes = load_model_package(DEFAULT_LANDCOVER_MODEL).meta.classes
    rows = []
    for size in (int(s) for s in a.sizes.split(",")):
        raster = make_raster(a.work / f"urban_{size}.tif", size)
        out = a.work / f"out_{size}"
        proc = subprocess.run(
            [sys.executable, "-m", "engine", "landcover", "-i", str(raster), "-o", str(out), "--resample", "off",
             "--precision", a.precision, "--progress", "none", "--json"],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        if proc.returncode:
            raise SystemExit(proc.stderr)
        res = json.loads(proc.stdout)
        t0 = time.perf_counter()
        n = polygonize(res["class_map"], res["confidence"], a.work / f"poly_{size}.gpkg", classes, PolygonizeOptions())
        t_poly = time.perf_counter() - t0
        (a.work / f"poly_{size}.gpkg").unlink()
        px = size * size
        seen = len(TileGrid(size, size, res["tile"], res["overlap"])) * res["tile"] ** 2  # pixels the model sees
        rows.append((size, res["timings"]["inference"], t_poly, n, px, seen))
        print(f"{size}^2: inference {res['timings']['inference']:.1f} s, polygons {t_poly:.1f} s ({n} polygons), "
              f"whole job {res['seconds']:.1f} s", flush=True)  # fmt: skip
    head = ("size", "inference µs/px", "µs/px seen", "seen/px", "polygons µs/px", "polygons")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (6, 16, 11, 8, 15, 9), strict=True)))
    for size, t_inf, t_poly, n, px, seen in rows:
        print(f"{size:>6} {1e6 * t_inf / px:>16.3f} {1e6 * t_inf / seen:>11.3f} {seen / px:>8.2f} "
              f"{1e6 * t_poly / px:>15.3f} {n:>9}")  # fmt: skip
    if len(rows) > 1:
        (s0, i0, p0, _n0, x0, v0), (s1, i1, p1, _n1, x1, v1) = rows[0], rows[-1]
        print(f"{s1}^2 / {s0}^2 per-pixel cost: inference {(i1 / x1) / (i0 / x0):.3f} (per pixel seen "
              f"{(i1 / v1) / (i0 / v0):.3f}), polygons {(p1 / x1) / (p0 / x0):.3f} (target 0.85-1.15)")  # fmt: skip


if __name__ == "__main__":
    main()
