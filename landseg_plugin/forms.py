"""The engine's task table as the plugin reads it (engine/tasks.json, written by `python -m engine forms`), and
the one way a front end turns the values it collected into a request. No qgis here: tested on its own.

Processing (processing_tasks.py) and the panel (dock.py) make their parameters and widgets from these options;
both hand this module {option name: value} and get back the request the engine parses with its own parser.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from .engine_process import REQUEST_VERSION, engine_root

OUTPUT_WIDGETS = ("output_raster", "output_vector", "output_points", "output_file", "output_folder")


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads((engine_root() / "engine" / "tasks.json").read_text(encoding="utf-8"))


def tasks() -> dict[str, dict[str, Any]]:
    return schema()["tasks"]


def options(task: str, front_end: bool = True) -> list[dict[str, Any]]:
    """A task's options; front_end: only those Processing and the panel ask for (not CLI-only ones)."""
    return [o for o in tasks()[task]["options"] if o.get("processing", True) or not front_end]


def shared_field(task: str, opt: dict[str, Any]) -> bool:
    """Several options fill this list field together (batch: layers and file patterns): each is optional."""
    return sum(o["field"] == opt["field"] for o in options(task)) > 1


def derived_output(task: str, opt: dict[str, Any]) -> bool:
    """An output the engine places beside another one when it is left out (treetops beside the crowns): not one
    of the paths that stand in for the output folder, so a front end may leave it empty."""
    instead = {f for o in options(task, front_end=False) for f in o.get("instead") or ()}
    return opt["widget"] in OUTPUT_WIDGETS and bool(instead) and opt["field"] not in instead


def default_value(opt: dict[str, Any]) -> Any:
    """What a front end shows before the user changes it: the dataclass default, an unset number's sentinel,
    a shipped model's path on this machine."""
    value = opt["default"]
    if value is None and opt.get("unset") is not None:
        return opt["unset"]
    if opt["widget"] == "model" and isinstance(value, str):
        return str(engine_root() / value)
    if opt["widget"] in ("band_mapping", "text_list") and value in (None, []):
        return ""
    return value


def split_text(text: str) -> list[str]:
    """'buildings, river; trees' -> ['buildings', 'river', 'trees'] (the engine trims and checks them)."""
    return [t.strip() for t in re.split(r"[,;]", text) if t.strip()]


def _value(opt: dict[str, Any], value: Any) -> Any:
    """A collected value as the request holds it; None = "leave the engine's default"."""
    if value is None or value == "" or value == []:
        return None
    if opt.get("unset") is not None and isinstance(value, (int, float)) and value <= opt["unset"]:
        return None
    widget = opt["widget"]
    if widget == "text_list":
        return split_text(value) or None
    if widget == "band_mapping":
        return value.strip() or None  # the text form, parsed and checked by the engine
    if opt["list"] and not isinstance(value, (list, tuple)):
        return [str(value)]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if widget in ("output_vector", "output_points"):
        suffixes = tuple(schema().get("vector_suffixes", (".gpkg",)))
        return value if value.lower().endswith(suffixes) else str(Path(value).with_suffix(".gpkg"))
    if widget == "output_file" and opt.get("suffix", "").endswith(".csv") and not value.lower().endswith(".csv"):
        return str(Path(value).with_suffix(".csv"))
    return value


def build_request(task: str, values: dict[str, Any]) -> dict[str, Any]:
    """{option name: value} -> the task's request. Options sharing a list field are joined; dotted fields are
    nested; outputs given as paths also give the output folder (the first output's folder)."""
    params: dict[str, Any] = {}
    names = {o["field"] for o in options(task, front_end=False)}
    for opt in options(task):
        value = _value(opt, values.get(opt["name"]))
        if value is None:
            continue
        *parents, last = opt["field"].split(".")
        into = params
        for part in parents:
            into = into.setdefault(part, {})
        if opt["list"] and last in into:
            into[last] = into[last] + value
        else:
            into[last] = value
    if "out_dir" in names and "out_dir" not in params:
        written = [params[o["field"]] for o in options(task) if o["widget"] in OUTPUT_WIDGETS and o["field"] in params]
        if written:
            params["out_dir"] = str(Path(written[0]).parent)
    return {"version": REQUEST_VERSION, "task": task, "params": params}


def flag_words() -> dict[str, str]:
    """CLI flags named in engine messages -> the Processing parameter that sets the same thing (first task wins:
    the same flag means the same parameter everywhere)."""
    words: dict[str, str] = {}
    for task in tasks():
        for opt in options(task):
            if opt["flag"]:
                words.setdefault(opt["flag"], f"the {opt['label'].split(' (')[0].lower()} parameter ({opt['name']})")
    return words


def result_layers(task: str, result: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(data source, layer name, visible) for each layer a task's result holds, top of the group first."""
    layers = []
    for source, layer, title, visible in tasks()[task]["layers"]:
        if result.get(source):
            layers.append((f"{result[source]}|layername={result[layer]}" if layer else result[source], title, visible))
    return layers
