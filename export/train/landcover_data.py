"""Training data for the land-cover model: the Dubai labels plus weak labels from the tree data, all brought to the
model's pixel size, and the augmentation that is meant to make the model work outside Dubai.

Label values: the 5 classes (0 building, 1 road, 2 bare land, 3 vegetation, 4 water), IGNORE, and NOT_VEG, a
partial label ("anything but vegetation": the loss pushes vegetation's probability down and says nothing about
the other classes). Weak labels carry negatives as well as positives, so "everything is vegetation" is no shortcut.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CLASSES = ("building", "road", "bare land", "vegetation", "water")
BUILDING, ROAD, BARE, VEG, WATER = range(5)
IGNORE, NOT_VEG, NOT_BUILDING = 255, 6, 7  # partial labels: "anything but vegetation / building"
MODEL_PIXEL_M = 0.5
# The Dubai imagery has no georeference and its source publishes no pixel size; objects of known size (villa
# plots ~20 m: ~25 px; streets ~8 m: ~10 px) put it at 0.7-0.8 m. It is trained at its native resolution and
# declared 0.5 m: upsampling it 1.6x to 0.5 m blurred it and lowered the Dubai validation mIoU (0.596 -> 0.617
# with native pixels, recipe otherwise equal; MODEL_CARD.md), and the 0.6-1.6x scale jitter covers the gap.
DUBAI_PIXEL_M = 0.5
NEON_PIXEL_M = 0.1
DUBAI_COLOURS = {  # the real mask colours (../shared/data/landcover/SOURCE); black pixels are unlabelled too
    (60, 16, 152): BUILDING,
    (110, 193, 228): ROAD,
    (132, 41, 246): BARE,
    (254, 221, 58): VEG,
    (226, 169, 41): WATER,
    (155, 155, 155): IGNORE,
    (0, 0, 0): IGNORE,
}
# Whole tiles held out (parts of one tile look alike), named in MODEL_CARD.md. tile_2 holds every class
# (building 12 %, road 13 %, bare land 60 %, vegetation 6 %, water 7 %).
DUBAI_VAL_TILES = ("tile_2",)
SJER_VAL_EVERY = 4  # every 4th SJER plot id (sorted), both years, is held out
TEAK_VAL = ("TEAK_057", "TEAK_061")
BOX_SHRINK = 1.0  # crown label: the whole box (1.0) or its inscribed ellipse scaled by this
# SOAP is held out whole (a site the model never sees); YELL and the OAM-TCD tile only train.


@dataclass
class Sample:
    name: str
    image: np.ndarray  # (3, H, W) uint8 at the model's pixel size (before scale jitter)
    label: np.ndarray  # (H, W) uint8
    weight: float = 1.0  # how often it is drawn, relative to its pixel count


def resize(image: np.ndarray, label: np.ndarray | None, factor: float):
    """Resample by ``factor`` (output/input size): image with antialiased bilinear, label with nearest."""
    h, w = image.shape[-2:]
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    t = torch.from_numpy(image).float()[None]
    img = F.interpolate(t, size=size, mode="bilinear", antialias=factor < 1, align_corners=False)[0]
    img = img.round().clamp(0, 255).byte().numpy()
    if label is None:
        return img, None
    lab = F.interpolate(torch.from_numpy(label)[None, None].float(), size=size, mode="nearest")[0, 0]
    return img, lab.byte().numpy()


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1).copy()


def _read_tif(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read()


def dubai_mask(path: Path) -> np.ndarray:
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int32)
    key = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    out = np.full(key.shape, IGNORE, np.uint8)
    for (r, g, b), cls in DUBAI_COLOURS.items():
        out[key == ((r << 16) | (g << 8) | b)] = cls
    return out


def dubai_files(root: Path, split: str) -> list[tuple[Path, Path]]:
    out = []
    for tile in sorted(p for p in (root / "landcover/dubai_aerial").iterdir() if p.is_dir()):
        if (tile.name in DUBAI_VAL_TILES) != (split == "val"):
            continue
        for jpg in sorted(tile.glob("*.jpg")):
            out.append((jpg, jpg.with_suffix(".png")))
    return out


def load_dubai(root: Path, split: str, limit: int | None = None) -> list[Sample]:
    samples = []
    for jpg, png in dubai_files(root, split)[:limit]:
        img, lab = resize(_read_rgb(jpg), dubai_mask(png), DUBAI_PIXEL_M / MODEL_PIXEL_M)
        samples.append(Sample(f"dubai/{jpg.parent.name}/{jpg.stem}", img, lab))
    return samples


def voc_boxes(xml: Path) -> np.ndarray:
    """(n, 4) xmin, ymin, xmax, ymax in pixels."""
    boxes = []
    for obj in ET.parse(xml).getroot().iter("object"):
        bb = obj.find("bndbox")
        boxes.append([float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")])
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def box_mask(shape: tuple[int, int], boxes: np.ndarray, shrink: float = 1.0) -> np.ndarray:
    """Pixels inside the boxes; shrink < 1 keeps the inscribed ellipse scaled by ``shrink`` (a crown is round,
    its box corners are ground)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    m = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        if shrink >= 1:
            m[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
            continue
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        rx, ry = max(0.5, (x1 - x0) / 2 * shrink), max(0.5, (y1 - y0) / 2 * shrink)
        m |= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    return m


def excess_green(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[i].astype(np.float32) for i in range(3))
    s = r + g + b + 1e-3
    return (2 * g - r - b) / s


def tree_plot_label(
    rgb: np.ndarray, boxes: np.ndarray, chm: np.ndarray | None = None, shrink: float = BOX_SHRINK
) -> np.ndarray:
    """Weak labels for a tree plot at its own pixel size: crowns (inner ellipse of each box, or CHM > 2 m) are
    vegetation; ground away from every box that is not green (and under 0.5 m where a CHM exists) is bare land;
    the rest (box edges, green ground, unboxed shrubs) is ignored."""
    shape = rgb.shape[1:]
    lab = np.full(shape, IGNORE, np.uint8)
    near = box_mask(shape, np.c_[boxes[:, :2] - 8, boxes[:, 2:] + 8]) if len(boxes) else np.zeros(shape, bool)
    not_green = excess_green(rgb) < 0.03
    ground = ~near & not_green
    if chm is not None:
        ground &= chm < 0.5
        lab[(chm > 2.0) & ~not_green] = VEG
    lab[ground] = BARE
    lab[box_mask(shape, boxes, shrink=shrink)] = VEG
    return lab


def sjer_split(root: Path) -> tuple[list[str], list[str]]:
    ids = sorted({p.stem for p in (root / "trees/neon_sjer").glob("*/*.xml")})
    val = ids[::SJER_VAL_EVERY]
    return [i for i in ids if i not in val], val


def neon_plots(root: Path, split: str) -> list[tuple[str, Path, Path, Path | None]]:
    """(site, rgb, boxes xml, chm or None) of the tree plots in a split (SOAP: val only)."""
    out = []
    train_ids, val_ids = sjer_split(root)
    ids = set(val_ids if split == "val" else train_ids)
    for tif in sorted((root / "trees/neon_sjer").glob("*/*.tif")):
        if tif.stem in ids and tif.with_suffix(".xml").exists():
            out.append(("SJER", tif, tif.with_suffix(".xml"), None))
    teak = root / "trees/neon_teak"
    for tif in sorted((teak / "rgb").glob("*.tif")):
        if (tif.stem in TEAK_VAL) == (split == "val"):
            out.append(("TEAK", tif, teak / "annotations" / f"{tif.stem}.xml", teak / "chm" / f"{tif.stem}.tif"))
    if split == "val":
        soap = root / "trees/other/SOAP_061.png"
        out.append(("SOAP", soap, soap.with_suffix(".xml"), None))
    else:
        yell = next(iter(sorted((root / "trees/other").glob("*YELL*.png"))))
        out.append(("YELL", yell, yell.with_suffix(".xml"), None))
    return out


def read_plot(rgb_path: Path, chm_path: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    rgb = _read_tif(rgb_path)[:3] if rgb_path.suffix == ".tif" else _read_rgb(rgb_path)
    chm = None
    if chm_path is not None:
        c = _read_tif(chm_path)[0].astype(np.float32)
        # The CHM (1 m) covers the plot (0.1 m): nearest upsampling onto the RGB grid.
        chm = F.interpolate(torch.from_numpy(c)[None, None], size=rgb.shape[1:], mode="nearest")[0, 0].numpy()
    return rgb, chm


def load_tree_plots(root: Path, limit: int | None = None, shrink: float = BOX_SHRINK) -> list[Sample]:
    samples = []
    for site, rgb_path, xml, chm_path in neon_plots(root, "train")[:limit]:
        rgb, chm = read_plot(rgb_path, chm_path)
        lab = tree_plot_label(rgb, voc_boxes(xml), chm, shrink)
        img, lab = resize(rgb, lab, NEON_PIXEL_M / MODEL_PIXEL_M)
        samples.append(Sample(f"{site}/{rgb_path.parent.name}/{rgb_path.stem}", img, lab))
    return samples


def load_oam_tcd(root: Path) -> list[Sample]:
    """The OAM-TCD tile: its canopy mask is vegetation; outside it, pixels that are not green are "not
    vegetation" (roofs, roads, rails: we do not guess which); white no-data is ignored."""
    base = root / "trees/other/5b3622402b6a08001185f8d8_10_00004"
    from PIL import Image

    rgb = _read_tif(base.with_suffix(".tif"))[:3]
    canopy = np.asarray(Image.open(base.with_suffix(".png"))) > 0
    lab = np.full(canopy.shape, IGNORE, np.uint8)
    lab[~canopy & (excess_green(rgb) < 0.02)] = NOT_VEG
    lab[canopy] = VEG
    lab[(rgb > 250).all(0)] = IGNORE
    img, lab = resize(rgb, lab, NEON_PIXEL_M / MODEL_PIXEL_M)
    return [Sample("oam-tcd/" + base.name, img, lab)]


# --- evaluation data -------------------------------------------------------------------------------------------


def kampala_mosaic(root: Path, zoom: int = 21) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The Kampala tiles of one zoom level stitched into one image: (3, H, W) uint8, (H, W) mask with 0/1 and
    IGNORE where no tile is, and the (x, y) of the top-left tile (web-mercator tile indices)."""
    from PIL import Image

    base = root / "landcover/kampala_buildings"
    tiles = {}
    for p in sorted((base / "images").glob(f"OAM-*-{zoom}.png")):
        x, y, _z = map(int, re.findall(r"\d+", p.stem))
        tiles[(x, y)] = p
    xs, ys = [k[0] for k in tiles], [k[1] for k in tiles]
    x0, y0 = min(xs), min(ys)
    W, H = (max(xs) - x0 + 1) * 256, (max(ys) - y0 + 1) * 256
    img = np.zeros((3, H, W), np.uint8)
    mask = np.full((H, W), IGNORE, np.uint8)
    for (x, y), p in tiles.items():
        r, c = (y - y0) * 256, (x - x0) * 256
        img[:, r : r + 256, c : c + 256] = _read_rgb(p)
        mask[r : r + 256, c : c + 256] = np.asarray(Image.open(base / "masks" / p.name))
    return img, mask, (x0, y0)


def web_mercator_transform(x0: float, y0: float, zoom: int, tile_px: int = 256):
    """The EPSG:3857 transform of a mosaic whose top-left tile has web-mercator tile indices (x0, y0)."""
    from rasterio.transform import from_origin

    origin = 20037508.342789244  # half the web-mercator world width, m
    tile_m = 2 * origin / 2**zoom
    return from_origin(x0 * tile_m - origin, origin - y0 * tile_m, tile_m / tile_px, tile_m / tile_px)


def write_rgb_geotiff(path: Path, rgb: np.ndarray, transform, crs: str, nodata: float | None = None) -> Path:
    """An 8-bit RGB GeoTIFF, for imagery that comes without georeference (PNG/JPEG plots, tiles, pairs)."""
    import rasterio

    prof = {"driver": "GTiff", "width": rgb.shape[2], "height": rgb.shape[1], "count": 3, "dtype": "uint8"}
    with rasterio.open(path, "w", crs=crs, transform=transform, nodata=nodata, **prof) as ds:
        ds.write(rgb)
    return path


def web_mercator_pixel_m(zoom: int, lat_deg: float = 0.35) -> float:
    """Ground size of one pixel of a 256-px web-mercator tile (Kampala is at 0.35 N)."""
    return 2 * np.pi * 6378137.0 * np.cos(np.radians(lat_deg)) / (256 * 2**zoom)


def data_root(default: str | Path | None = None) -> Path:
    """../shared/data beside the checkout unless told otherwise."""
    if default:
        return Path(default)
    here = Path(__file__).resolve().parents[2]
    for cand in (here.parent / "shared/data", here / "../shared/data"):
        if cand.exists():
            return cand.resolve()
    return here.parent / "shared/data"
