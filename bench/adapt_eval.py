"""`engine adapt` measured where it must work (issue #28): labels on one part of an area, the map scored on
another part that was never labelled, through the engine (the adapted package run like any other).

Cases (check data: nothing here trains a shipped model):
  kampala  buildings of the western half of the Kampala z21 tiles, adapted at 0.15 m; building IoU on the east
  dubai    dense labels of the odd-numbered Dubai validation images (tile_2); mIoU on the even-numbered ones
  naip     NDVI labels (> 0.3 vegetation, < 0.05 "not vegetation") on the western half of Claremont's 2020 chips
           (the city neither shipped model trained on); vegetation IoU against NDVI (> 0.3 / < 0.1) on the east
  teak     new classes "trees" (CHM > 2 m, green) and "grass" (CHM < 0.5 m, green) on six TEAK plots, adapted at
           0.2 m (0.5 m: grass 0.01); IoU of each
           on the three others (TEAK_057, 059, 061), where the rule can call a pixel (teak_truth)
  neon     label-free only: vegetation share inside / outside the tree boxes of the held-out NEON plots

Usage: python bench/adapt_eval.py [--only kampala,dubai] [--minutes 5] [--set lr=3e-4 --set batchnorm=frozen]
       [--label-free] [--json out/adapt_eval/results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import fiona
import numpy as np
import rasterio
from rasterio.features import shapes, sieve

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.jobs.landcover import LandcoverParams, run_landcover  # noqa: E402
from export.adapt import AdaptParams, run_adapt  # noqa: E402
from export.train import landcover_data as D  # noqa: E402
from export.train import naip  # noqa: E402
from export.train.adapt_recipe import Recipe  # noqa: E402
from export.train.weak_labels import ndvi  # noqa: E402


@dataclass
class Case:
    name: str
    inputs: list[Path]  # the labelled rasters
    labels: Path
    field: str
    score: Callable[[Path | None], dict]  # model (None: the one the engine picks) -> figures
    headline: str  # the figure the target is about
    target: float
    scored: list[Path]  # the rasters scored (label-free adaptation reads these and the labelled ones)
    pixel_size: float | None = None
    match: str = "meaning"


def class_map(raster: Path, model: Path | None, work: Path) -> tuple[np.ndarray, dict[str, int]]:
    out = Path(tempfile.mkdtemp(dir=work))
    res = run_landcover(LandcoverParams([raster], out, model=model, polygonize=False))
    with rasterio.open(res.class_map) as ds:
        ids = {v: int(k.split("_")[1]) for k, v in ds.tags(1).items() if k.startswith("CLASS_")}
        return ds.read(1), ids


def write_labels(path: Path, field: str, crs, items) -> Path:
    """items: (geometry mapping, value) pairs."""
    schema = {"geometry": "Polygon", "properties": {field: "str"}}
    with fiona.open(path, "w", driver="GPKG", schema=schema, crs=crs) as sink:
        sink.writerecords({"geometry": g, "properties": {field: v}} for g, v in items)
    return path


def polygons(mask: np.ndarray, transform, names: dict[int, str], min_px: int = 0):
    """Polygons of a class mask (values in ``names``; others unlabelled), small specks sieved away."""
    m = sieve(mask, min_px) if min_px else mask
    keep = np.isin(m, list(names))
    for g, v in shapes(m, mask=keep, transform=transform):
        yield g, names[int(v)]


# --- cases --------------------------------------------------------------------------------------------------------


def kampala(data: Path, work: Path) -> Case:
    from affine import Affine

    img, mask, (x0, y0) = D.kampala_mosaic(data, 21)
    transform = D.web_mercator_transform(x0, y0, 21)
    xs = sorted(int(p.stem.split("-")[1]) for p in (data / "landcover/kampala_buildings/images").glob("*-21.png"))
    cut = (xs[len(xs) // 2] - x0) * 256
    west = D.write_rgb_geotiff(work / "west.tif", np.ascontiguousarray(img[:, :, :cut]), transform, "EPSG:3857", 0)
    east_t = transform * Affine.translation(cut, 0)
    east = D.write_rgb_geotiff(work / "east.tif", np.ascontiguousarray(img[:, :, cut:]), east_t, "EPSG:3857", 0)
    labels = write_labels(work / "kampala.gpkg", "label", "EPSG:3857",
                          polygons(mask[:, :cut], transform, {1: "building", 0: "background"}))  # fmt: skip

    def score(model):
        pred, ids = class_map(east, model, work)
        truth, ok = mask[:, cut:] == 1, mask[:, cut:] != D.IGNORE
        p = (pred == ids["building"]) & ok
        return {"building_iou": round(float((p & truth).sum() / (p | truth).sum()), 4)}

    return Case("kampala", [west], labels, "label", score, "building_iou", 0.70, [east], pixel_size=0.15)


def dubai(data: Path, work: Path) -> Case:
    from PIL import Image
    from rasterio.transform import from_origin

    files = D.dubai_files(data, "val")
    rasters, masks = [], []
    for i, (jpg, png) in enumerate(files):
        rgb = np.asarray(Image.open(jpg).convert("RGB")).transpose(2, 0, 1)
        t = from_origin(300000 + 5000 * i, 2790000, D.DUBAI_PIXEL_M, D.DUBAI_PIXEL_M)
        rasters.append((D.write_rgb_geotiff(work / f"dubai_{i}.tif", np.ascontiguousarray(rgb), t, "EPSG:32640"), t))
        masks.append(D.dubai_mask(png))
    # Half of the images, alternating (1, 3, 5, 7, 9 labelled; 2, 4, 6, 8 scored): images 1-3 hold no vegetation
    # or water at all, so a first-half split would score classes that no label showed.
    lab_i, score_i = list(range(0, len(files), 2)), list(range(1, len(files), 2))
    names = dict(enumerate(D.CLASSES))
    items = [it for i in lab_i for it in polygons(masks[i], rasters[i][1], names)]
    labels = write_labels(work / "dubai.gpkg", "class", "EPSG:32640", items)

    def score(model):
        inter, union = np.zeros(len(D.CLASSES)), np.zeros(len(D.CLASSES))
        for r, truth in ((rasters[i][0], masks[i]) for i in score_i):
            pred, ids = class_map(r, model, work)
            ok = truth != D.IGNORE
            for k, n in enumerate(D.CLASSES):
                p, t = (pred == ids[n]) & ok, truth == k
                inter[k] += (p & t).sum()
                union[k] += (p | t).sum()
        present = union > 0
        iou = {n: round(float(inter[k] / union[k]), 4) for k, n in enumerate(D.CLASSES) if present[k]}
        return {"miou": round(float(np.mean(list(iou.values()))), 4), **iou}

    return Case("dubai", [rasters[i][0] for i in lab_i], labels, "class", score, "miou", 0.75,
                [rasters[i][0] for i in score_i])  # fmt: skip


def naip_city(data: Path, work: Path) -> Case:
    chips = [c for c in naip.chips(data, "val") if c.year == 2020]
    east_of = {}
    for c in chips:
        with rasterio.open(c.path) as ds:
            east_of[c.path] = (ds.bounds.left + ds.bounds.right) / 2
    chips.sort(key=lambda c: east_of[c.path])
    half = len(chips) // 2
    west, east = chips[:half], chips[half:]
    items = []
    with rasterio.open(west[0].path) as ds:
        crs = ds.crs
    for c in west:
        with rasterio.open(c.path) as ds:
            img, t = ds.read(), ds.transform
        v = ndvi(img)
        lab = np.full(v.shape, 255, np.uint8)
        lab[v > 0.3] = 1
        lab[v < 0.05] = 0
        items += polygons(lab, t, {1: "vegetation", 0: "not vegetation"}, min_px=8)
    labels = write_labels(work / "naip.gpkg", "cover", crs, items)

    def score(model):
        inter = union = 0
        for c in east:
            pred, ids = class_map(c.path, model, work)
            truth = naip.vegetation_truth(naip.read_chip(c))
            ok = truth != 255
            p, t = (pred == ids["vegetation"]) & ok, (truth == 1) & ok
            inter += int((p & t).sum())
            union += int((p | t).sum())
        return {"vegetation_iou": round(inter / max(1, union), 4)}

    return Case(f"naip_{naip.VAL_CITY}", [c.path for c in west], labels, "cover", score, "vegetation_iou", 0.85,
                [c.path for c in east])  # fmt: skip


TEAK_SCORED = ("TEAK_057", "TEAK_059", "TEAK_061")


def teak_truth(rgb: np.ndarray, chm: np.ndarray) -> np.ndarray:
    """1 trees (CHM > 2 m and green), 2 grass (CHM < 0.5 m and green), 0 neither (not green and CHM < 0.5 m:
    bare ground, rock, dead wood), 255 what the rule cannot call (tall but not green: crowns in shadow; green
    between 0.5 and 2 m: shrubs). "Green": excess green > 0 averaged over 1 m (10 px), the CHM's resolution."""
    from scipy import ndimage

    green = ndimage.uniform_filter(D.excess_green(rgb), 10) > 0.0
    out = np.full(chm.shape, 255, np.uint8)
    out[~green & (chm < 0.5)] = 0
    out[green & (chm > 2.0)] = 1
    out[green & (chm < 0.5)] = 2
    return out


