"""Tree crowns on the held-out NEON plots (SJER every 4th plot id, both years; TEAK_057/061 with their CHM; SOAP,
a site never trained on), through the engine: precision, recall and F1 at IoU 0.4 (one-to-one matching of the
crowns' bounding boxes to the annotated boxes), per site, for the trained detector (RGB, and RGB + CHM where a CHM
exists) and the colour-rule watershed method, side by side. Then the held-out NAIP city (naip.VAL_CITY, every chip
of every year at its own 0.6 m): the engine's treetops within 3 m of an annotated tree point, one-to-one, with the
chip as it is (RGB + NIR) and with its RGB bands only.

Usage: python bench/treecrowns_val.py [--data ../shared/data] [--model models/treecrowns_centernet_lite0.onnx]
       [--only neon|naip]
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
from export.train import naip  # noqa: E402
from export.train_treecrowns import POINT_MATCH_M, match, match_points, prf  # noqa: E402


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


def treetops_px(gpkg: Path, raster: Path) -> np.ndarray:
    """Treetops (n, 2) in the raster's pixel coordinates (column, row), pixel corners at integers as the
    annotated points'."""
    with rasterio.open(raster) as ds, fiona.open(gpkg) as layer:
        inv = ~ds.transform
        pts = [inv * tuple(f.geometry["coordinates"][:2]) for f in layer]
    return np.asarray(pts, np.float32).reshape(-1, 2)


NAIP_SAMPLE = ROOT / "data/sample/naip_claremont_2018_rgbn.tif"
NAIP_SAMPLE_CHIPS = ("claremont_2018_65", "claremont_2018_66", "claremont_2018_69")  # data/sample/SOURCE


def naip_sample_truth(data: Path) -> np.ndarray:
    """The bundled NAIP sample's annotated trees (n, 2), moved onto the sample's grid from each chip's own."""
    points = []
    with rasterio.open(NAIP_SAMPLE) as ds:
        inv = ~ds.transform
        for name in NAIP_SAMPLE_CHIPS:
            chip = naip.Chip(naip.root(data) / "images" / f"{name}.tif", naip.VAL_CITY, 2018, 0)
            with rasterio.open(chip.path) as c:
                points += [inv * (c.transform * (x, y)) for x, y in naip.tree_points(chip)]
    return np.asarray(points, np.float32).reshape(-1, 2)


def evaluate_naip(data: Path, model: Path, work: Path) -> dict:
    """{"rgb+nir" | "rgb": {year: [hits, n_pred, n_truth]}} on every chip of the held-out NAIP city."""
    res: dict = {}
    for chip in naip.chips(data, "val"):
        truth = naip.tree_points(chip)
        with rasterio.open(chip.path) as ds:
            profile = ds.profile | {"count": 3}
            rgb = ds.read([1, 2, 3])
        rgb_path = work / f"{chip.path.stem}_rgb.tif"
        with rasterio.open(rgb_path, "w", **profile) as out:
            out.write(rgb)
        px = abs(profile["transform"].a)
        for label, raster in (("rgb+nir", chip.path), ("rgb", rgb_path)):
            r = run_treecrowns(TreeCrownParams(image=raster, out_dir=work / label / chip.path.stem, model=model))
            tops = treetops_px(r.treetops, raster)
            a = res.setdefault(label, {}).setdefault(chip.year, [0, 0, 0])
            a[0] += match_points(tops, truth, POINT_MATCH_M / px)
            a[1] += len(tops)
            a[2] += len(truth)
    return res


def print_table(res: dict, title: str) -> None:
    print(f"{'method':20} {'site':5} {'P':>6} {'R':>6} {'F1':>6}  ({title})")
    for name, per in res.items():
        for site, c in per.items():
            print(f"{name:20} {site!s:5} " + " ".join(f"{v:6.3f}" for v in prf(*c)))
        print(f"{name:20} {'all':5} " + " ".join(f"{v:6.3f}" for v in prf(*np.sum(list(per.values()), axis=0))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=D.data_root())
    ap.add_argument("--model", type=Path, default=DEFAULT_TREECROWN_MODEL)
    ap.add_argument("--only", choices=("neon", "naip"), help="one of the two checks")
    a = ap.parse_args()
    methods = {
        "detector RGB": (a.model, False),
        "detector RGB+CHM": (a.model, True),
        "watershed RGB": (COLOUR_RULE_MODEL, False),
        "watershed RGB+CHM": (COLOUR_RULE_MODEL, True),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if a.only != "naip":
            print_table(evaluate(a.data, methods, Path(tmp)), "NEON, IoU >= 0.4")
        if a.only != "neon":
            naip_res = evaluate_naip(a.data, a.model, Path(tmp))
            print_table({f"detector {k}": v for k, v in naip_res.items()},
                        f"NAIP {naip.VAL_CITY} by year, treetops within {POINT_MATCH_M:g} m")  # fmt: skip


if __name__ == "__main__":
    main()
