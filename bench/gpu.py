"""The GPU side of bench/peers.py (issue #14 item 7): the same model, raster, tile grid and batch, run by

  (a) bare onnxruntime with the CUDA provider over pre-cut tiles (the model-only floor),
  (b) the engine CLI with the CUDA provider, fp32 and fp16 (a cached float16 copy),
  (c) the engine CLI with onnxruntime's TensorRT provider, FP16, engine cache in the work folder (a warm-up run
      builds it; the timed run reuses it),
  (d) the engine CLI on a native TensorRT engine built by `python -m export tensorrt --fp16`,
  (e) the engine CLI on the same machine's CPU cores (what the GPU buys there),

printing for each: the provider that really ran (onnxruntime falls back to the CPU when the CUDA provider cannot
load), whole-job seconds (best of --repeat new processes), the inference stage's seconds, Mpx/s, speed against
(a) and class agreement with the CUDA fp32 run. The bare loop's session and first batch (CUDA set-up, cuDNN's
algorithm search) are printed beside it, not counted; `--conv-search` (default heuristic, the engine's) is used by
both. Needs onnxruntime-gpu
(and `tensorrt` for (c)/(d)); a runner whose provider or package is missing is reported and skipped. Put the
figures in bench/RESULTS.md with the card named (`nvidia-smi -L`).

    .venv/bin/python bench/gpu.py --size 4096 [--model default|ukis|PACKAGE.onnx] [--batch 8] [--source RASTER]

`--model ukis` needs ukis-csmask installed (a 145 MB wheel); on a machine without it, pass the package that
bench/peers.py made (`--model /path/ukis_csmask_4b_l1c.onnx`, its .json beside it) with `--bands 3,2,1,4` and
`--source` the 4-band raster.
"""

from __future__ import annotations

import argparse
import os
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
    ap.add_argument("--repeat", type=int, default=2, help="whole GPU jobs per runner (best is reported)")
    ap.add_argument("--conv-search", default="heuristic", help="cuDNN algorithm search, bare and engine alike")
    ap.add_argument("--model", default="default", help="default, ukis, or a LandSeg .onnx package")
    ap.add_argument("--source", type=Path, help="the real raster tiled up to --size (default: by model)")
    ap.add_argument("--bands", help="raster bands fed to the model, e.g. 3,2,1,4 (default: by model)")
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
        raster = make_raster(tmp / f"rgbn_{a.size}.tif", a.size, a.source or RGBN)
        order = [3, 2, 1, 4]
    else:
        model = Path(a.model if a.model != "default" else ROOT / "models/landcover_unet_lite0.onnx")
        raster = make_raster(tmp / f"raster_{a.size}.tif", a.size, *([a.source] if a.source else []))
        order = [int(b) for b in a.bands.split(",")] if a.bands else [1, 2, 3]
    meta = load_model_package(model).meta
    if a.model == "ukis" or a.bands:
        extra = ["--modality", f"{meta.inputs[0].modality}={','.join(map(str, order))}"]
    with rasterio.open(raster) as ds:
        x = meta.inputs[0].normalization.apply(ds.read(order))
    grid = TileGrid(a.size, a.size, a.tile, a.overlap)
    padded = np.pad(x, ((0, 0), (0, a.tile), (0, a.tile)), "edge")
    tiles = np.stack(
        [padded[:, w.row_off : w.row_off + a.tile, w.col_off : w.col_off + a.tile] for *_, w in grid.tiles()]
    )
    cuda = ("CUDAExecutionProvider", {"cudnn_conv_algo_search": a.conv_search.upper()})
    t = time.perf_counter()
    session = ort.InferenceSession(str(model), providers=[cuda])
    t_session = time.perf_counter() - t
    feed = meta.inputs[0].name
    t = time.perf_counter()
    session.run(None, {feed: tiles[: a.batch]})  # the first batch: CUDA and cuDNN set up (algorithm search)
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    for k in range(0, len(tiles), a.batch):
        session.run(None, {feed: tiles[k : k + a.batch]})
    t_bare = time.perf_counter() - t
    mpx = a.size * a.size / 1e6
    print(f"{gpu}\n{model.name} on {raster.name}: {a.size}^2 px, tile {a.tile}, overlap {a.overlap}, batch {a.batch}")
    print(
        f"{'runner':<44} {'ran on':<22} {'s':>6} {'infer s':>7} {'Mpx/s':>6} {'bare/it':>7} {'agrees w/ CUDA fp32':>19}"
    )
    base: list[np.ndarray] = []

    def row(label: str, secs: float, ran_on: str, infer: float, classes: np.ndarray | None = None) -> None:
        """Printed as soon as measured: a later runner that crashes loses nothing."""
        if classes is not None and not base:
            base.append(classes)
        agree = "" if classes is None else f"{float((classes == base[0]).mean()):.4f}"
        print(f"{label:<44} {ran_on:<22} {secs:6.2f} {infer:7.2f} {mpx / secs:6.2f} {t_bare / secs:7.2f} {agree:>19}")

    # onnxruntime falls back to the CPU silently when the CUDA provider cannot load: say which one ran.
    row("bare onnxruntime CUDA EP, pre-cut tiles", t_bare, session.get_providers()[0], t_bare)
    print(f"  (not in the bare time: its session took {t_session:.2f} s, its first batch {t_first:.2f} s)")
    search = ["--conv-search", a.conv_search]
    runs = [("engine CUDA EP fp32", "cuda", search), ("engine CUDA EP fp16", "cuda", ["--precision", "fp16", *search])]
    cache = ["--trt-cache", str(tmp / "trt")]
    # The TensorRT provider's chain ends in the CUDA provider: the same search setting.
    runs.append(("engine TensorRT EP fp16 (cached engine)", "tensorrt", ["--precision", "fp16", *cache, *search]))
    runs.append((f"engine CPU fp32 ({os.cpu_count()} cores)", "cpu", []))
    for label, device, more in runs:
        try:
            if device == "tensorrt":
                run_engine(raster, model, tmp / "warm", a, [*extra, *more], device)  # builds the engine cache
            # Best of --repeat whole jobs: each is a new process (imports, session, CUDA context) as a user runs it.
            secs, res = min(
                (run_engine(raster, model, tmp / f"{label.replace(' ', '_')}_{r}", a, [*extra, *more], device)
                 for r in range(a.repeat if device != "cpu" else 1)),
                key=lambda sr: sr[0],
            )  # fmt: skip
        except SystemExit as exc:
            print(f"{label}: skipped ({' | '.join(str(exc).strip().splitlines()[-3:])[-300:]})")
            continue
        row(label, secs, res.get("device", "?"), res["timings"]["inference"], read_classes(res))
    try:
        built = subprocess.run(
            [sys.executable, "-m", "export", "tensorrt", "--onnx", str(model), "--fp16", "--max-batch", str(a.batch),
             "--opt-batch", str(a.batch), "--tile", str(a.tile), "--cache-dir", str(tmp / "native")],
            capture_output=True, text=True, cwd=ROOT, check=True,
        )  # fmt: skip
        engine_file = Path(built.stdout.strip().splitlines()[-1])
        secs, res = run_engine(raster, engine_file, tmp / "native_out", a, extra, "tensorrt")
        label = "engine on a native TensorRT engine (fp16)"
        row(label, secs, res.get("device", "?"), res["timings"]["inference"], read_classes(res))
    except (subprocess.CalledProcessError, SystemExit, IndexError) as exc:
        print(f"native TensorRT: skipped ({str(getattr(exc, 'stderr', exc)).strip()[-200:]})")


if __name__ == "__main__":
    main()