def teak(data: Path, work: Path) -> Case:
    base = data / "trees/neon_teak"
    plots = sorted((base / "rgb").glob("*.tif"))
    items, scored, truths = [], [], {}
    with rasterio.open(plots[0]) as ds:
        crs = ds.crs
    for tif in plots:
        rgb, chm = D.read_plot(tif, base / "chm" / tif.name)
        truth = teak_truth(rgb, chm)
        if tif.stem in TEAK_SCORED:
            scored.append(tif)
            truths[tif] = truth
            continue
        with rasterio.open(tif) as ds:
            t = ds.transform
        items += polygons(truth, t, {1: "trees", 2: "grass"}, min_px=20)
    labels = write_labels(work / "teak.gpkg", "kind", crs, items)

    def score(model):
        inter, union = np.zeros(3), np.zeros(3)
        for tif in scored:
            pred, ids = class_map(tif, model, work)
            truth = truths[tif]
            ok = truth != 255
            for k, n in ((1, "trees"), (2, "grass")):
                p = (pred == ids[n]) & ok if n in ids else np.zeros_like(ok)
                t = truth == k
                inter[k] += (p & t).sum()
                union[k] += (p | t).sum()
        return {"trees_iou": round(float(inter[1] / union[1]), 4), "grass_iou": round(float(inter[2] / union[2]), 4)}

    return Case("teak", [p for p in plots if p.stem not in TEAK_SCORED], labels, "kind", score, "grass_iou", 0.5,
                scored, pixel_size=0.2, match="names")  # fmt: skip


