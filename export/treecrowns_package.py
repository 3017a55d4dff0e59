"""The trained crown detector -> the shipped ONNX package: ``python -m export package-treecrowns``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import torch

from engine.model_package import embed_metadata, parse_metadata

from .errors import ExportError
from .train.crown_data import BANDS, NAIP_PIXEL_M, PIXEL_RANGE_M
from .train_treecrowns import CHM_SCALE, NAIP_TTA, PIXEL_M, STRIDE, TTA, load_crownnet


def metadata(report: dict, in_channels: int = len(BANDS)) -> dict:
    """The package's metadata from the training report; a 7-band net (RGB, CHM, NIR and their flags) declares
    both its training scales (0.1 m and 0.6 m, each with its threshold and test-time views), a 5-band one (the
    former detector) 0.1 m alone."""
    rgb = report.get("val_rgb", {}).get("all", {})
    cross = report.get("val_rgb_crossfitted", {}).get("all", {})
    chm = report.get("val_rgb+chm", {}).get("TEAK", {})
    bands = list(BANDS[:in_channels])
    scale = [1 / 128, 1 / 128, 1 / 128, 1 / CHM_SCALE, 1.0, 1 / 128, 1.0][:in_channels]
    offset = [-127 / 128, -127 / 128, -127 / 128, 0.0, 0.0, -127 / 128, 0.0][:in_channels]
    detector = {"kind": "centernet", "stride": STRIDE, "score_threshold": float(report["threshold"]), "tta": TTA}
    summary = (
        f"tree crowns (boxes) from RGB + optional CHM at {PIXEL_M} m; validation F1 @ IoU 0.4 (8 test-time "
        f"views): RGB {rgb.get('f1', float('nan')):.3f} (threshold chosen on these plots; cross-fitted "
        f"{cross.get('f1', float('nan')):.3f}), TEAK with CHM {chm.get('f1', float('nan')):.3f}"
    )
    if "nir" in bands:
        detector["pixel_size_range_m"] = list(PIXEL_RANGE_M)
        detector["scales"] = [
            {"pixel_m": PIXEL_M, "score_threshold": float(report["threshold"]), "tta": TTA},
            {"pixel_m": NAIP_PIXEL_M, "score_threshold": float(report["threshold_naip"]), "tta": NAIP_TTA},
        ]
        naip = report.get("naip_test_rgb+nir", {}).get("all", {})
        naip_rgb = report.get("naip_test_rgb", {}).get("all", {})
        summary = (
            f"tree crowns and treetops from RGB + optional CHM / NIR at {PIXEL_RANGE_M[0]}-{PIXEL_RANGE_M[1]} m; "
            f"NEON validation F1 @ IoU 0.4: RGB {rgb.get('f1', float('nan')):.3f} (cross-fitted "
            f"{cross.get('f1', float('nan')):.3f}), TEAK with CHM {chm.get('f1', float('nan')):.3f}; NAIP held-out "
            f"city treetops F1 (3 m): RGB + NIR {naip.get('f1', float('nan')):.3f}, RGB "
            f"{naip_rgb.get('f1', float('nan')):.3f}"
        )
    return {
        "format": "landseg-model/1",
        "name": "treecrowns-centernet-lite0",
        "task": "treecrowns",
        "description": (
            "CenterNet-style tree-crown detector on an ImageNet EfficientNet-Lite0 encoder, RGB + optional CHM"
            + (
                " / NIR, trained on NEON plots (0.1 m, and downsampled) and NAIP tree points (0.6 m)"
                if "nir" in bands
                else ", trained on NEON plots at 0.1 m"
            )
            + "; see MODEL_CARD.md"
        ),  # fmt: skip
        "inputs": [
            {
                "name": "x",
                "modality": "any",
                "bands": bands,
                "normalization": {"type": "scale_offset", "scale": scale, "offset": offset},
                "value_range": [0, 255],  # the RGB bands: 8-bit (engine.value_range); the CHM is metres
                "value_range_bands": 3,
            }
        ],
        "output": {"name": "out", "kind": "logits"},
        "classes": [{"id": 0, "name": "tree", "color": "#1a9641", "description": "tree crown"}],
        "tile_size": 512,
        "overlap": 128,
        "pixel_size_m": PIXEL_M,
        # The threshold(s) are for the test-time views named beside them (TreeCrownParams.tta = "auto").
        "detector": detector,
        "card": {"summary": summary},
    }


def export_treecrowns(checkpoint: Path, out: Path, log=print) -> Path:
    model = load_crownnet(checkpoint)
    model.eval()
    c = model.in_channels
    report = json.loads((Path(checkpoint).parent / "report.json").read_text())
    doc = metadata(report, c)
    parse_metadata(doc, "treecrowns metadata")
    out = Path(out)
    tmp = out.with_name(f".{out.stem}.tmp.onnx")
    x = torch.randn(1, c, 256, 256)
    torch.onnx.export(
        model, (x,), str(tmp), input_names=["x"], output_names=["out"], opset_version=17, dynamo=False,
        dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}, "out": {0: "N", 2: "h", 3: "w"}},
    )  # fmt: skip
    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto)
    embed_metadata(proto, doc)
    onnx.save(proto, str(tmp))
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    diff = 0.0
    for shape in ((2, c, 256, 256), (1, c, 416, 384)):
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            ref = model(x).numpy()
        diff = max(diff, float(np.abs(sess.run(None, {"x": x.numpy()})[0] - ref).max()))
    if diff > 1e-3:
        tmp.unlink()
        raise ExportError(f"parity check failed: max |torch - onnxruntime| {diff:.2e}")
    os.replace(tmp, out)
    log(f"parity torch vs onnxruntime: max |diff| {diff:.2e}")
    log(f"model package: {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out
