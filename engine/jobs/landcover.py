"""The land-cover job: rasters + model -> class map, confidence map, polygons, styles.

This is the single entry point that the CLI, the QGIS panel and the Processing algorithms call.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import rasterio

from ..class_space import class_space
from ..errors import InputError, OutputError
from ..fusion import FusedInputs, FusedModel
from ..model_choice import choose_landcover_model
from ..model_package import load_model_package
from ..outputs import PredictionWriter, check_outputs_spare_inputs, cog_copy
from ..polygonize import PolygonizeOptions, polygonize
from ..predict import calibration_feeds, fixed_batch, predict_blocks
from ..prompts import DEFAULT_THRESHOLD
from ..raster_input import AlignedInputs, BandSource, reference_grid
from ..resample import plan as plan_resampling
from ..resample import warp_back
from ..runtime import RuntimeOptions, make_runtime
from ..styles import class_raster_qml, confidence_qml, polygon_qml
from ..task_options import (
    MODEL_FILTER,
    POLYGONS,
    RESCALE,
    RUNTIME,
    Option,
    band_mapping,
    name_option,
    out_folder,
    output_paths,
    resample_option,
    tiling_options,
)
from ..tiling import ANCHORS, BLENDS, TileGrid, anchored_offsets, fit_tile, requested_overlap
from ..vector_formats import driver_for
from .common import MapReport, Messages, ProgressFn, atomic_outputs, release_memory, scratch_folder, stage

# GDAL's block cache defaults to 5% of RAM, which would make peak memory grow with raster size.
GDAL_CACHE_MB = 16


@dataclass
class LandcoverParams:
    inputs: list[Path]
    out_dir: Path
    model: Path | None = None  # None: the shipped model, RGB + NIR where the input has a NIR band (model_choice)
    name: str = "landcover"
    modalities: dict[str, BandSource] = field(default_factory=dict)  # empty: default mapping
    tile: int | None = None  # None: the model's recommended tile size
    overlap: int | None = None  # None: the model's recommended overlap
    batch: int = 4
    blend: str = "cosine"  # how overlapping tiles are blended: engine.tiling.BLENDS (cosine, gaussian, constant)
    # Where tiles (and the resampled model grid) start: "crs", a lattice fixed in the CRS, so a crop, a chunk or an
    # overlapping raster gets the same classes for the same pixels; "raster": at the raster's corner.
    anchor: str = "crs"
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    polygons: PolygonizeOptions = field(default_factory=PolygonizeOptions)
    overwrite: bool = True
    prompts: list[str] = field(default_factory=list)  # class prompts; empty: every class of the model
    unasked: str = "other"  # classes no prompt asked for: "other" or "drop"
    prompt_threshold: float = DEFAULT_THRESHOLD
    fuse_models: list[Path] = field(default_factory=list)  # more land-cover models, fused class-wise by confidence
    rescale: str = "auto"  # values beyond the model's value_range: engine.value_range (auto, percentile, off)
    resample: str = "auto"  # "auto": infer at the model's pixel size when the input's differs by > 15 %; "off"
    allow_pixel_coordinates: bool = False  # run on a raster without georeference (areas then in square pixels)
    polygonize: bool = True  # False: rasters only (engine.jobs.batch chunks: polygons come later)
    # Explicit output paths (Processing destinations); None: <out_dir>/<name>[_classes|_confidence].<ext>
    class_map_path: Path | None = None
    confidence_path: Path | None = None
    polygons_path: Path | None = None

    def output_paths(self) -> tuple[Path, ...]:
        """Class map, confidence, polygons: as given, or named after `name` in `out_dir` (OPTIONS' suffixes)."""
        return output_paths(self, OPTIONS, OUTPUT_PATHS)


OUTPUT_PATHS = ("class_map_path", "confidence_path", "polygons_path")
# How the CLI, Processing and the panel ask for LandcoverParams (engine.task_options; a row per parameter).
OPTIONS = (
    Option("inputs", "--input", "Input raster layers", "input raster (a file, or any GDAL path: /vsizip/..., "
           "/vsicurl/...); repeat for several", short="-i", widget="rasters", name="INPUT"),
    band_mapping(),
    Option("prompts", "--prompts", "Class prompts (e.g. woods, lake, houses; empty: all classes)",
           'class prompts, e.g. "woods, lake, houses" (default: all model classes)', widget="text_list", panel=True),
    Option("unasked", "--unasked", "Classes no prompt asks for (other: fold into 'other')",
           "classes no prompt asks for: fold into 'other' or drop (default: other)", choices=("other", "drop")),
    Option("prompt_threshold", "--prompt-threshold", "Lowest prompt-class similarity that counts as a match",
           "lowest prompt-class similarity that counts as a match (default: %(default)s)", minimum=0, maximum=1,
           advanced=True),
    Option("model", "--model", "Model (.onnx with LandSeg or Deepness metadata, or a TensorRT .engine/.plan; "
           "empty: the shipped one)", "ONNX model package (default: the shipped land-cover model, its RGB + NIR "
           "version where the input has a band described as NIR)", widget="model", file_filter=MODEL_FILTER),
    Option("fuse_models", "--fuse-model", "Models to fuse with it (.onnx)", "another land-cover model to fuse "
           "with --model, class by class by confidence (repeatable)", widget="models", advanced=True,
           metavar="MODEL"),
    *RUNTIME,
    *tiling_options(),
    *POLYGONS,
    resample_option("auto: infer at the model's pixel size when the input's differs by more than 15%% (default)"),
    RESCALE,
    Option("blend", "--blend", "Blending of overlapping tiles", "blending of overlapping tiles: cosine ramps over "
           "the overlap (default), gaussian (MONAI's), constant", choices=BLENDS, advanced=True),
    Option("anchor", "--anchor", "Tile grid origin", "where tiles start: crs (a lattice fixed in the CRS, default: "
           "the same pixels get the same class in a crop or an overlapping raster) or raster (its top-left corner)",
           choices=ANCHORS, advanced=True),
    Option("allow_pixel_coordinates", "--allow-pixel-coordinates", "Allow rasters without georeference",
           "run on a raster without georeference: coordinates in pixels, area_m2 in square pixels", advanced=True),
    out_folder(*OUTPUT_PATHS),
    name_option(),
    Option("polygons_path", "--out-polygons", "Land-cover polygons", "polygon layer path, .gpkg/.fgb/.shp/.parquet "
           "(default: OUT/NAME.gpkg)", widget="output_vector", name="OUTPUT", result="polygons", suffix=".gpkg"),
    Option("class_map_path", "--out-classes", "Class map", "class-map GeoTIFF path (default: OUT/NAME_classes.tif)",
           widget="output_raster", name="OUTPUT_CLASSES", result="class_map", suffix="_classes.tif"),
    Option("confidence_path", "--out-confidence", "Confidence",
           "confidence GeoTIFF path (default: OUT/NAME_confidence.tif)", widget="output_raster",
           name="OUTPUT_CONFIDENCE", result="confidence", suffix="_confidence.tif"),
)  # fmt: skip


@dataclass
class LandcoverResult(MapReport):
    class_map: Path
    confidence: Path
    class_pixels: dict[str, int]
    tile: int
    overlap: int
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    prompt_matches: list[dict] = field(default_factory=list)
    model: Path | None = None  # the model package that ran (the one chosen when none was named)

    def lines(self) -> list[str]:
        """The result in a few lines, as the CLI prints it and Processing logs it."""
        return [
            *([f"model:       {self.model.name}"] if self.model else []),
            f"class map:   {self.class_map}",
            f"confidence:  {self.confidence}",
            self.polygons_line(),
            f"device: {self.device}, tile {self.tile}, overlap {self.overlap}, {self.seconds:.1f} s",
            *([f"ran on:      {self.device_detail}"] if self.device_detail else []),
            *([self.resampling["message"]] if self.resampling.get("message") else []),
        ]


def _modalities_of(modalities: dict[str, BandSource], meta) -> dict[str, BandSource] | None:
    """The part of a band mapping that one model (of several being fused) takes."""
    own = {mi.modality for mi in meta.inputs}
    return {k: v for k, v in modalities.items() if k in own} or None


def _cogs_or_none(cogs: list, failed: bool = False) -> list[Path]:
    """The COG copies, or (one failed, or the run did) none: no thread outlives the run, and no COG made is left
    behind beside the outputs."""
    wait(cogs)
    errors = [f.exception() for f in cogs if f.exception() is not None]
    if failed or errors:
        for f in cogs:
            if f.exception() is None:
                f.result().unlink(missing_ok=True)
        if errors and not failed:
            raise errors[0]
        return []
    return [f.result() for f in cogs]


def finish_outputs(
    outputs,  # jobs.atomic_outputs' OutputSet holding the temporaries
    finals: tuple[Path, Path, Path],  # class map, confidence, polygons
    temps: tuple[Path, Path, Path],
    classes,
    polygons: PolygonizeOptions | None,  # None: rasters only
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> tuple[int, dict[str, float]]:
    """What a land-cover run ends with (one run, or a batch's stitched mosaic): polygons from the class map,
    both rasters cloud-optimized, a style beside each output, all committed together. Returns the polygon count
    and the seconds it took."""
    t0 = time.perf_counter()
    # The COGs are written alongside the polygons (GDAL works outside the GIL) and renamed over the plain
    # GeoTIFFs once the polygons no longer read them.
    with ThreadPoolExecutor(2, thread_name_prefix="landseg-cog") as pool:
        cogs = [pool.submit(cog_copy, temps[0], "NEAREST"), pool.submit(cog_copy, temps[1], "AVERAGE")]
        try:
            n = polygonize(temps[0], temps[1], temps[2], classes, polygons, progress, cancelled) if polygons else 0
        except BaseException:
            _cogs_or_none(cogs, failed=True)
            raise
        done = _cogs_or_none(cogs)
    t1 = time.perf_counter()
    for cog, plain in zip(done, temps[:2], strict=True):
        os.replace(cog, plain)
    styles = (class_raster_qml(classes), confidence_qml(), polygon_qml(classes))
    for final, qml in list(zip(finals, styles, strict=True))[: 3 if polygons else 2]:
        outputs.temp_for(final.with_suffix(".qml")).write_text(qml, encoding="utf-8")
    outputs.commit()
    return n, {"polygons_and_cogs": round(t1 - t0, 3)}


def run_landcover(
    params: LandcoverParams,
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
    notify: Callable[[str], None] | None = None,
) -> LandcoverResult:
    t0 = time.perf_counter()
    say = Messages(notify)
    if not params.inputs:
        raise InputError("no input raster given")
    choice = choose_landcover_model(params.inputs, params.model, params.modalities)
    if choice.message:
        say(choice.message)
    package = load_model_package(choice.model)
    meta = package.meta
    if meta.task != "landcover":
        raise InputError(f"model '{meta.name}' is a {meta.task} model, not a landcover model")
    if params.batch < 1:
        raise InputError(f"batch size must be at least 1, not {params.batch}")
    batch = params.batch
    if package.fixed_batch and batch != package.fixed_batch:  # a batch-1 export (issue #29 item 10)
        batch = package.fixed_batch
        say(f"model {Path(package.path).name} takes batches of exactly {batch} tile(s) (its graph's batch size)")
    if package.fixed_tile and params.tile and params.tile != package.fixed_tile:
        raise InputError(
            f"--tile {params.tile}: model {Path(package.path).name} takes tiles of exactly {package.fixed_tile} px "
            f"(its graph's input shape): use --tile {package.fixed_tile} or leave it out"
        )
    tile = package.fixed_tile or params.tile or meta.tile_size
    overlap = requested_overlap(tile, params.overlap, meta.overlap)
    space = class_space(meta, params.prompts, params.unasked, params.prompt_threshold, params.fuse_models, say)
    classes, run_meta, mapping, vocab = space.classes, space.run_meta, space.mapping, space.vocab
    fused, metas = space.fused, space.metas

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024):
        # Validate inputs before the output folder is touched: bad input leaves nothing behind.
        with contextlib.ExitStack() as stack:
            ref = reference_grid(params.inputs[0])
            if ref.crs is None and not params.allow_pixel_coordinates:
                raise InputError(
                    f"{params.inputs[0]} has no georeference (no CRS): polygons would sit in pixel coordinates and "
                    "area_m2 would count pixels; georeference it, or pass --allow-pixel-coordinates"
                )
            plan = plan_resampling(ref, meta.pixel_size_m, params.resample, params.anchor)
            if params.tile is None and max(plan.model_grid.width, plan.model_grid.height) <= tile:
                # Smaller than one tile: one tile fitted to it (below), on a model grid from its own corner, as
                # before anchoring (a lattice gives nothing to keep there, and moves small plots' figures).
                plan = plan_resampling(ref, meta.pixel_size_m, params.resample, "raster")
            grid_kw = {"grid": plan.model_grid, "resampling": plan.read_resampling} if plan.active else {}
            grid_kw["rescale"] = params.rescale
            if not fused:
                inputs = stack.enter_context(AlignedInputs(params.inputs, meta, choice.modalities or None, **grid_kw))
            else:
                every = [
                    stack.enter_context(
                        AlignedInputs(params.inputs, m, _modalities_of(choice.modalities, m), **grid_kw)
                    )
                    for m in metas
                ]
                inputs = FusedInputs(every)
            final_paths = params.output_paths()
            for p, kind in zip(final_paths[:2], ("class map", "confidence"), strict=True):
                if p.suffix.lower() not in (".tif", ".tiff"):
                    raise OutputError(f"{kind} output {p} must end in .tif or .tiff")
            driver_for(final_paths[2])
            check_outputs_spare_inputs(
                list(final_paths), [*params.inputs, choice.model, *params.fuse_models], params.name
            )
            anchor = params.anchor
            if params.tile is None and not package.fixed_tile:  # the model's tile, no larger than the raster needs
                fitted = fit_tile(tile, overlap, inputs.grid.height, inputs.grid.width)
                anchor = anchor if fitted[0] == tile else "raster"  # one small tile: no lattice to keep
                tile, overlap = fitted
            offsets = anchored_offsets(inputs.grid.transform, tile - overlap, anchor)
            grid = TileGrid(inputs.grid.height, inputs.grid.width, tile, overlap, params.blend, *offsets)
            constant = {vocab.input_name: vocab.embeddings} if meta.text_input is not None else {}
            runtime = make_runtime(
                package.path, meta.output_name, params.runtime, say,
                calibration=None if fused else lambda: calibration_feeds(grid, inputs, constant),
            )  # fmt: skip
            run = runtime.run
            if package.fixed_batch:
                run = fixed_batch(run, batch, {mi.name for mi in meta.inputs})
            run = vocab.wrap(run) if meta.text_input is not None else run
            device, device_detail = runtime.device_label, runtime.device_detail
            precision_check = dict(getattr(runtime, "precision_check", {}))
            if fused:  # the fused model alone holds the other sessions, so `del run` below frees them too
                others = (make_runtime(f.path, f.meta.output_name, params.runtime, notify=say).run for f in fused)
                run = FusedModel([runtime.run, *others], metas, space.matrices).run
            with (
                atomic_outputs(final_paths[0].parent, params.overwrite) as outputs,
                contextlib.ExitStack() as scratch_stack,  # removed before a failed run's folder is
            ):
                class_path, conf_path, gpkg_path = (outputs.temp_for(p) for p in final_paths)
                t_infer = time.perf_counter()
                if plan.active:  # infer on the model grid into scratch files, warp back afterwards
                    scratch = scratch_stack.enter_context(scratch_folder(final_paths[0].parent))
                    model_paths = scratch / "classes.tif", scratch / "confidence.tif"
                else:
                    model_paths = class_path, conf_path
                writer = PredictionWriter(*model_paths, inputs.grid, classes, grid.rows.stride)
                say(plan.message())  # once inputs and outputs are known to be usable: bad input stays one line
                every_input = inputs.inputs if fused else [inputs]
                for part in every_input:
                    for msg in part.messages:
                        say(msg)
                if ref.crs is None:
                    say("no georeference: coordinates are pixel columns/rows and area_m2 holds square pixels")
                try:
                    for b in predict_blocks(inputs, run, run_meta, grid, batch, stage(progress, 0.0, 0.85), cancelled):
                        probs, valid = b.probs, b.valid
                        if mapping is not None:  # prompts: model classes -> asked classes (+ other)
                            probs, drop = mapping.apply(probs)
                            valid = valid if drop is None else valid & ~drop
                        writer.write(b.row, b.col, probs, valid)
                finally:
                    writer.close()
                if plan.active:
                    warp_back(plan, *model_paths, class_path, conf_path, classes, grid.rows.stride)
                # The inference session (weights, memory arena) is not needed for polygons: free it first.
                del run, runtime
                release_memory()
                t_poly = time.perf_counter()
                n_poly, timings = finish_outputs(
                    outputs, final_paths, (class_path, conf_path, gpkg_path), classes,
                    params.polygons if params.polygonize else None, stage(progress, 0.85, 1.0), cancelled,
                )  # fmt: skip
                timings = {"inference": round(t_poly - t_infer, 3), **timings}
    if progress:
        progress(1.0, "done")
    return LandcoverResult(
        class_map=final_paths[0],
        confidence=final_paths[1],
        polygons=final_paths[2] if params.polygonize else None,
        layer=params.polygons.layer,
        n_polygons=n_poly,
        class_pixels={c.name: int(n) for c, n in zip(classes, writer.counts, strict=True)},
        device=device,
        device_detail=device_detail,
        precision=precision_check,
        tile=tile,
        overlap=overlap,
        seconds=round(time.perf_counter() - t0, 3),
        timings=timings,
        messages=say.items,
        prompt_matches=[m.__dict__ for m in space.matches],
        model=Path(package.path),
        resampling=plan.as_dict(),
        rescaling={k: v for part in every_input for k, v in part.rescaling.items()},
    )
