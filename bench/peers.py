"""The engine against what an analyst would use instead, side by side in one run: the same model, the same tile
grid, the same threads and batch.

  (a) bare onnxruntime over pre-cut in-memory tiles (the model-only floor: no reading, blending or writing),
  (b) the engine CLI, whole process (`engine landcover`: read, infer, blend, write COGs, polygonize),
  (c) MONAI `sliding_window_inference` (gaussian) with the same onnxruntime session as its predictor,
  (d) not yet: ukis-csmask's own runner on its 4-band cloud model (`pip install ukis-csmask`, a 145 MB wheel).

Prints seconds, Mpx/s, engine/bare and engine-vs-each-peer ratios, and class agreement between them.

Input: the bundled real orthophoto `data/sample/urban_river_rgb.tif` (2048 x 2048 px, 0.1 m, RGB), cut to 1024
px or tiled 2 x 2 to 4096 px by `engine_bench.make_raster` (real imagery, never noise; no nodata, so every runner
infers every pixel), at its own pixel size (`--resample off`), with the default land-cover model.

    .venv/bin/python bench/peers.py --size 2048 [--tile 256 --overlap 48 --batch 4 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine_bench import make_raster  # noqa: E402 (bench/ is the script's folder: on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048, choices=(1024, 2048, 4096))
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=48, help="48 of 256 (~20 %%): a stride the engine accepts")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=str(ROOT / "models/landcover_unet_lite0.onnx"))
    a = ap.parse_args()

    import onnxruntime as ort

    from engine.model_package import load_model_package
    from engine.tiling import TileGrid

    tmp = Path(tempfile.mkdtemp(prefix="landseg_peers_"))
    try:
        raster = make_raster(tmp / f"urban_{a.size}.tif", a.size)
        meta = load_model_package(a.model).meta
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        session = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
        name = meta.inputs[0].name
        with rasterio.open(raster) as ds:
            data = ds.read()
        x = meta.inputs[0].normalization.apply(data)
        grid = TileGrid(a.size, a.size, a.tile, a.overlap)
        tiles, where = [], []
        padded = np.pad(x, ((0, 0), (0, a.tile), (0, a.tile)), "edge")
        for i, j, win in grid.tiles():
            tiles.append(padded[:, win.row_off : win.row_off + a.tile, win.col_off : win.col_off + a.tile])
            where.append((i, j))
        tiles = np.stack(tiles)
        session.run([meta.output_name], {name: tiles[: a.batch]})  # warm-up, as every runner gets one
        # (a) bare model: pre-cut tiles, batches through the session, nothing else
        t = time.perf_counter()
        bare = np.zeros((a.size, a.size), np.uint8)
        rows, cols = grid.rows, grid.cols
        for k in range(0, len(tiles), a.batch):
            out = session.run([meta.output_name], {name: tiles[k : k + a.batch]})[0]
            for (i, j), o in zip(where[k : k + a.batch], out, strict=True):
                r0, r1 = rows.block(i)
                c0, c1 = cols.block(j)
                bare[r0:r1, c0:c1] = o[:, : r1 - r0, : c1 - c0].argmax(0)
        t_bare = time.perf_counter() - t
        # (b) the engine, whole process
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "engine", "landcover", "-i", str(raster), "--model", a.model, "-o", str(tmp / "e"),
             "--resample", "off", "--tile", str(a.tile), "--overlap", str(a.overlap), "--batch", str(a.batch),
             "--threads", str(a.threads), "--device", "cpu", "--progress", "none", "--json"],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        t_engine = time.perf_counter() - t
        if proc.returncode:
            raise SystemExit(proc.stderr)
        res = json.loads(proc.stdout)
        with rasterio.open(res["class_map"]) as ds:
            engine = ds.read(1)
        rows_out = [("bare onnxruntime, pre-cut tiles (model only)", t_bare, bare)]
        rows_out.append(("engine CLI, whole job (read, blend, COGs, polygons)", t_engine, engine))
        # (c) MONAI
        try:
            import torch
            from monai.inferers import sliding_window_inference

            torch.set_num_threads(a.threads)

            def predictor(batch: torch.Tensor) -> torch.Tensor:
                return torch.from_numpy(session.run([meta.output_name], {name: batch.numpy()})[0]).softmax(1)

            t = time.perf_counter()
            with torch.no_grad():
                m = sliding_window_inference(torch.from_numpy(x)[None], (a.tile, a.tile), a.batch, predictor,
                                             overlap=a.overlap / a.tile, mode="gaussian")  # fmt: skip
            monai = m[0].argmax(0).numpy().astype(np.uint8)
            rows_out.append(("MONAI sliding_window_inference, gaussian, same session", time.perf_counter() - t, monai))
        except ImportError:
            print("MONAI not installed (make dev installs it): skipped")
        mpx = a.size * a.size / 1e6
        print(f"{raster.name}: {a.size}^2 px, tile {a.tile}, overlap {a.overlap}, batch {a.batch}, {a.threads} threads,"
              f" {len(tiles)} tiles; engine timings {res['timings']}")  # fmt: skip
        print(f"{'runner':<58} {'s':>7} {'Mpx/s':>7} {'engine speed vs it':>19} {'agrees with engine':>19}")
        for label, secs, classes in rows_out:
            agree = float((classes == engine).mean())
            print(f"{label:<58} {secs:7.2f} {mpx / secs:7.2f} {secs / t_engine:18.2f}x {agree:18.4f}")
        print(f"engine whole job / bare model throughput ratio: {t_bare / t_engine:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
