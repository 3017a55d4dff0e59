"""Render a class map beside its image, with a legend, to PNG (the pictures in docs/).

Usage: python bench/render_map.py IMAGE.tif CLASSES.tif OUT.png [--truth MASK.png] [--width 640] [--title T]
Colours and names come from the class map's own colour table and CLASS_<id> tags (written by the engine).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw
from rasterio.enums import Resampling


def _read(path: Path, width: int, resampling: Resampling) -> tuple[np.ndarray, rasterio.io.DatasetReader]:
    with rasterio.open(path) as ds:
        h = max(1, round(ds.height * width / ds.width))
        return ds.read(out_shape=(ds.count, h, width), resampling=resampling), ds


def render(image: Path, classes: Path, out: Path, width: int = 640, title: str = "", truth: np.ndarray | None = None):
    rgb, _ = _read(image, width, Resampling.average)
    cls, _ = _read(classes, width, Resampling.nearest)
    with rasterio.open(classes) as ds:
        cmap = ds.colormap(1)
        names = {int(k.split("_")[1]): v for k, v in ds.tags(1).items() if k.startswith("CLASS_")}
    lut = np.zeros((256, 3), np.uint8)
    for k, v in cmap.items():
        lut[k] = v[:3]
    lut[255] = (0, 0, 0)
    panels = [np.moveaxis(rgb[:3], 0, -1).astype(np.uint8), lut[cls[0]]]
    if truth is not None:
        t = np.asarray(Image.fromarray(truth).resize(panels[0].shape[1::-1], Image.NEAREST))
        panels.append(lut[t])
    h = panels[0].shape[0]
    legend_h = 22 * ((len(names) + 3) // 4) + (24 if title else 4)
    canvas = Image.new("RGB", (width * len(panels) + 8 * (len(panels) - 1), h + legend_h), "white")
    for i, p in enumerate(panels):
        canvas.paste(Image.fromarray(p), (i * (width + 8), 0))
    draw = ImageDraw.Draw(canvas)
    y = h + 4
    if title:
        draw.text((4, y), title, fill="black")
        y += 20
    for i, (k, name) in enumerate(sorted(names.items())):
        x, yy = 4 + (i % 4) * 160, y + (i // 4) * 22
        draw.rectangle((x, yy, x + 16, yy + 16), fill=tuple(int(c) for c in lut[k]), outline="black")
        draw.text((x + 22, yy + 3), name, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def render_crowns(
    image: Path,
    crowns: Path,
    out: Path,
    width: int = 640,
    title: str = "",
    truth_px=None,
    treetops: Path | None = None,
    truth_points=None,
) -> Path:
    """The image with the crowns' outlines (yellow), their treetops (red dots) and, when given, the annotated
    boxes or points (cyan, pixel coords)."""  # fmt: skip
    import fiona
    from shapely.geometry import shape

    with rasterio.open(image) as ds:
        scale = width / ds.width
        h = max(1, round(ds.height * scale))
        rgb = ds.read([1, 2, 3], out_shape=(3, h, width), resampling=Resampling.average)
        inv = ~ds.transform
    canvas = Image.new("RGB", (width, h + (24 if title else 0)), "white")
    canvas.paste(Image.fromarray(np.moveaxis(rgb, 0, -1).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for x0, y0, x1, y1 in truth_px if truth_px is not None else []:
        draw.rectangle([x0 * scale, y0 * scale, x1 * scale, y1 * scale], outline=(0, 255, 255), width=1)
    for x, y in truth_points if truth_points is not None else []:
        draw.ellipse([x * scale - 4, y * scale - 4, x * scale + 4, y * scale + 4], outline=(0, 255, 255), width=2)
    with fiona.open(crowns) as layer:
        for f in layer:
            ring = shape(f.geometry).exterior.coords
            draw.line([tuple(np.multiply(inv * xy, scale)) for xy in ring], fill=(255, 230, 0), width=2)
    if treetops is not None:
        with fiona.open(treetops) as layer:
            for f in layer:
                x, y = np.multiply(inv * f.geometry.coordinates, scale)
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(255, 40, 40))
    if title:
        draw.text((4, h + 5), title, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", type=Path)
    ap.add_argument("classes", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--truth", type=Path, help="a class-id mask (PNG) on the image's grid, shown as a third panel")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    truth = np.asarray(Image.open(a.truth)) if a.truth else None
    print(render(a.image, a.classes, a.out, a.width, a.title, truth))


if __name__ == "__main__":
    main()
