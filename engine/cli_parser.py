"""The command line's argument parser, made from the task table (engine.tasks; its JSON form engine/tasks.json,
so building the parser imports no task module): one subcommand per task, one argument per option row. Parsed
arguments become the task's parameters through the request parser, the same typed path the plugin's requests take.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .errors import InputError
from .model_package import DEFAULT_LANDCOVER_MODEL
from .raster_input import BandSource, raster_path
from .tasks import load_schema

DEFAULT_MODEL = DEFAULT_LANDCOVER_MODEL
PROGRESS = ("bar", "jsonl", "none")
SCALAR_TYPES = {"int": int, "float": float, "str": str, "path": Path}


def _modality(text: str) -> str:
    """One --modality item, checked at once (argparse names the option); the job parses the joined text."""
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise argparse.ArgumentTypeError(f"expected NAME=[RASTER:]BANDS (e.g. rgb=1,2,3 or ndsm=2:1), got {text!r}")
    try:
        BandSource.parse(spec)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _dest(opt: dict) -> str:
    return opt["field"].replace(".", "__")


def _add_option(p: argparse.ArgumentParser, opt: dict) -> None:
    kw: dict[str, Any] = {"help": opt["help"].replace("%", "%%") or None, "default": argparse.SUPPRESS}
    widget, kind = opt["widget"], opt["type"]
    if opt.get("choices"):
        kw["choices"] = opt["choices"]
    if kind == "bool":
        kw["action"] = "store_false" if opt.get("negate") else "store_true"
    elif widget == "band_mapping":
        kw.update(action="append", type=_modality)
    elif widget == "text_list":
        kw["type"] = str
    else:
        kw["type"] = raster_path if widget in ("raster", "rasters") else SCALAR_TYPES[kind]
        if opt["list"]:
            kw["action"] = "append"
    if kind != "bool":
        kw["metavar"] = opt.get("metavar") or (opt["flag"].lstrip("-").upper().replace("-", "_") or None)
    if not opt["flag"]:  # positional
        kw.pop("default")
        p.add_argument(_dest(opt), **kw)
        return
    kw["dest"] = _dest(opt)
    kw["required"] = opt["required"] and not opt.get("instead")
    flags = [opt["flag"], *([opt["short"]] if opt.get("short") else [])]
    p.add_argument(*flags, **kw)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="landseg", description="LandSeg inference engine")
    parser.add_argument("--version", action="version", version=f"landseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    tasks = load_schema()["tasks"]
    for name, task in tasks.items():
        p = sub.add_parser(name, help=task["help"], description=task["about"])
        for opt in task["options"]:
            if opt.get("cli", True):
                _add_option(p, opt)
        p.add_argument("--progress", choices=PROGRESS, default="bar")
        p.add_argument("--json", action="store_true", help="print the result as JSON")

    rq = sub.add_parser(
        "run", help="run a typed request (JSON: version, task, params) and print the JSON result",
        description="Tasks: " + ", ".join(f"{k} ({v['help']})" for k, v in tasks.items())
        + ". params are the fields of the task's parameters dataclass (engine/tasks.py names it).",
    )  # fmt: skip
    rq.add_argument("--request", required=True, help="request file, or - for standard input")
    rq.add_argument("--progress", choices=PROGRESS, default="none")
    ds = sub.add_parser("describe", help="validate a model package and print its metadata as JSON")
    ds.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    sub.add_parser("forms", help="print the task table as JSON (what engine/tasks.json holds)")
    return parser


def _text_list(opt: dict, text: str) -> list[str]:
    items = [t.strip() for t in text.replace(";", ",").split(",") if t.strip()]
    if not items:  # "--prompts ','" is a mistake, not "every class"
        raise InputError(f"{opt['flag']} {text!r} holds nothing: give comma-separated names or leave it out")
    return items


def params_document(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments of a task as its parameters' JSON object (dotted fields nested)."""
    options = [o for o in load_schema()["tasks"][task]["options"] if o.get("cli", True)]
    given = vars(args)
    doc: dict[str, Any] = {}
    for opt in options:
        if _dest(opt) not in given:
            continue
        value = given[_dest(opt)]
        if opt["widget"] == "band_mapping":
            value = "; ".join(value)  # the text form, parsed (and checked for repeats) by the engine
        elif opt["widget"] == "text_list":
            value = _text_list(opt, value)
        elif isinstance(value, list):
            value = [str(v) for v in value]
        elif isinstance(value, Path):
            value = str(value)
        *parents, last = opt["field"].split(".")
        into = doc
        for part in parents:
            into = into.setdefault(part, {})
        into[last] = value
    for opt in options:
        if opt.get("instead") and opt["field"] not in doc:
            if not all(f in doc for f in opt["instead"]):
                flags = [o["flag"] for o in options if o["field"] in opt["instead"]]
                raise InputError(f"give an output folder ({opt['flag']}) or all of {', '.join(flags)}")
            doc[opt["field"]] = "."
    return doc
