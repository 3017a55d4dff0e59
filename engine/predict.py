"""Streaming tiled prediction: batches of tiles through a runtime, blended, yielded block by block.

State kept between tiles is bounded by the tile size and the raster *width*: one tile's accumulator, the
right-hand overlap of the previous tile, and the bottom overlap (O rows x width) carried to the next tile row.
Nothing grows with the number of rows, and outputs go to disk as soon as a block is final.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .errors import Cancelled, ModelError
from .model_package import ModelMeta
from .raster_input import AlignedInputs
from .runtime import CALIBRATION_TILES
from .runtime.precision import VALID_KEY
from .tiling import TileGrid

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


@dataclass
class Block:
    """A final piece of the output: rows [row, row+h), cols [col, col+w)."""

    row: int
    col: int
    probs: np.ndarray  # (classes, h, w) float32, blended probabilities
    valid: np.ndarray  # (h, w) bool


def softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """In place (x must be float32 and writable): this runs on every tile, allocations show."""
    np.subtract(x, x.max(axis=axis, keepdims=True), out=x)
    np.exp(x, out=x)
    x *= np.reciprocal(x.sum(axis=axis, keepdims=True))
    return x


def _in_background(items: Iterator, ahead: int, name: str) -> Iterator:
    """Run a generator in a thread, up to ``ahead`` items in front of its consumer. The stages are reading
    (GDAL), inference (onnxruntime) and blending (numpy): each releases the GIL for its heavy part, so the
    model is never kept waiting by the blending and writing of the previous batch. Errors reach the consumer."""
    q: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # hand errors to the consumer
            q.put(exc)
        finally:
            getattr(items, "close", lambda: None)()  # an upstream stage in its own thread stops too

    t = threading.Thread(target=work, name=name, daemon=True)
    t.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)


def _batches(grid: TileGrid, inputs: AlignedInputs, batch: int) -> Iterator:
    """Batches of tiles: (tile positions and valid masks, feeds stacked per model input for the tiles with a
    valid pixel, or None when none has one)."""
    buf: list = []
    has_data = getattr(inputs, "may_have_data", None)
    for i, j, window in grid.tiles():
        # No data anywhere in the window (a mosaic's empty corners): neither read nor inferred.
        if has_data is None or has_data(window):
            feeds, valid = inputs.read(window)
        else:
            feeds, valid = None, np.zeros((int(window.height), int(window.width)), bool)
        buf.append((i, j, feeds if valid.any() else None, valid))
        if len(buf) == batch:
            yield _stacked(buf)
            buf = []
    if buf:
        yield _stacked(buf)


def _stacked(buf: list) -> tuple[list, dict[str, np.ndarray] | None]:
    # Stacked here, off the inference thread: (live tiles, bands, T, T) per model input; the tiles without a
    # valid pixel are left out (a sparse mosaic's thousands of empty tiles cost no copies).
    live = [b[2] for b in buf if b[2] is not None]
    feeds = {name: np.stack([f[name] for f in live]) for name in live[0]} if live else None
    return [(i, j, valid) for i, j, _f, valid in buf], feeds


def _inferred(batches: Iterator, run, meta: ModelMeta, T: int) -> Iterator:
    """(tiles, per-tile class probabilities) for each batch. Tiles without a valid pixel are not inferred: their
    share of the blend is zero, and every pixel they share with a neighbour is invalid too (it is in their
    window), so no valid pixel changes."""
    n_cls = len(meta.classes)
    try:
        yield from _infer_each(batches, run, meta, T, n_cls)
    finally:
        batches.close()  # the reader thread stops here, not when the interpreter shuts down mid-read


def _infer_each(batches: Iterator, run, meta: ModelMeta, T: int, n_cls: int) -> Iterator:
    for group, feeds in batches:
        live = [k for k, (_i, _j, valid) in enumerate(group) if valid.any()]
        probs = _probabilities(run, feeds, len(live), meta, T, n_cls) if live else None
        if len(live) == len(group):  # every tile inferred (the usual case): blended in the model's own output
            yield group, probs
            continue
        # Tiles without a valid pixel get None: the blend skips them (every pixel of theirs is invalid)
        out: list = [None] * len(group)
        for k, p in zip(live, probs if live else [], strict=True):
            out[k] = p
        yield group, out


def _probabilities(run, feeds: dict, n_live: int, meta: ModelMeta, T: int, n_cls: int) -> np.ndarray:
    """The model's class probabilities for the live tiles of a batch (``feeds`` holds only them), in the
    runtime's own output array (Runtime.run: ours to change)."""
    got = np.require(run(feeds), dtype=np.float32, requirements=["W", "C"])
    if got.ndim != 4 or got.shape[0] != n_live or got.shape[2:] != (T, T):
        raise ModelError(f"model output has shape {tuple(got.shape)}; expected (batch={n_live}, classes, {T}, {T})")
    if got.shape[1] != n_cls:
        raise ModelError(f"model output has {got.shape[1]} channels but its metadata lists {n_cls} classes")
    probs = softmax(got) if meta.output_kind == "logits" else got
    # A NaN or infinite logit makes every class of its pixel NaN after the softmax: channel 0 tells (a fifth of
    # the work of checking all). Probabilities from the model itself are checked whole.
    probe = probs[:, 0] if meta.output_kind == "logits" else probs.sum(1)
    if not np.isfinite(probe).all():
        bad = int((~np.isfinite(probe)).sum())
        raise ModelError(
            f"model '{meta.name}' returned NaN or infinite values for {bad} pixels of a batch of {n_live} tiles: "
            "its classes there would be made up (a broken model, or input far outside the values it was made for)"
        )
    return probs


