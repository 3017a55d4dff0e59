"""Tree crowns for a town: whole-job time and peak memory of `engine treecrowns`, side by side in one run.

Inputs (real imagery, tiled to size; the ground is repeated, the work is not):
- 0.6 m: a 4096 x 4096 red/green/blue/NIR raster of NAIP chips of the held-out city (claremont, 2018), 16 x 16
  chips, UTM 11N (../shared/data/landcover/naip_california; issue #31's target: <= 60 s on 2 cores);
- 0.1 m: the bundled orthophoto `data/sample/urban_river_rgb.tif` (2048 x 2048; target: no slower than before).
Each run is a fresh `python -m engine treecrowns` process with its defaults; peak RSS is the process's VmHWM.
`--baseline MODEL` runs a second detector on the same inputs (e.g. the former 0.1 m one, kept with
`git show HEAD~1:models/treecrowns_centernet_lite0.onnx > out/old.onnx`), so the ratio is measured side by side.

    .venv/bin/python bench/treecrowns_speed.py [--baseline out/old.onnx] [--sizes 4096] [--work /tmp/crowns-bench]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.train import naip  # noqa: E402
from export.train.landcover_data import data_root  # noqa: E402


def naip_mosaic(path: Path, size: int) -> Path:
    """A size x size RGBN GeoTIFF of claremont 2018 chips side by side (0.6 m, UTM 11N, bands described)."""
    if path.exists():
        return path
    chips = [c for c in naip.chips(data_root(), "val") if c.year == 2018]
    n = size // 256
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=4, dtype="uint8", crs="EPSG:26911",
        transform=from_origin(430000, 3780000, 0.6, 0.6), tiled=True, blockxsize=512, blockysize=512,
        compress="deflate",
    ) as dst:  # fmt: skip
        for i in range(n):
            row = np.concatenate([naip.read_chip(chips[(i * n + j) % len(chips)]) for j in range(n)], axis=2)
            dst.write(row, window=rasterio.windows.Window(0, i * 256, size, 256))
        dst.descriptions = ("red", "green", "blue", "nir")
    return path


def child(image: Path, out: Path, model: str) -> None:
    """One job in this (fresh) process, then its result and peak RSS as JSON on stdout."""
    from engine.jobs.treecrowns import TreeCrownParams, run_treecrowns

    res = run_treecrowns(TreeCrownParams(image=image, out_dir=out, model=Path(model) if model else None))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec.
    hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": res.seconds, "n_crowns": res.n_crowns, "messages": res.messages,
                      "maxrss_mb": hwm_kb / 1024}))  # fmt: skip


def run(image: Path, out: Path, model: Path | None) -> tuple[dict, float]:
    args = [sys.executable, __file__, "--child", str(image), str(out), str(model or "")]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return res, res["maxrss_mb"]


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", type=Path, help="a second detector run on the same inputs (side by side)")
    ap.add_argument("--sizes", default="4096", help="sizes of the 0.6 m mosaic")
    ap.add_argument("--work", type=Path, default=Path("/tmp/crowns-bench"))
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    inputs = [(f"NAIP {s}^2 at 0.6 m", naip_mosaic(a.work / f"naip_{s}.tif", int(s))) for s in a.sizes.split(",")]
    inputs.append(("orthophoto 2048^2 at 0.1 m", ROOT / "data/sample/urban_river_rgb.tif"))
    models = [("shipped", None)] + ([("baseline", a.baseline)] if a.baseline else [])
    rows = {}
    for label, image in inputs:
        for name, model in models:
            if name == "baseline" and "0.6 m" in label:
                continue  # the former detector reads 0.6 m at 0.1 m (36x the pixels): not a town in minutes
            res, mb = run(image, a.work / f"out_{name}_{image.stem}", model)
            rows[(label, name)] = res["seconds"]
            grid = "; ".join(m for m in res["messages"] if "resampl" in m or "range" in m)
            print(f"{label:28} {name:8}: {res['seconds']:6.1f} s, peak RSS {mb:5.0f} MB, {res['n_crowns']:6} crowns "
                  f"({grid})", flush=True)  # fmt: skip
    for label, _ in inputs:
        if (label, "baseline") in rows:
            print(f"{label}: shipped / baseline time {rows[(label, 'shipped')] / rows[(label, 'baseline')]:.2f}")


if __name__ == "__main__":
    main()
