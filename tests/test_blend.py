"""Blend modes (`--blend cosine|gaussian|constant`) against MONAI's sliding_window_inference driving the same
onnxruntime session, on a crop of the real urban orthophoto: same window, overlap and mode -> the same classes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from conftest import ROOT, URBAN
from engine.model_package import DEFAULT_LANDCOVER_MODEL, load_model_package
from engine.tiling import TileGrid

# 640 = 3 strides of 192 + 64: the engine's tiles and MONAI's windows start at the same pixels (MONAI moves its
# last window inside the image, the engine pads beyond it; on this size neither needs to).
SIZE, TILE, OVERLAP = 640, 256, 64


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    path = tmp_path_factory.mktemp("blend") / "crop.tif"
    with rasterio.open(URBAN) as src:
        win = Window(704, 704, SIZE, SIZE)
        data = src.read(window=win)
        assert (data != 0).any(0).all()  # inside the footprint: no nodata
        prof = src.profile | {"width": SIZE, "height": SIZE, "transform": src.window_transform(win), "tiled": False}
        prof.pop("blockxsize", None), prof.pop("blockysize", None)
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(data)
    return path, data


def _engine(tmp_path, raster, blend: str, what: str = "class_map") -> np.ndarray:
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "landcover", "-i", str(raster), "-o", str(tmp_path / blend), "--resample",
         "off", "--tile", str(TILE), "--overlap", str(OVERLAP), "--blend", blend, "--progress", "none", "--json",
         "--anchor", "raster"],  # MONAI starts its windows at the corner
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(json.loads(proc.stdout)[what]) as ds:
        return ds.read(1)


def _monai(data: np.ndarray, mode: str) -> np.ndarray:
    import onnxruntime as ort
    import torch
    from monai.inferers import sliding_window_inference

    meta = load_model_package(DEFAULT_LANDCOVER_MODEL).meta
    session = ort.InferenceSession(str(DEFAULT_LANDCOVER_MODEL), providers=["CPUExecutionProvider"])
    name = meta.inputs[0].name

    def predictor(x: torch.Tensor) -> torch.Tensor:
        logits = session.run([meta.output_name], {name: x.numpy()})[0]
        return torch.from_numpy(logits).softmax(1)  # the engine blends probabilities too

    x = torch.from_numpy(meta.inputs[0].normalization.apply(data))[None]
    with torch.no_grad():
        out = sliding_window_inference(x, (TILE, TILE), 4, predictor, overlap=OVERLAP / TILE, mode=mode)
    return out[0].argmax(0).numpy()


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_the_engine_and_monai_agree_with_the_same_blend_mode(tmp_path, crop, mode):
    pytest.importorskip("monai")
    raster, data = crop
    engine, monai = _engine(tmp_path, raster, mode), _monai(data, mode)
    agreement = float((engine == monai).mean())
    print(f"{mode}: engine vs MONAI {agreement:.5f}")
    assert agreement >= 0.995


def test_blend_modes_change_only_the_overlaps_and_an_unknown_mode_is_refused(tmp_path, crop):
    raster, _ = crop
    cosine = _engine(tmp_path / "c", raster, "cosine", "confidence")
    gaussian = _engine(tmp_path / "g", raster, "gaussian", "confidence")
    differs = np.abs(cosine - gaussian) > 2e-3  # confidences are stored with 3 decimals
    stride = TILE - OVERLAP
    in_overlap = np.zeros(SIZE, bool)
    for k in (1, 2):  # the two overlap bands along each axis
        in_overlap[k * stride : k * stride + OVERLAP] = True
    assert differs.any() and not differs[~in_overlap][:, ~in_overlap].any()  # a pixel of one tile is that tile's
    grid = TileGrid(SIZE, SIZE, TILE, OVERLAP, "gaussian")
    w = grid.rows.window(0)
    assert w.max() == pytest.approx(1.0, abs=0.01) and w[0] < 1e-3  # MONAI's sigma 0.125 x tile
    proc = subprocess.run([sys.executable, "-m", "engine", "landcover", "-i", str(raster), "-o", str(tmp_path / "x"),
                           "--blend", "median"], capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "--blend" in proc.stderr and "Traceback" not in proc.stderr


def test_the_class_and_confidence_of_a_block_are_argmax_and_max_ties_to_the_lower_class():
    from engine.outputs import top_class

    rng = np.random.default_rng(0)
    for n_cls in (1, 2, 3, 5, 9):
        # Probabilities of a real-looking block, with ties (quantized) so the tie rule is exercised.
        probs = np.round(rng.dirichlet(np.ones(n_cls), size=(67, 45)).transpose(2, 0, 1), 1).astype(np.float32)
        cls, conf = top_class(probs)
        assert cls.dtype == np.uint8 and conf.dtype == np.float32
        np.testing.assert_array_equal(cls, probs.argmax(axis=0))
        np.testing.assert_array_equal(conf, probs.max(axis=0))
        assert not np.shares_memory(conf, probs)  # written over (rounding, nodata) by the writer
