"""The trained land-cover U-Net -> the shipped ONNX model package (metadata, parity check, class embeddings)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .effnet_lite import landcover_unet_for
from .torch_export import check_parity, export_onnx, read_meta
from .train import landcover_data as D

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


class RgbnInputs(torch.nn.Module):
    """The graph of a package with several inputs (RGB + NIR: the engine maps a 4-band raster's bands 1-3 and 4
    to them): the inputs, in the metadata's order, concatenated into the 5-channel net, which adds the "NIR
    present" flag itself. The shipped RGB + NIR package and adapted copies of it (export/adapt.py) use it."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat(inputs, 1))


def _input(name: str, modality: str, bands: list[str]) -> dict:
    return {
        "name": name,
        "modality": modality,
        "bands": bands,
        "normalization": {"type": "mean_std", "mean": 127.0, "std": 128.0},
        "value_range": [0, 255],  # 8-bit imagery; other data is stretched onto it (engine.value_range)
    }


def metadata(report: dict | None = None, nir: bool = False, trained_with_nir: bool = False) -> dict:
    sources = "Dubai aerial labels, NAIP NDVI weak labels, Banepa building outlines and NEON/OAM-TCD tree data"
    if not (nir or trained_with_nir):
        sources = "Dubai aerial labels plus weak labels from NEON/OAM-TCD tree data"
    inputs = [_input("rgb", "rgb", ["red", "green", "blue"])]
    if nir:
        inputs.append(_input("nir", "nir", ["nir"]))
    doc = {
        "format": "landseg-model/1",
        "name": "landcover-rgbn-unet-lite0" if nir else "landcover-unet-lite0",
        "task": "landcover",
        "description": (
            f"U-Net on an ImageNet EfficientNet-Lite0 encoder ({'red, green, blue + near-infrared' if nir else 'RGB'})"
            f", trained at 0.5 m on {sources}; see MODEL_CARD.md"
        ),
        "inputs": inputs,
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
                f"5-class land cover ({'RGB + NIR' if nir else 'RGB'}, 8-bit, {D.MODEL_PIXEL_M} m). Dubai validation "
                f"tile mIoU {dv['miou']:.3f}; trained {report.get('train_minutes', '?')} min on 2 CPU cores"
            ),
            "dubai_val_iou": dv["iou"],
            "dubai_val_miou": round(dv["miou"], 4),
        }
        naip_key = "naip_val_rgbn" if nir else "naip_val"
        if naip_key in report:
            nv = report[naip_key]
            card[f"naip_{nv['city']}_vegetation_iou"] = round(nv["vegetation_iou"], 3)
            card[f"naip_{nv['city']}_tree_points_on_vegetation"] = round(nv["tree_points_on_vegetation"], 3)
        if "banepa_building_iou" in report:
            card["banepa_val_building_iou"] = round(report["banepa_building_iou"], 3)
        if "neon_vegetation" in report:
            card["neon_vegetation_in_boxes"] = {k: round(v["inside"], 3) for k, v in report["neon_vegetation"].items()}
            card["kampala_building_iou"] = round(report["kampala_building_iou"], 3)
        doc["card"] = card
    return doc


def export_landcover(checkpoint: Path, out: Path, data: Path | None = None, log=print, nir: bool = False) -> Path:
    """``nir``: the RGB + NIR package of a 5-channel checkpoint (the same weights as its RGB package)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net = landcover_unet_for(state, len(D.CLASSES))
    net.load_state_dict(state)
    net.eval()
    five = net.in_channels > 3
    if nir and not five:
        raise ValueError(f"{checkpoint} is an RGB-only net (3 input channels): it has no RGB + NIR package")
    model = RgbnInputs(net).eval() if nir else net
    report_path = Path(checkpoint).parent / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    meta_path = Path(checkpoint).parent / ("meta_rgbn.json" if nir else "meta.json")
    meta_path.write_text(json.dumps(metadata(report, nir, five), indent=1))
    meta_doc, meta = read_meta(meta_path)
    export_onnx(model, meta_doc, meta, out)
    real = [PARITY_RASTER] if PARITY_RASTER.exists() and not nir else []
    log(str(check_parity(model, out, meta, real, size=256)))
    # The torch weights beside the package make it adaptable (`python -m engine adapt`, export/adapt.py).
    shutil.copyfile(checkpoint, out.with_suffix(".pt"))
    from .class_embeddings import embed_classes

    if embed_classes(out, missing_ok=True):
        log("class embeddings written into the metadata")
    log(f"model package: {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out
