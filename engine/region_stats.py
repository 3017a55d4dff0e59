"""Each region's pixel count, confidence sum and bounding box, strip by strip, by run-length labelling: while
GDAL traces the map (engine.gdal_trace), these find each of its polygons' mean confidence.

A strip's rows are cut into runs of one value; runs of one value that overlap in the next row are one region
(4-connected). Overlapping runs always meet at the start of one of them, so only the positions where a run starts
in either row are compared: a few passes over the pixels, whatever the number of values, then a graph of runs
(engine.seams.components). Regions that touch a strip's first or last row are joined across seams by
engine.seams.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from .seams import Part, Strip, components


def region_strip(
    value_path: Path, conf_path: Path, r0: int, r1: int, height: int, wanted: np.ndarray, min_pixels: float
) -> Strip:
    """The regions of rows r0..r1 (`wanted`: a lookup table, value -> asked for): those that can matter (big
    enough, or on a seam: they may still grow) as Parts with their statistics and box. Own dataset handles: GDAL's
    are not shared by threads."""
    with rasterio.open(value_path) as vds, rasterio.open(conf_path) as cds:
        win = Window(0, r0, vds.width, r1 - r0)
        values = vds.read(1, window=win)
        conf = cds.read(1, window=win)
    rows, width = values.shape
    starts = np.empty(values.shape, dtype=bool)
    starts[:, 0] = True
    np.not_equal(values[:, 1:], values[:, :-1], out=starts[:, 1:])
    flat = starts.ravel()
    first = np.flatnonzero(flat)  # runs, in raster order; every row starts one
    ends = np.append(first[1:], flat.size)
    value = values.ravel()[first]
    sums = np.add.reduceat(conf.ravel(), first, dtype=np.float64)  # each run's confidence sum
    run_row = first // width
    run_x0 = first - run_row * width

    def run_of(pixels: np.ndarray) -> np.ndarray:  # the run holding each of these (flat) pixels
        return np.searchsorted(first, pixels, side="right") - 1

    # Runs one above the other that overlap: they meet where one of them starts (the later start).
    at = np.flatnonzero(starts[1:] | starts[:-1])
    above, below = run_of(at), run_of(at + width)
    same = value[above] == value[below]
    n, region = components(len(first), above[same], below[same])
    count = np.bincount(region, weights=ends - first, minlength=n).astype(np.int64)
    conf_sum = np.bincount(region, weights=sums, minlength=n)
    region_value = np.zeros(n, dtype=np.int64)
    region_value[region] = value
    box = np.empty((4, n), dtype=np.int64)
    box[0], box[1], box[2], box[3] = rows, -1, width, -1
    np.minimum.at(box[0], region, run_row)
    np.maximum.at(box[1], region, run_row + 1)
    np.minimum.at(box[2], region, run_x0)
    np.maximum.at(box[3], region, run_x0 + (ends - first))
    asked = wanted[region_value]
    # Labels as engine.seams reads them: 1 + region, 0 for values not asked for.
    label = np.where(asked, np.arange(1, n + 1), 0)
    row = np.arange(width)
    top, last = label[region[run_of(row)]], label[region[run_of(row + (rows - 1) * width)]]
    touches_top = np.zeros(n + 1, dtype=bool)
    touches_bottom = np.zeros(n + 1, dtype=bool)
    if r0 > 0:
        touches_top[top] = True
    if r1 < height:
        touches_bottom[last] = True
    build = asked & ((count >= min_pixels) | touches_top[1:] | touches_bottom[1:])
    parts = [
        (i + 1, Part([], int(region_value[i]), float(conf_sum[i]), int(count[i]), bool(touches_bottom[i + 1]),
                     (int(box[0, i]) + r0, int(box[1, i]) + r0, int(box[2, i]), int(box[3, i]))))
        for i in np.flatnonzero(build)
    ]  # fmt: skip
    label_class = np.concatenate(([0], region_value)).astype(np.int32)
    return Strip(r0, r1, label_class, top, last, parts)
