"""Output files: atomic writes (temp file + rename) and the class-map / confidence GeoTIFFs.

A run either leaves complete outputs or none: every file is written under a temporary name in the target
folder and renamed into place only when the whole run succeeded (``OutputSet.commit``). On error or
cancellation ``OutputSet.discard`` removes the temporaries.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from .errors import OutputError
from .model_package import ClassInfo
from .raster_input import Grid
from .run_lock import remove_stale

CLASS_NODATA = 255
CONFIDENCE_NODATA = -1.0


def check_outputs_spare_inputs(outputs: list[Path], inputs: list[Path], name: str = "") -> None:
    """An output that is an input (the same file once links are resolved, or its .qml/.aux.xml sidecar) would
    overwrite it when the run commits: refuse before anything runs. A name must stay inside the output folder."""
    if name and (Path(name).name != name or name in (".", "..")):
        raise OutputError(f"--name {name!r} must be a file name, not a path (outputs go into --out)")
    seen = {}
    for i in inputs:
        try:
            seen[Path(i).resolve()] = Path(i)
        except OSError:
            continue
    for o in outputs:
        o = Path(o)
        for cand in (o, o.with_suffix(".qml"), Path(str(o) + ".aux.xml")):
            src = seen.get(cand.resolve())
            if src is not None:
                raise OutputError(f"output {o} would overwrite the input {src}: choose another output path or name")


class OutputSet:
    """Temporary paths for a run's outputs, renamed together on success."""

    def __init__(self, overwrite: bool = True) -> None:
        self.overwrite = overwrite
        self._pending: list[tuple[Path, Path]] = []
        self._cleaned: set[Path] = set()  # folders already rid of stale temporaries

    def temp_for(self, final: str | Path) -> Path:
        final = Path(final)
        folder = final.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder {folder}: {exc.strerror}") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"output folder is not writable: {folder}")
        if folder not in self._cleaned:  # a killed run's temporaries (only of processes that no longer exist)
            remove_stale(folder)
            self._cleaned.add(folder)
        if final.exists() and not self.overwrite:
            raise OutputError(f"output exists and overwrite is off: {final}")
        # Same folder as the final file so the rename is atomic; hidden so QGIS/file browsers skip it; the PID
        # lets the next run recognise a killed run's leftovers (engine.run_lock).
        tmp = folder / f".{final.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{final.suffix}"
        self._pending.append((tmp, final))
        return tmp

    def commit(self) -> list[Path]:
        done = []
        from .vector_formats import companions

        for tmp, final in self._pending:
            if tmp.exists():
                for part, whole in zip(companions(tmp), companions(final), strict=True):  # a Shapefile's .dbf ...
                    if part.exists():
                        os.replace(part, whole)
                os.replace(tmp, final)
                done.append(final)
        self._pending.clear()
        return done

    def discard(self) -> None:
        from .vector_formats import companions

        for tmp, _final in self._pending:
            for p in (tmp, Path(str(tmp) + ".aux.xml"), *companions(tmp)):
                if p.exists():
                    p.unlink()
        self._pending.clear()


