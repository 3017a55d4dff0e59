"""The trained land-cover U-Net -> the shipped ONNX model package (metadata, parity check, class embeddings)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import landcover_data as D
from .effnet_lite import LandcoverUNet
from .torch_export import check_parity, export_onnx, read_meta

ROOT = Path(__file__).resolve().parents[1]
PARITY_RASTER = ROOT / "data/sample/urban_river_rgb.tif"
# The one place the shipped classes are described: names a prompt finds ("buildings", "paved roads", "sand",
# "trees", "river"), colours for the styles.
CLASS_INFO = (
    ("building", "#e31a1c", "buildings, houses, roofs, sheds"),
    ("road", "#7f7f7f", "paved roads, streets, car parks, asphalt, concrete"),
    ("bare land", "#d8b365", "bare soil, sand, desert, dry grass, gravel, unpaved ground"),
    ("vegetation", "#1a9641", "trees, woodland, shrubs, grass, fields, parks"),
    ("water", "#2c7fb8", "river, lake, sea, pond, canal"),
)
assert tuple(c[0] for c in CLASS_INFO) == D.CLASSES


def metadata(report: dict | None = None) -> dict:
    doc = {
        "format": "landseg-model/1",
        "name": "landcover-unet-lite0",
        "task": "landcover",
        "description": (
            "U-Net on an ImageNet EfficientNet-Lite0 encoder, trained at 0.5 m on Dubai aerial labels plus weak "
            "labels from NEON/OAM-TCD tree data; see MODEL_CARD.md"
        ),
        "inputs": [
            {
                "name": "rgb",
                "modality": "rgb",
                "bands": ["red", "green", "blue"],
                "normalization": {"type": "mean_std", "mean": 127.0, "std": 128.0},
                "value_range": [0, 255],  # 8-bit imagery; other data is stretched onto it (engine.value_range)
            }
        ],
        "output": {"name": "logits", "kind": "logits"},
        "classes": [{"id": i, "name": n, "color": c, "description": d} for i, (n, c, d) in enumerate(CLASS_INFO)],
        "tile_size": 512,
        "overlap": 64,
        "pixel_size_m": D.MODEL_PIXEL_M,
    }
    if report:
        dv = report["dubai_val"]
        card = {
            "summary": (
                f"5-class land cover (RGB, 8-bit, {D.MODEL_PIXEL_M} m). Dubai validation tile mIoU "
                f"{dv['miou']:.3f}; trained {report.get('train_minutes', '?')} min on 2 CPU cores"
            ),
            "dubai_val_iou": dv["iou"],
            "dubai_val_miou": round(dv["miou"], 4),
        }
        if "neon_vegetation" in report:
            card["neon_vegetation_in_boxes"] = {k: round(v["inside"], 3) for k, v in report["neon_vegetation"].items()}
            card["kampala_building_iou"] = round(report["kampala_building_iou"], 3)
        doc["card"] = card
    return doc


def export_landcover(checkpoint: Path, out: Path, data: Path | None = None, log=print) -> Path:
    import torch

    model = LandcoverUNet(len(D.CLASSES))
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    model.eval()
    report_path = Path(checkpoint).parent / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    meta_path = Path(checkpoint).parent / "meta.json"
    meta_path.write_text(json.dumps(metadata(report), indent=1))
    meta_doc, meta = read_meta(meta_path)
    export_onnx(model, meta_doc, meta, out)
    log(str(check_parity(model, out, meta, [PARITY_RASTER] if PARITY_RASTER.exists() else [], size=256)))
    # The torch weights beside the package make it adaptable (`python -m engine adapt`, export/adapt.py).
    shutil.copyfile(checkpoint, out.with_suffix(".pt"))
    from .class_embeddings import embed_classes

    if embed_classes(out, missing_ok=True):
        log("class embeddings written into the metadata")
    log(f"model package: {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out
