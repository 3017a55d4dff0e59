"""Command line: ``python -m engine landcover --input ortho.tif --out results/``: a subcommand per task of the
task table (engine.tasks; the parser is engine.cli_parser), plus ``run`` (a typed request), ``describe`` (a model's
metadata) and ``forms`` (the task table as JSON).

Exit codes: 0 success, 2 bad input or usage, 3 bad model, 4 output not writable, 5 a batch finished with some
inputs failed (the result lists them), 130 cancelled, 1 internal error. Errors are one line on stderr
(``landseg: error: ...``), never a traceback, unless LANDSEG_DEBUG=1 is set.

``--progress jsonl`` prints one JSON object per line on stdout ({"progress": 0.42, "message": ...}, then
{"result": {...}}): the QGIS plugin runs the engine as a subprocess and reads these lines.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback

from .cli_parser import build_parser, params_document
from .errors import Cancelled, LandSegError


class Reporter:
    """Progress and messages for the terminal (tqdm bar) or for the plugin (JSON lines on stdout)."""

    def __init__(self, mode: str, desc: str) -> None:
        self.jsonl = mode == "jsonl"
        self.mode, self.desc = mode, desc
        self.bar = None  # started by the first progress report: messages before it (prompts, errors) stay clean

    def notify(self, msg: str) -> None:
        if self.jsonl:
            print(json.dumps({"message": msg}), flush=True)
        elif self.bar is not None:
            self.bar.write(f"landseg: {msg}", file=sys.stderr)  # above the bar, not inside it
        else:
            print(f"landseg: {msg}", file=sys.stderr)

    def progress(self, frac: float, msg: str) -> None:
        if self.mode == "bar" and self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=100,
                desc=self.desc,
                file=sys.stderr,
                leave=False,
                bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}{postfix}]",
            )
        if self.jsonl:
            print(json.dumps({"progress": round(frac, 4), "message": msg}), flush=True)
        elif self.bar is not None:
            self.bar.n = round(100 * frac, 1)
            self.bar.set_postfix_str(msg, refresh=True)

    def result(self, result, as_json: bool, lines: list[str]) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl:
            print(json.dumps({"result": json.loads(result.to_json())}), flush=True)
        elif as_json:
            print(result.to_json())
        else:
            print("\n".join(lines))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _describe(args: argparse.Namespace) -> int:
    from . import __version__
    from .model_package import load_model_package, meta_to_dict

    doc = meta_to_dict(load_model_package(args.model).meta) | {"engine_version": __version__}
    # 384 numbers per class say nothing to a reader: report that they are there.
    if "class_embeddings" in doc:
        doc["class_embeddings"] = f"{len(doc['class_embeddings'])} x {len(doc['class_embeddings'][0])}"
    print(json.dumps(doc))
    return 0


def _run_task(task: str, args: argparse.Namespace) -> int:
    """Any task of engine.tasks: arguments -> its parameters (through the request parser) -> run -> result."""
    from .request import from_json, run_task, task_entry

    params = from_json(task_entry(task).params_class(), params_document(task, args), "arguments")
    rep = Reporter(args.progress, task if task != "batch" else f"batch {params.task}")
    try:
        result = run_task(task, params, progress=rep.progress, notify=rep.notify)
    finally:
        rep.close()
    rep.result(result, args.json, result.lines())
    return _exit_code(result)


def _exit_code(result) -> int:
    """5 when a batch finished with some inputs failed (listed in the result; the others are done), else 0."""
    failed = result.get("failed") if isinstance(result, dict) else getattr(result, "failed", None)
    return 5 if failed else 0


def _run_request(args: argparse.Namespace) -> int:
    from .request import read_request, run_request

    doc = read_request(args.request)
    rep = Reporter(args.progress, f"run {doc.get('task') if isinstance(doc, dict) else ''}")
    try:
        answer = run_request(doc, progress=rep.progress, notify=rep.notify)
    finally:
        rep.close()
    if rep.jsonl:
        print(json.dumps({"result": answer}), flush=True)
    else:
        print(json.dumps(answer))
    return _exit_code(answer["result"])  # the same status as the task's own subcommand


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["forms"]:  # the task table as JSON, from the live table (so it works when tasks.json is stale)
        from .tasks import schema_text

        sys.stdout.write(schema_text())
        return 0
    args = build_parser().parse_args(argv)
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    # The jobs say it in their own words (refused, or run with --allow-pixel-coordinates and the unit named).
    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    # SIGTERM (the plugin's Cancel) becomes Cancelled, so temporary outputs are removed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(Cancelled("cancelled")))
    try:
        if args.command == "describe":
            return _describe(args)
        if args.command == "run":
            return _run_request(args)
        return _run_task(args.command, args)
    except LandSegError as exc:
        print(f"landseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("landseg: error: cancelled", file=sys.stderr)
        return Cancelled.exit_code
    except Exception as exc:  # a bug: still one line for the analyst, the traceback on request
        if os.environ.get("LANDSEG_DEBUG"):
            traceback.print_exc()
        print(
            f"landseg: internal error: {type(exc).__name__}: {exc} (set LANDSEG_DEBUG=1 for details)", file=sys.stderr
        )
        return 1
    return 2