def fixed_batch(run: Callable[[dict[str, np.ndarray]], np.ndarray], n: int, names: set[str]):
    """``run`` for a graph that takes batches of exactly ``n`` tiles: a shorter batch (the raster's last) is
    padded with zero tiles and the output cut back. ``names``: the image inputs (a text input is no batch)."""

    def padded(feeds: dict[str, np.ndarray]) -> np.ndarray:
        k = len(feeds[next(iter(names))])
        if k == n:
            return run(feeds)
        if k > n:  # more tiles than the graph takes: in parts of n
            parts = [{**feeds, **{m: feeds[m][i : i + n] for m in names}} for i in range(0, k, n)]
            return np.concatenate([padded(part) for part in parts])
        full = {m: np.concatenate([f, np.zeros((n - k, *f.shape[1:]), f.dtype)]) if m in names else f
                for m, f in feeds.items()}  # fmt: skip
        return run(full)[:k]

    return padded


def predict_blocks(
    inputs: AlignedInputs,
    run: Callable[[dict[str, np.ndarray]], np.ndarray],
    meta: ModelMeta,
    grid: TileGrid,
    batch: int = 4,
    progress: ProgressFn | None = None,
    cancelled: CancelFn | None = None,
) -> Iterator[Block]:
    n_cls = len(meta.classes)
    T = grid.tile
    batches = _in_background(_batches(grid, inputs, max(1, batch)), 2, "landseg-reader")
    inferred = _in_background(_inferred(batches, run, meta, T), 1, "landseg-inference")
    try:
        yield from _blend(inferred, grid, n_cls, progress, cancelled)
    finally:
        # Both threads are stopped before an error leaves this function: a thread still reading a raster
        # when the interpreter exits can crash it.
        inferred.close()
        batches.close()


