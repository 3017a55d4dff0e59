"""End to end through headless qgis_process in a clean QGIS profile (temporary HOME).

This is the test that catches library clashes inside QGIS's own Python, which plain pytest cannot see.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import fiona
import pytest
import rasterio

from conftest import ROOT, SJER

QGIS_PROCESS = "/usr/bin/qgis_process.bin"  # the `qgis_process` wrapper fails on bookworm (--noversioncheck)
pytestmark = pytest.mark.skipif(not Path(QGIS_PROCESS).exists(), reason="QGIS (qgis_process) is not installed")


@pytest.fixture(scope="module")
def qgis_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("qgis_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QGIS_") and k != "PYTHONPATH"}
    env.update(HOME=str(home), QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=str(ROOT), XDG_RUNTIME_DIR=str(home))
    proc = subprocess.run(
        [QGIS_PROCESS, "plugins", "enable", "landseg_plugin"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return env


def qgis_process(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True, timeout=600)


def outputs(tmp_path: Path) -> list[str]:
    return [
        f"--OUTPUT={tmp_path / 'polygons.gpkg'}",
        f"--OUTPUT_CLASSES={tmp_path / 'classes.tif'}",
        f"--OUTPUT_CONFIDENCE={tmp_path / 'confidence.tif'}",
    ]


def test_algorithm_is_listed(qgis_env):
    proc = qgis_process(qgis_env, "list")
    assert "landseg:landcover" in proc.stdout


def test_landcover_headless(qgis_env, tmp_path):
    proc = qgis_process(
        qgis_env, "run", "landseg:landcover", f"--INPUT={SJER}", "--TILE=256", "--OVERLAP=32", *outputs(tmp_path)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    with fiona.open(tmp_path / "polygons.gpkg") as layer:
        feats = list(layer)
        assert layer.crs.to_epsg() == 32611
    assert len(feats) > 10
    assert {f["properties"]["class_name"] for f in feats} >= {"vegetation", "bare land"}
    with rasterio.open(tmp_path / "classes.tif") as out, rasterio.open(SJER) as src:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
    assert (tmp_path / "polygons.qml").exists()


def test_landcover_headless_json(qgis_env, tmp_path):
    proc = qgis_process(qgis_env, "--json", "run", "landseg:landcover", f"--INPUT={SJER}", *outputs(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert Path(doc["results"]["OUTPUT"]).exists()
    assert doc["results"]["OUTPUT_CLASSES"].endswith("classes.tif")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--MODEL=/nowhere/unknown.onnx"], "model file not found: /nowhere/unknown.onnx"),
        (["--BANDS=nir=1:1"], "modality 'nir' is not an input of model 'landcover-unet-lite0'"),
        (["--BANDS=rgb="], "expected NAME=[RASTER:]BANDS"),
    ],
)
def test_bad_input_is_reported_in_the_log(qgis_env, tmp_path, args, message):
    proc = qgis_process(qgis_env, "run", "landseg:landcover", f"--INPUT={SJER}", *args, *outputs(tmp_path))
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in log and "Traceback" not in log
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_an_engine_error_is_reported_once_in_processing_words(qgis_env, tmp_path):
    import numpy as np

    from conftest import write_raster

    gray = write_raster(tmp_path / "gray.tif", np.zeros((1, 40, 40), np.uint8))
    proc = qgis_process(qgis_env, "run", "landseg:landcover", f"--INPUT={gray}", *outputs(tmp_path / "o"))
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    # once as the error; QGIS echoes what a feedback reports into its message log (stderr) as well
    assert proc.stdout.count("input has 1 band(s)") <= 1 and log.count("input has 1 band(s)") <= 2, log
    assert "--modality" not in log and "band mapping parameter (BANDS)" in log, log


def test_non_raster_input_is_rejected(qgis_env, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a raster")
    out = tmp_path / "out"
    proc = qgis_process(qgis_env, "run", "landseg:landcover", f"--INPUT={text}", *outputs(out))
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "INPUT" in log and "Traceback" not in log
    assert not out.exists()


def test_packaged_plugin_zip_runs_headless(qgis_env, tmp_path, plugin_zip):
    """`make package` -> unzip into a fresh plugins folder -> qgis_process runs the engine inside it."""
    import sys
    import zipfile

    plugins = tmp_path / "plugins"
    with zipfile.ZipFile(plugin_zip) as zf:
        names = zf.namelist()
        zf.extractall(plugins)
    assert "landseg_plugin/engine/predict.py" in names and "landseg_plugin/metadata.txt" in names
    assert "landseg_plugin/models/rgb_index_baseline.onnx" in names
    home = tmp_path / "home"
    home.mkdir()
    env = dict(qgis_env, HOME=str(home), QGIS_PLUGINPATH=str(plugins), LANDSEG_PYTHON=sys.executable)
    assert qgis_process(env, "plugins", "enable", "landseg_plugin").returncode == 0
    out = tmp_path / "out"
    proc = qgis_process(env, "run", "landseg:landcover", f"--INPUT={SJER}", *outputs(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "polygons.gpkg").exists()


def test_change_headless(qgis_env, tmp_path):
    import numpy as np

    from conftest import URBAN

    after = tmp_path / "after.tif"
    with rasterio.open(URBAN) as src:
        data, profile = src.read(), src.profile
    data[:, 1200:1500, 300:700] = np.array([40, 140, 40], np.uint8)[:, None, None]
    profile.update(compress="deflate", photometric="RGB")
    with rasterio.open(after, "w", **profile) as dst:
        dst.write(data)
    out = tmp_path / "out"
    proc = qgis_process(
        qgis_env,
        "run",
        "landseg:change",
        f"--BEFORE={URBAN}",
        f"--AFTER={after}",
        f"--OUTPUT={out / 'change.gpkg'}",
        f"--OUTPUT_MAP={out / 'change.tif'}",
        f"--OUTPUT_MATRIX={out / 'transitions.csv'}",
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "LandSeg: transitions: " in log and "from \\ to (m2)" in log and "bare land" in log
    with fiona.open(out / "change.gpkg") as layer:
        assert any(f["properties"]["to_class"] == "vegetation" for f in layer)
    assert (out / "transitions.csv").read_text().startswith("from \\ to (m2)")


def test_change_headless_bad_input(qgis_env, tmp_path):
    import numpy as np
    from rasterio.transform import from_origin

    from conftest import write_raster

    gray = write_raster(
        tmp_path / "gray.tif",
        np.zeros((1, 40, 40), np.uint8),
        crs="EPSG:32611",
        transform=from_origin(252000, 4107400, 0.1, 0.1),
    )
    out = tmp_path / "out"
    proc = qgis_process(
        qgis_env,
        "run",
        "landseg:change",
        f"--BEFORE={SJER}",
        f"--AFTER={gray}",
        f"--OUTPUT={out / 'c.gpkg'}",
        f"--OUTPUT_MAP={out / 'c.tif'}",
        f"--OUTPUT_MATRIX={out / 't.csv'}",
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "both dates need the same bands" in log and "Traceback" not in log
    assert not out.exists() or list(out.iterdir()) == []


def test_treecrowns_headless(qgis_env, tmp_path):
    from conftest import URBAN

    proc = qgis_process(
        qgis_env, "run", "landseg:treecrowns", f"--INPUT={URBAN}", f"--OUTPUT={tmp_path / 'crowns.gpkg'}"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with fiona.open(tmp_path / "crowns.gpkg") as layer:
        feats = list(layer)
    assert len(feats) >= 10 and {f["properties"]["method"] for f in feats} == {"detector"}  # 15 on this scene
    assert {"score", "height_max", "area_m2", "diameter_m"} <= set(feats[0]["properties"])
    assert (tmp_path / "crowns.qml").exists()
    with fiona.open(tmp_path / "crowns_treetops.gpkg") as tops:  # OUTPUT_TREETOPS left out: beside the crowns
        assert len(tops) == len(feats) and tops.schema["geometry"] == "Point"
    # the score threshold is a parameter: a stricter one keeps the stronger crowns only
    proc = qgis_process(
        qgis_env, "run", "landseg:treecrowns", f"--INPUT={URBAN}", "--SCORE_THRESHOLD=0.5",
        f"--OUTPUT={tmp_path / 'strict.gpkg'}", f"--OUTPUT_TREETOPS={tmp_path / 'tops.gpkg'}", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with fiona.open(tmp_path / "strict.gpkg") as layer:
        strict = [f["properties"]["score"] for f in layer]
    assert len(strict) < len(feats) and min(strict, default=1) >= 0.5
    with fiona.open(tmp_path / "tops.gpkg") as tops:
        assert len(tops) == len(strict)
    assert json.loads(proc.stdout)["results"]["OUTPUT_TREETOPS"] == str(tmp_path / "tops.gpkg")


def test_chm_headless(qgis_env, tmp_path):
    laz = ROOT.parent / "shared/data/trees/neon_teak/lidar/TEAK_043.laz"
    if not laz.exists():
        pytest.skip("needs ../shared/data/trees")
    out = tmp_path / "chm.tif"
    proc = qgis_process(qgis_env, "run", "landseg:chm", f"--LIDAR={laz}", "--CRS=EPSG:32611", f"--OUTPUT={out}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32611 and ds.res == (0.5, 0.5) and 20 < ds.read(1).max() < 60


def test_example_graphical_model_runs_headless(qgis_env, tmp_path):
    """resources/models/landcover_class_area.model3: land cover -> one class's polygons -> area statistics."""
    import re

    model = ROOT / "resources" / "models" / "landcover_class_area.model3"
    proc = qgis_process(
        qgis_env,
        "run",
        str(model),
        f"--image={SJER}",
        "--class_name=vegetation",
        f"--one_class:class_polygons={tmp_path / 'veg.gpkg'}",
        f"--area_stats:area_report={tmp_path / 'area.html'}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with fiona.open(tmp_path / "veg.gpkg") as layer:
        names = {f["properties"]["class_name"] for f in layer}
        total = sum(f["properties"]["area_m2"] for f in layer)
    assert names == {"vegetation"} and total > 100
    html = (tmp_path / "area.html").read_text()
    m = re.search(r"Sum:\s*([0-9.]+)", html)
    assert m and float(m.group(1)) == pytest.approx(total, rel=1e-3), html


def test_accuracy_headless(qgis_env, tmp_path):
    """landseg:accuracy: a land-cover map of the SJER sample, then a stratified sample of points to label."""
    proc = qgis_process(qgis_env, "run", "landseg:landcover", f"--INPUT={SJER}", *outputs(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = qgis_process(
        qgis_env, "run", "landseg:accuracy", f"--CLASSES={tmp_path / 'classes.tif'}", "--SAMPLE=60",
        f"--OUTPUT={tmp_path / 'acc'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with fiona.open(tmp_path / "acc" / "accuracy_sample.gpkg") as layer:
        assert len(layer) == 60 and "reference" in layer.schema["properties"]


def test_batch_headless(qgis_env, tmp_path):
    """landseg:batch: a folder of rasters (the two bundled RGB samples) on a 2-worker local Dask cluster."""
    pytest.importorskip("distributed")
    proc = qgis_process(
        qgis_env, "run", "landseg:batch", f"--PATTERN={SJER.parent}/*_rgb.tif", "--WORKERS=2",
        f"--OUTPUT={tmp_path / 'batch'}", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "batch" / "batch_summary.json").read_text())
    assert len(summary["done"]) == 2 and not summary["failed"]
    assert json.loads(proc.stdout)["results"]["SUMMARY"].endswith("batch_summary.json")
    for item in summary["items"].values():
        with rasterio.open(item["outputs"]["class_map"]) as ds:
            assert ds.count == 1 and ds.crs is not None


def test_a_deepness_model_runs_headless(qgis_env, tmp_path):
    """An ONNX model with Deepness metadata only (no LandSeg metadata, no side-car) as the MODEL parameter."""
    from test_deepness import deepness_model

    model = deepness_model(tmp_path / "deepness.onnx")
    proc = qgis_process(qgis_env, "run", "landseg:landcover", f"--INPUT={SJER}", f"--MODEL={model}", *outputs(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with rasterio.open(tmp_path / "classes.tif") as ds:
        assert ds.tags(1)["CLASS_0"] == "reddish" and ds.res[0] == pytest.approx(0.1, rel=0.01)
