"""The GPU side of bench/peers.py (issue #14 item 7): the same model, raster, tile grid and batch, run by

  (a) bare onnxruntime with the CUDA provider over pre-cut tiles (the model-only floor),
  (b) the engine CLI with the CUDA provider, fp32 and fp16 (a cached float16 copy),
  (c) the engine CLI with onnxruntime's TensorRT provider, FP16, engine cache in the work folder (a warm-up run
      builds it; the timed run reuses it),
  (d) the engine CLI on a native TensorRT engine built by `python -m export tensorrt --fp16`,

printing seconds, Mpx/s, speed against (a) and class agreement with the CUDA fp32 run. Needs onnxruntime-gpu
(and `tensorrt` for (c)/(d)); a runner whose provider or package is missing is reported and skipped. Put the
figures in bench/RESULTS.md with the card named (`nvidia-smi -L`).

    .venv/bin/python bench/gpu.py --size 4096 [--model default|ukis] [--batch 8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine_bench import make_raster  # noqa: E402 (bench/ is on sys.path)
from peers import RGBN, read_classes, run_engine, ukis_package  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--model", default="default")
    a = ap.parse_args()
    import onnxruntime as ort
    import rasterio

    from engine.model_package import load_model_package
    from engine.tiling import TileGrid

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise SystemExit("no CUDA provider in this onnxruntime (pip install onnxruntime-gpu on a GPU machine)")
    gpu = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="landseg_gpu_"))
    extra: list[str] = []
    if a.model == "ukis":
        model = ukis_package(tmp)
        raster = make_raster(tmp / f"rgbn_{a.size}.tif", a.size, RGBN)
        order, extra = [3, 2, 1, 4], ["--modality", "multispectral=3,2,1,4"]
    else:
        model = Path(a.model if a.model != "default" else ROOT / "models/landcover_unet_lite0.onnx")
        raster = make_raster(tmp / f"urban_{a.size}.tif", a.size)
        order = [1, 2, 3]
    meta = load_model_package(model).meta
    with rasterio.open(raster) as ds:
        x = meta.inputs[0].normalization.apply(ds.read(order))
    grid = TileGrid(a.size, a.size, a.tile, a.overlap)
    padded = np.pad(x, ((0, 0), (0, a.tile), (0, a.tile)), "edge")
    tiles = np.stack(
        [padded[:, w.row_off : w.row_off + a.tile, w.col_off : w.col_off + a.tile] for *_, w in grid.tiles()]
    )
    session = ort.InferenceSession(str(model), providers=["CUDAExecutionProvider"])
    feed = meta.inputs[0].name
    session.run(None, {feed: tiles[: a.batch]})
    t = time.perf_counter()
    for k in range(0, len(tiles), a.batch):
        session.run(None, {feed: tiles[k : k + a.batch]})
    t_bare = time.perf_counter() - t
    rows = [("bare onnxruntime CUDA EP, pre-cut tiles", t_bare, None)]
    runs = [("engine CUDA EP fp32", "cuda", []), ("engine CUDA EP fp16", "cuda", ["--precision", "fp16"])]
    cache = ["--trt-cache", str(tmp / "trt")]
    runs.append(("engine TensorRT EP fp16 (cached engine)", "tensorrt", ["--precision", "fp16", *cache]))
    base = None
    for label, device, more in runs:
        try:
            if device == "tensorrt":
                run_engine(raster, model, tmp / "warm", a, [*extra, *more], device)  # builds the engine cache
            secs, res = run_engine(raster, model, tmp / label.replace(" ", "_"), a, [*extra, *more], device)
        except SystemExit as exc:
            print(f"{label}: skipped ({str(exc).strip().splitlines()[-1]})")
            continue
        classes = read_classes(res)
        base = classes if base is None else base
        rows.append((label, secs, classes))
    try:
        built = subprocess.run(
            [sys.executable, "-m", "export", "tensorrt", "--onnx", str(model), "--fp16", "--max-batch", str(a.batch),
             "--opt-batch", str(a.batch), "--tile", str(a.tile), "--cache-dir", str(tmp / "native")],
            capture_output=True, text=True, cwd=ROOT, check=True,
        )  # fmt: skip
        engine_file = Path(built.stdout.strip().splitlines()[-1])
        secs, res = run_engine(raster, engine_file, tmp / "native_out", a, extra, "tensorrt")
        rows.append(("engine on a native TensorRT engine (fp16)", secs, read_classes(res)))
    except (subprocess.CalledProcessError, SystemExit, IndexError) as exc:
        print(f"native TensorRT: skipped ({str(getattr(exc, 'stderr', exc)).strip()[-200:]})")
    mpx = a.size * a.size / 1e6
    print(f"{gpu}\n{model.name} on {raster.name}: {a.size}^2 px, tile {a.tile}, overlap {a.overlap}, batch {a.batch}")
    print(f"{'runner':<48} {'s':>7} {'Mpx/s':>7} {'bare / it':>10} {'agrees with CUDA fp32':>22}")
    for label, secs, classes in rows:
        agree = "" if classes is None or base is None else f"{float((classes == base).mean()):.4f}"
        print(f"{label:<48} {secs:7.2f} {mpx / secs:7.2f} {t_bare / secs:10.2f} {agree:>22}")


if __name__ == "__main__":
    main()
