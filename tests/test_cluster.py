"""The engine as an installable package on a real Dask cluster (issue #34): a wheel built from this checkout,
installed into a fresh virtual environment outside it; `dask scheduler` and two `dask worker` processes started
from that environment (no PYTHONPATH, working folder outside the checkout); `engine batch --scheduler` runs
through them and gives the LocalCluster run's maps. A cluster whose workers lack the package is refused before
anything is written.

The fresh environments see this venv's site-packages through a .pth file (the dependencies are already here;
nothing is downloaded), but not the checkout: `engine` comes from the wheel or not at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import ROOT, URBAN, batch_cli, read_classes
from engine import __version__

pytest.importorskip("distributed")
pytestmark = pytest.mark.slow
BASE_PYTHON = "/usr/bin/python3"  # the engine venv's base (Debian's GDAL bindings for the stitch)


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _venv(folder: Path) -> Path:
    subprocess.run([BASE_PYTHON, "-m", "venv", "--system-site-packages", "--without-pip", str(folder)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(folder), "platbase": str(folder)}))
    (site / "landseg_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return folder / "bin" / "python"


@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    """(python with the landseg wheel installed, python without it, the wheel)."""
    base = tmp_path_factory.mktemp("cluster")
    wheels = base / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, cwd=base, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("landseg-*.whl"))
    with_pkg, without = _venv(base / "env"), _venv(base / "bare")
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(with_pkg), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True, text=True, cwd=base, timeout=600,
    )  # fmt: skip
    assert inst.returncode == 0, inst.stderr
    return with_pkg, without, wheel


class Cluster:
    """`dask scheduler` + n `dask worker` processes of one Python, in a folder outside the checkout."""

    def __init__(self, python: Path, folder: Path, n_workers: int = 2):
        folder.mkdir(parents=True, exist_ok=True)
        self.file = folder / "scheduler.json"
        env, kw = _clean_env(), {"cwd": folder, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.procs = [
            subprocess.Popen(
                [
                    str(python),
                    "-m",
                    "dask",
                    "scheduler",
                    "--scheduler-file",
                    str(self.file),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--dashboard-address",
                    "127.0.0.1:0",
                ],
                env=env,
                **kw,
            )  # fmt: skip
        ]
        deadline = time.time() + 60
        while not self.file.exists() and time.time() < deadline:
            time.sleep(0.2)
        self.address = json.loads(self.file.read_text())["address"]
        for _ in range(n_workers):
            self.procs.append(
                subprocess.Popen(
                    [
                        str(python),
                        "-m",
                        "dask",
                        "worker",
                        self.address,
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--no-dashboard",
                    ],
                    env=env,
                    **kw,
                )  # fmt: skip
            )
        from distributed import Client

        with Client(self.address, timeout="30s") as c:
            c.wait_for_workers(n_workers, timeout=60)

    def close(self):
        for p in self.procs[::-1]:
            p.terminate()
        for p in self.procs:
            p.wait(timeout=30)


def _crops(folder: Path, n: int, size: int = 512, name: str = "crop") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with rasterio.open(URBAN) as src:
        for k in range(n):
            win = rasterio.windows.Window(200 + 400 * k, 300, size, size)
            prof = src.profile | {"width": size, "height": size, "transform": src.window_transform(win)}
            path = folder / f"{name}_{k}.tif"
            with rasterio.open(path, "w", **prof) as dst:
                dst.write(src.read(window=win))
            out.append(path)
    return out


_classes = read_classes


def test_the_wheel_installs_the_command_and_the_models(envs):
    with_pkg, _without, wheel = envs
    assert wheel.name.startswith(f"landseg-{__version__}-")
    landseg = with_pkg.parent / "landseg"
    out = subprocess.run([str(landseg), "--version"], capture_output=True, text=True, env=_clean_env(), cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == f"landseg {__version__}", out
    where = subprocess.run(
        [str(with_pkg), "-c", "import engine, engine.model_package as m; print(engine.__file__); "
         "print(m.DEFAULT_LANDCOVER_MODEL.exists(), m.DEFAULT_LANDCOVER_MODEL.parent.name)"],
        capture_output=True, text=True, env=_clean_env(), cwd="/",
    )  # fmt: skip
    engine_file, models = where.stdout.split("\n")[:2]
    assert str(ROOT) not in engine_file and "site-packages" in engine_file
    assert models == "True landseg_models"  # the shipped models are the wheel's package data
    desc = subprocess.run([str(landseg), "describe"], capture_output=True, text=True, env=_clean_env(), cwd="/")
    assert json.loads(desc.stdout)["engine_version"] == __version__


def test_batch_on_a_dask_cluster_started_from_the_installed_package(envs, tmp_path):
    with_pkg, _without, _wheel = envs
    crops = _crops(tmp_path / "in", 3)
    # One raster chunked (256 px chunks on the model's 0.5 m grid: the 0.1 m crop of 1400 px is 280 px there).
    big = _crops(tmp_path / "big", 1, size=1400, name="large")[0]
    inputs = [a for path in [*crops, big] for a in ("--inputs", str(path))] + ["--chunk-px", "256"]
    local, res_local = batch_cli(*inputs, "--workers", "2", "--no-dashboard", "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr
    cluster = Cluster(with_pkg, tmp_path / "cluster")
    try:
        proc, res = batch_cli(*inputs, "--scheduler", cluster.address, "--out", str(tmp_path / "remote"))
    finally:
        cluster.close()
    assert proc.returncode == 0, proc.stderr
    assert not res["failed"] and len(res["done"]) == 4, res
    assert res["workers"] == 2 and res["scheduler"] == cluster.address
    assert res["dashboard"].startswith("http://127.0.0.1:") and res["dashboard"].endswith("/status")
    assert any("engine " + __version__ in m for m in res["messages"])
    manifest = json.loads((tmp_path / "remote" / "batch_manifest.json").read_text())["items"]
    assert any("#" in k for k in manifest), "the large raster was not chunked"
    local_items = json.loads((tmp_path / "local" / "batch_manifest.json").read_text())["items"]
    for path in [*crops, big]:
        a = _classes(local_items[str(path)]["outputs"]["class_map"])
        b = _classes(manifest[str(path)]["outputs"]["class_map"])
        assert np.array_equal(a, b), path


def test_workers_without_the_package_are_refused_with_the_fix_and_nothing_written(envs, tmp_path):
    _with_pkg, without, _wheel = envs
    crops = _crops(tmp_path / "in", 1)
    cluster = Cluster(without, tmp_path / "bare_cluster", n_workers=1)
    try:
        proc, _res = batch_cli("--inputs", str(crops[0]), "--scheduler", cluster.address,
                            "--out", str(tmp_path / "out"))  # fmt: skip
    finally:
        cluster.close()
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert f"pip install landseg=={__version__}" in line and "--upload-engine" in line, line
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_upload_engine_runs_on_workers_that_lack_it(envs, tmp_path):
    _with_pkg, without, _wheel = envs
    crops = _crops(tmp_path / "in", 2)
    cluster = Cluster(without, tmp_path / "bare_cluster", n_workers=1)
    try:
        inputs = [a for path in crops for a in ("--inputs", str(path))]
        proc, res = batch_cli(*inputs, "--scheduler", cluster.address, "--upload-engine",
                           "--out", str(tmp_path / "out"))  # fmt: skip
    finally:
        cluster.close()
    assert proc.returncode == 0, proc.stderr
    assert len(res["done"]) == 2 and not res["failed"], res
    assert any("uploaded" in m for m in res["messages"])


def test_version_is_said_once_and_the_extras_resolve():
    meta = dict(
        line.split("=", 1) for line in (ROOT / "metadata.txt").read_text().splitlines() if "=" in line
    )  # fmt: skip
    assert meta["version"] == __version__  # the plugin's metadata says the package's version
    dry = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-build-isolation", "-q", "--report", "-",
         f"{ROOT}[dask,export]"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    names = {i["metadata"]["name"].lower() for i in report["install"]}
    assert names == {"landseg"}, names  # every dependency of both extras is already satisfied here
