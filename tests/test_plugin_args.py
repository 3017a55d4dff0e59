"""The argument lists the panel and Processing build (landseg_plugin.engine_process, no qgis) parse with the
engine's own CLI parser, option for option: the front ends cannot ask for an option the engine lacks."""

from __future__ import annotations

from conftest import ROOT, SJER, URBAN
from engine.cli import build_parser
from landseg_plugin import engine_process as ep

MODEL = str(ROOT / "models" / "landcover_unet_lite0.onnx")


def _parse(args: list[str]):
    return build_parser().parse_args(args)


def test_landcover_and_change_arguments_parse():
    a = _parse(ep.landcover_args([str(URBAN)], "c.tif", "f.tif", "p.gpkg", MODEL, tile=512, overlap=32,
                                 min_area=4, prompts="buildings, river", resample="off"))  # fmt: skip
    assert (a.tile, a.overlap, a.min_area, a.prompts, a.resample) == (512, 32, 4.0, "buildings, river", "off")
    c = _parse(ep.change_args([str(URBAN)], [str(URBAN)], "m.tif", "p.gpkg", "x.csv", classes="building,road"))
    assert c.classes == "building,road" and c.command == "change"


def test_adapt_arguments_parse_with_and_without_a_pixel_size():
    a = _parse(ep.adapt_args([str(SJER), str(URBAN)], "l.gpkg", "kind", "out", MODEL, 2.0, 0.15))
    assert a.input == [SJER, URBAN] and a.pixel_size_m == 0.15 and a.minutes == 2.0 and a.class_field == "kind"
    b = _parse(ep.adapt_args([str(SJER)], "l.gpkg", "kind", "out"))
    assert b.pixel_size_m is None and b.keep_base == 1.0


def test_accuracy_and_treecrowns_arguments_parse():
    a = _parse(ep.accuracy_args(str(URBAN), "out", sample=50))
    assert a.sample == 50 and a.command == "accuracy"
    t = _parse(ep.treecrowns_args(str(SJER), "crowns.gpkg", score_threshold=0.2))
    assert t.command == "treecrowns" and t.score_threshold == 0.2


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
    a = _parse(ep.landcover_args([str(URBAN)], "c.tif", "f.tif", "p.gpkg", MODEL, blend="gaussian", precision="int8"))
    assert a.blend == "gaussian" and a.precision == "int8"
