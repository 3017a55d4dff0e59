"""Engine benchmarks, printed as ratios measured in one run.

1. Throughput: the full engine (read windows, normalise, infer, blend, write GeoTIFFs) versus bare
   onnxruntime on the same tiles pre-cut in memory, for the same model and batch size. Target >= 0.85.
   Measured for a compute-bound conv model (what real networks are) and for the bundled colour-index
   baseline (so cheap that I/O dominates; reported for honesty, no target).
2. Peak RSS of a whole land-cover run (polygons included) on a 2k x 2k versus a 16k x 16k raster, each in a
   fresh process. Target: within +-10%.

Usage: python bench/engine_bench.py [--big 16384] [--small 2048] [--work /tmp/landseg-bench]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.jobs.landcover import LandcoverParams, run_landcover  # noqa: E402
from engine.model_package import embed_metadata, load_model_package, meta_to_dict  # noqa: E402
from engine.polygonize import PolygonizeOptions  # noqa: E402
from engine.tiling import TileGrid  # noqa: E402
from export.graph_builder import GraphBuilder  # noqa: E402

SAMPLE = ROOT / "data" / "sample" / "urban_river_rgb.tif"
DEFAULT_MODEL = ROOT / "models" / "rgb_index_baseline.onnx"


def conv_model(path: Path, width: int = 48, layers: int = 6, n_classes: int = 5) -> Path:
    """A plain 3x3 conv stack of about 45 GFLOP per 512x512 tile, the order of a U-Net/ResNet-34 segmenter."""
    import onnx

    rng = np.random.default_rng(0)
    g = GraphBuilder("bench-conv")
    x, ch = g.input("rgb", 3), 3
    for k in range(layers):
        out = n_classes if k == layers - 1 else width
        x = g.conv(x, rng.normal(0, 0.3, (out, ch, 3, 3)).astype(np.float32), np.zeros(out, np.float32))
        if k < layers - 1:
            x = g.op("Relu", x)
        ch = out
    g.output("logits", x, n_classes)
    m = g.model()
    embed_metadata(m, meta_to_dict(load_model_package(DEFAULT_MODEL).meta))
    onnx.save(m, str(path))
    return path


def make_raster(path: Path, size: int, source: Path = SAMPLE) -> Path:
    """Tile a real raster (default: the sample orthophoto) into a size x size one (tiled, deflate), block by
    block."""
    if path.exists():
        return path
    with rasterio.open(source) as src:
        img = src.read()
        profile = src.profile
    bh, bw = img.shape[1:]
    profile.update(
        width=size,
        height=size,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        BIGTIFF="YES",
        nodata=None,
        photometric="RGB" if img.shape[0] == 3 else "MINISBLACK",
    )
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, size, bh):
            for c in range(0, size, bw):
                h, w = min(bh, size - r), min(bw, size - c)
                dst.write(img[:, :h, :w], window=Window(c, r, w, h))
    tmp.rename(path)
    return path


def throughput(model: Path, raster: Path, work: Path, batch: int = 4) -> tuple[float, float]:
    meta = load_model_package(model).meta
    params = LandcoverParams(
        inputs=[raster], model=model, out_dir=work / "tp", batch=batch, polygons=PolygonizeOptions(simplify_px=0)
    )
    res = run_landcover(params)
    t_engine = res.timings["inference"]  # reading, inference, blending, GeoTIFF writing; not polygons
    # Bare onnxruntime on the same number of tiles, pre-cut in memory.
    with rasterio.open(raster) as ds:
        grid = TileGrid(ds.height, ds.width, res.tile, res.overlap)
        n = len(grid)
        tile = ds.read(window=Window(0, 0, res.tile, res.tile))
    x = meta.inputs[0].normalization.apply(tile)
    batch_x = np.stack([x] * batch)
    import onnxruntime as ort

    rt = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])  # onnxruntime's defaults
    rt.run(None, {"rgb": batch_x})  # warm-up
    t0 = time.perf_counter()
    done = 0
    while done < n:
        k = min(batch, n - done)
        rt.run(None, {"rgb": batch_x[:k]})
        done += k
    t_bare = time.perf_counter() - t0
    return n / t_engine, n / t_bare


def child_rss(raster: Path, out: Path) -> None:
    run_landcover(LandcoverParams(inputs=[raster], model=DEFAULT_MODEL, out_dir=out))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec.
    hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"maxrss_mb": hwm_kb / 1024}))


def peak_rss(raster: Path, out: Path) -> float:
    p = subprocess.run(
        [sys.executable, __file__, "--child", str(raster), str(out)], capture_output=True, text=True, check=True
    )
    return json.loads(p.stdout.strip().splitlines()[-1])["maxrss_mb"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=2048)
    ap.add_argument("--big", type=int, default=16384)
    ap.add_argument("--work", type=Path, default=Path("/tmp/landseg-bench"))
    ap.add_argument("--only", choices=("throughput", "rss"))
    ap.add_argument("--child", nargs=2, type=Path)
    args = ap.parse_args()
    if args.child:
        child_rss(*args.child)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    small = make_raster(args.work / f"rgb_{args.small}.tif", args.small)
    conv = conv_model(args.work / "conv.onnx")
    if args.only != "rss":
        # 4k x 4k: 100 tiles, enough to amortise onnxruntime's first-run warm-up inside the engine's timing.
        print_throughput(conv, make_raster(args.work / "rgb_4096.tif", 4096), args.work)
    if args.only != "throughput":
        print_rss(small, args)


def print_throughput(conv: Path, raster: Path, work: Path) -> None:
    print("== throughput: engine vs bare onnxruntime on pre-cut in-memory tiles (target >= 0.85)")
    for label, model in (("conv net (compute-bound)", conv), ("rgb-index-baseline (I/O-bound)", DEFAULT_MODEL)):
        eng, bare = throughput(model, raster, work)
        print(f"{label:32s} engine {eng:8.2f} tiles/s  bare {bare:8.2f} tiles/s  ratio {eng / bare:.3f}")


def print_rss(small: Path, args: argparse.Namespace) -> None:
    print(f"== peak RSS, whole run incl. polygons: {args.small}^2 vs {args.big}^2 (target within +-10%)")
    big = make_raster(args.work / f"rgb_{args.big}.tif", args.big)
    r_small = peak_rss(small, args.work / "rss_small")
    r_big = peak_rss(big, args.work / "rss_big")
    print(f"peak RSS {args.small}^2: {r_small:.0f} MB   {args.big}^2: {r_big:.0f} MB   ratio {r_big / r_small:.3f}")


if __name__ == "__main__":
    main()
