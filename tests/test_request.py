"""The typed request seam (`python -m engine run --request`): every task's parameters round-trip through a
request file, a real request runs, and a wrong field or type is a one-line error naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SJER
from engine.polygonize import PolygonizeOptions
from engine.raster_input import BandSource
from engine.request import REQUEST_VERSION, TASKS, make_request, parse_request
from engine.runtime import RuntimeOptions

P = Path


def examples() -> dict:
    """One parameters object per task, with nested dataclasses, lists, dicts and optional values set."""
    from engine.jobs.accuracy import AccuracyParams
    from engine.jobs.batch import BatchParams
    from engine.jobs.change import ChangeParams
    from engine.jobs.chm import ChmParams
    from engine.jobs.landcover import LandcoverParams
    from engine.jobs.treecrowns import TreeCrownParams
    from export.adapt import AdaptParams

    return {
        "landcover": LandcoverParams(
            inputs=[P("a.tif"), P("b.tif")],
            model=P("m.onnx"),
            out_dir=P("out"),
            tile=256,
            overlap=32,
            modalities={"rgb": BandSource(0, (1, 2, 3)), "ndsm": BandSource(1, (1,))},
            runtime=RuntimeOptions(device="cpu", threads=2),
            polygons=PolygonizeOptions(min_area_m2=4.0),
            prompts=["trees", "water"],
            fuse_models=[P("n.onnx")],
            polygonize=False,
        ),  # fmt: skip
        "change": ChangeParams(
            before=[P("t0.tif")],
            after=[P("t1.tif")],
            model=P("m.onnx"),
            out_dir=P("o"),
            classes=["building"],
            min_confidence=0.3,
        ),  # fmt: skip
        "treecrowns": TreeCrownParams(image=P("i.tif"), out_dir=P("o"), chm=P("chm.tif"), score_threshold=0.2),
        "chm": ChmParams(lidar=P("x.laz"), out=P("chm.tif"), resolution=0.25, crs="EPSG:32611"),
        "accuracy": AccuracyParams(class_map=P("c.tif"), out_dir=P("o"), class_names=["a", "b"], sample=100),
        "batch": BatchParams(task="landcover", inputs=["tiles/*.tif"], out_dir=P("o"), workers=2, chunk_px=4096),
        "adapt": AdaptParams(inputs=[P("a.tif")], labels=P("l.gpkg"), out_dir=P("m"), pixel_size_m=0.15),
    }


def test_every_task_has_an_example_and_round_trips_through_a_request_file(tmp_path):
    ex = examples()
    assert set(ex) == set(TASKS)
    for task, params in ex.items():
        path = tmp_path / f"{task}.json"
        path.write_text(json.dumps(make_request(task, params)))
        got_task, got = parse_request(json.loads(path.read_text()))
        assert got_task == task and got == params, task


def test_a_landcover_request_runs_and_answers_with_its_version(tmp_path):
    req = {"version": REQUEST_VERSION, "task": "landcover",
           "params": {"inputs": [str(SJER)], "model": str(ROOT / "models/landcover_unet_lite0.onnx"),
                      "out_dir": str(tmp_path), "runtime": {"device": "cpu", "threads": 1}}}  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "engine", "run", "--request", "-"], input=json.dumps(req),
                          capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["version"] == REQUEST_VERSION and answer["task"] == "landcover"
    assert Path(answer["result"]["class_map"]).exists() and answer["result"]["n_polygons"] > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"params": {"inputs": ["a.tif"], "model": "m.onnx", "out_dir": "o", "tiles": 256}},
         "params: unknown field 'tiles'"),
        ({"params": {"inputs": ["a.tif"], "model": "m.onnx", "out_dir": "o", "runtime": {"threads": "two"}}},
         'params.runtime.threads: expected an integer, not "two"'),
        ({"params": {"inputs": "a.tif", "model": "m.onnx", "out_dir": "o"}}, "params.inputs: expected a list"),
        ({"params": {"model": "m.onnx", "out_dir": "o"}}, "params: missing required field 'inputs'"),
        ({"version": 2}, "request: version must be 1"),
        ({"task": "segment"}, "request: task must be one of"),
    ],
)  # fmt: skip
def test_a_wrong_request_is_a_one_line_error_naming_the_field(tmp_path, change, message):
    req = {"version": REQUEST_VERSION, "task": "landcover", "params": {}} | change
    path = tmp_path / "r.json"
    path.write_text(json.dumps(req))
    proc = subprocess.run([sys.executable, "-m", "engine", "run", "--request", str(path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
