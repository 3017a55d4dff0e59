"""The one table of tasks. A task is a module (parameters dataclass, run function, OPTIONS rows, a result with
`lines()`) and one row here; the CLI, requests, Processing and the panel are all made from this table.

`schema()` is the table as JSON for the front ends that cannot import the engine (the plugin): `python -m engine
forms` writes it to engine/tasks.json, which the CLI reads as well (no task module is imported to build the
parser, so start-up stays fast), and a test fails when the file is stale.
"""

from __future__ import annotations

import functools
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parent / "tasks.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TaskEntry:
    module: str  # holds the names below; imported only when the task is asked for (adapt needs torch)
    params: str  # its parameters dataclass
    run: str  # its run function; called with the keyword arguments it accepts of progress/notify/cancelled
    title: str  # Processing's and the panel's name for it
    help: str  # one line: the CLI's subcommand help
    about: str  # a paragraph: Processing's help panel
    # The panel's layers from a result: (result field of the data source, result field of its layer name or "",
    # layer title, visible), top of the group first.
    layers: tuple[tuple[str, str, str, bool], ...] = ()
    options: str = "OPTIONS"
    result_outputs: dict = field(default_factory=dict)  # result field -> (Processing output name, label)

    def _get(self, name: str):
        return getattr(importlib.import_module(self.module), name)

    def params_class(self) -> type:
        return self._get(self.params)

    def run_function(self):
        return self._get(self.run)

    def option_rows(self) -> tuple:
        return self._get(self.options)


TASKS: dict[str, TaskEntry] = {
    "landcover": TaskEntry(
        "engine.jobs.landcover", "LandcoverParams", "run_landcover", "Land cover",
        "land-cover class map, confidence and polygons from rasters",
        "Maps land cover from one or more raster layers with a local ONNX model and writes a class-map GeoTIFF, a "
        "confidence GeoTIFF and styled polygons (class id, class name, area in m², mean confidence). The first "
        "raster sets the output grid; others are warped onto it.\n\nBand mapping: which bands feed which model "
        "input, as NAME=[RASTER:]BANDS separated by ';', with raster and band numbers starting at 1 in the order "
        "of the input layers, e.g. 'rgb=1:1,2,3; nir=1:4; ndsm=2:1'. Empty: the first raster's bands in order.\n"
        "Tile 0, overlap -1 and minimum area -1 use the model's defaults (minimum area: 9 pixels).\nModels to fuse "
        "(advanced): more land-cover models run on the same tiles; per class, the most confident model wins "
        "(class-wise confidence-guided fusion). Each takes the band-mapping entries named after its own inputs' "
        "modalities.",
        layers=(("polygons", "layer", "land cover polygons", True), ("class_map", "", "class map", True),
                # On top of the class map the confidence would hide it: added, but switched off.
                ("confidence", "", "confidence", False)),
    ),
    "change": TaskEntry(
        "engine.jobs.change", "ChangeParams", "run_change", "Change detection",
        "change between a 'before' and an 'after' raster",
        "Change between a 'before' and an 'after' raster (any CRS and resolution: both are aligned to the before "
        "raster's grid over their overlap). 'postclass' maps land cover on both dates and reports from -> to "
        "transitions (polygons, change raster, transition matrix CSV, also printed here); 'direct' runs a "
        "bi-temporal change model (task 'change') and thresholds its change probability.",
        layers=(("polygons", "layer", "change polygons", True), ("change_map", "", "change raster", True)),
    ),
    "treecrowns": TaskEntry(
        "engine.jobs.treecrowns", "TreeCrownParams", "run_treecrowns", "Tree crowns",
        "individual tree crowns from an RGB image (+ optional CHM/nDSM)",
        "Individual tree crowns (score, height max/mean from the CHM, area, diameter) from an RGB image and an "
        "optional canopy height model (nDSM, metres, same CRS). The shipped crown detector finds crowns in the "
        "image; with a land-cover model instead, tree tops are local maxima of the CHM (or of the distance inside "
        "the vegetation mask) and crowns grow from them by watershed, or by SAM when a SAM folder exported by "
        "`python -m export sam` is given.",
        layers=(("treetops", "treetops_layer", "treetops", True), ("crowns", "layer", "tree crowns", True)),
    ),
    "chm": TaskEntry(
        "engine.jobs.chm", "ChmParams", "build_chm", "Canopy height model from LiDAR",
        "canopy height model (m) from a LiDAR LAS/LAZ file",
        "Canopy height (m) from a LAS/LAZ point cloud: highest return per cell minus a terrain model from the "
        "ground returns (class 2, or a ground filter when the file has no ground class). The CRS is read from "
        "the file; give one when its header has none.",
        layers=(("chm", "", "canopy height", True),),
    ),
    "accuracy": TaskEntry(
        "engine.jobs.accuracy", "AccuracyParams", "run_accuracy", "Accuracy assessment of a class map",
        "accuracy of a class map against reference points/polygons, or a sample",
        "Reference points or polygons (a class field holding class names or ids) against a class map: confusion "
        "matrix, overall/user's/producer's accuracy, IoU, kappa, and area-adjusted accuracy and class areas with "
        "95 % confidence intervals (Olofsson et al. 2014). With a sample size instead of a reference layer: a "
        "stratified random sample of points to label. Class names come from a LandSeg class map, or from 'Class "
        "names' (ids 0, 1, 2 ...) for any classified raster.",
        layers=(("sample", "", "accuracy sample", True),),
    ),
    "batch": TaskEntry(
        "engine.jobs.batch", "BatchParams", "run_batch", "Batch: run a task on many rasters (Dask)",
        "a task on many rasters or on one huge mosaic, with Dask distributed",
        "Runs land cover or tree crowns on every raster of a list of layers and/or of file patterns (e.g. "
        "/data/tiles/*.tif), one subfolder of outputs per input, on Dask distributed: a local cluster sized to "
        "this machine, or the cluster whose scheduler address is given (tcp://host:8786). Rasters larger than the "
        "chunk size (model pixels on a side) are cut into chunks run in parallel and stitched into one class map "
        "and one polygon layer. Re-running into the same folder does only what is missing; inputs that fail are "
        "listed in batch_summary.json while the others finish.",
        result_outputs={"summary": ("SUMMARY", "Batch summary (JSON)")},
    ),
    "adapt": TaskEntry(
        "export.adapt", "AdaptParams", "run_adapt", "Adapt the land-cover model to my labels",
        "fine-tune a land-cover model on your labelled polygons (needs torch)",
        "Fine-tunes a land-cover model (default: the shipped one) on labelled polygons or points drawn on the "
        "raster(s): label values are matched to the model's classes by name or meaning, a value that matches none "
        "adds a class. 20 % of the labels (by location) are held out and the per-class IoU before/after is written "
        "into the new model's card with a picture of held-out chips (image | before | after | labels); the best "
        "state on them is kept. Minutes: the whole run. Pixel size: 0 keeps the base model's (0.5 m); a finer one "
        "(e.g. 0.15 m for drone imagery) lets the new model separate small roofs. Needs the training extra "
        "(torch): `make dev`.",
    ),
}  # fmt: skip


