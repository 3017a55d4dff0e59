"""The pictures in docs/: the demo map and the model card's examples (validation tile with its labels, a held-out
NEON plot, the Kampala check), each run through the engine with the default model and rendered beside the image.

Usage: python bench/landcover_pictures.py [--data ../shared/data] [--out docs]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from render_map import render, render_crowns  # noqa: E402
from treecrowns_val import NAIP_SAMPLE, naip_sample_truth  # noqa: E402

from engine.jobs.landcover import LandcoverParams, run_landcover  # noqa: E402
from engine.jobs.treecrowns import TreeCrownParams, run_treecrowns  # noqa: E402
from engine.model_package import DEFAULT_LANDCOVER_MODEL, RGBN_LANDCOVER_MODEL  # noqa: E402
from export.train import banepa, naip  # noqa: E402
from export.train import landcover_data as D  # noqa: E402


def _geotiff(path: Path, rgb: np.ndarray, pixel_m: float, crs: str) -> Path:
    return D.write_rgb_geotiff(path, rgb, from_origin(500000, 2800000, pixel_m, pixel_m), crs)


def _run(raster: Path, work: Path, prompts: list[str] | None = None, model: Path = DEFAULT_LANDCOVER_MODEL) -> Path:
    res = run_landcover(
        LandcoverParams(
            inputs=[raster], model=model, out_dir=work / f"{raster.stem}_{model.stem}", prompts=prompts or []
        )
    )
    print(f"{raster.name}: {res.resampling['message']}")
    return res.class_map


NAIP_PICTURES = ("claremont_2018_10", "claremont_2020_35", "claremont_2018_51")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=D.data_root())
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--only", choices=("all", "new-sources", "crowns"), default="all",
                    help="new-sources: NAIP and Banepa; crowns: the tree-crown pictures")  # fmt: skip
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if a.only == "new-sources":
            new_sources(a, work)
            return
        if a.only == "crowns":
            crowns(a, work)
            return
        demo = ROOT / "data/sample/urban_river_rgb.tif"
        cls = _run(demo, work, ["buildings", "trees", "river", "paved roads", "bare soil"])
        render(demo, cls, a.out / "demo_landcover.png", 560, "make demo: data/sample/urban_river_rgb.tif (0.1 m)")

        jpg = a.data / "landcover/dubai_aerial/tile_2/image_part_005.jpg"
        val = _geotiff(work / "dubai_val.tif", D._read_rgb(jpg), D.DUBAI_PIXEL_M, "EPSG:32640")
        title = "Dubai validation tile_2/image_part_005: image, model, labels"
        render(val, _run(val, work), a.out / "card_dubai_val.png", 400, title, D.dubai_mask(jpg.with_suffix(".png")))

        for site, rgb_path, _xml, _chm in D.neon_plots(a.data, "val"):
            if rgb_path.stem in ("SJER_010", "TEAK_057") or site == "SOAP":
                rgb, _ = D.read_plot(rgb_path, None)
                r = _geotiff(work / f"{rgb_path.stem}.tif", rgb, D.NEON_PIXEL_M, "EPSG:32611")
                render(
                    r,
                    _run(r, work),
                    a.out / f"card_neon_{rgb_path.stem}.png",
                    320,
                    f"held-out NEON plot {rgb_path.stem}",
                )

        crowns(a, work)
        new_sources(a, work)
        _kampala(a, work)


def crowns(a, work: Path) -> None:
    """Tree crowns: `make demo-crowns` on the bundled NEON plot, a held-out TEAK plot with its CHM, and `make
    demo-naip` on the bundled held-out NAIP chips with their annotated trees."""
    demo = ROOT / "data/sample/neon_sjer_rgb.tif"
    truth_csv = a.data / "neon_trees/2018_SJER_3_252000_4107000_image_477_truth.csv"
    # columns xmin, xmax, ymin, ymax -> x0, y0, x1, y1
    truth = np.loadtxt(truth_csv, delimiter=",", skiprows=1, usecols=(1, 3, 2, 4)) if truth_csv.exists() else None
    res = run_treecrowns(TreeCrownParams(image=demo, out_dir=work / "crowns_demo"))
    title = f"make demo-crowns: {res.n_crowns} crowns (yellow), treetops (red), annotated trees (cyan)"
    render_crowns(demo, res.crowns, a.out / "demo_treecrowns.png", 480, title, truth, res.treetops)
    _site, rgb_path, xml, chm_path = next(p for p in D.neon_plots(a.data, "val") if p[1].stem == "TEAK_057")
    res = run_treecrowns(TreeCrownParams(image=rgb_path, chm=chm_path, out_dir=work / "crowns_teak"))
    title = f"held-out TEAK_057 with its CHM: {res.n_crowns} crowns (yellow), annotated trees (cyan)"
    render_crowns(rgb_path, res.crowns, a.out / "card_crowns_TEAK_057.png", 480, title, D.voc_boxes(xml),
                  res.treetops)  # fmt: skip
    sample, points = NAIP_SAMPLE, naip_sample_truth(a.data)
    res = run_treecrowns(TreeCrownParams(image=sample, out_dir=work / "crowns_naip", name="naip_trees"))
    title = (f"make demo-naip (held-out claremont, 0.6 m, RGB + NIR): {res.n_crowns} treetops (red), crowns "
             f"(yellow), {len(points)} annotated trees (cyan)")  # fmt: skip
    render_crowns(sample, res.crowns, a.out / "demo_naip_trees.png", 768, title, None, res.treetops, points)


def new_sources(a, work: Path) -> None:
    # The held-out NAIP city: image, RGB model, NDVI reference (vegetation; the rest of the reference is "not
    # vegetation" shown as bare land, and the band between is black), then the RGB + NIR model.
    for name in NAIP_PICTURES:
        chip = a.data / "landcover/naip_california/images" / f"{name}.tif"
        ndvi_ref = naip.vegetation_truth(naip.read_chip(naip.Chip(chip, naip.VAL_CITY, 0, 0)))
        ref = np.where(ndvi_ref == 1, D.VEG, np.where(ndvi_ref == 0, D.BARE, 255)).astype(np.uint8)
        for model, what in ((DEFAULT_LANDCOVER_MODEL, "RGB model"), (RGBN_LANDCOVER_MODEL, "RGB + NIR model")):
            tag = "rgbn" if model == RGBN_LANDCOVER_MODEL else "rgb"
            title = f"NAIP {name} (held-out city, 0.6 m): image, {what}, NDVI vegetation (green) / not (tan)"
            render(chip, _run(chip, work, model=model), a.out / f"card_naip_{name}_{tag}.png", 300, title, ref)

    bval = banepa.load_banepa(a.data, "val")[0]
    b = _geotiff(work / "banepa_val.tif", bval.image, D.MODEL_PIXEL_M, "EPSG:32645")
    truth = np.where(bval.label == D.BUILDING, D.BUILDING, np.where(bval.label == 255, 255, D.BARE))
    title = "Banepa held-out column (0.13 m -> 0.5 m): image, model, OSM buildings (the rest shown as bare land)"
    render(b, _run(b, work), a.out / "card_banepa_val.png", 240, title, truth.astype(np.uint8))


def _kampala(a, work: Path) -> None:
    img, mask, (x0, y0) = D.kampala_mosaic(a.data, 21)
    # The z21 tiles form two patches: show the larger one.
    from scipy import ndimage

    labels, _n = ndimage.label(ndimage.binary_closing(mask != 255, iterations=8))
    sl = ndimage.find_objects(labels)[int(np.argmax(np.bincount(labels.ravel())[1:]))]
    img, mask = img[:, sl[0], sl[1]], mask[sl]
    x0, y0 = x0 + sl[1].start / 256, y0 + sl[0].start / 256
    k = D.write_rgb_geotiff(work / "kampala.tif", img, D.web_mercator_transform(x0, y0, 21), "EPSG:3857", 0)
    truth = np.where(mask == 1, D.BUILDING, np.where(mask == 0, D.BARE, 255)).astype(np.uint8)
    title = "Kampala z21 (0.075 m, check only): image, model, OSM buildings (the rest shown as bare land)"
    render(k, _run(k, work), a.out / "card_kampala.png", 400, title, truth)


if __name__ == "__main__":
    main()
