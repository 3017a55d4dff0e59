"""Crop and nodata stability of land-cover maps (issue #29): the same pixels should get the same class whatever
the raster's extent. Prints, for --anchor crs (tiles and model grid on a lattice fixed in the CRS) and --anchor
raster (both from the raster's corner), side by side in one run:

- crop at the model's pixel size: a 0.5 m raster and the same raster without its first 100 rows and columns;
- crop, resampled: the urban sample mirrored to 4096² at 0.1 m and the same without its first 184 rows/columns;
- nodata beside data: the 0.5 m raster with its left half set to nodata, against the whole raster;

each as the share of pixels more than 64 model pixels from the crop's edges (or from the nodata) that agree.

    python bench/stability.py [--out out/stability]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.jobs.landcover import LandcoverParams, run_landcover  # noqa: E402

URBAN = ROOT / "data" / "sample" / "urban_river_rgb.tif"
MARGIN_MODEL_PX = 64


def mirrored(out: Path, size: int = 4096, pixel: float = 0.1) -> Path:
    """The urban sample mirrored into a size² raster at ``pixel`` m (real texture everywhere, no nodata)."""
    with rasterio.open(URBAN) as src:
        data = src.read()
        profile = src.profile
        t = src.transform
    valid = (data > 0).any(0)
    rows, cols = np.where(valid)
    core = data[:, rows.min() + 200 : rows.max() - 200, cols.min() + 200 : cols.max() - 200]
    tile = np.concatenate([core, core[:, :, ::-1]], 2)
    tile = np.concatenate([tile, tile[:, ::-1]], 1)
    reps = (-(-size // tile.shape[1]), -(-size // tile.shape[2]))
    # 0 is the nodata of the "left half nodata" case: no data pixel may hold it (the sample's corners are 0)
    big = np.maximum(np.tile(tile, (1, *reps))[:, :size, :size], 1)
    transform = rasterio.Affine(pixel, 0, round(t.c, 1), 0, -pixel, round(t.f, 1))
    profile.update(width=size, height=size, transform=transform, nodata=None, tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", photometric="RGB")  # fmt: skip
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(big)
    return out


def resampled(src_path: Path, out: Path, pixel: float) -> Path:
    with rasterio.open(src_path) as src:
        f = pixel / src.transform.a
        h, w = int(src.height / f), int(src.width / f)
        data = src.read(out_shape=(src.count, h, w), resampling=Resampling.average)
        profile = src.profile
        profile.update(width=w, height=h, transform=src.transform * rasterio.Affine.scale(f))
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


def cropped(src_path: Path, out: Path, offset: int, left_nodata: bool = False) -> Path:
    with rasterio.open(src_path) as src:
        win = Window(offset, offset, src.width - offset, src.height - offset)
        data = src.read(window=win)
        profile = src.profile
        profile.update(width=int(win.width), height=int(win.height), transform=src.window_transform(win))
    if left_nodata:
        data[:, :, : data.shape[2] // 2] = 0
        profile.update(nodata=0)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


def classes(path: Path, out: Path, anchor: str) -> np.ndarray:
    res = run_landcover(LandcoverParams(inputs=[path], out_dir=out, anchor=anchor, polygonize=False))
    with rasterio.open(res.class_map) as ds:
        return ds.read(1)


def agreement(a: np.ndarray, b: np.ndarray, margin: int, keep: np.ndarray | None = None) -> float:
    """Share of equal classes over pixels more than ``margin`` (input) pixels from b's edges (and, with keep,
    inside it)."""
    m = np.zeros(b.shape, bool)
    m[margin:-margin, margin:-margin] = True
    if keep is not None:
        m &= keep
    return float((a == b)[m].mean())


def cases(out: Path) -> list[tuple[str, Path, Path, int, int, bool]]:
    """(name, whole raster, its variant, offset in input px, margin in input px, left-half nodata)."""
    big = mirrored(out / "mirrored_0.1m.tif")
    half = resampled(big, out / "mirrored_0.5m.tif", 0.5)
    return [
        ("crop 100 px at 0.5 m", half, cropped(half, out / "crop_0.5m.tif", 100), 100, MARGIN_MODEL_PX, False),
        (
            "crop 184 px at 0.1 m (resampled)",
            big,
            cropped(big, out / "crop_0.1m.tif", 184),
            184,
            MARGIN_MODEL_PX * 5,
            False,
        ),  # fmt: skip
        (
            "left half nodata at 0.5 m",
            half,
            cropped(half, out / "nodata_0.5m.tif", 0, True),
            0,
            MARGIN_MODEL_PX,
            True,
        ),  # fmt: skip
    ]


def measure(out: Path, anchors=("crs", "raster")) -> dict[str, dict[str, float]]:
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, float]] = {}
    for name, whole, variant, offset, margin, nodata in cases(out):
        for anchor in anchors:
            a = classes(whole, out / f"whole_{anchor}_{whole.stem}", anchor)
            b = classes(variant, out / f"variant_{anchor}_{variant.stem}", anchor)
            a = a[offset:, offset:]
            keep = None
            if nodata:  # pixels more than the margin from any nodata pixel of the variant
                from scipy.ndimage import distance_transform_edt

                keep = distance_transform_edt(b != 255) > margin
            results.setdefault(name, {})[anchor] = agreement(a, b, margin, keep)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "stability")
    args = ap.parse_args()
    results = measure(args.out)
    print(f"{'case':38s} {'anchor crs':>11s} {'anchor raster':>14s}")
    for name, r in results.items():
        print(f"{name:38s} {r['crs']:11.4f} {r['raster']:14.4f}")


if __name__ == "__main__":
    main()
