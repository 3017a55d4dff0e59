"""Regions of a raster read in strips of rows, joined across the seams between strips.

A strip is labelled on its own (on a worker thread); its regions that touch its first or last row may continue
in the next strip. `join_seam` joins them with the regions left open above the seam by pixel adjacency (same
value, 4-connected through the seam), closes what cannot grow any more, and keeps only one seam's worth of open
regions: memory depends on the raster's width, not its height. Used by engine.polygonize (strips traced by the
engine) and engine.region_stats (regions' statistics while GDAL traces the map).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import shapely

# Rounds of hooking after which `components` hands a graph to scipy. The run graphs of real maps take 3-4; a
# contrived numbering of nodes could take more, and scipy's search has no such case.
MAX_ROUNDS = 32


def components(n: int, a: np.ndarray, b: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components of nodes 0..n-1 joined by the edges a[i]-b[i]: (count, component of every node),
    numbered in the order of their lowest node, as scipy's connected_components numbers them. What joins runs
    into regions (engine.region_stats), regions across seams, and pieces of one region cut by GDAL's trace bands
    (engine.gdal_trace).

    A union-find in numpy rather than scipy.sparse.csgraph: importing scipy's sparse graphs costs ~0.12 CPU-s,
    a sixth of a 2048² job's own work on 2 cores, while this takes 1.5x scipy's time on real maps' run graphs
    (10 ms for a 4096² map's 278k runs). Each round hooks every tree's root to the smallest root it shares an
    edge with, then points every node straight at its root (pointer jumping); edges within one tree drop out."""
    parent = np.arange(n, dtype=np.int64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    for _ in range(MAX_ROUNDS):
        ra, rb = parent[a], parent[b]
        apart = ra != rb
        if not apart.any():
            break
        a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]
        # Roots only: a smaller root has no parent to lose, so trees never form a cycle.
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while not np.array_equal(hop := parent[parent], parent):
            parent = hop
    else:
        if (parent[a] != parent[b]).any():
            import scipy.sparse.csgraph

            # The trees so far (each node to its root) and the edges still joining them.
            heads, tails = np.concatenate((parent[a], np.arange(n))), np.concatenate((parent[b], parent))
            graph = scipy.sparse.coo_matrix((np.ones(len(heads)), (heads, tails)), shape=(n, n))
            return scipy.sparse.csgraph.connected_components(graph, directed=False)
    root = parent == np.arange(n)
    return int(root.sum()), (np.cumsum(root) - 1)[parent]


@dataclass
class Part:
    """A region (or the part of one seen so far) with what its mean confidence needs. Its pieces (one per strip
    it spans, when the engine traces strips) are unioned once, when the region is closed: unioning at every seam
    would redo the growing geometry each time, quadratic in the region's height. Its box (when GDAL traces the
    map) finds its polygon."""

    pieces: list[shapely.Geometry]
    cid: int
    conf_sum: float
    count: int
    touches_bottom: bool = False
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # row start, row stop, column start, column stop (pixels)


def join(parts: list[Part]) -> Part:
    """One region from parts that share edges across a seam (same class, 4-connected through the seam)."""
    if len(parts) == 1:
        return parts[0]
    return Part(
        [g for p in parts for g in p.pieces],
        parts[0].cid,
        sum(p.conf_sum for p in parts),
        sum(p.count for p in parts),
        any(p.touches_bottom for p in parts),
        (min(p.box[0] for p in parts), max(p.box[1] for p in parts),
         min(p.box[2] for p in parts), max(p.box[3] for p in parts)),
    )  # fmt: skip


@dataclass
class Strip:
    """What one strip of rows yields on its own, before any seam is joined: strips are independent, so they
    are worked on in parallel and joined in order."""

    r0: int
    r1: int
    label_class: np.ndarray | None = None  # None: no wanted value in the strip
    top: np.ndarray | None = None  # labels of its first row
    last: np.ndarray | None = None  # labels of its last row
    parts: list[tuple[int, Part]] = field(default_factory=list)  # (label, its polygon and statistics)


def seam_groups(
    prev_bottom: np.ndarray, open_cid: np.ndarray, top: np.ndarray, label_class: np.ndarray, n_open: int
) -> np.ndarray:
    """Connected groups of open parts (nodes 0..n_open-1) and current labels (nodes n_open + label) that touch
    across the seam with the same class. Returns the group id of every node."""
    n_nodes = n_open + len(label_class)
    both = (prev_bottom >= 0) & (top > 0)
    po, cl = prev_bottom[both], top[both]
    same = open_cid[po] == label_class[cl]
    pairs = np.unique(np.stack([po[same], cl[same] + n_open]), axis=1) if same.any() else np.zeros((2, 0), int)
    return components(n_nodes, pairs[0], pairs[1])[1]


def strips(work: Callable[[int, int], Strip], height: int, strip_rows: int, workers: int) -> Iterator[Strip]:
    """Strips in order, ``workers`` of them being worked on at a time (labelling, GDAL's polygonize and the
    histograms run outside the GIL). A bounded window: memory stays a few strips, whatever the height."""
    bounds = [(r0, min(height, r0 + strip_rows)) for r0 in range(0, height, strip_rows)]
    if workers <= 1 or len(bounds) < 2:
        yield from (work(r0, r1) for r0, r1 in bounds)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="landseg-polygonize") as pool:
        pending: deque = deque()
        for r0, r1 in bounds:
            pending.append(pool.submit(work, r0, r1))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def join_seam(
    strip: Strip, open_parts: list[Part], prev_bottom: np.ndarray, close, cap: int | None = None
) -> tuple[list[Part], np.ndarray]:
    """Join the strip's regions with the open ones above its top seam; close what is complete; return the
    regions left open at its bottom seam and which of them each pixel of that seam belongs to."""
    n_open = len(open_parts)
    group = seam_groups(
        prev_bottom, np.array([p.cid for p in open_parts], dtype=np.int64), strip.top, strip.label_class, n_open
    )
    members: dict[int, list[Part]] = defaultdict(list)
    for i, part in enumerate(open_parts):
        members[int(group[i])].append(part)
    for lab, part in strip.parts:
        members[int(group[n_open + lab])].append(part)
    next_open: list[Part] = []
    carried: dict[int, int] = {}  # group id -> index in next_open
    for gid, parts in members.items():
        region = join(parts)
        if region.touches_bottom and (cap is None or region.count <= cap):
            region.touches_bottom = False  # relative to the strip it was found in
            carried[gid] = len(next_open)
            next_open.append(region)
        else:
            close(region)
    last = strip.last
    bottom = np.full(len(last), -1, dtype=np.int64)
    if carried:
        index_of_group = np.full(int(group.max()) + 1, -1, dtype=np.int64)
        index_of_group[np.fromiter(carried, np.int64)] = np.fromiter(carried.values(), np.int64)
        lut = index_of_group[group]
        bottom[last > 0] = lut[n_open + last[last > 0]]
    return next_open, bottom
