"""Tree-crown evaluation on the real NEON/DeepForest sample rasters with tree boxes (../shared/data/neon_trees).

Predicted crowns are reduced to their bounding boxes and matched one-to-one to the annotated boxes (greedy, by
IoU); a match needs IoU >= 0.4. Prints precision and recall per image and overall, and the same figures for the
predictions DeepForest itself shipped for the SJER image (its .csv without "_truth"), as a reference.

Usage: python bench/treecrowns_eval.py [--data ../shared/data/neon_trees] [--sam models/sam_vit_b]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import fiona
import rasterio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.jobs.treecrowns import TreeCrownParams, run_treecrowns  # noqa: E402

IOU = 0.4


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(pred: list, truth: list) -> int:
    """Greedy one-to-one matching by IoU; returns true positives."""
    pairs = sorted(((iou(p, t), i, j) for i, p in enumerate(pred) for j, t in enumerate(truth)), reverse=True)
    used_p, used_t, tp = set(), set(), 0
    for v, i, j in pairs:
        if v < IOU:
            break
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            tp += 1
    return tp


def pixel_boxes_to_map(boxes, transform) -> list:
    out = []
    for x0, y0, x1, y1 in boxes:
        ax, ay = transform * (x0, y0)
        bx, by = transform * (x1, y1)
        out.append((min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)))
    return out


def read_csv_boxes(path: Path) -> list:
    with open(path) as f:
        return [(float(r["xmin"]), float(r["ymin"]), float(r["xmax"]), float(r["ymax"])) for r in csv.DictReader(f)]


def datasets(data: Path):
    """(name, image, truth boxes in map coordinates, reference prediction boxes or None)."""
    sjer = data / "2018_SJER_3_252000_4107000_image_477.tif"
    if sjer.exists():
        with rasterio.open(sjer) as ds:
            t = ds.transform
        truth = pixel_boxes_to_map(read_csv_boxes(data / "2018_SJER_3_252000_4107000_image_477_truth.csv"), t)
        ref_csv = data / "2018_SJER_3_252000_4107000_image_477.csv"
        ref = pixel_boxes_to_map(read_csv_boxes(ref_csv), t) if ref_csv.exists() else None
        yield "SJER (NEON, 0.1 m)", sjer, truth, ref
    aus = data / "australia.tif"
    if aus.exists() and (data / "australia.shp").exists():
        with fiona.Env(SHAPE_RESTORE_SHX="YES"), fiona.open(data / "australia.shp") as src:
            from shapely.geometry import shape

            truth = [shape(f.geometry).bounds for f in src]
        yield "australia (0.018 m)", aus, truth, None


def predicted_boxes(image: Path, sam: Path | None, work: Path) -> list:
    res = run_treecrowns(TreeCrownParams(image=image, out_dir=work, sam=sam, name=image.stem))
    from shapely.geometry import shape

    with fiona.open(res.crowns) as layer:
        return [shape(f.geometry).bounds for f in layer]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "neon_trees")
    ap.add_argument("--sam", type=Path)
    args = ap.parse_args()
    tot = {"tp": 0, "pred": 0, "truth": 0}
    print(f"== tree crowns vs annotated boxes, IoU >= {IOU} ({'SAM' if args.sam else 'watershed'} method)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, image, truth, ref in datasets(args.data):
            pred = predicted_boxes(image, args.sam, Path(tmp))
            tp = match(pred, truth)
            tot["tp"] += tp
            tot["pred"] += len(pred)
            tot["truth"] += len(truth)
            p = tp / len(pred) if pred else 0.0
            r = tp / len(truth) if truth else 0.0
            print(f"{name:24s} crowns {len(pred):4d}  trees {len(truth):3d}  precision {p:.3f}  recall {r:.3f}")
            if ref is not None:
                tpr = match(ref, truth)
                print(
                    f"{'  DeepForest reference':24s} boxes  {len(ref):4d}  trees {len(truth):3d}  precision "
                    f"{tpr / len(ref):.3f}  recall {tpr / len(truth):.3f}"
                )
    p = tot["tp"] / tot["pred"] if tot["pred"] else 0.0
    r = tot["tp"] / tot["truth"] if tot["truth"] else 0.0
    print(f"{'overall':24s} crowns {tot['pred']:4d}  trees {tot['truth']:3d}  precision {p:.3f}  recall {r:.3f}")


if __name__ == "__main__":
    main()
