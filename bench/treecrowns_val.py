"""Tree crowns on the held-out NEON plots (SJER every 4th plot id, both years; TEAK_057/061 with their CHM; SOAP,
a site never trained on), through the engine: precision, recall and F1 at IoU 0.4 (one-to-one matching of the
crowns' bounding boxes to the annotated boxes), per site, for the trained detector (RGB, and RGB + CHM where a CHM
exists) and the colour-rule watershed method, side by side.

Usage: python bench/treecrowns_val.py [--data ../shared/data] [--model models/treecrowns_centernet_lite0.onnx]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import fiona
import numpy as np
import rasterio
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.jobs.treecrowns import TreeCrownParams, run_treecrowns  # noqa: E402
from engine.model_package import COLOUR_RULE_MODEL, DEFAULT_TREECROWN_MODEL  # noqa: E402
from export.train import landcover_data as D  # noqa: E402
from export.train_treecrowns import match, prf  # noqa: E402


def plot_raster(rgb_path: Path, work: Path) -> Path:
    """A georeferenced GeoTIFF of the plot (the PNG plots have none; NEON AOP is 0.1 m)."""
    if rgb_path.suffix == ".tif":
        return rgb_path
    rgb, _ = D.read_plot(rgb_path, None)
    return D.write_rgb_geotiff(work / f"{rgb_path.stem}.tif", rgb, from_origin(300000, 4100000, 0.1, 0.1), "EPSG:32611")


def crown_boxes_px(gpkg: Path, raster: Path) -> np.ndarray:
    """Crowns' bounding boxes in the raster's pixel coordinates."""
    from shapely.geometry import shape

    with rasterio.open(raster) as ds, fiona.open(gpkg) as layer:
        inv = ~ds.transform
        out = []
        for f in layer:
            x0, y0, x1, y1 = shape(f.geometry).bounds
            (a, b), (c, d) = inv * (x0, y1), inv * (x1, y0)
            out.append([min(a, c), min(b, d), max(a, c), max(b, d)])
    return np.asarray(out, np.float32).reshape(-1, 4)


def evaluate(data: Path, methods: dict, work: Path, plots=None) -> dict:
    """{method: {site: [tp, n_pred, n_truth]}}; methods: name -> (model, use_chm)."""
    res: dict = {}
    for site, rgb_path, xml, chm_path in plots or D.neon_plots(data, "val"):
        raster = plot_raster(rgb_path, work)
        truth = D.voc_boxes(xml)
        for name, (model, use_chm) in methods.items():
            if use_chm and chm_path is None:
                continue
            out = work / f"{name}_{rgb_path.parent.name}_{rgb_path.stem}".replace("+", "_")
            r = run_treecrowns(
                TreeCrownParams(image=raster, out_dir=out, model=model, chm=chm_path if use_chm else None)
            )
            pred = crown_boxes_px(r.crowns, raster)
            a = res.setdefault(name, {}).setdefault(site, [0, 0, 0])
            a[0] += match(pred, truth)
            a[1] += len(pred)
            a[2] += len(truth)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=D.data_root())
    ap.add_argument("--model", type=Path, default=DEFAULT_TREECROWN_MODEL)
    a = ap.parse_args()
    methods = {
        "detector RGB": (a.model, False),
        "detector RGB+CHM": (a.model, True),
        "watershed RGB": (COLOUR_RULE_MODEL, False),
        "watershed RGB+CHM": (COLOUR_RULE_MODEL, True),
    }
    with tempfile.TemporaryDirectory() as tmp:
        res = evaluate(a.data, methods, Path(tmp))
    print(f"{'method':20} {'site':5} {'P':>6} {'R':>6} {'F1':>6}  (IoU >= 0.4)")
    for name, per in res.items():
        for site, c in per.items():
            print(f"{name:20} {site:5} " + " ".join(f"{v:6.3f}" for v in prf(*c)))
        print(f"{name:20} {'all':5} " + " ".join(f"{v:6.3f}" for v in prf(*np.sum(list(per.values()), axis=0))))


if __name__ == "__main__":
    main()