def _blend(inferred: Iterator, grid: TileGrid, n_cls: int, progress, cancelled) -> Iterator[Block]:
    rows, cols = grid.rows, grid.cols
    T, S, O = grid.tile, rows.stride, grid.overlap  # noqa: E741 (tile, stride, overlap as in the docs)
    wsum_r = rows.weight_sum().astype(np.float32)
    wsum_c = cols.weight_sum().astype(np.float32)
    # Bottom overlap of the current tile row, waiting for the next one (width of the padded tile grid).
    carry = np.zeros((n_cls, O, cols.start(cols.n - 1) + T), dtype=np.float32)
    pending = np.zeros((n_cls, T, O), dtype=np.float32)  # right overlap of the previous tile in this row
    done, total = 0, len(grid)
    # Tiles differ in their weights only by being first/middle/last along each axis: 9 arrays at most.
    cache: dict[tuple[int, int], np.ndarray] = {}

    def weights(i: int, j: int) -> np.ndarray:
        key = (min(i, 1) + (i == rows.n - 1) * 2, min(j, 1) + (j == cols.n - 1) * 2)
        if key not in cache:
            cache[key] = grid.weights(i, j)
        return cache[key]

    def on_raster(r0: int, c0: int, probs: np.ndarray, valid: np.ndarray) -> Block | None:
        """The block at shifted (r0, c0) in raster coordinates: the first row/column of blocks loses the anchor
        offset's padding (None when nothing of it is on the raster)."""
        dr, dc = max(0, grid.row_offset - r0), max(0, grid.col_offset - c0)
        if dr >= valid.shape[0] or dc >= valid.shape[1]:
            return None
        return Block(r0 + dr - grid.row_offset, c0 + dc - grid.col_offset, probs[:, dr:, dc:], valid[dr:, dc:])

    for group, out in inferred:
        if cancelled and cancelled():
            raise Cancelled("cancelled by the user")
        for (i, j, valid), probs in zip(group, out, strict=False):
            if probs is None:  # no valid pixel in the tile's window: neither its blocks nor its overlaps count
                (r0, r1), (c0, c1) = rows.block(i), cols.block(j)
                # zeros by calloc: pages untouched until someone writes them
                empty = np.zeros((n_cls, r1 - r0, c1 - c0), np.float32), np.zeros((r1 - r0, c1 - c0), bool)
                if (b := on_raster(r0, c0, *empty)) is not None:
                    yield b
                continue
            acc = probs  # a view into `out`, which we own: weight it in place
            acc *= weights(i, j)
            if j > 0 and O:
                acc[:, :, :O] += pending
            if j < cols.n - 1 and O:
                pending = acc[:, :, S:].copy()
            r0, r1 = rows.block(i)
            c0, c1 = cols.block(j)
            h, w = r1 - r0, c1 - c0
            if i > 0 and O:
                acc[:, :O, :w] += carry[:, :, c0:c1]
            if i < rows.n - 1 and O:
                # Columns beyond this block get the next tile's share through `pending` first.
                carry_w = w if j < cols.n - 1 else T
                carry[:, :, c0 : c0 + carry_w] = acc[:, S:, :carry_w]
            block = acc[:, :h, :w]
            block /= wsum_r[r0:r1, None] * wsum_c[None, c0:c1]
            if (b := on_raster(r0, c0, block, valid[:h, :w])) is not None:
                yield b
        done += len(group)
        if progress:
            progress(done / total, f"tile {done}/{total}")


def calibration_feeds(
    grid: TileGrid,
    inputs: AlignedInputs,
    constant: dict[str, np.ndarray] | None = None,
    n: int = CALIBRATION_TILES,
    batch: int = 4,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of real model inputs for int8: up to ``n`` tiles with data, spread evenly over the raster (the first
    rows alone may be all water or all city), normalised exactly as inference reads them, to calibrate; then up
    to ``n`` other tiles, spread the same way, that engine.runtime.precision holds back to check the copy."""
    tiles = [t for t in grid.tiles() if getattr(inputs, "may_have_data", lambda w: True)(t[2])]
    step = max(1, len(tiles) // n)
    first = tiles[::step][:n]
    taken = {(i, j) for i, j, _w in first}
    rest = [t for t in tiles if (t[0], t[1]) not in taken]
    second = rest[:: max(1, len(rest) // n)][:n]
    for held, group in ((False, first), (True, second)):
        read = ((i, j, *inputs.read(window)) for i, j, window in group)
        picked = [tile for tile in read if tile[3].any()]
        for k in range(0, len(picked), batch):
            feeds = _stacked(picked[k : k + batch])[1] | (constant or {})
            if held:  # the check counts valid pixels only (padding and nodata have no class to keep)
                feeds[VALID_KEY] = np.stack([t[3] for t in picked[k : k + batch]])
            yield feeds
