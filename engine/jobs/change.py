"""Bi-temporal change detection: "before" and "after" rasters -> change raster, change polygons, transitions.

Both dates are aligned to one grid: the part of the first "before" raster's grid that the first "after" raster
covers. Two methods:

- ``postclass``: the land-cover model maps both dates; a pixel changed when its class differs. The change raster
  holds a transition code (0: no change, 1 + from * K + to: changed from -> to), the polygons carry from_class /
  to_class, and a from x to transition matrix (m2) is written as CSV.
- ``direct``: a bi-temporal change model (task "change"; inputs marked date "before" / "after"; classes "no change"
  and "change", e.g. a siamese network exported with `python -m export onnx`) gives a change probability; pixels
  above ``threshold`` (default: the one the model's metadata declares, ``change.threshold``) are change. With a
  land-cover model (``landcover_model``, the default one unless None) both dates are also classified: a change
  pixel's code is then 1 + from * K + to as above (from == to: a change within one class, e.g. a roof rebuilt), the
  polygons carry from_class / to_class and their mean change probability, and the matrix holds the changed area by
  from and to class; without one, change is code 1.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import rasterio
import shapely
from rasterio.windows import Window

from .. import task_options as ui
from ..areas import AreaCalculator
from ..errors import InputError, OutputError
from ..model_package import DEFAULT_LANDCOVER_MODEL, ClassInfo, ModelMeta, load_model_package
from ..outputs import PredictionWriter, check_outputs_spare_inputs, to_cog
from ..polygonize import PolygonizeOptions, polygonize_values
from ..predict import calibration_feeds, predict_blocks
from ..raster_input import AlignedInputs, BandSource, open_raster, overlap_grid
from ..resample import plan as plan_resampling
from ..resample import warp_back
from ..runtime import RuntimeOptions, make_runtime
from ..styles import change_polygon_qml, change_raster_qml
from ..tiling import TileGrid, fit_tile, requested_overlap
from ..vector_formats import driver_for
from .change_maps import class_filter, combine, label_changes, write_direct, write_matrix
from .common import MapReport, Messages, atomic_outputs, scratch_folder, stage
from .landcover import GDAL_CACHE_MB

DEFAULT_MIN_CONFIDENCE = 0.0  # best mean F1 over LEVIR-CD and DSIFN-CD (bench/change_eval.py, MODEL_CARD.md)
METHODS = ("postclass", "direct")


@dataclass
class ChangeParams:
    before: list[Path]
    after: list[Path]
    out_dir: Path
    model: Path = DEFAULT_LANDCOVER_MODEL
    name: str = "change"
    method: str = "postclass"
    modalities: dict[str, BandSource] = field(default_factory=dict)  # applied to both dates
    # direct method: change probability above which a pixel is change; None: the model's own (metadata
    # change.threshold, chosen when it was trained), else 0.5
    threshold: float | None = None
    # direct method: the land-cover model run on both dates to name each change's from and to classes (None: the
    # changes are not named, and the two extra inferences are saved)
    landcover_model: Path | None = DEFAULT_LANDCOVER_MODEL
    tile: int | None = None
    overlap: int | None = None
    batch: int = 4
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    polygons: PolygonizeOptions = field(default_factory=lambda: PolygonizeOptions(layer="change"))
    change_map_path: Path | None = None
    polygons_path: Path | None = None
    matrix_path: Path | None = None
    resample: str = "auto"  # postclass: infer at the model's pixel size (engine.resample)
    rescale: str = "auto"  # values beyond the model's value_range (engine.value_range), per date
    classes: list[str] = field(default_factory=list)  # postclass: report changes from or to these classes only
    # postclass: a pixel is change only where both dates' classes are at least this sure (product of the two
    # confidences); chosen on the LEVIR-CD / DSIFN-CD pairs (bench/change_eval.py, MODEL_CARD.md)
    min_confidence: float = DEFAULT_MIN_CONFIDENCE

    def output_paths(self) -> tuple[Path, ...]:
        """Change map, polygons, transition matrix: as given, or named after `name` in `out_dir`."""
        return ui.output_paths(self, OPTIONS, ("change_map_path", "polygons_path", "matrix_path"))


OPTIONS = (
    ui.Option("before", "--before", "Before (first date)", "raster of the first date", widget="raster"),
    ui.Option("after", "--after", "After (second date)", "raster of the second date", widget="raster"),
    ui.Option("method", "--method", "Method", "postclass: land-cover model on both dates; direct: a bi-temporal change "
           "model", choices=METHODS, panel=True),
    ui.Option("model", "--model", "Model (land cover for postclass, change for direct)", "default: %(default)s",
           widget="model", file_filter=ui.MODEL_FILTER),
    ui.band_mapping("map bands to a model input on both dates, e.g. rgb=1,2,3"),
    ui.Option("classes", "--classes", "Report changes from or to these classes only (postclass; e.g. building, road; "
           "empty: all)", "postclass: report changes from or to these classes only, e.g. building,road",
           widget="text_list", panel=True),
    ui.Option("threshold", "--threshold", "Change probability threshold (direct)",
           "direct method: change probability threshold (default: the model's own, metadata change.threshold, "
           "else 0.5)", minimum=0, maximum=1),
    ui.Option("landcover_model", "--landcover-model", "Land-cover model naming the changes' from/to classes (direct)",
           "direct method: land-cover model run on both dates to name each change's from and to classes (default: "
           "%(default)s; none: changes are not named)", widget="model", file_filter=ui.MODEL_FILTER, advanced=True),
    ui.Option("min_confidence", "--min-confidence", "Joint confidence a change needs (postclass)",
           "postclass: joint confidence (before x after) a change needs (default: %(default)s, tuned, see "
           "MODEL_CARD.md)", minimum=0, maximum=1, advanced=True),
    *ui.RUNTIME,
    *ui.tiling_options(),
    *ui.POLYGONS,
    ui.resample_option("postclass: infer at the model's pixel size when the input's differs by more than 15%% "
                    "(default)"),
    ui.RESCALE,
    ui.out_folder("change_map_path", "polygons_path", "matrix_path"),
    ui.name_option(),
    ui.Option("polygons_path", "--out-polygons", "Change polygons", "change polygons path (default: OUT/NAME.gpkg)",
           widget="output_vector", name="OUTPUT", result="polygons", suffix=".gpkg"),
    ui.Option("change_map_path", "--out-map", "Change raster", "change raster path (default: OUT/NAME_map.tif)",
           widget="output_raster", name="OUTPUT_MAP", result="change_map", suffix="_map.tif"),
    ui.Option("matrix_path", "--out-matrix", "Transition matrix", "transition matrix CSV (default: "
           "OUT/NAME_transitions.csv)", widget="output_file", name="OUTPUT_MATRIX", result="matrix",
           file_filter="CSV files (*.csv)", suffix="_transitions.csv"),
)  # fmt: skip


@dataclass
class ChangeResult(MapReport):
    change_map: Path
    matrix: Path
    method: str
    classes: list[str]
    transitions_m2: dict[str, dict[str, float]]  # from -> to -> area
    changed_m2: float  # rescaling's keys (MapReport): "<date>:<model input>"

    def lines(self) -> list[str]:
        return [
            f"change map:  {self.change_map}",
            self.polygons_line(),
            f"transitions: {self.matrix}",
            *self.matrix_text().splitlines(),
            f"changed: {self.changed_m2:.1f} m2, device {self.device}, {self.seconds:.1f} s",
            *([f"ran on:      {self.device_detail}"] if self.device_detail else []),
        ]

    def matrix_text(self) -> str:
        names = self.classes
        width = max(12, *(len(n) + 2 for n in names))
        lines = ["from \\ to (m2)".ljust(width) + "".join(n.rjust(width) for n in names)]
        for a in names:
            lines.append(a.ljust(width) + "".join(f"{self.transitions_m2[a][b]:{width}.1f}" for b in names))
        return "\n".join(lines)


def direct_threshold(given: float | None, meta: ModelMeta) -> float:
    """The direct method's change-probability threshold: the one given, else the model's metadata
    ``change.threshold`` (chosen on held-out pairs when it was trained), else 0.5."""
    if given is not None:
        return float(given)
    return float(meta.extra.get("change", {}).get("threshold", 0.5))


def _check_band_counts(before: list[Path], after: list[Path]) -> None:
    if len(before) != len(after):
        raise InputError(
            f"{len(before)} 'before' raster(s) but {len(after)} 'after' raster(s): give one per date "
            "and modality, in the same order"
        )
    for b, a in zip(before, after, strict=True):
        # open_raster: GDAL paths (/vsizip/, /vsicurl/) as landcover takes them, and one line for what is missing
        with open_raster(b, "before raster") as db, open_raster(a, "after raster") as da:
            if db.count != da.count:
                raise InputError(
                    f"before raster {b} has {db.count} band(s) but after raster {a} has "
                    f"{da.count}: both dates need the same bands"
                )


def _date_meta(meta: ModelMeta, date: str) -> ModelMeta:
    return dataclasses.replace(
        meta, inputs=tuple(dataclasses.replace(i, date=None) for i in meta.inputs if i.date == date)
    )


class PairedInputs:
    """Both dates' inputs read as one: feeds for every model input, valid where both dates are valid."""

    def __init__(self, before: AlignedInputs, after: AlignedInputs) -> None:
        self.before, self.after = before, after
        self.grid = before.grid

    def read(self, window: Window):
        fb, vb = self.before.read(window)
        fa, va = self.after.read(window)
        return {**fb, **fa}, vb & va  # model input names are unique across dates


