"""16-bit and float imagery against a model trained on 8-bit values (engine.value_range)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from conftest import ROOT, SJER
from engine.jobs.landcover import LandcoverParams, run_landcover
from engine.model_package import COLOUR_RULE_MODEL, DEFAULT_LANDCOVER_MODEL


def as_dtype(path, scale: float, dtype: str, out):
    """The real SJER crop with every value multiplied (16-bit counts, 0-1 reflectance)."""
    with rasterio.open(path) as src:
        data = src.read().astype(np.float64) * scale
        prof = src.profile | {"dtype": dtype}
    with rasterio.open(out, "w", **prof) as dst:
        dst.write(data.astype(dtype))
    return out


def classes(res) -> np.ndarray:
    with rasterio.open(res.class_map) as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def eight_bit(tmp_path_factory):
    d = tmp_path_factory.mktemp("u8")
    return classes(run_landcover(LandcoverParams(inputs=[SJER], model=DEFAULT_LANDCOVER_MODEL, out_dir=d)))


@pytest.mark.parametrize(("scale", "dtype"), [(16.0, "uint16"), (1 / 255, "float32")])
def test_other_value_ranges_are_stretched_and_reported(tmp_path, eight_bit, scale, dtype):
    raster = as_dtype(SJER, scale, dtype, tmp_path / f"sjer_{dtype}.tif")
    res = run_landcover(LandcoverParams(inputs=[raster], model=DEFAULT_LANDCOVER_MODEL, out_dir=tmp_path / "o"))
    got = classes(res)
    assert res.rescaling["rgb"]["to"] == [0.0, 255.0]
    assert res.rescaling["rgb"]["bands"] == [1, 2, 3]
    assert any("stretched per band" in m for m in res.messages)
    # Not one class everywhere (the fixed x/255 scaling made a uint16 raster 100 % one class), and close to
    # the 8-bit map: the stretch changes contrast, not content.
    shares = np.bincount(got.ravel(), minlength=8) / got.size
    assert shares.max() < 0.95, shares
    agree = float(np.mean(got == eight_bit))
    assert agree > 0.8, agree


def test_eight_bit_values_are_not_touched(tmp_path, eight_bit):
    raster = as_dtype(SJER, 1.0, "uint16", tmp_path / "sjer_u16_8bit.tif")  # 16-bit file, 8-bit values
    res = run_landcover(LandcoverParams(inputs=[raster], model=DEFAULT_LANDCOVER_MODEL, out_dir=tmp_path / "o"))
    assert res.rescaling == {}
    assert np.array_equal(classes(res), eight_bit)


def test_rescale_off_is_a_one_line_error_naming_band_and_fix(tmp_path):
    raster = as_dtype(SJER, 16.0, "uint16", tmp_path / "sjer_u16.tif")
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "landcover", "--input", str(raster), "--model", str(COLOUR_RULE_MODEL),
         "--out", str(out), "--rescale", "off", "--progress", "none"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "band 1 (uint16)" in lines[0] and "--rescale auto" in lines[0], proc.stderr
    assert not out.exists()


def test_rescaling_is_in_the_json_result(tmp_path):
    raster = as_dtype(SJER, 16.0, "uint16", tmp_path / "sjer_u16.tif")
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "landcover", "--input", str(raster), "--model", str(COLOUR_RULE_MODEL),
         "--out", str(tmp_path / "o"), "--json", "--progress", "none"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["rescaling"]["rgb"]["rule"].startswith("percentile")
