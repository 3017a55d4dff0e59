"""Polygons and crowns in the format the output's extension names (GeoPackage, FlatGeobuf, Shapefile,
GeoParquet) with the same features and attributes, written atomically; any other extension is a one-line error."""

from __future__ import annotations

import json
import subprocess
import sys

import fiona
import pytest

from conftest import ROOT, SJER


def _landcover(tmp_path, polygons: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", "landcover", "-i", str(SJER), "-o", str(tmp_path), "--out-polygons",
         str(tmp_path / polygons), "--progress", "none", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip


def _features(path) -> list[tuple]:
    if str(path).endswith(".parquet"):
        import geopandas

        df = geopandas.read_parquet(path)
        return sorted((r["class_name"], round(r["area_m2"], 2), round(r.geometry.area, 2)) for _, r in df.iterrows())
    with fiona.open(path) as layer:
        return sorted(
            (f["properties"]["class_name"], round(f["properties"]["area_m2"], 2), round(_area(f.geometry), 2))
            for f in layer
        )


def _area(geometry) -> float:
    from shapely.geometry import shape

    return shape(geometry).area


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpkg")
    proc = _landcover(d, "polygons.gpkg")
    assert proc.returncode == 0, proc.stderr
    return _features(d / "polygons.gpkg")


@pytest.mark.parametrize("name", ["polygons.fgb", "polygons.shp", "polygons.parquet"])
def test_polygons_in_other_formats_hold_the_same_features(tmp_path, reference, name):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
        pytest.importorskip("geopandas")
    proc = _landcover(tmp_path, name)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / name
    assert json.loads(proc.stdout)["polygons"] == str(out)
    assert _features(out) == reference and len(reference) >= 5
    assert out.with_suffix(".qml").exists()  # QGIS applies the style to any format
    if name.endswith(".shp"):
        assert all(out.with_suffix(s).exists() for s in (".shx", ".dbf", ".prj"))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_an_unknown_vector_extension_is_a_one_line_error_and_writes_nothing(tmp_path):
    proc = _landcover(tmp_path / "o", "polygons.kml")
    assert proc.returncode == 4
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("landseg: error: polygons output") and ".gpkg, .fgb, .shp, .parquet" in line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_crowns_as_flatgeobuf(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "treecrowns", "-i", str(SJER), "--out-crowns", str(tmp_path / "c.fgb"),
         "--tta", "none", "--progress", "none", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with fiona.open(tmp_path / "c.fgb") as layer:
        assert len(layer) >= 5 and {"score", "area_m2", "diameter_m"} <= set(layer.schema["properties"])
        crowns = len(layer)
    with fiona.open(tmp_path / "c_treetops.fgb") as tops:  # not asked for: beside the crowns, in their format
        assert len(tops) == crowns and tops.schema["geometry"] == "Point"


def test_styles_keep_class_names_with_xml_characters():
    """Class names (a model's metadata, or an analyst's prompts) with quotes, ampersands and angle brackets come
    back unchanged from the QML an XML parser reads, in every style that labels classes."""
    import xml.etree.ElementTree as ET

    from engine.model_package import ClassInfo
    from engine.styles import change_raster_qml, class_raster_qml, polygon_qml

    names = ('Tom\'s "big" <house> & yard', "a\ttab", "plain")
    classes = tuple(ClassInfo(k, n, "#102030") for k, n in enumerate(names))
    for qml in (polygon_qml(classes), class_raster_qml(classes)):
        root = ET.fromstring(qml.split("\n", 1)[1])  # after the DOCTYPE line
        labels = [e.get("label") for e in root.iter() if e.tag in ("category", "paletteEntry")]
        assert labels == list(names)
    change = ET.fromstring(change_raster_qml([(1, classes[0], classes[2])]).split("\n", 1)[1])
    assert any(names[0] in (e.get("label") or "") for e in change.iter("paletteEntry"))