def top_class(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes, h, w) probabilities -> (class of the highest, uint8; that probability, float32): argmax and max
    in one pass per class. numpy's argmax along the first axis copies the block to make that axis the last one:
    2.4x slower on 3 classes, 1.7x on 5, on every block of every run. Ties go to the lower class id, as argmax's.
    No masked assignment (`cls[higher] = c`): on a speckled mask numpy's masked copy ran 45x slower than the
    arithmetic below (0.9 ms against 0.02 ms a class for a 448² block). The class so far is below c, so the
    larger of it and c where c is higher (else 0) is the new class."""
    best = probs[0].copy()
    cls = np.zeros(best.shape, np.uint8)
    higher = np.empty(best.shape, bool)
    step = np.empty(best.shape, np.uint8)
    for c in range(1, len(probs)):
        np.greater(probs[c], best, out=higher)
        np.multiply(higher.view(np.uint8), np.uint8(c), out=step)
        np.maximum(cls, step, out=cls)
        np.maximum(best, probs[c], out=best)
    return cls, best


def geotiff_profile(grid: Grid, dtype: str, nodata: float, block: int) -> dict:
    return {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": 1,
        "dtype": dtype,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        # Class maps: deflate, readable everywhere. Confidence (float32): zstd level 1 compresses as well as
        # deflate here at a quarter of the CPU time, and GDAL >= 2.3 (QGIS 3.22 ships 3.x) reads it. No floating-
        # point predictor: on confidences rounded to 3 decimals it made files larger (2.9 vs 1.8 MB for a 2048²
        # map) and slower to write.
        **({"compress": "deflate", "predictor": 2} if dtype == "uint8" else {"compress": "zstd", "zstd_level": 1}),
        "BIGTIFF": "IF_SAFER",
        # Blocks never written (tiles without data) stay absent and read back as nodata: a mostly empty mosaic
        # costs neither writes nor disk.
        "SPARSE_OK": True,
    }


# A confidence raster up to this size is written uncompressed while the model runs (8192² float32): it is read back
# and compressed once, when it is copied as a COG or stitched into a mosaic.
SCRATCH_PLAIN_BYTES = 256 * 2**20


def scratch_profile(grid: Grid, dtype: str, nodata: float, block: int) -> dict:
    """geotiff_profile for the maps written block by block while the model runs (PredictionWriter's), which the
    job always copies again at its end (COGs, a mosaic, a warp back to the input grid, a change map): compressed
    for the writer's speed, not for size. Why: on the blending thread, deflate with a predictor (the class map)
    and zstd (confidence) took half its time (4096², a light model: 0.11 and 0.23 s of 0.8 s); zstd level 1
    without a predictor writes a class map 5x faster than deflate and smaller, and an uncompressed confidence
    raster 4.6x faster than zstd. Above SCRATCH_PLAIN_BYTES zstd keeps the scratch disk use bounded."""
    codec = ("compress", "predictor", "zstd_level")
    prof = {k: v for k, v in geotiff_profile(grid, dtype, nodata, block).items() if k not in codec}
    plain = dtype != "uint8" and grid.width * grid.height * np.dtype(dtype).itemsize <= SCRATCH_PLAIN_BYTES
    return prof | ({"compress": "none"} if plain else {"compress": "zstd", "zstd_level": 1})


def to_cog(path: Path, resampling: str = "NEAREST") -> None:
    """Rewrite a finished GeoTIFF in place as a Cloud-Optimized GeoTIFF with overviews, so QGIS draws a 16k²
    result at any zoom at once (class maps: NEAREST overviews keep class ids; confidence: AVERAGE). Colour table,
    class-name tags, nodata and compression are kept."""
    os.replace(cog_copy(path, resampling), path)


def cog_copy(path: Path, resampling: str = "NEAREST") -> Path:
    """The COG of a finished GeoTIFF, written beside it (``<name>.cog``); the caller renames it over the
    original once nothing reads the original any more (polygons are built from it meanwhile)."""
    from rasterio.shutil import copy as gdal_copy

    path = Path(path)
    tmp = path.with_name(f"{path.name}.cog")
    with rasterio.open(path) as src:
        float_data = src.dtypes[0].startswith("float")
        # Confidence: no predictor (see geotiff_profile): 7 % smaller and 20 % faster than the floating-point one
        opts = {"COMPRESS": "ZSTD" if float_data else "DEFLATE", "PREDICTOR": "NO" if float_data else "YES",
                "BLOCKSIZE": 512}  # fmt: skip
        if float_data:
            opts["LEVEL"] = 1
    from .gdal_errors import failures_raised, full_disk_error

    try:
        with failures_raised(tmp):  # a failed last write of CreateCopy is printed by GDAL, not raised
            gdal_copy(path, tmp, driver="COG", OVERVIEW_RESAMPLING=resampling, BIGTIFF="IF_SAFER", SPARSE_OK="TRUE",
                      **opts)  # fmt: skip
    except BaseException as exc:
        full = full_disk_error(tmp, exc) if not isinstance(exc, OSError) or exc.errno is None else None
        tmp.unlink(missing_ok=True)
        if full is not None:  # told while the disk is still full: removing the copy frees it
            raise full from exc
        raise
    return tmp


class PredictionWriter:
    """Streams blocks of blended probabilities into a class-map and a confidence GeoTIFF."""

    def __init__(
        self, class_path: Path, conf_path: Path, grid: Grid, classes: tuple[ClassInfo, ...], block: int
    ) -> None:
        try:
            self.cls = rasterio.open(class_path, "w", **scratch_profile(grid, "uint8", CLASS_NODATA, block))
            self.conf = rasterio.open(conf_path, "w", **scratch_profile(grid, "float32", CONFIDENCE_NODATA, block))
        except rasterio.errors.RasterioIOError as exc:
            raise OutputError(f"cannot write {class_path.parent}: {exc}") from None
        self.cls.write_colormap(1, {c.id: (*c.rgb, 255) for c in classes})
        self.cls.update_tags(1, **{f"CLASS_{c.id}": c.name for c in classes})
        self.cls.set_band_description(1, "class")
        self.conf.set_band_description(1, "confidence")
        self.counts = np.zeros(len(classes), dtype=np.int64)

    def write(self, row: int, col: int, probs: np.ndarray, valid: np.ndarray) -> None:
        if not valid.any():
            return  # a block without data: left absent in the sparse GeoTIFF, read back as nodata
        cls, conf = top_class(probs)
        if not valid.all():
            cls[~valid] = CLASS_NODATA
            conf[~valid] = CONFIDENCE_NODATA
        self.write_maps(row, col, cls, conf)

    def write_maps(self, row: int, col: int, cls: np.ndarray, conf: np.ndarray) -> None:
        """A block of class ids (CLASS_NODATA where invalid) and confidences (CONFIDENCE_NODATA there)."""
        h, w = cls.shape
        # Three decimals are all an analyst reads, and they compress several times better.
        np.round(conf, 3, out=conf)
        win = Window(col, row, w, h)
        self.cls.write(cls, 1, window=win)
        self.conf.write(conf, 1, window=win)
        self.counts += np.bincount(cls.ravel(), minlength=256)[: len(self.counts)]

    def close(self) -> None:
        # Checked: rasterio's close() does not raise when flushing the last cached blocks fails (engine.gdal_errors)
        from .gdal_errors import close_checked

        try:
            close_checked(self.cls, self.cls.name)
        finally:
            close_checked(self.conf, self.conf.name)
