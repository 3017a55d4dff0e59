"""Does averaging flipped views (`--views flips`) help the shipped land-cover model? Side by side in one run.

Through the engine (the job an analyst runs), for `--views none` and `--views flips`: mIoU over the Dubai
validation tile (tile_2, never trained on: 9 images), building IoU on the Kampala z21 mosaic (out of domain,
never trained on), and the vegetation share inside / outside the tree boxes of the held-out NEON plots (SJER,
TEAK, SOAP), plus the seconds each setting took. Needs ../shared/data.

    .venv/bin/python bench/landcover_views.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.jobs.landcover import LandcoverParams, run_landcover  # noqa: E402
from engine.runtime import RuntimeOptions  # noqa: E402
from export.train import landcover_data as D  # noqa: E402
from export.train_landcover import confusion, iou_from_confusion  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
VEGETATION, BUILDING = 3, 0  # the shipped model's class ids (export/train/landcover_data.py CLASSES)


def write(path: Path, data: np.ndarray, transform, crs: str, nodata=None) -> Path:
    prof = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
            "dtype": data.dtype, "crs": crs, "transform": transform, "nodata": nodata}  # fmt: skip
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
    return path


def classes(raster: Path, out: Path, views: str) -> np.ndarray:
    res = run_landcover(LandcoverParams(inputs=[raster], out_dir=out, runtime=RuntimeOptions(views=views)))
    with rasterio.open(res.class_map) as ds:
        return ds.read(1)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="landseg-views-"))
    dubai = D.dubai_files(SHARED, "val")
    img, kmask, (x0, y0) = D.kampala_mosaic(SHARED, 21)
    kampala = write(work / "kampala.tif", img, D.web_mercator_transform(x0, y0, 21), "EPSG:3857", nodata=0)
    for views in ("none", "flips"):
        t0 = time.perf_counter()
        cm = np.zeros((5, 5), np.int64)
        for i, (jpg, png) in enumerate(dubai):
            raster = write(work / f"d{i}.tif", D._read_rgb(jpg), from_origin(5e5, 28e5, D.DUBAI_PIXEL_M,
                           D.DUBAI_PIXEL_M), "EPSG:32640")  # fmt: skip
            cm += confusion(classes(raster, work / f"{views}_d{i}", views), D.dubai_mask(png), 5)
        iou = iou_from_confusion(cm)
        pred = classes(kampala, work / f"{views}_k", views)
        ok = kmask != D.IGNORE
        p, t = (pred == BUILDING) & ok, (kmask == 1) & ok
        k_iou = (p & t).sum() / (p | t).sum()
        shares: dict[str, list[int]] = {}
        for site, rgb_path, xml, _chm in D.neon_plots(SHARED, "val"):
            rgb, _ = D.read_plot(rgb_path, None)
            raster = rgb_path
            if rgb_path.suffix != ".tif":  # SOAP: PNG without georeference, 0.1 m
                raster = write(work / f"{rgb_path.stem}.tif", rgb, from_origin(3e5, 41e5, 0.1, 0.1), "EPSG:32611")
            veg = classes(raster, work / f"{views}_{site}_{rgb_path.stem}", views) == VEGETATION
            inside = D.box_mask(rgb.shape[1:], D.voc_boxes(xml))
            a = shares.setdefault(site, [0, 0, 0, 0])
            a[0] += int((veg & inside).sum())
            a[1] += int(inside.sum())
            a[2] += int((veg & ~inside).sum())
            a[3] += int((~inside).sum())
        neon = ", ".join(f"{s} {a[0] / a[1]:.3f}/{a[2] / a[3]:.3f}" for s, a in sorted(shares.items()))
        print(f"views {views:5}: Dubai val mIoU {np.nanmean(iou):.3f} ({', '.join(f'{v:.3f}' for v in iou)}); "
              f"Kampala building IoU {k_iou:.3f}; NEON vegetation inside/outside {neon}; "
              f"{time.perf_counter() - t0:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