def schema() -> dict:
    """Every task's title, help and options (engine.task_options.describe_option) as one JSON document."""
    from .task_options import describe_option
    from .vector_formats import DRIVERS

    tasks = {}
    for name, entry in TASKS.items():
        cls = entry.params_class()
        tasks[name] = {
            "title": entry.title,
            "help": entry.help,
            "about": entry.about,
            "options": [describe_option(cls, opt) for opt in entry.option_rows()],
            "layers": [list(layer) for layer in entry.layers],
            "result_outputs": {k: list(v) for k, v in entry.result_outputs.items()},
        }
    return {"version": SCHEMA_VERSION, "vector_suffixes": list(DRIVERS), "tasks": tasks}


def schema_text() -> str:
    """The schema as text, one option per line: a change to one option is a one-line diff."""
    doc = schema()
    out = [f'{{"version": {doc["version"]}, "vector_suffixes": {json.dumps(doc["vector_suffixes"])}, "tasks": {{']
    for i, (name, task) in enumerate(doc["tasks"].items()):
        head = {k: v for k, v in task.items() if k != "options"}
        out.append(f' {json.dumps(name)}: {json.dumps(head, ensure_ascii=False)[:-1]}, "options": [')
        out += [f"  {json.dumps(o, ensure_ascii=False)}," for o in task["options"]]
        out[-1] = out[-1].rstrip(",")
        out.append("]}" + ("," if i < len(doc["tasks"]) - 1 else ""))
    return "\n".join([*out, "}}", ""])


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    """The committed description (engine/tasks.json), read once per process (the CLI's parser and its conversion
    of the parsed arguments both use it); `python -m engine forms` remakes it. Callers only read it."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
