"""`engine accuracy` on real labels: the default model's map of a held-out Dubai image against its ground truth."""

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
from engine.jobs.accuracy import AccuracyParams, run_accuracy
from engine.jobs.landcover import LandcoverParams, run_landcover
from engine.model_package import DEFAULT_LANDCOVER_MODEL
from export.train import landcover_data as D

pytestmark = pytest.mark.skipif(not (SHARED / "landcover").exists(), reason="needs ../shared/data/landcover")
IGNORE = 255


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """(class map, truth array, tmp): a validation-tile image georeferenced at 0.5 m in UTM 40N, mapped."""
    d = tmp_path_factory.mktemp("dubai")
    jpg, png = D.dubai_files(SHARED, "val")[0]
    rgb = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(jpg).convert("RGB")).transpose(2, 0, 1)
    transform = from_origin(300000, 2790000, 0.5, 0.5)
    image = D.write_rgb_geotiff(d / "dubai.tif", np.ascontiguousarray(rgb), transform, "EPSG:32640")
    res = run_landcover(LandcoverParams(inputs=[image], model=DEFAULT_LANDCOVER_MODEL, out_dir=d / "map"))
    truth = D.dubai_mask(png)
    return res.class_map, truth, transform, d


def truth_polygons(truth, transform, path):
    schema = {"geometry": "Polygon", "properties": {"label": "str"}}
    with fiona.open(path, "w", driver="GPKG", schema=schema, crs="EPSG:32640") as sink:
        for geom, v in shapes(truth, mask=truth != IGNORE, transform=transform):
            sink.write({"geometry": geom, "properties": {"label": D.CLASSES[int(v)].upper()}})  # names, any case
    return path


def test_polygon_reference_gives_the_pixel_confusion_matrix(scene, tmp_path):
    class_map, truth, transform, _ = scene
    ref = truth_polygons(truth, transform, tmp_path / "truth.gpkg")
    res = run_accuracy(AccuracyParams(class_map=class_map, reference=ref, class_field="label", out_dir=tmp_path))
    with rasterio.open(class_map) as ds:
        pred = ds.read(1)
    ok = (truth != IGNORE) & (pred != IGNORE)
    direct = np.zeros((5, 5), np.int64)
    np.add.at(direct, (pred[ok], truth[ok]), 1)
    doc = json.loads(res.json.read_text())
    assert np.array_equal(np.array(doc["matrix"]["counts"]), direct)
    assert res.overall_accuracy == pytest.approx(np.trace(direct) / direct.sum(), abs=1e-6)
    iou_veg = direct[3, 3] / (direct[3].sum() + direct[:, 3].sum() - direct[3, 3])
    assert res.per_class["vegetation"]["iou"] == pytest.approx(iou_veg, abs=1e-6)
    assert -1 <= res.kappa <= 1
    html = res.report.read_text()
    assert "<img src='report.png'" in html and "Confusion matrix" in html and "vegetation" in html
    from PIL import Image

    assert Image.open(res.report.with_name("report.png")).size[0] > 800
    import csv

    rows = list(csv.DictReader(res.report.with_name("classes.csv").open()))
    assert [r["class"] for r in rows] == list(D.CLASSES)
    assert float(rows[0]["iou"]) == pytest.approx(res.per_class["building"]["iou"])


