"""Tile grid and streaming blend: coverage, exactness, equivalence with whole-image prediction."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import rasterio

from conftest import SJER, URBAN, write_raster
from engine.errors import InputError
from engine.jobs.landcover import LandcoverParams, run_landcover
from engine.model_package import load_model_package
from engine.predict import predict_blocks, softmax
from engine.raster_input import AlignedInputs
from engine.tiling import TileGrid, fit_overlap


@pytest.mark.parametrize("shape", [(1, 1), (37, 500), (128, 128), (129, 300), (601, 600)])
@pytest.mark.parametrize("tile,overlap", [(64, 16), (128, 32), (96, 0)])
def test_blocks_cover_every_pixel_once_and_blend_to_unity(tmp_path, models, shape, tile, overlap):
    h, w = shape
    path = write_raster(tmp_path / "in.tif", np.full((3, h, w), 100, dtype=np.uint8))
    meta = load_model_package(models["conv"]).meta
    n = len(meta.classes)
    grid = TileGrid(h, w, tile, fit_overlap(tile, overlap))
    seen = np.zeros((h, w), dtype=np.int32)
    value = np.zeros((n, h, w), dtype=np.float32)
    const = np.linspace(0.1, 0.9, n, dtype=np.float32)

    def run(feeds):
        b = next(iter(feeds.values())).shape[0]
        return np.broadcast_to(np.log(const)[None, :, None, None], (b, n, tile, tile)).copy()

    with AlignedInputs([path], meta) as inputs:
        for blk in predict_blocks(inputs, run, meta, grid, batch=3):
            bh, bw = blk.valid.shape
            seen[blk.row : blk.row + bh, blk.col : blk.col + bw] += 1
            value[:, blk.row : blk.row + bh, blk.col : blk.col + bw] = blk.probs
    assert (seen == 1).all()
    np.testing.assert_allclose(value, np.broadcast_to((const / const.sum())[:, None, None], value.shape), rtol=1e-5)


def _whole_image_classes(model_path, raster_path, pad: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Reference: the model on the whole raster at once, with the engine's input semantics (invalid pixels
    zeroed after normalisation, edge pixels replicated past the right and bottom borders, where the engine's
    last tiles reach beyond the raster). Returns (classes, valid)."""
    meta = load_model_package(model_path).meta
    with rasterio.open(raster_path) as ds:
        valid = ds.read_masks().min(axis=0) > 0
        x = meta.inputs[0].normalization.apply(ds.read())
    x[:, ~valid] = 0
    x = np.pad(x, ((0, 0), (0, pad), (0, pad)), mode="edge")[None]
    out = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, {"rgb": x})[0]
    return softmax(out)[0].argmax(axis=0)[:-pad, :-pad], valid


@pytest.mark.parametrize("tile,overlap", [(128, 32), (96, 16)])
def test_tiled_prediction_equals_whole_image_on_real_data(tmp_path, models, tile, overlap):
    # conv model: receptive field 5 px, well inside the overlap.
    res = run_landcover(
        LandcoverParams(inputs=[SJER], model=models["conv"], out_dir=tmp_path, tile=tile, overlap=overlap)
    )
    with rasterio.open(res.class_map) as ds:
        tiled = ds.read(1)
    whole, valid = _whole_image_classes(models["conv"], SJER)
    assert (tiled[~valid] == 255).all()
    agree = (tiled == whole)[valid].mean()
    assert agree >= 0.995, agree
    assert len(np.unique(whole)) > 1  # a constant prediction would make this test meaningless


def test_default_model_tiled_equals_whole_image(tmp_path):
    from conftest import DEFAULT_MODEL

    crop = tmp_path / "crop.tif"
    with rasterio.open(URBAN) as src:
        win = rasterio.windows.Window(900, 900, 700, 500)
        data = src.read(window=win)
        write_raster(crop, data, transform=src.window_transform(win), crs=src.crs)
    res = run_landcover(
        LandcoverParams(inputs=[crop], model=DEFAULT_MODEL, out_dir=tmp_path / "o", tile=256, overlap=32)
    )
    with rasterio.open(res.class_map) as ds:
        tiled = ds.read(1)
    whole, valid = _whole_image_classes(DEFAULT_MODEL, crop)
    assert (tiled == whole)[valid].mean() >= 0.995


def test_a_requested_overlap_is_used_as_given_or_refused_never_changed(tmp_path):
    from conftest import DEFAULT_MODEL

    res = run_landcover(LandcoverParams(inputs=[SJER], model=DEFAULT_MODEL, out_dir=tmp_path, tile=256, overlap=48))
    assert (res.tile, res.overlap) == (256, 48)
    with pytest.raises(InputError, match=r"overlap 51 with tile 256 .* use overlap 48 or 64"):
        run_landcover(LandcoverParams(inputs=[SJER], model=DEFAULT_MODEL, out_dir=tmp_path / "b", tile=256, overlap=51))
    assert not (tmp_path / "b").exists()