def _one_scale(params: ChangeParams, probe, say) -> str:
    """The rescale mode both dates are read with: one radiometric scale. With ``auto``, a date whose values fit
    the model (8-bit) is used as it is and one that does not (16-bit) is stretched 2-98 %: the same ground then
    differs between the dates (6-15 % "changed" for one scene at 8 and 16 bit, issue #29 item 2). So where only
    one date needs the stretch, both get it, and the log says so."""
    if params.rescale != "auto":
        return params.rescale
    stretched = []
    for (m, kw), paths in zip(probe, (params.before, params.after), strict=True):
        with AlignedInputs(paths, m, params.modalities or None, rescale="auto", **kw) as inputs:
            stretched.append(bool(inputs.stretches))
    if stretched[0] == stretched[1]:
        return "auto"
    which, other = ("before", "after") if stretched[0] else ("after", "before")
    say(
        f"the {which} date does not fit the model's value range and the {other} date does: both are stretched per "
        "band (2-98 %) so that the dates are compared on one scale (--rescale off refuses instead)"
    )
    return "percentile"


@dataclass
class _ClassMapper:
    """A land-cover model set up to map both dates over the change grid, read at its own pixel size."""

    meta: ModelMeta
    plan: object  # engine.resample.ResamplePlan
    tiles: TileGrid  # over the model grid
    runtime: object

    @classmethod
    def make(cls, params: ChangeParams, package, grid, tile: int | None, overlap: int | None, say, rescale_of):
        """``tile``/``overlap``: the user's, for this model (None: its own, the tile fitted to a small raster)."""
        meta = package.meta
        given_tile = tile
        tile = tile or meta.tile_size
        overlap = requested_overlap(tile, overlap, meta.overlap)
        plan = plan_resampling(grid, meta.pixel_size_m, params.resample)
        mgrid = plan.model_grid
        if plan.active:
            mtile, moverlap = fit_tile(tile, overlap, mgrid.height, mgrid.width) if given_tile is None else (
                tile, overlap)  # fmt: skip
            tiles = TileGrid(mgrid.height, mgrid.width, mtile, moverlap)
        else:
            tiles = TileGrid(grid.height, grid.width, tile, overlap)

        def calibration():  # --precision int8, first use: tiles of the "before" date
            kw = {"grid": mgrid, "resampling": plan.read_resampling, "rescale": rescale_of()}
            with AlignedInputs(params.before, meta, params.modalities or None, **kw) as inputs:
                yield from calibration_feeds(tiles, inputs)

        return cls(meta, plan, tiles, make_runtime(package.path, meta.output_name, params.runtime, say, calibration))

    def maps(self, params, rescale, work, stride, say, rescaling, progress, cancelled) -> list[tuple[Path, Path]]:
        """(class map, confidence) of each date on the change grid, in the scratch folder."""
        meta, plan, classes = self.meta, self.plan, self.meta.classes
        out = []
        for k, (date, paths) in enumerate((("before", params.before), ("after", params.after))):
            cls_p, conf_p = work / f"{date}_classes.tif", work / f"{date}_conf.tif"
            m_cls, m_conf = (work / f"{date}_model_{p.name}" for p in (cls_p, conf_p))
            if not plan.active:
                m_cls, m_conf = cls_p, conf_p
            kw = {"grid": plan.model_grid, "resampling": plan.read_resampling, "rescale": rescale}
            with AlignedInputs(paths, meta, params.modalities or None, **kw) as inputs:
                if k == 0:  # once the inputs are known to be usable
                    say(plan.message())
                for msg in inputs.messages:
                    say(f"{date}: {msg}")
                rescaling.update({f"{date}:{n}": v for n, v in inputs.rescaling.items()})
                writer = PredictionWriter(m_cls, m_conf, plan.model_grid, classes, self.tiles.rows.stride)
                try:
                    for b in predict_blocks(
                        inputs, self.runtime.run, meta, self.tiles, params.batch,
                        stage(progress, 0.5 * k, 0.5 * k + 0.5), cancelled,
                    ):  # fmt: skip
                        writer.write(b.row, b.col, b.probs, b.valid)
                finally:
                    writer.close()
            if not writer.counts.sum():  # "0 m2 changed" would read as a finding (issue #29 item 6)
                raise InputError(
                    f"the {date} raster {paths[0]} has no valid pixel where the two dates overlap (all "
                    "nodata or masked): there is nothing to compare"
                )
            if plan.active:
                warp_back(plan, m_cls, m_conf, cls_p, conf_p, classes, stride)
            out.append((cls_p, conf_p))
        return out