def neon(data: Path, work: Path) -> Case:
    """Label-free only: the held-out NEON plots (SJER both years, TEAK_057/061, SOAP)."""
    from bench.treecrowns_val import plot_raster

    plots = [(site, plot_raster(rgb, work), xml) for site, rgb, xml, _chm in D.neon_plots(data, "val")]

    def score(model):
        acc: dict[str, list[int]] = {}
        for site, tif, xml in plots:
            pred, ids = class_map(tif, model, work)
            inside = D.box_mask(pred.shape, D.voc_boxes(xml))
            veg = pred == ids["vegetation"]
            a = acc.setdefault(site, [0, 0, 0, 0])
            a[:] = np.add(a, [(veg & inside).sum(), inside.sum(), (veg & ~inside).sum(), (~inside).sum()]).tolist()
        return {f"{s}_inside": round(float(a[0] / a[1]), 4) for s, a in acc.items()} | {
            f"{s}_outside": round(float(a[2] / a[3]), 4) for s, a in acc.items()
        }

    return Case("neon", [], Path(), "", score, "SJER_inside", 0.0, [t for _s, t, _x in plots])


CASES = {"kampala": kampala, "dubai": dubai, "naip": naip_city, "teak": teak, "neon": neon}


def parse_set(items: list[str]) -> dict:
    out = {}
    types = {f.name: f.type for f in fields(Recipe)}
    for item in items:
        k, v = item.split("=", 1)
        if k not in types:
            raise SystemExit(f"--set {k}: not a recipe field ({', '.join(types)})")
        t = types[k]
        out[k] = v if "str" in str(t) else (v.lower() in ("1", "true", "yes") if "bool" in str(t) else float(v))
        if "int" in str(t) and "float" not in str(t):
            out[k] = int(float(v))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    ap.add_argument("--only", default="kampala,dubai,naip,teak")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], help="recipe field=value (export/train/adapt_recipe.py)")
    ap.add_argument("--label-free", action="store_true", help="label-free adaptation on each case's imagery")
    ap.add_argument("--tent-steps", type=int, default=0)
    ap.add_argument("--free-layers", default="decoder", choices=("decoder", "all"))
    ap.add_argument("--no-base", action="store_true", help="skip the base model's figures")
    ap.add_argument("--pixel-size", type=float, default=None, help="override the case's pixel size")
    ap.add_argument("--json", type=Path, default=ROOT / "out/adapt_eval/results.jsonl")
    ap.add_argument("--keep", type=Path, default=None, help="keep the adapted packages and pictures here")
    a = ap.parse_args()
    recipe = replace(Recipe(), **parse_set(a.set))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    print(f"recipe: {recipe}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.only.split(","):
            work = Path(tmp) / name
            work.mkdir()
            case = CASES[name](a.data, work)
            base = None if a.no_base else case.score(None)
            if base is not None:
                print(f"{case.name}: base {base}", flush=True)
            t0 = time.time()
            out = (a.keep / case.name) if a.keep else work / "adapted"
            if a.label_free:
                if case.name == "teak":  # its classes come from labels
                    continue
                p = AdaptParams(case.inputs + case.scored, out, minutes=a.minutes, seed=0, tent_steps=a.tent_steps,
                                free_layers=a.free_layers, label_free_experiment=True)  # fmt: skip
            else:
                if case.name == "neon":
                    continue
                pixel = a.pixel_size if a.pixel_size is not None else case.pixel_size
                p = AdaptParams(case.inputs, out, labels=case.labels, class_field=case.field, minutes=a.minutes,
                                max_steps=a.max_steps, pixel_size_m=pixel, match=case.match, recipe=recipe)  # fmt: skip
            res = run_adapt(p)
            took = time.time() - t0
            after = case.score(res.model)
            head = after.get(case.headline)
            verdict = "" if a.label_free else f" (target {case.target}: {'met' if head >= case.target else 'NOT met'})"
            print(f"{case.name}: adapted {after} in {took / 60:.1f} min, {res.steps} steps (best {res.best_step}), "
                  f"held-out before {res.holdout_iou_before} after {res.holdout_iou_after}, checks {res.checks}"
                  f"{verdict}", flush=True)  # fmt: skip
            row = {"case": case.name, "label_free": a.label_free and a.free_layers,
                   "tent_steps": a.tent_steps, "recipe": vars(recipe),
                   "minutes": a.minutes, "max_steps": a.max_steps, "pixel_size": p.pixel_size_m, "base": base,
                   "adapted": after, "steps": res.steps, "best_step": res.best_step, "took_min": round(took / 60, 2),
                   "holdout_before": res.holdout_iou_before, "holdout_after": res.holdout_iou_after,
                   "when": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
            with a.json.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
