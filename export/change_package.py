"""The trained change model -> the shipped ONNX package: ``python -m export package-change``.

Two inputs, ``before`` and ``after`` (RGB, 8-bit, (x - 127) / 128 as the land-cover model), two classes "no
change" / "change"; the engine's `engine change --method direct` reads it. The decision threshold chosen in
training (export/train_change.py: on held-out synthetic pairs and the held-out NAIP city) goes into the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .torch_export import check_parity, export_onnx, read_meta
from .train_change import SiameseChangeNet

PIXEL_M = 0.5


def metadata(report: dict) -> dict:
    rgb = {
        "modality": "rgb",
        "bands": ["red", "green", "blue"],
        "normalization": {"type": "scale_offset", "scale": 1 / 128, "offset": -127 / 128},
        "value_range": [0, 255],
    }
    t = report.get("threshold", 0.5)
    row = report.get("by_threshold", {}).get(str(t), {})
    return {
        "format": "landseg-model/1",
        "name": "change-siamese-lite0",
        "task": "change",
        "description": "siamese U-Net on a shared ImageNet EfficientNet-Lite0 encoder (feature differences), "
        "trained on synthetic changes in real imagery and NAIP two-year pairs; see MODEL_CARD.md",
        "inputs": [{"name": "before", "date": "before", **rgb}, {"name": "after", "date": "after", **rgb}],
        "output": {"name": "logits", "kind": "logits"},
        "classes": [
            {"id": 0, "name": "no change", "color": "#ffffff", "description": "the same in both dates"},
            {"id": 1, "name": "change", "color": "#e31a1c", "description": "built, demolished, planted or felled"},
        ],
        "tile_size": 256,
        "overlap": 32,
        "pixel_size_m": PIXEL_M,
        "change": {"threshold": float(t)},
        "card": {
            "summary": f"change probability from two RGB dates at {PIXEL_M} m; threshold {t} (held-out synthetic "
            f"pairs F1 {row.get('f1', float('nan')):.3f}, held-out NAIP city changed "
            f"{row.get('naip_changed', float('nan')):.2%})"
        },
    }


def export_change(checkpoint: Path, out: Path, log=print) -> Path:
    model = SiameseChangeNet()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    model.eval()
    report_path = Path(checkpoint).parent / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    meta_path = Path(checkpoint).parent / "meta.json"
    meta_path.write_text(json.dumps(metadata(report), indent=1))
    doc, meta = read_meta(meta_path)
    export_onnx(model, doc, meta, Path(out))
    log(str(check_parity(model, Path(out), meta, [], size=128)))
    log(f"model package: {out} ({Path(out).stat().st_size / 1e6:.1f} MB)")
    return Path(out)
