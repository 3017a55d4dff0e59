"""`engine batch` on a 2-worker Dask LocalCluster, on crops of the real urban orthophoto: a batch of files, a
mosaic in 4 chunks against one run, a killed batch resumed, a corrupt input reported, one batch per folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import fiona
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from conftest import ROOT, URBAN, batch_cli, read_classes

pytest.importorskip("distributed")
pytestmark = pytest.mark.slow


def _crops(folder, n: int, size: int = 768) -> list:
    """n windows of the real urban orthophoto as GeoTIFFs of their own (different ground each)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with rasterio.open(URBAN) as src:
        for k in range(n):
            win = Window(256 + 384 * k, 512 + 256 * (k % 2), size, size)
            prof = src.profile | {
                "width": size, "height": size, "transform": src.window_transform(win), "tiled": False,
            }  # fmt: skip
            prof.pop("blockxsize", None), prof.pop("blockysize", None)
            path = folder / f"crop_{k}.tif"
            with rasterio.open(path, "w", **prof) as dst:
                dst.write(src.read(window=win))
            out.append(path)
    return out


def _batch(*args: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, dict | None]:
    return batch_cli("--workers", "2", "--no-dashboard", *args, timeout=timeout)


_classes = read_classes


def test_a_batch_of_three_files_runs_on_two_workers_each_loading_the_model_once(tmp_path):
    crops = _crops(tmp_path / "in", 3)
    proc, res = _batch("--inputs", str(tmp_path / "in" / "*.tif"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(res["done"]) == sorted(map(str, crops)) and not res["failed"] and res["workers"] == 2
    summary = json.loads((tmp_path / "out" / "batch_summary.json").read_text())
    items = summary["items"]
    for crop in crops:
        item = items[str(crop)]
        assert set(item["outputs"]) == {"class_map", "confidence", "polygons"}
        assert all(os.path.exists(v) for v in item["outputs"].values())
        # A worker keeps its session: however many inputs it ran, it made one session for the one model.
        assert item["sessions"] == 1
    assert len({items[str(c)]["worker_pid"] for c in crops}) <= 2
    # The same maps as a single `engine landcover` run.
    single = subprocess.run(
        [sys.executable, "-m", "engine", "landcover", "-i", str(crops[1]), "-o", str(tmp_path / "single"),
         "--progress", "none", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    a = _classes(json.loads(single.stdout)["class_map"])
    assert np.array_equal(a, _classes(items[str(crops[1])]["outputs"]["class_map"]))


def test_a_mosaic_cut_into_four_chunks_equals_the_single_run(tmp_path):
    # At the raster's own 0.1 m pixels (no resampling), 256-px tiles: a 2048 px mosaic; cores of 1120 px.
    opts = ["--resample", "off", "--tile", "256", "--overlap", "32", "--inputs", str(URBAN)]
    proc, one = _batch(*opts, "--out", str(tmp_path / "one"))
    assert proc.returncode == 0, proc.stderr
    proc, four = _batch(*opts, "--chunk-px", "1120", "--out", str(tmp_path / "four"))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "four" / "batch_manifest.json").read_text())["items"]
    assert sorted(k.split("#")[1] for k in manifest if "#" in k) == ["r0c0", "r0c1", "r1c0", "r1c1"]
    out_one = manifest_outputs(tmp_path / "one", URBAN)
    out_four = manifest_outputs(tmp_path / "four", URBAN)
    a, b = _classes(out_one["class_map"]), _classes(out_four["class_map"])
    agreement = float((a == b).mean())
    print(f"mosaic in 4 chunks vs one run: {agreement:.6f} of the pixels agree")
    assert agreement >= 0.999
    # Polygonized once over the stitched map: the regions are the single run's, and some cross the chunk seams.
    with fiona.open(out_one["polygons"]) as l1, fiona.open(out_four["polygons"]) as l4:
        assert len(l1) == len(l4)
        with rasterio.open(URBAN) as ds:
            seam_x = ds.transform.c + 1120 * ds.transform.a
        crossing = [f for f in l4 if f.geometry and _x_range(f.geometry)[0] < seam_x < _x_range(f.geometry)[1]]
        assert crossing
    assert not (tmp_path / "four" / ".chunks" / URBAN.stem).exists()  # a stitched mosaic's chunks are removed


def manifest_outputs(folder, raster) -> dict:
    return json.loads((folder / "batch_manifest.json").read_text())["items"][str(raster)]["outputs"]


def _x_range(geometry) -> tuple[float, float]:
    xs = [x for ring in geometry["coordinates"] for x, _y in ring]
    return min(xs), max(xs)


def test_a_killed_batch_resumes_and_does_only_what_is_missing(tmp_path):
    crops = _crops(tmp_path / "in", 4)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "engine", "batch", "landcover", "--workers", "1", "--no-dashboard", "--progress",
           "none", "--inputs", str(tmp_path / "in" / "*.tif"), "--out", str(out)]  # fmt: skip
    first = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "batch_manifest.json"
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        if manifest.exists() and json.loads(manifest.read_text() or "{}").get("items"):
            break
        time.sleep(0.05)
    assert first.poll() is None, "the batch finished before it could be killed: " + first.stderr.read().decode()
    os.killpg(first.pid, signal.SIGKILL)  # the whole batch, scheduler and workers: a crash
    first.wait()
    finished = set(json.loads(manifest.read_text())["items"])
    assert 1 <= len(finished) < 4
    proc, res = _batch("--inputs", str(tmp_path / "in" / "*.tif"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert set(res["skipped"]) == finished and set(res["done"]) == set(map(str, crops)) - finished
    for crop in crops:
        assert os.path.exists(manifest_outputs(out, crop)["class_map"])
    leftovers = [p.name for p in out.rglob(".*.tmp*")]
    assert not leftovers, leftovers


def test_a_corrupt_input_is_reported_while_the_others_finish(tmp_path):
    crops = _crops(tmp_path / "in", 2)
    bad = tmp_path / "in" / "broken.tif"
    bad.write_bytes(b"II*\x00" + os.urandom(2000))  # a TIFF header, then garbage
    proc, res = _batch("--inputs", str(tmp_path / "in" / "*.tif"), "--out", str(tmp_path / "out"), "--retries", "1")
    assert proc.returncode == 5, proc.stderr
    assert sorted(res["done"]) == sorted(map(str, crops))
    assert list(res["failed"]) == [str(bad)]
    error = res["failed"][str(bad)]
    assert "broken.tif" in error and "\n" not in error and "Traceback" not in proc.stderr
    summary = json.loads((tmp_path / "out" / "batch_summary.json").read_text())
    assert summary["failed"] == res["failed"]
    # The same batch as a typed request (`engine run`, what the plugin sends) answers the same status; its
    # inputs done are skipped now, the broken one fails again.
    params = {"task": "landcover", "inputs": [str(tmp_path / "in" / "*.tif")], "out_dir": str(tmp_path / "out"),
              "workers": 1, "dashboard": False, "retries": 1}  # fmt: skip
    request = {"version": 1, "task": "batch", "params": params}
    proc = subprocess.run([sys.executable, "-m", "engine", "run", "--request", "-", "--progress", "none"],
                          input=json.dumps(request), capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert proc.returncode == 5, proc.stderr
    assert list(json.loads(proc.stdout)["result"]["failed"]) == [str(bad)]


def test_two_batches_into_one_folder_refuse(tmp_path):
    from engine.run_lock import folder_lock

    crops = _crops(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out):  # another run (this test process, alive) holds the folder
        proc, _res = _batch("--inputs", str(crops[0]), "--out", str(out))
    assert proc.returncode == 4
    assert proc.stderr.strip().splitlines()[-1].startswith("landseg: error: output folder") and "in use" in proc.stderr


def test_a_workers_error_is_its_words_not_a_python_repr():
    """Issue #29 item 11: an error Dask could not rebuild on the client came back as `Exception: InputError("…")`."""
    from engine.jobs.batch import _error_line

    wrapped = Exception("InputError(\"input raster is not a raster GDAL can read: /d/bad.tif ('/d/bad.tif' ...)\")")
    assert _error_line(wrapped) == "input raster is not a raster GDAL can read: /d/bad.tif ('/d/bad.tif' ...)"
    assert _error_line(Exception("ValueError('boom')")) == "ValueError: boom"
    assert _error_line(RuntimeError("a\n  b")) == "RuntimeError: a b"