def test_sample_then_assess_estimates_the_true_areas(scene, tmp_path):
    """The analyst's loop: draw a stratified sample, label it (here from the ground truth), assess. The
    area-adjusted estimates must bracket what the full ground truth says."""
    class_map, truth, _transform, _ = scene
    s = run_accuracy(AccuracyParams(class_map=class_map, sample=400, min_per_class=40, out_dir=tmp_path))
    with rasterio.open(class_map) as ds, fiona.open(s.sample) as layer:
        pred = ds.read(1)
        feats = list(layer)
        schema, crs = layer.schema, layer.crs
        labelled = []
        for f in feats:
            r, c = ds.index(*f.geometry["coordinates"])
            assert D.CLASSES[pred[r, c]] == f["properties"]["map_class"]  # the point sits on its stratum
            if truth[r, c] != IGNORE:
                labelled.append((f, D.CLASSES[truth[r, c]]))
    counts = {c: sum(1 for f in feats if f["properties"]["map_class"] == c) for c in D.CLASSES}
    present = {c: int((pred == k).sum()) for k, c in enumerate(D.CLASSES)}
    assert all(counts[c] >= min(40, present[c]) for c in D.CLASSES), counts
    assert sum(counts.values()) == 400
    ref = tmp_path / "labelled.gpkg"
    with fiona.open(ref, "w", driver="GPKG", schema=schema, crs=crs) as sink:
        for f, label in labelled:
            sink.write({"geometry": f.geometry, "properties": {**f["properties"], "reference": label}})
    res = run_accuracy(
        AccuracyParams(class_map=class_map, reference=ref, class_field="reference", out_dir=tmp_path / "a")
    )
    ok = truth != IGNORE
    true_oa = float((pred[ok] == truth[ok]).mean())
    adj = res.area_adjusted
    assert abs(adj["overall_accuracy"] - true_oa) <= adj["overall_ci95"], (adj["overall_accuracy"], true_oa)
    inside = 0
    for k, c in enumerate(D.CLASSES):
        true_area = float((truth[ok] == k).sum()) / ok.sum() * (pred != IGNORE).sum() * 0.25
        est = adj["classes"][c]
        inside += abs(est["area_m2"] - true_area) <= max(est["area_ci95_m2"], 1.0)
    assert inside >= 4, adj["classes"]  # a 95 % interval may miss one class in five


def test_bad_reference_is_a_one_line_error(scene, tmp_path):
    class_map, truth, transform, _ = scene
    ref = truth_polygons(truth, transform, tmp_path / "truth.gpkg")
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "accuracy", "--classes", str(class_map), "--reference", str(ref),
         "--class-field", "klasse", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "no field 'klasse'" in proc.stderr and "label" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_olofsson_2014_numerical_example():
    """The worked example of Olofsson et al. (2014, RSE 148: 42-57): strata deforestation, forest gain, stable
    forest, stable non-forest (30 m pixels); sample counts (rows: map, columns: reference)."""
    from engine.jobs.accuracy import metrics

    m = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
    pixels = np.array([200_000, 150_000, 3_200_000, 6_450_000])
    names = ["deforestation", "forest gain", "stable forest", "stable non-forest"]
    a = metrics(m, names, pixels, 900.0)["area_adjusted"]  # m² per pixel
    ha = {n: (a["classes"][n]["area_m2"] / 1e4, a["classes"][n]["area_ci95_m2"] / 1e4) for n in names}
    # the paper's estimates: area ± 95 % (ha), user's accuracy ± 95 %, overall accuracy ± 95 %
    for n, (area, ci) in zip(names, [(21158, 6158), (11686, 3756), (285770, 15510), (581386, 16282)], strict=True):
        assert ha[n][0] == pytest.approx(area, abs=1) and ha[n][1] == pytest.approx(ci, abs=1), (n, ha[n])
    for n, (ua, ci) in zip(names, [(0.88, 0.07), (0.73, 0.10), (0.93, 0.04), (0.96, 0.02)], strict=True):
        assert round(a["classes"][n]["users_accuracy"], 2) == ua and round(a["classes"][n]["users_ci95"], 2) == ci
    assert round(a["overall_accuracy"], 2) == 0.95 and round(a["overall_ci95"], 2) == 0.02
    # producer's accuracy (estimates; their intervals are Olofsson's eq. 7)
    assert [round(a["classes"][n]["producers_accuracy"], 2) for n in names] == [0.75, 0.85, 0.93, 0.96]


def test_a_hand_computed_small_case():
    from engine.jobs.accuracy import metrics

    m = np.array([[8, 2], [1, 9]])  # map a: 8 right, 2 were b; map b: 1 was a, 9 right
    r = metrics(m, ["a", "b"], np.array([500, 500]), 1.0)
    assert r["overall_accuracy"] == pytest.approx(17 / 20)
    assert r["per_class"]["a"]["users_accuracy"] == pytest.approx(8 / 10)
    assert r["per_class"]["a"]["producers_accuracy"] == pytest.approx(8 / 9)
    assert r["per_class"]["b"]["iou"] == pytest.approx(9 / (10 + 11 - 9))
    pe = (10 * 9 + 10 * 11) / 400
    assert r["kappa"] == pytest.approx((17 / 20 - pe) / (1 - pe), abs=1e-6)
