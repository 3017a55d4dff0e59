"""Model package metadata: validation messages, sidecar JSON, the bundled default model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import DEFAULT_MODEL, meta_doc
from engine.errors import ModelError
from engine.model_package import load_model_package, parse_metadata
from engine.onnx_signature import GraphSignature, TensorSignature, read_signature
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


def _onnx_reading(path: Path) -> GraphSignature:
    """The same signature as onnx.load gives it: the reference the wire reader must match."""
    m = onnx.load(str(path), load_external_data=False)
    weights = {i.name for i in m.graph.initializer}

    def sig(v) -> TensorSignature:
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim)
        return TensorSignature(v.name, dims)

    return GraphSignature(
        name=m.graph.name,
        n_nodes=len(m.graph.node),
        inputs=tuple(sig(i) for i in m.graph.input if i.name not in weights),
        outputs=tuple(sig(o) for o in m.graph.output),
        metadata={p.key: p.value for p in m.metadata_props},
    )


def _odd_graph(path: Path) -> Path:
    """Named and negative dimensions, a weight that is also listed as a graph input (older exporters do
    that), no shape at all on an output, non-ASCII metadata, two nodes."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, -1, 64])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Mul", ["x", "w"], ["t"]), helper.make_node("Relu", ["t"], ["y"])]
    weight = numpy_helper.from_array(np.full(1, 2.0, np.float32), "w")
    model = helper.make_model(helper.make_graph(nodes, "odd", [x, w], [y], [weight]))
    helper.set_model_props(model, {"note": "Bäume, 樹木", "landseg": "{}"})
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("model", [*sorted(DEFAULT_MODEL.parent.rglob("*.onnx")), "odd"], ids=lambda m: Path(m).name)
def test_the_wire_reader_sees_what_onnx_sees(model, tmp_path):
    """load_model_package reads names, shapes and metadata from the file's protobuf wire format, skipping the
    weights (onnx.load parses all of them: 0.1 s of a job); it must see exactly what onnx.load sees."""
    path = _odd_graph(tmp_path / "odd.onnx") if model == "odd" else Path(model)
    assert read_signature(path) == _onnx_reading(path)
    if model == "odd":
        assert read_signature(path).inputs == (TensorSignature("x", (None, 3, -1, 64)),)  # the weight w is not one


@pytest.mark.parametrize("content", [b"", b"not a model at all\n", b"\x3a\xff\xff\xff\x0f", "cut"])
def test_a_file_that_is_not_onnx_is_one_line(content, tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(DEFAULT_MODEL.read_bytes()[:5000] if content == "cut" else content)
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        load_model_package(path)


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


def test_cuda_provider_picks_convolutions_by_heuristic_unless_asked():
    """onnxruntime's own default (exhaustive) times every cuDNN algorithm at each new batch shape; the engine
    asks for cuDNN's heuristic pick unless --conv-search says otherwise. TensorRT keeps its options."""
    from engine.runtime import RuntimeOptions
    from engine.runtime.onnx import provider_options

    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt, cuda, cpu = provider_options(providers, RuntimeOptions(precision="fp16", cache_dir=Path("/c")))
    assert cuda == {"cudnn_conv_algo_search": "HEURISTIC"} and cpu == {}
    assert trt["trt_fp16_enable"] is True and trt["trt_engine_cache_path"] == "/c"
    assert provider_options(providers[1:], RuntimeOptions(conv_search="exhaustive"))[0] == {
        "cudnn_conv_algo_search": "EXHAUSTIVE"
    }
    with pytest.raises(ModelError, match="conv search must be one of"):
        provider_options(providers, RuntimeOptions(conv_search="fastest"))


class _FakeSession:
    """onnxruntime's InferenceSession as it behaves on a machine whose onnxruntime has the TensorRT provider
    but not TensorRT's libraries: it prints the failure on stdout and falls back without any provider option."""

    made: list[tuple[list[str], list[dict] | None]] = []

    def __init__(self, path, so=None, providers=(), provider_options=None):
        if providers[0] == "TensorrtExecutionProvider":
            print("*************** EP Error ***************")
            why = "Please install TensorRT libraries"
            print(f"EP Error /src/pybind_state.cc:729 void Register(...) {why} when using {providers}")
            print("Falling back to ['CUDAExecutionProvider', 'CPUExecutionProvider'] and retrying.")
            providers, provider_options = ["CUDAExecutionProvider", "CPUExecutionProvider"], None
        self.providers = list(providers)
        _FakeSession.made.append((self.providers, provider_options))

    def get_providers(self):
        return self.providers

    def disable_fallback(self):
        self.fallback = False


def test_a_provider_that_fails_to_start_is_one_line_and_keeps_stdout_clean(monkeypatch, capsys, tmp_path):
    """--json writes its result on stdout: onnxruntime's printed provider failure must not land there. The
    engine says it in one line and makes the next provider's session itself, with its options (onnxruntime's
    retry drops them: the CUDA provider would be back on exhaustive searches)."""
    import onnxruntime as ort

    from engine.runtime import RuntimeOptions
    from engine.runtime.onnx import OnnxRuntime

    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    _FakeSession.made.clear()
    notes: list[str] = []
    rt = OnnxRuntime(tmp_path / "m.onnx", "out", RuntimeOptions(device="tensorrt"), notify=notes.append)
    assert capsys.readouterr().out == ""
    assert rt.providers[0] == "CUDAExecutionProvider" and rt.session.fallback is False
    assert _FakeSession.made[-1] == (
        ["CUDAExecutionProvider", "CPUExecutionProvider"],
        [{"cudnn_conv_algo_search": "HEURISTIC"}, {}],
    )
    assert notes == ["Tensorrt provider did not start (Please install TensorRT libraries); running on CUDA"]
