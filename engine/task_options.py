"""How a task's parameters are asked for: one `Option` row per parameter, read by every front end.

The CLI (engine.cli_parser), the Processing algorithms and the panel (landseg_plugin.forms) are generated from
these rows and from the parameters dataclass they point at, so a parameter is declared once: its type and default
come from the dataclass, its flag, label, help and widget from the row. The plugin cannot import the engine (QGIS's
Python and the engine's wheels clash), so it reads the same description as JSON: `python -m engine forms` writes
it to landseg_plugin/resources/tasks.json, and a test fails when that file is stale.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model_package import MODELS_DIR
from .resample import MODES as RESAMPLE_MODES
from .runtime import CONV_SEARCHES, DEVICES, PRECISIONS, VIEWS
from .value_range import RESCALE_MODES

# How a front end asks for a value. "" means: from the field's type (number, text, true/false, file).
WIDGETS = (
    "",
    "raster",  # one raster layer (a list field then holds one path)
    "rasters",  # several raster layers
    "vector",  # a vector layer (points/polygons)
    "field",  # a field of the vector layer named by `parent`
    "file",
    "folder",
    "model",  # a model file (.onnx/.engine/.plan); the panel's model list serves it
    "models",  # several model files
    "band_mapping",  # NAME=[RASTER:]BANDS text; the panel's inputs table serves it
    "text_list",  # comma-separated text -> a list of strings
    "crs",
    "output_raster",
    "output_vector",  # polygons
    "output_points",  # a point layer (treetops)
    "output_file",
    "output_folder",
)


@dataclass(frozen=True)
class Option:
    field: str  # dotted path in the task's parameters dataclass: "runtime.device"
    flag: str  # CLI flag, e.g. "--input"; "" = a positional argument
    label: str  # Processing's and the panel's label
    help: str = ""  # CLI help and tooltips; a "%(default)s" is filled from the dataclass
    short: str = ""  # CLI short flag, e.g. "-i"
    widget: str = ""
    name: str = ""  # Processing parameter name; default: the field's last part, upper case
    choices: tuple[str, ...] = ()
    advanced: bool = False  # Processing: under "Advanced parameters"
    panel: bool = False  # the panel shows it (besides what every task shows: layers, model, output folder)
    unset: float | None = None  # the number a Processing/panel number box shows for "None" (the engine's default)
    minimum: float | None = None
    maximum: float | None = None
    result: str = ""  # output widgets: the result field holding what was written
    file_filter: str = ""  # file widgets: e.g. "LiDAR (*.las *.laz)"
    parent: str = ""  # field widget: the Processing name of its vector layer option
    negate: bool = False  # a boolean whose flag switches it off ("--no-dashboard")
    cli: bool = True  # the CLI has it
    processing: bool = True  # Processing and the panel have it
    metavar: str = ""
    suffix: str = ""  # output widgets: the file ending the panel gives a path of its own making
    # out_dir: may be left out on the CLI when all of these fields are given (then the current folder)
    instead: tuple[str, ...] = ()


# --- shared rows ------------------------------------------------------------------------------------------------

MODEL_FILTER = "Models (*.onnx *.engine *.plan)"


def tiling_options(batch: bool = True) -> tuple[Option, ...]:
    rows = (
        Option("tile", "--tile", "Tile size (0: model default)", "tile size in pixels (default: the model's)",
               unset=0, minimum=0, panel=True),
        Option("overlap", "--overlap", "Tile overlap (-1: model default)",
               "tile overlap in pixels (default: the model's)", unset=-1, minimum=-1, panel=True),
    )  # fmt: skip
    if batch:
        rows += (Option("batch", "--batch", "Batch size", "tiles per inference batch (default: %(default)s)",
                        minimum=1, panel=True),)  # fmt: skip
    return rows


DEVICE = Option("runtime.device", "--device", "Device", "default: %(default)s", choices=DEVICES, panel=True)
RUNTIME = (
    DEVICE,
    Option("runtime.threads", "--threads", "CPU threads (0: all cores)", "CPU threads (0: all cores)", minimum=0,
           advanced=True),
    Option("runtime.precision", "--precision", "Precision (int8: faster on the CPU; fp16: GPU)",
           "fp32 (default); int8: quantized on the CPU, calibrated on this raster the first time and cached next to "
           "the model; fp16: GPU only", choices=PRECISIONS, advanced=True),
    Option("runtime.views", "--views", "Test-time views (flips: 4 flipped runs averaged, 4x the model time)",
           "none (default): the model once; flips: the model on 4 flips of each batch, averaged (measured on the "
           "shipped land-cover model in MODEL_CARD.md)", choices=VIEWS, advanced=True),
    Option("runtime.cache_dir", "--trt-cache", "TensorRT engine cache folder",
           "engine/timing cache folder for onnxruntime's TensorRT provider", widget="folder", advanced=True,
           name="TRT_CACHE"),
    Option("runtime.conv_search", "--conv-search", "GPU convolution algorithm search (cuDNN)",
           "how the CUDA provider picks cuDNN convolution algorithms: heuristic (default: at once), exhaustive "
           "(times each one at every new batch shape: seconds per shape, for long runs of one shape), default",
           choices=CONV_SEARCHES, advanced=True),
)  # fmt: skip
POLYGONS = (
    Option("polygons.min_area_m2", "--min-area", "Minimum polygon area, m² (-1: 9 pixels)",
           "drop polygons smaller than this, in m2 (default: 9 pixels)", unset=-1, minimum=-1, name="MIN_AREA"),
    Option("polygons.simplify_px", "--simplify", "Simplify tolerance (pixels)",
           "simplify tolerance in pixels (default: %(default)s)", minimum=0, advanced=True, name="SIMPLIFY"),
)  # fmt: skip


def resample_option(help_text: str) -> Option:
    return Option("resample", "--resample", "Resample to the model's pixel size (auto: when the input's differs "
                  "by more than 15%)", help_text, choices=RESAMPLE_MODES, panel=True)  # fmt: skip


RESCALE = Option(
    "rescale", "--rescale", "Values outside the model's range (auto: 2-98% stretch when they do not fit)",
    "values outside the model's range (16-bit, reflectance): auto = 2-98%% stretch per band when they do not fit "
    "(default), percentile = always, off = never (then an error)", choices=RESCALE_MODES, advanced=True,
)  # fmt: skip


def band_mapping(help_text: str = "") -> Option:
    return Option(
        "modalities", "--modality", "Band mapping (e.g. rgb=1:1,2,3; nir=1:4)",
        help_text or "map bands to a model input, e.g. rgb=1,2,3  nir=1:4  ndsm=2:1 (numbers start at 1)",
        short="-m", widget="band_mapping", name="BANDS", metavar="NAME=[RASTER:]BANDS",
    )  # fmt: skip


def out_folder(*instead: str) -> Option:
    """The output folder. With `instead` (the explicit output paths' fields) the CLI may leave it out when all of
    those are given; Processing always gives those and never a folder, the panel gives a folder."""
    return Option("out_dir", "--out", "Output folder", "output folder" + (" (or give every --out-* path)" if instead
                  else ""), short="-o", widget="folder", processing=False, instead=instead)  # fmt: skip


def name_option(default_help: str = "output base name (default: %(default)s)") -> Option:
    return Option("name", "--name", "Output base name", default_help, processing=False)


def output_paths(params, options: tuple[Option, ...], fields: tuple[str, ...]) -> tuple[Path, ...]:
    """Each output field's path: as given, or <out_dir>/<name><suffix of its option row>."""
    suffix = {o.field: o.suffix for o in options}
    return tuple(Path(getattr(params, f) or Path(params.out_dir) / f"{params.name}{suffix[f]}") for f in fields)


# --- from rows + dataclass to one description -------------------------------------------------------------------


def _field_type(cls: type, path: str) -> tuple[Any, Any]:
    """(type hint, default) of a dotted field of a dataclass; default MISSING when it has none."""
    head, _, rest = path.partition(".")
    hints = typing.get_type_hints(cls)
    if head not in hints:
        raise KeyError(f"{cls.__name__} has no field {head!r}")
    f = {f.name: f for f in dataclasses.fields(cls)}[head]
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = dataclasses.MISSING
    if not rest:
        return hints[head], default
    inner_hint, inner_default = _field_type(hints[head], rest)
    if default is not dataclasses.MISSING and dataclasses.is_dataclass(default):
        inner_default = _get(default, rest)
    return inner_hint, inner_default


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _describe_type(tp) -> tuple[str, bool, bool]:
    """(scalar kind, is a list, may be None) of a field's type hint."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
    is_list = typing.get_origin(tp) in (list, tuple)
    if is_list:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is dict:
        return "mapping", False, optional
    kind = {int: "int", float: "float", bool: "bool", str: "str", Path: "path"}.get(tp, "str")
    return kind, is_list, optional


def _json_default(value: Any) -> Any:
    if value is dataclasses.MISSING:
        return None
    if isinstance(value, Path):
        try:  # shipped models: relative to the engine folder, which the plugin resolves on its machine
            return str(value.relative_to(MODELS_DIR.parent))
        except ValueError:
            return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_default(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_default(v) for k, v in value.items()} or None
    return value


def describe_option(cls: type, opt: Option) -> dict[str, Any]:
    """One option as the front ends read it (the JSON in landseg_plugin/resources/tasks.json)."""
    tp, default = _field_type(cls, opt.field)
    kind, is_list, optional = _describe_type(tp)
    doc = {
        "field": opt.field,
        "flag": opt.flag,
        "name": opt.name or opt.field.split(".")[-1].upper(),
        "label": opt.label,
        "help": opt.help.replace("%(default)s", str(_json_default(default))).replace("%%", "%"),
        "type": kind,
        "list": is_list,
        "optional": optional or default is not dataclasses.MISSING,
        "required": default is dataclasses.MISSING,
        "default": _json_default(default),
        "widget": opt.widget,
    }
    extras = {
        "choices": list(opt.choices),
        "advanced": opt.advanced,
        "panel": opt.panel,
        "unset": opt.unset,
        "minimum": opt.minimum,
        "maximum": opt.maximum,
        "result": opt.result,
        "file_filter": opt.file_filter,
        "parent": opt.parent,
        "negate": opt.negate,
        "cli": opt.cli,
        "processing": opt.processing,
        "suffix": opt.suffix,
        "instead": list(opt.instead),
        "short": opt.short,
        "metavar": opt.metavar,
    }
    # Only what differs from an Option's defaults: the JSON stays short enough to read in a review.
    plain = Option("x", "", "")
    doc.update({k: v for k, v in extras.items() if v != getattr(plain, k) and v != []})
    return doc
