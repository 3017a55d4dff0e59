"""The typed request seam: ``python -m engine run --request request.json`` (or ``-`` for stdin).

A request names a task and gives its parameters dataclass as JSON; the answer is the task's result as JSON. Both
carry a version, so a front end and an engine of different ages notice instead of misreading each other::

    {"version": 1, "task": "landcover",
     "params": {"inputs": ["ortho.tif"], "model": "models/landcover_unet_lite0.onnx", "out_dir": "out",
                "tile": 512, "runtime": {"device": "cpu", "threads": 2}}}
    -> {"version": 1, "task": "landcover", "result": {"class_map": "out/landcover_classes.tif", ...}}

Fields are checked against the dataclass's type hints: an unknown field or a value of the wrong type is a
one-line error naming it (``params.runtime.threads: expected an integer, not "two"``). ``TASKS`` (engine.tasks) is
the one table of tasks a request can name.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any

from .errors import InputError
from .tasks import TASKS

REQUEST_VERSION = 1


# --- JSON -> dataclass, checked against the type hints ---------------------------------------------------------


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)  # JSON true is not 1


# type -> (does a JSON value fit, make the value, what was expected: for the error)
SCALARS: dict[Any, tuple] = {
    # GDAL virtual paths (/vsicurl/https://...) stay strings: Path would fold their double slashes.
    Path: (
        lambda v: isinstance(v, str) and bool(v),
        lambda v: v if v.startswith("/vsi") or "://" in v else Path(v),
        "a path (a string)",
    ),
    bool: (lambda v: isinstance(v, bool), bool, "true or false"),
    int: (lambda v: _number(v) and isinstance(v, int), int, "an integer"),
    float: (_number, float, "a number"),
    str: (lambda v: isinstance(v, str), str, "a string"),
}


def _text_forms() -> dict:
    from .raster_input import BandSource, parse_modalities

    return {BandSource: BandSource.parse, dict[str, BandSource]: parse_modalities}


# Types a request may also give as text, parsed by the engine's own parser: a band mapping "rgb=1,2,3; nir=2:1".
TEXT_FORMS: dict = _text_forms()


def convert(value: Any, tp, where: str) -> Any:
    """``value`` (parsed JSON) as type ``tp``, or a one-line InputError naming ``where``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert(value, arg, where)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0] if len(errors) == 1 else f"{where}: {json.dumps(value)} fits none of {tp}")
    if tp in SCALARS:
        accepts, make, expected = SCALARS[tp]
        if accepts(value):
            return make(value)
        raise InputError(f"{where}: expected {expected}, not {json.dumps(value)}")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise InputError(f"{where}: expected a list, not {json.dumps(value)}")
        item = args[0] if args else Any
        items = [convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if isinstance(value, str) and tp in TEXT_FORMS:  # the same text the CLI and the panel take
        return TEXT_FORMS[tp](value)
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected an object, not {json.dumps(value)}")
        return {str(k): convert(v, args[1] if args else Any, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_json(tp, value, where)
    raise InputError(f"{where}: values of type {_type_name(tp)} cannot be given in a request")


def from_json(cls: type, doc: Any, where: str = "params"):
    """A parameters dataclass from a JSON object: every field checked, unknown and missing ones named."""
    if not isinstance(doc, dict):
        raise InputError(f"{where}: expected an object with the fields of {cls.__name__}, not {json.dumps(doc)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(doc) - set(fields))
    if unknown:
        raise InputError(f"{where}: unknown field {unknown[0]!r} (fields of {cls.__name__}: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in doc:
            kwargs[name] = convert(doc[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise InputError(f"{where}: missing required field {name!r}")
    return cls(**kwargs)


def to_json(obj: Any) -> Any:
    """A parameters (or result) dataclass as plain JSON values: paths as strings, tuples as lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    return obj


def make_request(task: str, params: Any) -> dict:
    return {"version": REQUEST_VERSION, "task": task, "params": to_json(params)}


def parse_request(doc: Any) -> tuple[str, Any]:
    """(task, parameters dataclass) from a request document, or a one-line error naming what is wrong."""
    if not isinstance(doc, dict):
        raise InputError("request: expected a JSON object with version, task and params")
    unknown = sorted(set(doc) - {"version", "task", "params"})
    if unknown:
        raise InputError(f"request: unknown field {unknown[0]!r} (fields: version, task, params)")
    if doc.get("version") != REQUEST_VERSION:
        raise InputError(f"request: version must be {REQUEST_VERSION} (this engine's), not {doc.get('version')!r}")
    task = doc.get("task")
    if task not in TASKS:
        raise InputError(f"request: task must be one of {', '.join(TASKS)}, not {task!r}")
    return task, from_json(task_entry(task).params_class(), doc.get("params", {}), "params")


def task_entry(task: str):
    """The task's row, its module imported: adapt's needs the training extra, which may not be installed."""
    entry = TASKS[task]
    try:
        entry.params_class()
    except ImportError:
        raise InputError(
            f"task {task!r} needs the training code (export/) and its extra (torch): run `make dev` in the LandSeg "
            "folder"
        ) from None
    return entry


def read_request(source: str) -> Any:
    import sys

    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"request {source}: cannot read it ({exc.strerror})") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError(f"request {source}: not valid JSON ({exc})") from None


def run_task(task: str, params: Any, **hooks) -> Any:
    """Run a task's function with the hooks (progress, notify, cancelled) it accepts; None hooks are left out."""
    run = TASKS[task].run_function()
    accepted = inspect.signature(run).parameters
    return run(params, **{k: v for k, v in hooks.items() if k in accepted and v is not None})


def run_request(doc: Any, progress=None, notify=None, cancelled=None) -> dict:
    """Run a request; the answer carries the version, the task and the task's result."""
    task, params = parse_request(doc)
    result = run_task(task, params, progress=progress, notify=notify, cancelled=cancelled)
    body = json.loads(result.to_json()) if hasattr(result, "to_json") else to_json(result)
    # The result in words (as the CLI prints it): Processing logs these lines.
    return {"version": REQUEST_VERSION, "task": task, "result": body, "lines": result.lines()}
