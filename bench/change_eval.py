"""Post-classification change on the labelled LEVIR-CD / DSIFN-CD pairs (../shared/data/change; evaluation only,
never training): pixel precision, recall and F1 of the change polygons for a grid of joint-confidence thresholds
and minimum areas, and the pair of values with the best mean F1 (the engine's defaults come from here).

LEVIR-CD labels building change only, so it is scored with ``--classes building``; DSIFN-CD labels any
land-cover change. The PNGs have no georeference: LEVIR is 0.5 m (published), DSIFN about 2 m (Google Earth
level 16-17, as its authors describe it); both are written as GeoTIFFs at that pixel size so --resample works.

Usage: python bench/change_eval.py [--data ../shared/data/change] [--model models/landcover_unet_lite0.onnx]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import fiona
import numpy as np
import rasterio
from PIL import Image
from rasterio.features import rasterize
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.jobs.change import ChangeParams, run_change  # noqa: E402
from engine.model_package import DEFAULT_LANDCOVER_MODEL  # noqa: E402
from engine.polygonize import PolygonizeOptions  # noqa: E402
from export.train.landcover_data import write_rgb_geotiff  # noqa: E402

SETS = {"LEVIR": (0.5, ["building"]), "DSIFN": (2.0, [])}
CONFIDENCES = (0.0, 0.3, 0.5, 0.7)
MIN_AREAS_PX = (9, 64, 256)  # in pixels of the input (times the pixel area gives m2)


def _tif(path: Path, png: Path, pixel_m: float) -> Path:
    rgb = np.asarray(Image.open(png).convert("RGB")).transpose(2, 0, 1)
    return write_rgb_geotiff(path, rgb, from_origin(400000, 3000000, pixel_m, pixel_m), "EPSG:32650")


def polygons_mask(polygons: Path, raster: Path, shape: tuple[int, int]) -> np.ndarray:
    """The change polygons burnt onto the raster's grid: what the analyst gets, scored pixel by pixel."""
    with rasterio.open(raster) as ds, fiona.open(polygons) as src:
        geoms = [f.geometry for f in src]
        if not geoms:
            return np.zeros(shape, bool)
        return rasterize(geoms, out_shape=shape, transform=ds.transform).astype(bool)


def evaluate(data: Path, model: Path, work: Path) -> dict:
    """{(set, confidence, min_area_px): [tp, fp, fn]}"""
    acc: dict = {}
    for name, (pixel_m, classes) in SETS.items():
        for label in sorted((data / name / "label").glob("*.png")):
            a = _tif(work / f"{name}_{label.stem}_A.tif", data / name / "A" / label.name, pixel_m)
            b = _tif(work / f"{name}_{label.stem}_B.tif", data / name / "B" / label.name, pixel_m)
            truth = np.asarray(Image.open(label).convert("L")) > 127
            for conf, area in itertools.product(CONFIDENCES, MIN_AREAS_PX):
                out = work / f"o_{name}_{label.stem}_{conf}_{area}"
                res = run_change(
                    ChangeParams(
                        before=[a], after=[b], model=model, out_dir=out, classes=classes, min_confidence=conf,
                        polygons=PolygonizeOptions(min_area_m2=area * pixel_m**2, layer="change"),
                    )
                )  # fmt: skip
                pred = polygons_mask(res.polygons, a, truth.shape)
                c = acc.setdefault((name, conf, area), [0, 0, 0])
                c[0] += int((pred & truth).sum())
                c[1] += int((pred & ~truth).sum())
                c[2] += int((~pred & truth).sum())
    return acc


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, 2 * p * r / (p + r) if p + r else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/change")
    ap.add_argument("--model", type=Path, default=DEFAULT_LANDCOVER_MODEL)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        acc = evaluate(args.data, args.model, Path(tmp))
    print(f"{'set':6} {'conf':>5} {'min px':>6} {'P':>6} {'R':>6} {'F1':>6}")
    for (name, conf, area), c in sorted(acc.items()):
        print(f"{name:6} {conf:5.2f} {area:6d} " + " ".join(f"{v:6.3f}" for v in prf(*c)))
    best = max(
        itertools.product(CONFIDENCES, MIN_AREAS_PX),
        key=lambda k: np.mean([prf(*acc[(n, *k)])[2] for n in SETS]),
    )
    print(f"best mean F1: min confidence {best[0]}, min area {best[1]} px")
    for n in SETS:
        p, r, f = prf(*acc[(n, *best)])
        print(f"  {n}: precision {p:.3f}, recall {r:.3f}, F1 {f:.3f}")


if __name__ == "__main__":
    main()
