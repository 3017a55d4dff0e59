"""Canopy height models from the real NEON TEAK LiDAR plots, against the plots' reference CHMs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import rasterio

from conftest import ROOT, SHARED
from engine.jobs.chm import ChmParams, build_chm

TEAK = SHARED / "trees" / "neon_teak"
PLOTS = sorted(p.stem for p in (TEAK / "lidar").glob("*.laz")) if TEAK.exists() else []
pytestmark = pytest.mark.skipif(not PLOTS, reason="needs ../shared/data/trees/neon_teak")


def _r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.mark.parametrize("plot", PLOTS)
def test_chm_matches_reference(tmp_path, plot):
    ref = TEAK / "chm" / f"{plot}.tif"
    res = build_chm(ChmParams(TEAK / "lidar" / f"{plot}.laz", tmp_path / "chm.tif", like=ref))
    assert res.ground == "classified"
    assert _r(_read(res.chm), _read(ref)) >= 0.9


def test_chm_without_ground_classes_uses_the_ground_filter(tmp_path):
    import laspy

    plot = PLOTS[0]
    las = laspy.read(TEAK / "lidar" / f"{plot}.laz")
    las.classification = np.where(las.classification == 7, 7, 1).astype(np.uint8)  # forget the ground class
    unclassified = tmp_path / "unclassified.laz"
    las.write(unclassified)
    ref = TEAK / "chm" / f"{plot}.tif"
    res = build_chm(ChmParams(unclassified, tmp_path / "chm.tif", like=ref))
    assert res.ground == "filtered"
    assert _r(_read(res.chm), _read(ref)) >= 0.85


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "engine", "chm", *map(str, args), "--progress", "none"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_default_grid_and_crs(tmp_path):
    proc = _cli("--lidar", TEAK / "lidar" / f"{PLOTS[0]}.laz", "--out", tmp_path / "c.tif", "--crs", "EPSG:32611")
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(tmp_path / "c.tif") as ds:
        assert ds.res == (0.5, 0.5) and ds.crs.to_epsg() == 32611 and ds.tags()["UNITS"] == "metre"
        assert 20 < ds.read(1).max() < 60


def test_no_crs_and_truncated_laz_are_one_line_errors(tmp_path):
    src = TEAK / "lidar" / f"{PLOTS[0]}.laz"
    proc = _cli("--lidar", src, "--out", tmp_path / "c.tif")
    assert proc.returncode == 2 and "--crs" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    cut = tmp_path / "cut.laz"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    proc = _cli("--lidar", cut, "--out", tmp_path / "c.tif", "--crs", "EPSG:32611")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cut.laz" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "c.tif").exists()
