"""Shared fixtures: real sample rasters, small ONNX models built with export's GraphBuilder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import rasterio
from rasterio.transform import from_origin

from engine.model_package import embed_metadata
from export.graph_builder import GraphBuilder

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
URBAN = SAMPLE / "urban_river_rgb.tif"  # real 2048x2048 RGB orthophoto, nodata 0 outside the footprint
SJER = SAMPLE / "neon_sjer_rgb.tif"  # real 400x400 NEON RGB crop, 0.1 m
DEFAULT_MODEL = ROOT / "models" / "rgb_index_baseline.onnx"
SHARED = ROOT.parent / "shared" / "data"

COLORS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"]


def meta_doc(inputs: list[dict], n_classes: int, output_kind: str = "logits", **kw) -> dict:
    doc = {
        "format": "landseg-model/1",
        "name": kw.pop("name", "test-model"),
        "task": kw.pop("task", "landcover"),
        "inputs": inputs,
        "output": {"name": "out", "kind": output_kind},
        "classes": [{"id": i, "name": f"class{i}", "color": COLORS[i]} for i in range(n_classes)],
        "tile_size": kw.pop("tile_size", 128),
        "overlap": kw.pop("overlap", 32),
    }
    doc.update(kw)
    return doc


def save(model: onnx.ModelProto, doc: dict, path: Path) -> Path:
    embed_metadata(model, doc)
    onnx.save(model, str(path))
    return path


def conv_model(path: Path, in_channels: int = 3, n_classes: int = 4, layers: int = 2, seed: int = 0) -> Path:
    """Random 3x3 conv stack: receptive field 2*layers+1 pixels."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder("conv")
    x = g.input("rgb", in_channels)
    ch = in_channels
    for k in range(layers):
        out_ch = n_classes if k == layers - 1 else 8
        x = g.conv(x, rng.normal(0, 1, (out_ch, ch, 3, 3)).astype(np.float32), rng.normal(0, 0.1, out_ch))
        if k < layers - 1:
            x = g.op("Relu", x)
        ch = out_ch
    g.output("out", x, n_classes)
    norm = {"type": "mean_std", "mean": [120.0] * in_channels, "std": [60.0] * in_channels}
    inputs = [{"name": "rgb", "modality": "rgb", "bands": [f"b{i}" for i in range(in_channels)], "normalization": norm}]
    return save(g.model(), meta_doc(inputs, n_classes), path)


def sign_model(path: Path, normalization: dict) -> Path:
    """One band in, two classes out: logits (z, -z) with z the normalised value (pointwise)."""
    g = GraphBuilder("sign")
    x = g.input("band", 1)
    g.output("out", g.concat(x, g.mul(x, -1.0)), 2)
    inputs = [{"name": "band", "modality": "any", "bands": ["b1"], "normalization": normalization}]
    return save(g.model(), meta_doc(inputs, 2), path)


def multimodal_model(path: Path) -> Path:
    """RGB + NIR + nDSM as three separate model inputs, concatenated into a 1x1 conv (pointwise)."""
    g = GraphBuilder("rgb_nir_ndsm")
    rgb, nir, ndsm = g.input("rgb", 3), g.input("nir", 1), g.input("ndsm", 1)
    w = np.zeros((3, 5, 1, 1), dtype=np.float32)
    w[0, 1, 0, 0], w[0, 3, 0, 0] = -1, 1  # NIR - green: vegetation
    w[1, 4, 0, 0] = 1  # height: tall things
    w[2, 2, 0, 0] = 1  # blue
    g.output("out", g.conv(g.concat(rgb, nir, ndsm), w, np.zeros(3)), 3)
    scale = {"type": "scale_offset", "scale": 1 / 255, "offset": 0}
    inputs = [
        {"name": "rgb", "modality": "rgb", "bands": ["red", "green", "blue"], "normalization": scale},
        {"name": "nir", "modality": "nir", "bands": ["nir"], "normalization": scale},
        {
            "name": "ndsm",
            "modality": "ndsm",
            "bands": ["height"],
            "normalization": {"type": "scale_offset", "scale": 0.1, "offset": 0},
        },
    ]
    return save(g.model(), meta_doc(inputs, 3), path)


def band_model(path: Path, classes: list[dict], modality: str) -> Path:
    """Pointwise: band k of the model's input is the logit of classes[k]."""
    g = GraphBuilder("bands")
    g.output("out", g.input("bands", len(classes)), len(classes))
    doc = {
        "format": "landseg-model/1",
        "name": path.stem,
        "task": "landcover",
        "inputs": [
            {
                "name": "bands",
                "modality": modality,
                "bands": [f"b{i}" for i in range(len(classes))],
                "normalization": {"type": "scale_offset", "scale": 1.0, "offset": 0.0},
            }
        ],
        "output": {"name": "out", "kind": "logits"},
        "classes": classes,
        "tile_size": 64,
        "overlap": 16,
    }
    return save(g.model(), doc, path)


def batch_cli(*args: str, timeout: int = 900) -> tuple[subprocess.CompletedProcess, dict | None]:
    """`engine batch landcover ... --json` from the checkout: the process and its JSON result (None if none)."""
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "batch", "landcover", "--progress", "none", "--json", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout,
    )  # fmt: skip
    try:
        return proc, json.loads(proc.stdout)
    except ValueError:
        return proc, None


def read_classes(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def write_raster(path: Path, data: np.ndarray, transform=None, crs="EPSG:32611", nodata=None) -> Path:
    data = data if data.ndim == 3 else data[None]
    transform = transform or from_origin(500000, 4100000, 1.0, 1.0)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as ds:
        ds.write(data)
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "conv": conv_model(d / "conv.onnx"),
        "multimodal": multimodal_model(d / "multimodal.onnx"),
    }


@pytest.fixture(scope="session")
def plugin_zip() -> Path:
    """`make package` once per session: the zip a QGIS user installs."""
    proc = subprocess.run(["make", "package"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ROOT / "dist" / "landseg_plugin.zip"


@pytest.fixture(scope="session")
def test_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch, test_home):
    # Keep QGIS, GDAL and caches out of the real home and out of the tests' output folders.
    monkeypatch.setenv("HOME", str(test_home))


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not _has_cuda():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
