"""The front ends are made from the engine's task table (engine.tasks): the CLI directly, Processing and the panel
through its JSON form (engine/tasks.json, read by landseg_plugin.forms, no qgis). Requests the plugin builds
parse with the engine's own request parser into its parameters dataclasses, field for field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SJER, URBAN
from engine.cli_parser import build_parser
from engine.errors import InputError
from engine.raster_input import BandSource
from engine.request import REQUEST_VERSION, parse_request
from engine.tasks import SCHEMA_PATH, TASKS, schema_text
from landseg_plugin import engine_process as ep
from landseg_plugin import forms

MODEL = str(ROOT / "models" / "landcover_unet_lite0.onnx")
LC_OUT = {"OUTPUT": "o/p.gpkg", "OUTPUT_CLASSES": "o/c.tif", "OUTPUT_CONFIDENCE": "o/f.tif"}


def _parse(doc: dict):
    json.dumps(doc)  # what goes down the pipe is JSON
    return parse_request(doc)


def _request(task: str, **values):
    return _parse(forms.build_request(task, values))[1]


def test_the_committed_task_table_is_current():
    """engine/tasks.json is what the CLI, Processing and the panel are made from: `python -m engine forms`
    writes it; a changed option row or dataclass default without it fails here."""
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), "run: python -m engine forms > engine/tasks.json"


def test_every_task_is_a_cli_subcommand_with_every_option():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(TASKS) <= set(sub.choices)
    for task in TASKS:
        flags = {f for a in sub.choices[task]._actions for f in a.option_strings}
        wanted = {o["flag"] for o in forms.tasks()[task]["options"] if o["flag"] and o.get("cli", True)}
        assert wanted <= flags, (task, wanted - flags)
        assert "--help" in flags and "--json" in flags


def test_every_option_points_at_a_field_of_its_task_with_its_type_and_default():
    import dataclasses

    for task, entry in TASKS.items():
        if task == "adapt":
            pytest.importorskip("torch")
        cls = entry.params_class()
        names = [o["name"] for o in forms.tasks()[task]["options"]]
        assert len(names) == len(set(names)), f"{task}: two options share a Processing name"
        fields = {f.name for f in dataclasses.fields(cls)}
        for opt in forms.tasks()[task]["options"]:
            assert opt["field"].split(".")[0] in fields, (task, opt["field"])


def test_the_plugin_speaks_the_engines_request_version():
    assert ep.REQUEST_VERSION == REQUEST_VERSION


def test_land_cover_and_change_requests_parse():
    p = _request("landcover", INPUT=[str(URBAN)], MODEL=MODEL, TILE=512, OVERLAP=32, MIN_AREA=4,
                 PROMPTS="buildings, river", RESAMPLE="off", BANDS="rgb=1:1,2,3", **LC_OUT)  # fmt: skip
    assert (p.tile, p.overlap, p.polygons.min_area_m2, p.resample) == (512, 32, 4.0, "off")
    assert p.prompts == ["buildings", "river"] and p.modalities == {"rgb": BandSource(0, (1, 2, 3))}
    assert p.output_paths() == (Path("o/c.tif"), Path("o/f.tif"), Path("o/p.gpkg")) and p.out_dir == Path("o")
    # What Processing shows before anything is changed: the model's defaults (tile 0, overlap -1, area -1)
    shown = {o["name"]: forms.default_value(o) for o in forms.options("landcover")}
    default = _request("landcover", **{**shown, "INPUT": [str(URBAN)], **LC_OUT})
    assert default.tile is None and default.overlap is None and default.polygons.min_area_m2 is None
    # No model chosen: the engine runs the shipped one (RGB, or RGB + NIR where a band is described as NIR)
    assert default.model is None and default.prompts == [] and default.modalities == {}
    assert default.blend == "cosine" and default.runtime.precision == "fp32"
    c = _request("change", BEFORE=str(URBAN), AFTER=str(URBAN), OUTPUT="p.gpkg", OUTPUT_MAP="m.tif",
                 OUTPUT_MATRIX="x", CLASSES="building,road")  # fmt: skip
    assert c.before == [URBAN] and c.classes == ["building", "road"] and c.polygons.layer == "change"
    assert c.matrix_path == Path("x.csv")  # the transition matrix is a CSV whatever Processing's default suffix


def test_an_unknown_vector_suffix_becomes_a_geopackage_and_known_ones_stay():
    def written(path: str) -> Path:
        return _request("landcover", INPUT=[str(URBAN)], **{**LC_OUT, "OUTPUT": path}).polygons_path

    assert written("o/p.fgb") == Path("o/p.fgb") and written("o/p.xyz") == Path("o/p.gpkg")


def test_a_malformed_band_mapping_is_the_engines_one_line_error():
    with pytest.raises(InputError, match=r"expected NAME=\[RASTER:\]BANDS"):
        _request("landcover", INPUT=[str(URBAN)], BANDS="rgb=", **LC_OUT)
    with pytest.raises(InputError, match="mapped twice"):
        _request("landcover", INPUT=[str(URBAN)], BANDS="rgb=1,2,3; rgb=1", **LC_OUT)


def test_adapt_request_parses_with_and_without_a_pixel_size():
    pytest.importorskip("torch")
    a = _request("adapt", INPUT=[str(SJER), str(URBAN)], LABELS="l.gpkg", CLASS_FIELD="kind", OUTPUT="out",
                 MODEL=MODEL, MINUTES=2.0, PIXEL_SIZE=0.15)  # fmt: skip
    assert a.inputs == [SJER, URBAN] and a.pixel_size_m == 0.15 and a.minutes == 2.0 and a.class_field == "kind"
    b = _request("adapt", INPUT=[str(SJER)], LABELS="l.gpkg", CLASS_FIELD="kind", OUTPUT="out", PIXEL_SIZE=0.0)
    assert (
        b.pixel_size_m is None
        and b.recipe.keep_base == 1.0
        and b.recipe.batchnorm == "auto"
        and b.labels.name == "l.gpkg"
    )
    c = _request("adapt", INPUT=[str(SJER)], OUTPUT="out", BATCHNORM="frozen", KEEP_BASE=0.5)  # run_adapt refuses it
    assert c.labels is None and c.recipe.batchnorm == "frozen" and c.recipe.keep_base == 0.5


def test_accuracy_treecrowns_chm_and_batch_requests_parse():
    a = _request("accuracy", CLASSES=str(URBAN), OUTPUT="out", SAMPLE=50, CLASS_FIELD="")
    assert a.sample == 50 and a.reference is None and a.class_field == "class"
    r = _request("accuracy", CLASSES=str(URBAN), OUTPUT="out", REFERENCE="ref.gpkg", CLASS_NAMES="a, b", SAMPLE=0)
    assert r.reference == Path("ref.gpkg") and r.class_names == ["a", "b"] and r.sample is None
    t = _request("treecrowns", INPUT=str(SJER), OUTPUT="o/crowns.gpkg", SCORE_THRESHOLD=0.2, CHM=None)
    assert t.score_threshold == 0.2 and t.crowns_path == Path("o/crowns.gpkg") and t.chm is None and t.model is None
    assert _request("treecrowns", INPUT=str(SJER), OUTPUT="c.gpkg", SCORE_THRESHOLD=-1.0).score_threshold is None
    h = _request("chm", LIDAR="cloud.laz", OUTPUT="chm.tif", RESOLUTION=1.0, CRS=None)
    assert h.resolution == 1.0 and h.crs is None and h.out == Path("chm.tif")
    b = _request("batch", TASK="landcover", INPUT=[str(SJER)], PATTERN="tiles/*.tif, more/*.tif", OUTPUT="out",
                 WORKERS=2, SCHEDULER="")  # fmt: skip
    assert b.inputs == [str(SJER), "tiles/*.tif", "more/*.tif"] and b.workers == 2 and b.scheduler is None


def test_engine_flags_in_messages_become_processing_parameters():
    words = forms.flag_words()
    assert words["--modality"] == "the band mapping parameter (BANDS)" and words["--resample"].endswith("(RESAMPLE)")
    assert words["--classes"].endswith("parameter (CLASSES)") and words["--prompts"].endswith("(PROMPTS)")


def test_result_layers_come_from_the_task_table():
    result = {"polygons": "o/p.gpkg", "layer": "landcover", "class_map": "o/c.tif", "confidence": "o/f.tif"}
    assert forms.result_layers("landcover", result) == [
        ("o/p.gpkg|layername=landcover", "land cover polygons", True),
        ("o/c.tif", "class map", True),
        ("o/f.tif", "confidence", False),
    ]


def test_a_request_file_round_trips_for_every_task(tmp_path):
    """Each task's request (the dataclass's defaults + its required fields) goes through `engine run --request`
    parsing and back to the same JSON: to_json(from_json(doc)) == doc."""
    from engine.request import make_request

    required = {"inputs": [str(SJER)], "out_dir": str(tmp_path), "before": [str(SJER)], "after": [str(SJER)],
                "image": str(SJER), "lidar": "x.laz", "out": "x.tif", "class_map": str(SJER), "task": "landcover",
                "labels": "l.gpkg"}  # fmt: skip
    for task in TASKS:
        if task == "adapt" and not _has_torch():
            continue
        req_fields = [o["field"] for o in forms.tasks()[task]["options"] if o["required"]]
        doc = {"version": REQUEST_VERSION, "task": task, "params": {f: required[f] for f in req_fields}}
        _task, params = _parse(doc)
        again = make_request(task, params)
        assert _parse(again)[1] == params and json.loads(json.dumps(again)) == again


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def test_engine_run_help_lists_every_task():
    proc = subprocess.run([sys.executable, "-m", "engine", "run", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and all(task in proc.stdout for task in TASKS)


def test_the_model_lists_hold_tensorrt_engines_too(tmp_path):
    for name in ("a.onnx", "b.engine", "c.plan", "notes.txt"):
        (tmp_path / name).write_text("x")
    found = [p.name for p in ep.installed_models(str(tmp_path))]
    assert {"a.onnx", "b.engine", "c.plan"} <= set(found) and "notes.txt" not in found
    assert "landcover_unet_lite0.onnx" in found  # the shipped models come first
    assert all(f"*{s}" in ep.MODEL_FILTER for s in ep.MODEL_SUFFIXES)
