"""What a batch worker runs (engine.jobs.batch submits it to Dask): one whole input, or one chunk of a large mosaic
and the stitch that joins the chunks; and how a large raster is cut into chunks.

Chunks are cut on the model's grid (the input warped to the model's pixel size by a GDAL VRT, as a single run
reads it), whole tile strides apart, and each is read with a halo of whole tile strides at least one tile wide.
Every run's tiles sit on the same CRS-anchored lattice (engine.tiling.anchored_offsets), so each core pixel is
blended from exactly the tiles, with exactly the weights, of the single run: the stitched map equals it.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LandSegError

if TYPE_CHECKING:
    from .batch import BatchParams


# --- the work items ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """A window of a large raster on the model's grid: the core this chunk owns and the window read (core plus
    halo), as (col_off, row_off, width, height) in model-grid pixels."""

    row: int
    col: int
    core: tuple[int, int, int, int]
    read: tuple[int, int, int, int]

    @property
    def key(self) -> str:
        return f"r{self.row}c{self.col}"


@dataclass(frozen=True)
class Mosaic:
    """How one large raster is cut: the tile grid every chunk shares with the single run, and the chunks."""

    tile: int
    overlap: int
    warp: bool  # the input is read resampled onto the model's grid
    chunks: tuple[Chunk, ...]


def plan_chunks(width: int, height: int, chunk_px: int, tile: int, overlap: int) -> list[Chunk]:
    """Cores of about ``chunk_px`` (a whole number of tile strides) tiling the raster; each is read with a halo
    of k strides, k * stride >= tile, so the tiles that touch its core are exactly the single run's."""
    stride = tile - overlap
    core = max(1, chunk_px // stride) * stride
    halo = -(-tile // stride) * stride
    chunks = []
    for i, r0 in enumerate(range(0, height, core)):
        for j, c0 in enumerate(range(0, width, core)):
            w, h = min(core, width - c0), min(core, height - r0)
            rc0, rr0 = max(0, c0 - halo), max(0, r0 - halo)
            rc1, rr1 = min(width, c0 + w + halo), min(height, r0 + h + halo)
            chunks.append(Chunk(i, j, (c0, r0, w, h), (rc0, rr0, rc1 - rc0, rr1 - rr0)))
    return chunks


def _model_grid(p: BatchParams, path: Path):
    """(model meta, resampling plan) of a land-cover run on ``path``, as run_landcover makes them."""
    from ..model_package import load_model_package
    from ..raster_input import reference_grid
    from ..resample import plan as plan_resampling

    meta = load_model_package(_landcover_model(p)).meta
    # The anchor of LandcoverParams' default ("crs"): chunks and a single run resample onto the same model grid.
    return meta, plan_resampling(reference_grid(path), meta.pixel_size_m, p.resample, "crs")


def plan_mosaic(p: BatchParams, path: Path) -> Mosaic | None:
    """The chunks of a raster too large for one task (land cover only), or None."""
    from ..tiling import fit_tile, requested_overlap

    if p.task != "landcover":
        return None
    try:
        meta, rplan = _model_grid(p, path)
    except LandSegError:  # an unreadable input: its task fails and is reported like any other failure
        return None
    g = rplan.model_grid
    if max(g.width, g.height) <= p.chunk_px:
        return None
    tile = p.tile or meta.tile_size
    overlap = requested_overlap(tile, p.overlap, meta.overlap)
    if p.tile is None:
        tile, overlap = fit_tile(tile, overlap, g.height, g.width)
    return Mosaic(tile, overlap, rplan.active, tuple(plan_chunks(g.width, g.height, p.chunk_px, tile, overlap)))


# --- what a worker runs ----------------------------------------------------------------------------------------


def _runtime_options(p: BatchParams):
    from ..runtime import RuntimeOptions, keep_sessions

    keep_sessions()  # this worker keeps the model sessions it makes: loaded once, used for every task
    return RuntimeOptions(device=p.device, threads=p.threads, precision=p.precision)


def run_one(p: BatchParams, path: str, out: str) -> dict:
    """One whole input -> its outputs in ``out`` (a folder of its own)."""
    t0 = time.perf_counter()
    if p.task == "landcover":
        from .landcover import LandcoverParams, run_landcover

        res = run_landcover(
            LandcoverParams(
                inputs=[Path(path)],
                model=_landcover_model(p),
                out_dir=Path(out),
                name=Path(path).stem,
                tile=p.tile,
                overlap=p.overlap,
                batch=p.batch,
                runtime=_runtime_options(p),
                resample=p.resample,
            )  # fmt: skip
        )
        outputs = {"class_map": str(res.class_map), "confidence": str(res.confidence), "polygons": str(res.polygons)}
    else:
        from .treecrowns import TreeCrownParams, run_treecrowns

        res = run_treecrowns(
            TreeCrownParams(
                image=Path(path),
                out_dir=Path(out),
                name=Path(path).stem,
                model=p.model,
                batch=p.batch,
                runtime=_runtime_options(p),
                resample=p.resample,
            )  # fmt: skip
        )
        outputs = {"crowns": str(res.crowns)}
    return {"outputs": outputs, "seconds": round(time.perf_counter() - t0, 3), **_worker()}


def _worker() -> dict:
    from ..runtime import kept_sessions

    return {"worker_pid": os.getpid(), "sessions": kept_sessions()}


def default_model(task: str) -> Path:
    from ..model_package import DEFAULT_LANDCOVER_MODEL, DEFAULT_TREECROWN_MODEL

    return DEFAULT_LANDCOVER_MODEL if task == "landcover" else DEFAULT_TREECROWN_MODEL


def _landcover_model(p: BatchParams) -> Path:
    # One model for every input and chunk (the RGB default: chunks are read through VRTs, not by band names).
    return Path(p.model or default_model("landcover"))


def run_chunk(p: BatchParams, path: str, mosaic: Mosaic, chunk: Chunk, out: str) -> dict:
    """One chunk (core + halo on the model's grid, read through GDAL VRTs) -> its class map and confidence."""
    from osgeo import gdal

    from .landcover import LandcoverParams, run_landcover

    t0 = time.perf_counter()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    gdal.UseExceptions()
    source = str(path)
    if mosaic.warp:  # the input on the model's grid, read with the resampling a single run uses
        _meta, rplan = _model_grid(p, Path(path))
        g = rplan.model_grid
        t = g.transform
        bounds = (t.c, t.f + g.height * t.e, t.c + g.width * t.a, t.f)
        source = str(folder / "model_grid.vrt")
        gdal.Warp(
            source, str(path), format="VRT", width=g.width, height=g.height, outputBounds=bounds,
            resampleAlg=rplan.read_resampling.name,
        )  # fmt: skip
    vrt = folder / f"{chunk.key}.vrt"
    gdal.Translate(str(vrt), source, format="VRT", srcWin=list(chunk.read))
    res = run_landcover(
        LandcoverParams(
            inputs=[vrt],
            model=_landcover_model(p),
            out_dir=folder,
            name=chunk.key,
            tile=mosaic.tile,
            overlap=mosaic.overlap,
            batch=p.batch,
            runtime=_runtime_options(p),
            resample="off",
            polygonize=False,
        )  # fmt: skip
    )
    return {
        "outputs": {"class_map": str(res.class_map), "confidence": str(res.confidence)},
        "seconds": round(time.perf_counter() - t0, 3),
        **_worker(),
    }


def stitch(p: BatchParams, path: str, mosaic: Mosaic, parts: list[dict], out: str) -> dict:
    """Chunk cores -> one class map and confidence on the model's grid -> the input's grid (as a single run
    brings them back), polygonized once, cloud-optimized, styled."""
    import rasterio
    from rasterio.windows import Window

    from ..outputs import PredictionWriter
    from ..polygonize import PolygonizeOptions
    from ..resample import warp_back
    from .common import atomic_outputs, scratch_folder
    from .landcover import finish_outputs

    t0 = time.perf_counter()
    meta, rplan = _model_grid(p, Path(path))
    classes = meta.classes
    stride = mosaic.tile - mosaic.overlap
    stem = Path(path).stem
    finals = [Path(out) / f"{stem}_classes.tif", Path(out) / f"{stem}_confidence.tif", Path(out) / f"{stem}.gpkg"]
    with atomic_outputs(Path(out)) as outputs, contextlib.ExitStack() as stack:
        tmp = [outputs.temp_for(f) for f in finals]
        model_paths = tmp[:2]
        if rplan.active:
            scratch = stack.enter_context(scratch_folder(Path(out)))
            model_paths = [scratch / "classes.tif", scratch / "confidence.tif"]
        writer = PredictionWriter(*model_paths, rplan.model_grid, classes, stride)
        try:
            for chunk, part in zip(mosaic.chunks, parts, strict=True):
                c0, r0, w, h = chunk.core
                with (
                    rasterio.open(part["outputs"]["class_map"]) as sc,
                    rasterio.open(part["outputs"]["confidence"]) as sf,
                ):
                    for y in range(0, h, 1024):  # strips: memory stays bounded whatever the chunk size
                        win = Window(c0 - chunk.read[0], r0 - chunk.read[1] + y, w, min(1024, h - y))
                        writer.write_maps(r0 + y, c0, sc.read(1, window=win), sf.read(1, window=win))
        finally:
            writer.close()
        if rplan.active:
            warp_back(rplan, *model_paths, *tmp[:2], classes, stride)
        n_poly, _timings = finish_outputs(outputs, finals, tmp, classes, PolygonizeOptions())
    return {
        "outputs": {"class_map": str(finals[0]), "confidence": str(finals[1]), "polygons": str(finals[2])},
        "n_polygons": n_poly,
        "chunks": len(mosaic.chunks),
        "seconds": round(time.perf_counter() - t0, 3),
    }
