"""Export toolchain: torch -> ONNX package round trip through the engine, parity, SAM, TensorRT, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio

torch = pytest.importorskip("torch")

from conftest import DEFAULT_MODEL, ROOT, SJER, meta_doc  # noqa: E402
from engine.errors import ModelError  # noqa: E402
from engine.jobs.landcover import LandcoverParams, run_landcover  # noqa: E402
from engine.model_package import load_model_package  # noqa: E402
from engine.predict import softmax  # noqa: E402
from engine.runtime.tensorrt import check_compatible  # noqa: E402
from export.errors import ExportError  # noqa: E402
from export.torch_export import ExportParams, export_package  # noqa: E402

RGB = {
    "name": "rgb",
    "modality": "rgb",
    "bands": ["red", "green", "blue"],
    "normalization": {"type": "mean_std", "mean": [110, 110, 100], "std": [50, 50, 50]},
}


@pytest.fixture
def meta_file(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(meta_doc([RGB], 4, name="small-segmenter", tile_size=128, overlap=32)))
    return path


def _export(tmp_path, meta_file, **kw):
    params = ExportParams(meta=meta_file, out=tmp_path / "model.onnx", entry="torch_models:small_segmenter", **kw)
    return export_package(params, log=lambda m: None)


def test_round_trip_torch_onnx_engine_on_real_data(tmp_path, meta_file):
    path, report = _export(tmp_path, meta_file, real_inputs=[SJER])
    assert report.argmax_agreement >= 0.999 and report.max_abs_diff < 1e-3
    assert any(c.startswith("neon_sjer_rgb.tif") for c in report.cases)
    meta = load_model_package(path).meta
    assert meta.name == "small-segmenter" and len(meta.classes) == 4
    res = run_landcover(LandcoverParams(inputs=[SJER], model=path, out_dir=tmp_path / "out"))
    with rasterio.open(res.class_map) as ds:
        engine_classes = ds.read(1)
    # torch on the whole image, with the engine's input semantics: normalise, zero invalid pixels, and replicate
    # edge pixels past the borders where the engine's tiles reach beyond the raster: right and bottom, and top and
    # left by the CRS-anchored lattice's offsets (engine.tiling.anchored_offsets).
    from engine.tiling import anchored_offsets

    with rasterio.open(SJER) as ds:
        valid = ds.read_masks().min(axis=0) > 0
        x = meta.inputs[0].normalization.apply(ds.read())
        top, left = anchored_offsets(ds.transform, res.tile - res.overlap)
    x[:, ~valid] = 0
    x = np.pad(x, ((0, 0), (top, 8), (left, 8)), mode="edge")[None]
    from torch_models import small_segmenter

    with torch.no_grad():
        ref = small_segmenter()(torch.from_numpy(x)).numpy()
    torch_classes = softmax(ref)[0].argmax(0)[top:-8, left:-8]
    agreement = (engine_classes == torch_classes)[valid].mean()
    assert agreement >= 0.999, agreement
    assert len(np.unique(torch_classes[valid])) > 1


def test_cli_export_two_input_model_with_dynamo(tmp_path):
    meta = tmp_path / "meta.json"
    ndsm = {
        "name": "ndsm",
        "modality": "ndsm",
        "bands": ["height"],
        "normalization": {"type": "scale_offset", "scale": 0.1, "offset": 0},
    }
    meta.write_text(json.dumps(meta_doc([RGB, ndsm], 3, tile_size=64, overlap=16)))
    out = tmp_path / "two.onnx"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "onnx",
            "--entry",
            "torch_models:two_inputs",
            "--meta",
            str(meta),
            "--out",
            str(out),
            "--exporter",
            "dynamo",
            "--opset",
            "18",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "argmax agreement" in proc.stdout
    pkg = load_model_package(out)
    assert [i.name for i in pkg.meta.inputs] == ["rgb", "ndsm"]


def test_ort_optimise_keeps_metadata(tmp_path, meta_file):
    path, _ = _export(tmp_path, meta_file, ort_optimize=True)
    assert load_model_package(path).meta.name == "small-segmenter"


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"opset": 99}, "opset 99 is not supported"),
        ({"entry": "torch_models:unsupported"}, "operator not supported"),
        ({"entry": "torch_models:nope"}, "cannot import entry point"),
        ({"tolerance": -1.0}, "parity check failed"),
    ],
)
def test_export_errors(tmp_path, meta_file, kw, message):
    entry = kw.pop("entry", "torch_models:small_segmenter")
    if "unsupported" in entry:
        meta_file.write_text(json.dumps(meta_doc([RGB], 2, tile_size=64, overlap=16)))
    params = ExportParams(meta=meta_file, out=tmp_path / "m.onnx", entry=entry, **kw)
    with pytest.raises(ExportError) as err:
        export_package(params, log=lambda m: None)
    assert message in str(err.value)
    assert not (tmp_path / "m.onnx").exists()


def test_missing_or_bad_metadata(tmp_path, meta_file):
    with pytest.raises(ExportError, match="metadata file not found"):
        export_package(ExportParams(meta=tmp_path / "none.json", out=tmp_path / "m.onnx", entry="x:y"))
    doc = json.loads(meta_file.read_text())
    del doc["classes"]
    meta_file.write_text(json.dumps(doc))
    with pytest.raises(ExportError, match="missing required field 'classes'"):
        _export(tmp_path, meta_file)


def test_class_count_must_match_output(tmp_path):
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(meta_doc([RGB], 6, tile_size=64, overlap=16)))
    with pytest.raises(ExportError, match=r"one \(N, 6, H, W\) tensor"):
        export_package(ExportParams(meta=meta, out=tmp_path / "m.onnx", entry="torch_models:small_segmenter"))


def test_sam_tiny_encoder_decoder_parity(tmp_path):
    from export.sam_export import SamExportParams, export_sam

    doc = export_sam(SamExportParams("tiny", tmp_path), log=lambda m: None)
    assert doc["parity"]["encoder_max_abs_diff"] < 1e-3
    assert doc["parity"]["decoder_mask_agreement"] >= 0.999
    import onnxruntime as ort

    enc = ort.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    emb = enc.run(None, {"image": np.zeros((1, 3, doc["img_size"], doc["img_size"]), np.float32)})[0]
    assert emb.shape == (1, doc["embed_dim"], *doc["embedding_size"])
    assert json.loads((tmp_path / "sam.json").read_text())["decoder"] == "decoder.onnx"


def test_sam_checkpoint_must_exist(tmp_path):
    from export.sam_export import SamExportParams, export_sam

    with pytest.raises(ExportError, match="checkpoint not found"):
        export_sam(SamExportParams("vit_b", tmp_path, checkpoint=tmp_path / "sam_vit_b.pth"))


def test_tensorrt_missing_is_a_clear_error(tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed")
    except ImportError:
        pass
    from export.tensorrt_build import TensorRTParams, build_engine

    with pytest.raises(ExportError, match="TensorRT is not installed"):
        build_engine(TensorRTParams(onnx=DEFAULT_MODEL, cache_dir=tmp_path))


def test_engine_for_another_gpu_asks_for_rebuild(tmp_path):
    info = {"gpu": "NVIDIA A100-SXM4-40GB", "version": "10.3.0", "onnx": "models/x.onnx"}
    with pytest.raises(ModelError, match="rebuild it: python -m export tensorrt --onnx models/x.onnx"):
        check_compatible(info, "NVIDIA H100 80GB HBM3", "10.3.0", tmp_path / "x.engine")
    with pytest.raises(ModelError, match="TensorRT 10.3.0, but this machine has .* TensorRT 11.4"):
        check_compatible(info, "NVIDIA A100-SXM4-40GB", "11.4.0", tmp_path / "x.engine")
    check_compatible(info, "NVIDIA A100-SXM4-40GB", "10.3.0", tmp_path / "x.engine")  # same: no error


def test_engine_file_without_sidecar(tmp_path):
    eng = tmp_path / "model.engine"
    eng.write_bytes(b"\0" * 16)
    with pytest.raises(ModelError, match="has no sidecar model.json"):
        load_model_package(eng)


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime_cpu(tmp_path):
    """Build a TensorRT engine for the default model and compare its classes with onnxruntime on the CPU."""
    pytest.importorskip("tensorrt")
    from export.tensorrt_build import TensorRTParams, build_engine

    engine = build_engine(TensorRTParams(onnx=DEFAULT_MODEL, cache_dir=tmp_path, max_batch=4), log=lambda m: None)
    ref = run_landcover(LandcoverParams(inputs=[SJER], model=DEFAULT_MODEL, out_dir=tmp_path / "cpu"))
    trt = run_landcover(LandcoverParams(inputs=[SJER], model=engine, out_dir=tmp_path / "trt"))
    assert trt.device == "TensorRT"
    with rasterio.open(ref.class_map) as a, rasterio.open(trt.class_map) as b:
        assert (a.read(1) == b.read(1)).mean() >= 0.999
