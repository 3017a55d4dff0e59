"""Model package metadata: validation messages, sidecar JSON, the bundled default model."""

from __future__ import annotations

import json

import onnx
import pytest

from conftest import DEFAULT_MODEL, meta_doc
from engine.errors import ModelError
from engine.model_package import load_model_package, parse_metadata
from engine.runtime import choose_providers
from export import baseline
from export.graph_builder import GraphBuilder

RGB = [
    {
        "name": "rgb",
        "modality": "rgb",
        "bands": ["r", "g", "b"],
        "normalization": {"type": "scale_offset", "scale": 1 / 255, "offset": 0},
    }
]


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d.pop("task"), "missing required field 'task'"),
        (lambda d: d.update(task="segment-everything"), "task 'segment-everything'"),
        (lambda d: d["inputs"][0].update(normalization={"type": "divide255"}), "normalization type"),
        (
            lambda d: d["inputs"][0].update(normalization={"type": "mean_std", "mean": [1, 2], "std": 1}),
            "2 values for 3 bands",
        ),
        (lambda d: d["classes"][1].update(color="green"), "classes[1]: color 'green'"),
        (lambda d: d["classes"][1].update(id=5), "must equal its position 1"),
        (lambda d: d.update(overlap=100, tile_size=128), "overlap"),
        (lambda d: d.update(format="other/9"), "unsupported format"),
    ],
)
def test_metadata_errors_name_the_field(change, message):
    doc = meta_doc(json.loads(json.dumps(RGB)), 3)
    change(doc)
    with pytest.raises(ModelError, match=None) as err:
        parse_metadata(doc)
    assert message in str(err.value)


def test_mean_std_becomes_scale_offset():
    doc = meta_doc(
        [
            {
                "name": "s2",
                "modality": "multispectral",
                "bands": ["b4", "b8"],
                "normalization": {"type": "mean_std", "mean": [1000, 2000], "std": [500, 250]},
            }
        ],
        2,
    )
    norm = parse_metadata(doc).inputs[0].normalization
    assert norm.scale == (1 / 500, 1 / 250) and norm.offset == (-2.0, -8.0)


def test_sidecar_json_describes_a_plain_onnx(tmp_path):
    g = GraphBuilder("plain")
    g.output("out", g.input("rgb", 3), 3)
    path = tmp_path / "third_party.onnx"
    onnx.save(g.model(), str(path))
    (tmp_path / "third_party.json").write_text(json.dumps(meta_doc(RGB, 3)))
    pkg = load_model_package(path)
    assert [c.name for c in pkg.meta.classes] == ["class0", "class1", "class2"]


def test_metadata_must_match_graph(tmp_path):
    g = GraphBuilder("plain")
    g.output("out", g.input("image", 3), 3)
    path = tmp_path / "m.onnx"
    onnx.save(g.model(), str(path))
    (tmp_path / "m.json").write_text(json.dumps(meta_doc(RGB, 3)))
    with pytest.raises(ModelError, match="input 'rgb' is not an input of the ONNX graph"):
        load_model_package(path)


def test_bundled_default_model_is_what_export_builds():
    pkg = load_model_package(DEFAULT_MODEL)
    assert pkg.meta.name == baseline.NAME
    assert [c.name for c in pkg.meta.classes] == [c["name"] for c in baseline.CLASSES]
    assert onnx.load(str(DEFAULT_MODEL)).graph == baseline.build().graph


@pytest.mark.parametrize(
    "device,available,first,warns",
    [
        ("auto", ["CPUExecutionProvider"], "CPUExecutionProvider", False),
        ("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"], "CUDAExecutionProvider", False),
        ("cuda", ["CPUExecutionProvider"], "CPUExecutionProvider", True),
        ("tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"], "CUDAExecutionProvider", True),
        (
            "tensorrt",
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            "TensorrtExecutionProvider",
            False,
        ),
        ("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"], "CPUExecutionProvider", False),
    ],
)
def test_provider_selection(device, available, first, warns):
    providers, msg = choose_providers(device, available)
    assert providers[0] == first and providers[-1] == "CPUExecutionProvider"
    assert (msg is not None) == warns


def test_unknown_device():
    with pytest.raises(ModelError, match="device must be one of"):
        choose_providers("tpu", ["CPUExecutionProvider"])
