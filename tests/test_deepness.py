"""A model made for the Deepness plugin (ONNX + Deepness metadata keys, no LandSeg metadata, no side-car) runs
as it is: classes, pixel size, tile/overlap and standardisation come from its own metadata."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import rasterio
from onnx import TensorProto, helper

from conftest import ROOT, SJER
from engine.errors import ModelError
from engine.model_package import load_model_package

MEAN, STD = [0.40, 0.45, 0.30], [0.20, 0.25, 0.10]


def deepness_model(path, model_type="Segmentor", out_channels=3, tile=256):
    """A 1x1 convolution (identity) + softmax: class k wins where the standardised band k is largest."""
    w = np.zeros((out_channels, 3, 1, 1), np.float32)
    for k in range(min(3, out_channels)):
        w[k, k] = 1.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["output"],
                                                                                  axis=1)],
        "deepness_test",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, tile, tile])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", out_channels, tile, tile])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        "model_type": json.dumps(model_type), "class_names": json.dumps({0: "reddish", 1: "greenish", 2: "bluish"}),
        "resolution": json.dumps(10), "tiles_size": json.dumps(tile), "tiles_overlap": json.dumps(25),
        "standardization_mean": json.dumps(MEAN), "standardization_std": json.dumps(STD), "seg_thresh": "0.5",
    }  # fmt: skip
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, path)
    return path


def test_a_deepness_segmentor_reads_as_a_landcover_package(tmp_path):
    pkg = load_model_package(deepness_model(tmp_path / "d.onnx"))
    m = pkg.meta
    assert m.task == "landcover" and [c.name for c in m.classes] == ["reddish", "greenish", "bluish"]
    assert m.pixel_size_m == pytest.approx(0.10) and m.tile_size == 256 and m.overlap == 64
    assert m.output_kind == "probabilities" and m.inputs[0].bands == ("red", "green", "blue")
    x = np.full((3, 1, 1), 127.5, np.float32)
    expected = (x[:, 0, 0] / 255 - np.array(MEAN)) / np.array(STD)
    assert np.allclose(m.inputs[0].normalization.apply(x)[:, 0, 0], expected, atol=1e-5)


def test_a_deepness_segmentor_runs_through_the_cli_with_its_own_standardisation(tmp_path):
    model = deepness_model(tmp_path / "d.onnx")
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "landcover", "-i", str(SJER), "--model", str(model), "-o", str(tmp_path / "o"),
         "--progress", "none", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert not res["resampling"]["resampled"]  # 10 cm/px, the SJER sample's 0.1 m
    with rasterio.open(SJER) as ds:
        rgb = ds.read([1, 2, 3]).astype(np.float32)
    want = ((rgb / 255 - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]).argmax(0)
    with rasterio.open(res["class_map"]) as ds:
        got = ds.read(1)
        assert ds.tags(1)["CLASS_1"] == "greenish"
    assert (got == want).mean() >= 0.999


@pytest.mark.parametrize(("kind", "channels", "message"), [("Detector", 3, "Deepness 'Detector' model"),
                                                          ("Segmentor", 1, "one-channel (binary mask)")])  # fmt: skip
def test_deepness_models_without_a_landseg_task_are_one_line_errors(tmp_path, kind, channels, message):
    path = deepness_model(tmp_path / "d.onnx", model_type=kind, out_channels=channels)
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model_package(path)