def _transitions(classes, counts, px_area: float, direct: bool):
    """Polygon properties per change code, the from x to areas (m2), and the styles' (code, from, to) rows."""
    names = [c.name for c in classes]
    k = len(classes)
    props = {
        1 + a * k + b: {
            "from_class": names[a],
            "to_class": names[b],
            # direct: a change within one class (a roof rebuilt, a field replanted) is still a change
            "transition": f"{names[a]} → {names[b]}" if a != b else f"{names[a]} (changed)",
        }
        for a in range(k)
        for b in range(k)
        if (a != b or direct) and counts[a, b] > 0
    }
    transitions = {names[a]: {names[b]: round(float(counts[a, b]) * px_area, 3) for b in range(k)} for a in range(k)}
    return names, props, transitions, [(code, classes[(code - 1) // k], classes[(code - 1) % k]) for code in props]


def run_change(
    params: ChangeParams,
    progress: Callable[[float, str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    notify: Callable[[str], None] | None = None,
) -> ChangeResult:
    t0 = time.perf_counter()
    say = Messages(notify)
    if params.method not in METHODS:
        raise InputError(f"change method must be one of {', '.join(METHODS)}, not {params.method!r}")
    if not params.before or not params.after:
        raise InputError("change detection needs a 'before' and an 'after' raster")
    package = load_model_package(params.model)
    meta = package.meta
    want = "landcover" if params.method == "postclass" else "change"
    if meta.task != want:
        raise InputError(f"method '{params.method}' needs a {want} model; '{meta.name}' is a {meta.task} model")
    direct = params.method == "direct"
    lc_package = None
    lc_model = params.landcover_model if str(params.landcover_model or "none").lower() != "none" else None
    if direct and lc_model:  # names each change's from and to classes
        lc_package = load_model_package(lc_model)
        if lc_package.meta.task != "landcover":
            raise InputError(f"--landcover-model {lc_model} is a {lc_package.meta.task} model, not a "
                             "land-cover model")  # fmt: skip
    _check_band_counts(params.before, params.after)
    wanted = class_filter(params.classes, meta.classes) if not direct else None
    grid = overlap_grid(params.before[0], params.after[0])
    tile = params.tile or meta.tile_size
    overlap = requested_overlap(tile, params.overlap, meta.overlap)
    tiles = TileGrid(grid.height, grid.width, tile, overlap)
    area_of = AreaCalculator(grid.crs)
    cx, cy = grid.transform * (grid.width / 2, grid.height / 2)
    px_area = area_of(shapely.box(cx, cy, cx + grid.pixel_size[0], cy + grid.pixel_size[1]))

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024):
        finals = params.output_paths()
        for p, suffix in ((finals[0], ".tif"), (finals[2], ".csv")):
            if p.suffix.lower() != suffix:
                raise OutputError(f"output {p} must end in {suffix}")
        driver_for(finals[1], "change polygons output")
        models = [params.model, *([lc_model] if lc_package else [])]
        check_outputs_spare_inputs(list(finals), [*params.before, *params.after, *models], name=params.name)
        rescale = "auto"

        if not direct:
            mapper = _ClassMapper.make(params, package, grid, params.tile, params.overlap, say, lambda: rescale)
            probe = ((meta, {"grid": mapper.plan.model_grid, "resampling": mapper.plan.read_resampling}),) * 2
            resampling = mapper.plan.as_dict()
        else:
            probe = ((_date_meta(meta, "before"), {"grid": grid}), (_date_meta(meta, "after"), {"grid": grid}))
            # Direct change models are applied as they are: their metadata rarely states a pixel size.
            resampling = plan_resampling(grid, meta.pixel_size_m, "off").as_dict()
        rescale = _one_scale(params, probe, say)
        with atomic_outputs(finals[0].parent) as outputs, scratch_folder(finals[0].parent) as work:
            map_tmp, gpkg_tmp, csv_tmp = (outputs.temp_for(p) for p in finals)
            conf_tmp = work / "change_confidence.tif"
            rescaling: dict[str, dict] = {}
            if not direct:
                runtime = mapper.runtime
                classes = meta.classes
                maps = mapper.maps(params, rescale, work, tiles.rows.stride, say, rescaling,
                                   stage(progress, 0.0, 0.8), cancelled)  # fmt: skip
                if wanted is not None:
                    say("changes reported from or to: " + ", ".join(classes[i].name for i in sorted(wanted)))
                counts = combine(
                    maps[0], maps[1], map_tmp, conf_tmp, grid, len(classes), tiles.rows.stride,
                    wanted, params.min_confidence,
                )  # fmt: skip
                names, props, transitions, style_classes = _transitions(classes, counts, px_area, direct=False)
            else:

                def calibration():  # --precision int8, first use: tiles of the "before" date
                    with AlignedInputs(params.before, meta, params.modalities or None, grid=grid,
                                       rescale=rescale) as inputs:  # fmt: skip
                        yield from calibration_feeds(tiles, inputs)

                runtime = make_runtime(package.path, meta.output_name, params.runtime, say, calibration)
                before_meta, after_meta = _date_meta(meta, "before"), _date_meta(meta, "after")
                mapping = params.modalities or None
                threshold = direct_threshold(params.threshold, meta)
                say(f"change where its probability > {threshold:g}"
                    + ("" if params.threshold is not None else " (the model's own threshold)"))  # fmt: skip
                direct_map = work / "direct_change.tif" if lc_package else map_tmp
                with (
                    AlignedInputs(params.before, before_meta, mapping, grid=grid, rescale=rescale) as ib,
                    AlignedInputs(params.after, after_meta, mapping, grid=grid, rescale=rescale) as ia,
                ):
                    for date, inp in (("before", ib), ("after", ia)):
                        for msg in inp.messages:
                            say(f"{date}: {msg}")
                        rescaling.update({f"{date}:{n}": v for n, v in inp.rescaling.items()})
                    counts = write_direct(
                        PairedInputs(ib, ia), runtime, meta, tiles, dataclasses.replace(params, threshold=threshold),
                        direct_map, conf_tmp, grid, stage(progress, 0.0, 0.4 if lc_package else 0.8), cancelled,
                    )  # fmt: skip
                if lc_package:
                    mapper = _ClassMapper.make(params, lc_package, grid, None, None, say, lambda: rescale)
                    maps = mapper.maps(params, rescale, work, tiles.rows.stride, say, {},
                                       stage(progress, 0.4, 0.8), cancelled)  # fmt: skip
                    classes = mapper.meta.classes
                    pairs = label_changes(direct_map, maps[0][0], maps[1][0], map_tmp, grid, len(classes),
                                          tiles.rows.stride)  # fmt: skip
                    say(f"from / to classes: {mapper.meta.name} on both dates")
                    names, props, transitions, style_classes = _transitions(classes, pairs, px_area, direct=True)
                else:
                    names = ["no change", "change"]
                    props = {1: {"from_class": "", "to_class": "", "transition": "change"}}
                    transitions = {
                        "no change": {"no change": round(counts[0] * px_area, 3), "change": 0.0},
                        "change": {"no change": 0.0, "change": round(counts[1] * px_area, 3)},
                    }
                    changed = ClassInfo(1, "change", "#e31a1c")
                    style_classes = [(1, changed, changed)]
            n_poly = polygonize_values(
                map_tmp,
                conf_tmp,
                gpkg_tmp,
                props,
                {"from_class": "str", "to_class": "str", "transition": "str"},
                params.polygons,
                stage(progress, 0.85, 1.0),
                cancelled,
                # direct: the mean change probability of the polygon's pixels
                conf_field="probability" if direct else "confidence",
            )
            write_matrix(csv_tmp, names, transitions)
            to_cog(map_tmp, "NEAREST")
            outputs.temp_for(finals[0].with_suffix(".qml")).write_text(change_raster_qml(style_classes))
            outputs.temp_for(finals[1].with_suffix(".qml")).write_text(change_polygon_qml(style_classes))
            done = outputs.commit()
    if not direct or lc_package:  # postclass: the off-diagonal; direct with classes: every changed pixel
        changed_m2 = sum(v for a, row in transitions.items() for b, v in row.items() if a != b or direct)
    else:
        changed_m2 = transitions["change"]["change"]
    if progress:
        progress(1.0, "done")
    return ChangeResult(
        change_map=done[0],
        polygons=done[1],
        matrix=done[2],
        layer=params.polygons.layer,
        n_polygons=n_poly,
        method=params.method,
        classes=names,
        transitions_m2=transitions,
        changed_m2=round(changed_m2, 3),
        device=runtime.device_label,
        device_detail=runtime.device_detail,
        precision=dict(getattr(runtime, "precision_check", {})),
        seconds=round(time.perf_counter() - t0, 3),
        messages=say.items,
        resampling=resampling,
        rescaling=rescaling,
    )
