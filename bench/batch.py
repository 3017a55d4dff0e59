"""Batch on Dask: the same inputs run (a) one after another in one process (`engine landcover` per input, the
floor without a scheduler), (b) `engine batch` on a LocalCluster of 1 worker, (c) of 2 workers, and (d) on a
scheduler and 2 workers started by hand with the README's `dask scheduler` / `dask worker` commands, side by side
in one run. Inputs: crops of the bundled real orthophoto (data/sample/urban_river_rgb.tif), written as GeoTIFFs.

    .venv/bin/python bench/batch.py [--n 6] [--size 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
URBAN = ROOT / "data/sample/urban_river_rgb.tif"
PY = sys.executable


def crops(folder: Path, n: int, size: int) -> list[Path]:
    folder.mkdir(parents=True)
    out = []
    with rasterio.open(URBAN) as src:
        step = (src.width - size) // max(1, n - 1)
        for k in range(n):
            win = Window(step * k, (src.height - size) * (k % 2), size, size)
            prof = src.profile | {"width": size, "height": size, "transform": src.window_transform(win)}
            path = folder / f"crop_{k}.tif"
            with rasterio.open(path, "w", **prof) as dst:
                dst.write(src.read(window=win))
            out.append(path)
    return out


def timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t, proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--resample", default="off", help="off: infer at the crops' own 0.1 m (more work per input)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="landseg_bench_batch_"))
    cores = os.cpu_count() or 1
    try:
        inputs = crops(tmp / "in", a.n, a.size)
        rows = []
        t_seq = 0.0
        for p in inputs:
            t, _ = timed([PY, "-m", "engine", "landcover", "-i", str(p), "-o", str(tmp / "seq" / p.stem),
                          "--resample", a.resample, "--threads", str(cores), "--progress", "none"])  # fmt: skip
            t_seq += t
        rows.append(("one process per input, one after another (engine landcover)", t_seq))
        common = ["--inputs", str(tmp / "in" / "*.tif"), "--resample", a.resample, "--progress", "none", "--json"]
        for workers in (1, 2):
            t, proc = timed([PY, "-m", "engine", "batch", "landcover", "--workers", str(workers), "--out",
                             str(tmp / f"w{workers}"), "--no-dashboard", *common])  # fmt: skip
            assert len(json.loads(proc.stdout)["done"]) == a.n
            rows.append((f"engine batch, LocalCluster {workers} worker(s) x {cores // workers} threads", t))
        # The README's multi-machine commands, on this one machine.
        env = os.environ | {"PYTHONPATH": str(ROOT)}
        sched = subprocess.Popen([str(Path(PY).parent / "dask"), "scheduler", "--port", "8799", "--no-dashboard"],
                                 cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)  # fmt: skip
        workers = [
            subprocess.Popen(
                [
                    str(Path(PY).parent / "dask"),
                    "worker",
                    "tcp://127.0.0.1:8799",
                    "--nworkers",
                    "1",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            for _ in range(2)
        ]
        time.sleep(8)  # scheduler and workers up
        try:
            t, proc = timed([PY, "-m", "engine", "batch", "landcover", "--scheduler", "tcp://127.0.0.1:8799",
                             "--threads", str(max(1, cores // 2)), "--out", str(tmp / "sched"), *common])  # fmt: skip
            assert len(json.loads(proc.stdout)["done"]) == a.n
            rows.append(("engine batch --scheduler (dask scheduler + 2 dask workers, started by hand)", t))
        finally:
            for p in (sched, *workers):
                os.killpg(p.pid, signal.SIGTERM)
        print(f"{a.n} crops of {a.size}^2 px of {URBAN.name}, --resample {a.resample}, {cores} cores")
        print(f"{'how':<88} {'s':>7} {'s/input':>8} {'vs one-after-another':>21}")
        for name, t in rows:
            print(f"{name:<88} {t:7.1f} {t / a.n:8.2f} {t_seq / t:20.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
