"""Crown shapes of the watershed and SAM methods: tree tops, watershed regions or SAM masks, one crown
record per tree, and overlap suppression (shared with the detector's crowns)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import shapely
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import shape

from ..errors import InputError


class SamPrompter:
    """SAM encoder + decoder (ONNX) for one window at a time; a positive point prompt per tree top."""

    def __init__(self, folder: Path, providers: list[str]) -> None:
        import onnxruntime as ort

        side = Path(folder) / "sam.json"
        if not side.exists():
            raise InputError(f"SAM folder {folder} has no sam.json; export SAM with `python -m export sam`")
        self.doc = json.loads(side.read_text())
        self.size = int(self.doc["img_size"])
        self.enc = ort.InferenceSession(str(Path(folder) / self.doc["encoder"]), providers=providers)
        self.dec = ort.InferenceSession(str(Path(folder) / self.doc["decoder"]), providers=providers)
        self.emb_hw = tuple(self.doc["embedding_size"])

    def masks(self, rgb: np.ndarray, points: list[tuple[int, int]]) -> list[tuple[np.ndarray, float]]:
        """rgb: (3, h, w) 0..255 with h, w <= img_size; points (row, col). Returns (mask, score) per point."""
        h, w = rgb.shape[1:]
        img = np.zeros((1, 3, self.size, self.size), np.float32)
        img[0, :, :h, :w] = rgb[:3]
        emb = self.enc.run(None, {"image": img})[0]
        out = []
        for r, c in points:
            feeds = {
                "image_embeddings": emb,
                "point_coords": np.array([[[c + 0.5, r + 0.5], [0.0, 0.0]]], np.float32),
                "point_labels": np.array([[1, -1]], np.float32),  # -1: SAM's padding point
                "mask_input": np.zeros((1, 1, 4 * self.emb_hw[0], 4 * self.emb_hw[1]), np.float32),
                "has_mask_input": np.zeros(1, np.float32),
                "orig_im_size": np.array([self.size, self.size], np.float32),
            }
            masks, iou, _ = self.dec.run(None, feeds)
            out.append((masks[0, 0, :h, :w] > self.doc.get("mask_threshold", 0.0), float(iou[0, 0])))
        return out


def tree_tops(surface: np.ndarray, mask: np.ndarray, min_dist_px: int) -> np.ndarray:
    from skimage.feature import peak_local_max

    if not mask.any():
        return np.zeros((0, 2), int)
    return peak_local_max(surface, min_distance=max(1, min_dist_px), labels=mask.astype(np.int32), exclude_border=False)


def watershed_regions(surface: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Marker-controlled watershed of the surface's high points inside the mask (scikit-image; scipy's image
    foresting transform was tried and halved this method's F1 on the validation plots)."""
    from skimage.segmentation import watershed

    return watershed(-surface, markers, mask=mask)


def crown_record(region, top, transform, veg, chm, area_of, score, method) -> dict | None:
    r, c = top
    if not region[r, c]:
        lab, _ = ndimage.label(region)
        if lab.max() == 0:
            return None
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        region = lab == sizes.argmax()
    else:
        lab, _ = ndimage.label(region)
        region = lab == lab[r, c]  # the connected part holding the tree top
    polys = [shape(g) for g, v in shapes(region.astype(np.uint8), mask=region, transform=transform) if v == 1]
    if not polys:
        return None
    geom = max(polys, key=lambda p: p.area)
    area = area_of(geom)
    x, y = transform * (c + 0.5, r + 0.5)
    heights = chm[region] if chm is not None else None
    return {
        "geom": geom,
        "score": round(float(score if score is not None else veg[region].mean()), 4),
        "height_max": round(float(heights.max()), 2) if heights is not None and heights.size else None,
        "height_mean": round(float(heights.mean()), 2) if heights is not None and heights.size else None,
        "area_m2": round(area, 3),
        "diameter_m": round(2 * math.sqrt(area / math.pi), 3),
        "top_x": x,
        "top_y": y,
        "method": method,
    }


def suppress_overlaps(crowns: list[dict], iou: float) -> list[dict]:
    """Drop a crown that overlaps a higher-scoring one by more than ``iou``."""
    if len(crowns) < 2:
        return crowns
    order = sorted(range(len(crowns)), key=lambda i: -crowns[i]["score"])
    geoms = [crowns[i]["geom"] for i in order]
    tree = shapely.STRtree(geoms)
    keep, dropped = [], set()
    for k, g in enumerate(geoms):
        if k in dropped:
            continue
        keep.append(crowns[order[k]])
        for j in tree.query(g, predicate="intersects"):
            if j > k and j not in dropped:
                inter = g.intersection(geoms[j]).area
                if inter / (g.area + geoms[j].area - inter) > iou:
                    dropped.add(int(j))
    return keep
