"""`engine adapt` on real labels: the shipped model fine-tuned on polygons of a held-out Dubai image."""

from __future__ import annotations

import json
import subprocess
import sys

import fiona
import numpy as np
import pytest
import rasterio
from rasterio.features import shapes
from rasterio.transform import from_origin

from conftest import ROOT, SHARED
from engine.model_package import DEFAULT_LANDCOVER_MODEL, load_model_package
from export import landcover_data as D

pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not (SHARED / "landcover").exists(), reason="needs ../shared/data/landcover")
# What an analyst types: synonyms of the model's classes (matched by meaning) and one class it does not have.
LABEL_OF = {0: "houses", 1: "road", 2: "sand", 3: "trees", 4: "water"}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapt")
    jpg, png = D.dubai_files(SHARED, "val")[1]
    from PIL import Image

    rgb = np.asarray(Image.open(jpg).convert("RGB")).transpose(2, 0, 1)
    transform = from_origin(300000, 2790000, 0.5, 0.5)
    image = D.write_rgb_geotiff(d / "img.tif", np.ascontiguousarray(rgb), transform, "EPSG:32640")
    truth = D.dubai_mask(png)
    labels = d / "labels.gpkg"
    schema = {"geometry": "Polygon", "properties": {"landuse": "str"}}
    polys = [(g, int(v)) for g, v in shapes(truth, mask=truth != 255, transform=transform)]
    polys.sort(key=lambda gv: -len(gv[0]["coordinates"][0]))  # the larger outlines first
    with fiona.open(labels, "w", driver="GPKG", schema=schema, crs="EPSG:32640") as sink:
        for k in LABEL_OF:  # up to 12 polygons of each class present
            for g, v in [gv for gv in polys if gv[1] == k][:12]:
                sink.write({"geometry": g, "properties": {"landuse": LABEL_OF[v]}})
        # a class the model does not have, drawn over a few building polygons (the analyst's own category)
        for g, _v in [gv for gv in polys if gv[1] == 0][:3]:
            sink.write({"geometry": g, "properties": {"landuse": "greenhouse"}})
    return image, labels, d


def test_adapt_matches_labels_holds_out_by_location_and_writes_a_package_that_runs(labelled, tmp_path):
    image, labels, _ = labelled
    out = tmp_path / "model"
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "adapt", "-i", str(image), "--labels", str(labels), "--class-field",
         "landuse", "--max-steps", "12", "--minutes", "3", "--out", str(out), "--json", "--progress", "none"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    present = {LABEL_OF[int(v)] for v in np.unique(D.dubai_mask(D.dubai_files(SHARED, "val")[1][1])) if v != 255}
    expected = {"houses": "building", "road": "road", "sand": "bare land", "trees": "vegetation", "water": "water"}
    assert {k: res["label_matches"][k] for k in present} == {k: expected[k] for k in present}
    assert {"houses", "sand"} <= present
    assert res["new_classes"] == ["greenhouse"] and res["classes"][-1] == "greenhouse"
    assert res["train_polygons"] > res["holdout_polygons"] > 0
    assert res["steps"] == 12
    before, after = res["holdout_iou_before"], res["holdout_iou_after"]
    assert any(v is not None for v in before.values()) and set(before) == set(after)
    pkg = load_model_package(out / "landcover-unet-lite0-adapted.onnx")
    assert [c.name for c in pkg.meta.classes][-1] == "greenhouse"
    card = pkg.meta.extra["card"]
    assert card["holdout_iou_after"] == after and card["base_model"].endswith("landcover_unet_lite0.onnx")
    assert (out / "landcover-unet-lite0-adapted.pt").exists()  # adaptable again
    run = subprocess.run(
        [sys.executable, "-m", "engine", "landcover", "-i", str(image), "--model", str(pkg.path), "-o",
         str(tmp_path / "map"), "--progress", "none", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    with rasterio.open(json.loads(run.stdout)["class_map"]) as ds:
        assert ds.tags(1)["CLASS_5"] == "greenhouse"


def test_a_model_without_torch_weights_cannot_be_adapted(labelled, tmp_path):
    image, labels, _ = labelled
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "adapt", "-i", str(image), "--labels", str(labels), "--class-field",
         "landuse", "--model", str(ROOT / "models" / "rgb_index_baseline.onnx"), "--out", str(tmp_path / "m")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3 and "cannot be adapted" in proc.stderr, proc.stderr
    assert DEFAULT_LANDCOVER_MODEL.with_suffix(".pt").exists()


@pytest.mark.parametrize("case", ["no overlap", "empty class field", "one class"])
def test_bad_labels_are_one_line_errors(labelled, tmp_path, case):
    from shapely.affinity import translate
    from shapely.geometry import mapping, shape

    image, labels, _ = labelled
    bad = tmp_path / "bad.gpkg"
    with fiona.open(labels) as src, fiona.open(bad, "w", **src.profile) as dst:
        for f in src:
            g, v = shape(f.geometry), f["properties"]["landuse"]
            if case == "no overlap":
                g = translate(g, 50_000, 0)
            elif case == "empty class field":
                v = ""
            else:
                v = "trees"
            dst.write({"geometry": mapping(g), "properties": {"landuse": v}})
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "adapt", "-i", str(image), "--labels", str(bad), "--class-field", "landuse",
         "--max-steps", "1", "--out", str(tmp_path / "m"), "--progress", "none"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    expected = {"no overlap": "no labelled pixel lies on the input", "empty class field": "at least 2 labelled",
                "one class": "one class only"}[case]  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("landseg: error: ") and expected in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
