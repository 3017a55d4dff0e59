"""Writing change maps: transition codes and joint confidence strip by strip (post-classification), or the
direct model's change probability; the class filter and the transition matrix."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from ..errors import InputError
from ..outputs import geotiff_profile
from ..predict import predict_blocks
from ..raster_input import Grid

CHANGE_NODATA = 65535


def open_code_map(map_path: Path, grid: Grid, block: int):
    """The change raster opened for writing: uint16 transition codes, CHANGE_NODATA outside both dates."""
    prof = geotiff_profile(grid, "uint16", CHANGE_NODATA, block)
    prof["predictor"] = 2
    code = rasterio.open(map_path, "w", **prof)
    code.set_band_description(1, "change code: 0 no change, 1 + from*K + to")
    return code


def open_change_outputs(map_path: Path, conf_path: Path, grid: Grid, block: int):
    code = open_code_map(map_path, grid, block)
    return code, rasterio.open(conf_path, "w", **geotiff_profile(grid, "float32", -1.0, block))


def class_filter(names: list[str], classes) -> set[int] | None:
    if not names:
        return None
    by_name = {c.name.lower(): c.id for c in classes}
    unknown = [n for n in names if n.strip().lower() not in by_name]
    if unknown:
        raise InputError(
            f"--classes: {', '.join(repr(n) for n in unknown)} not among the model's classes "
            f"({', '.join(c.name for c in classes)})"
        )
    return {by_name[n.strip().lower()] for n in names}


def combine(
    before,
    after,
    map_path: Path,
    conf_path: Path,
    grid: Grid,
    k: int,
    block: int,
    wanted: set[int] | None = None,
    min_confidence: float = 0.0,
) -> np.ndarray:
    """Transition codes and joint confidence, strip by strip; returns the k x k pixel-count matrix.

    A pixel is change where the classes differ, the joint confidence reaches ``min_confidence`` and (with a
    class filter) the before or the after class is wanted. The matrix's diagonal counts unchanged pixels, its
    off-diagonal the reported changes; changes that were not reported (filtered, unsure) are counted nowhere."""
    keep = np.zeros(k, bool)
    keep[list(wanted) if wanted is not None else slice(None)] = True
    counts = np.zeros((k, k), dtype=np.int64)
    code_ds, conf_ds = open_change_outputs(map_path, conf_path, grid, block)
    with (
        rasterio.open(before[0]) as cb,
        rasterio.open(before[1]) as fb,
        rasterio.open(after[0]) as ca,
        rasterio.open(after[1]) as fa,
        code_ds,
        conf_ds,
    ):
        for r0 in range(0, grid.height, block):
            win = Window(0, r0, grid.width, min(block, grid.height - r0))
            a, b = cb.read(1, window=win).astype(np.int64), ca.read(1, window=win).astype(np.int64)
            valid = (a < k) & (b < k)
            conf = fb.read(1, window=win) * fa.read(1, window=win)
            a_, b_ = np.where(valid, a, 0), np.where(valid, b, 0)
            changed = (a != b) & valid & (conf >= min_confidence) & (keep[a_] | keep[b_])
            code = np.where(changed, 1 + a * k + b, 0)
            code[~valid] = CHANGE_NODATA
            conf[~valid] = -1.0
            code_ds.write(code.astype(np.uint16), 1, window=win)
            conf_ds.write(conf.astype(np.float32), 1, window=win)
            counted = valid & ((a == b) | changed)
            counts += np.bincount((a * k + b)[counted], minlength=k * k).reshape(k, k)
    return counts


def write_direct(paired, runtime, meta, tiles, params, map_path, conf_path, grid, progress, cancelled) -> list[int]:
    code_ds, conf_ds = open_change_outputs(map_path, conf_path, grid, tiles.rows.stride)
    change_idx = next((c.id for c in meta.classes if c.name.lower() == "change"), len(meta.classes) - 1)
    counts = [0, 0]
    with code_ds, conf_ds:
        for b in predict_blocks(paired, runtime.run, meta, tiles, params.batch, progress, cancelled):
            p = b.probs[change_idx]
            code = (p > params.threshold).astype(np.uint16)
            conf = np.where(code == 1, p, 1 - p).astype(np.float32)
            code[~b.valid] = CHANGE_NODATA
            conf[~b.valid] = -1.0
            h, w = b.valid.shape
            win = Window(b.col, b.row, w, h)
            code_ds.write(code, 1, window=win)
            conf_ds.write(conf, 1, window=win)
            counts[0] += int(((code == 0) & b.valid).sum())
            counts[1] += int((code == 1).sum())
    return counts


def label_changes(direct_map: Path, before: Path, after: Path, map_path: Path, grid: Grid, k: int, block: int):
    """The direct model's change pixels (code 1) recoded 1 + from * K + to with the two dates' class maps, strip by
    strip; returns the k x k pixel counts of the changes (unchanged pixels are counted nowhere). A change pixel
    that either date's class map left without a class (its nodata) becomes nodata: it cannot be named."""
    counts = np.zeros((k, k), dtype=np.int64)
    with (
        rasterio.open(direct_map) as dm,
        rasterio.open(before) as cb,
        rasterio.open(after) as ca,
        open_code_map(map_path, grid, block) as out,
    ):
        for r0 in range(0, grid.height, block):
            win = Window(0, r0, grid.width, min(block, grid.height - r0))
            d = dm.read(1, window=win)
            a, b = cb.read(1, window=win).astype(np.int64), ca.read(1, window=win).astype(np.int64)
            change = (d == 1) & (a < k) & (b < k)
            code = np.where(change, 1 + a * k + b, d).astype(np.int64)
            code[(d == 1) & ~change] = CHANGE_NODATA
            out.write(code.astype(np.uint16), 1, window=win)
            counts += np.bincount((a * k + b)[change], minlength=k * k).reshape(k, k)
    return counts


def write_matrix(path: Path, names: list[str], transitions: dict[str, dict[str, float]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["from \\ to (m2)", *names])
        for a in names:
            w.writerow([a, *(transitions[a][b] for b in names)])
