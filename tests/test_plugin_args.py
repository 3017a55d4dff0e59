"""The requests the panel and Processing build (landseg_plugin.engine_process, no qgis) parse with the engine's
own request parser into its parameters dataclasses, field for field: the front ends send typed requests, never
CLI strings, and cannot ask for a field the engine lacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, SJER, URBAN
from engine.errors import InputError
from engine.raster_input import BandSource
from engine.request import REQUEST_VERSION, TASKS, parse_request
from landseg_plugin import engine_process as ep

MODEL = str(ROOT / "models" / "landcover_unet_lite0.onnx")


def _parse(doc: dict):
    json.dumps(doc)  # what goes down the pipe is JSON
    return parse_request(doc)


def test_the_plugin_speaks_the_engines_request_version():
    assert ep.REQUEST_VERSION == REQUEST_VERSION


def test_landcover_and_change_requests_parse():
    task, p = _parse(ep.landcover_request([str(URBAN)], "o/c.tif", "o/f.tif", "o/p.gpkg", MODEL, tile=512,
                                          overlap=32, min_area=4, prompts="buildings, river", resample="off",
                                          band_mapping="rgb=1:1,2,3"))  # fmt: skip
    assert task == "landcover" and (p.tile, p.overlap, p.polygons.min_area_m2, p.resample) == (512, 32, 4.0, "off")
    assert p.prompts == ["buildings", "river"] and p.modalities == {"rgb": BandSource(0, (1, 2, 3))}
    assert p.output_paths() == (Path("o/c.tif"), Path("o/f.tif"), Path("o/p.gpkg"))
    default = _parse(ep.landcover_request([str(URBAN)], "c.tif", "f.tif", "p.gpkg"))[1]
    assert default.tile is None and default.overlap is None and default.polygons.min_area_m2 is None
    assert default.model == Path(MODEL) and default.prompts == [] and default.modalities == {}
    task, c = _parse(ep.change_request([str(URBAN)], [str(URBAN)], "m.tif", "p.gpkg", "x.csv", classes="building,road"))
    assert task == "change" and c.classes == ["building", "road"] and c.polygons.layer == "change"


def test_a_malformed_band_mapping_is_the_engines_one_line_error():
    with pytest.raises(InputError, match=r"expected NAME=\[RASTER:\]BANDS"):
        _parse(ep.landcover_request([str(URBAN)], "c.tif", "f.tif", "p.gpkg", band_mapping="rgb="))
    with pytest.raises(InputError, match="mapped twice"):
        _parse(ep.landcover_request([str(URBAN)], "c.tif", "f.tif", "p.gpkg", band_mapping="rgb=1,2,3; rgb=1"))


def test_adapt_request_parses_with_and_without_a_pixel_size():
    pytest.importorskip("torch")
    _t, a = _parse(ep.adapt_request([str(SJER), str(URBAN)], "l.gpkg", "kind", "out", MODEL, 2.0, 0.15))
    assert a.inputs == [SJER, URBAN] and a.pixel_size_m == 0.15 and a.minutes == 2.0 and a.class_field == "kind"
    _t, b = _parse(ep.adapt_request([str(SJER)], "l.gpkg", "kind", "out"))
    assert b.pixel_size_m is None and b.keep_base == 1.0


def test_accuracy_treecrowns_chm_and_batch_requests_parse():
    _t, a = _parse(ep.accuracy_request(str(URBAN), "out", sample=50))
    assert a.sample == 50 and a.reference is None
    _t, r = _parse(ep.accuracy_request(str(URBAN), "out", reference="ref.gpkg", class_names="a, b"))
    assert r.reference == Path("ref.gpkg") and r.class_names == ["a", "b"] and r.sample is None
    _t, t = _parse(ep.treecrowns_request(str(SJER), "o/crowns.gpkg", score_threshold=0.2))
    assert t.score_threshold == 0.2 and t.crowns_path == Path("o/crowns.gpkg") and t.chm is None
    _t, h = _parse(ep.chm_request("cloud.laz", "chm.tif", 1.0))
    assert h.resolution == 1.0 and h.crs is None
    _t, b = _parse(ep.batch_request("landcover", ["tiles/*.tif"], "out", workers=2))
    assert b.workers == 2 and b.dashboard is False and b.scheduler is None


def test_every_task_the_front_ends_build_is_in_the_engines_task_table():
    built = {
        ep.landcover_request([str(URBAN)], "c.tif", "f.tif", "p.gpkg")["task"],
        ep.change_request([str(URBAN)], [str(URBAN)], "m.tif", "p.gpkg", "x.csv")["task"],
        ep.treecrowns_request(str(SJER), "c.gpkg")["task"],
        ep.chm_request("cloud.laz", "chm.tif")["task"],
        ep.accuracy_request(str(URBAN), "out", sample=5)["task"],
        ep.adapt_request([str(SJER)], "l.gpkg", "kind", "out")["task"],
        ep.batch_request("landcover", ["*.tif"], "out")["task"],
    }
    assert built == set(TASKS)


def test_the_model_lists_hold_tensorrt_engines_too(tmp_path):
    for name in ("a.onnx", "b.engine", "c.plan", "notes.txt"):
        (tmp_path / name).write_text("x")
    found = [p.name for p in ep.installed_models(str(tmp_path))]
    assert {"a.onnx", "b.engine", "c.plan"} <= set(found) and "notes.txt" not in found
    assert "landcover_unet_lite0.onnx" in found  # the shipped models come first
    assert all(f"*{s}" in ep.MODEL_FILTER for s in ep.MODEL_SUFFIXES)


def test_the_plugin_knows_the_engines_blend_modes_resample_modes_and_precisions():
    from engine.resample import MODES
    from engine.runtime import PRECISIONS
    from engine.tiling import BLENDS

    assert ep.BLENDS == BLENDS and ep.RESAMPLE_MODES == MODES and ep.PRECISIONS == PRECISIONS
    doc = ep.landcover_request([str(URBAN)], "c.tif", "f.tif", "p.gpkg", MODEL, blend="gaussian", precision="int8")
    _t, a = _parse(doc)
    assert a.blend == "gaussian" and a.runtime.precision == "int8"
