"""The QGIS plugin under pytest-qgis (offscreen): loading, the dock panel, its background run, Processing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

qgis_core = pytest.importorskip("qgis.core")

from qgis.core import (  # noqa: E402
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
    QgsWkbTypes,
)

from conftest import DEFAULT_MODEL, ROOT, SJER, URBAN  # noqa: E402
from engine.model_package import DEFAULT_LANDCOVER_MODEL, load_model_package  # noqa: E402

# The panel's default model's classes (names and colours come from its metadata).
CLASSES = [{"name": c.name, "color": c.color} for c in load_model_package(DEFAULT_LANDCOVER_MODEL).meta.classes]

ARTIFACTS = ROOT / "tests" / "artifacts"


def wait_for(dock, qgis_app, timeout: float = 180.0) -> None:
    t0 = time.monotonic()
    while dock.is_running():
        qgis_app.processEvents()
        time.sleep(0.02)
        assert time.monotonic() - t0 < timeout, "LandSeg task did not finish"
    qgis_app.processEvents()


@pytest.fixture
def plugin(qgis_iface):
    import landseg_plugin

    p = landseg_plugin.classFactory(qgis_iface)
    p.initGui()
    yield p
    p.unload()


@pytest.fixture
def dock(qgis_new_project):
    from landseg_plugin.dock import LandSegDock

    d = LandSegDock()
    yield d
    if d.task is not None:
        d.task.cancel()
    d.deleteLater()


def test_plugin_loads_registers_provider_and_dock(plugin, qgis_iface):
    reg = QgsApplication.processingRegistry()
    assert reg.providerById("landseg") is not None
    assert reg.algorithmById("landseg:landcover") is not None
    plugin.action.setChecked(True)
    assert plugin.dock is not None and plugin.dock.isVisible() is not None
    assert plugin.dock.model_combo.count() >= 1
    assert plugin.dock.inputs_table.rowCount() == 1  # the default model takes one input: rgb


def test_plugin_unload_removes_provider(qgis_iface):
    import landseg_plugin

    p = landseg_plugin.classFactory(qgis_iface)
    p.initGui()
    p.unload()
    assert QgsApplication.processingRegistry().providerById("landseg") is None


def test_dock_run_adds_styled_layers(dock, qgis_app, tmp_path):
    layer = QgsRasterLayer(str(SJER), "sjer")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    dock.set_input(0, layer)
    dock.out_widget.setFilePath(str(tmp_path))
    dock.start_run()
    assert dock.is_running()
    assert not dock.run_button.isEnabled() and dock.cancel_button.isEnabled()
    wait_for(dock, qgis_app)
    assert dock.last_error is None, dock.last_error
    group = dock.last_group
    assert group is not None and group.name().startswith("LandSeg land cover")
    layers = {n.layer().name(): n.layer() for n in group.findLayers()}
    assert set(layers) == {"land cover polygons", "class map", "confidence"}

    polygons = layers["land cover polygons"]
    assert isinstance(polygons, QgsVectorLayer) and 3 <= polygons.featureCount() <= 400
    assert {f.name() for f in polygons.fields()} >= {"class_id", "class_name", "area_m2", "mean_conf"}
    renderer = polygons.renderer()
    assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "class_id"
    colours = {c.label(): c.symbol().color().name() for c in renderer.categories()}
    assert colours == {c["name"]: c["color"] for c in CLASSES}

    class_map = layers["class map"]
    assert class_map.renderer().type() == "paletted"
    assert {c.label for c in class_map.renderer().classes()} == {c["name"] for c in CLASSES}
    assert class_map.crs() == layer.crs() and class_map.extent() == layer.extent()
    assert layers["confidence"].renderer().type() == "singlebandgray"
    assert dock.progress.value() == 100 and dock.run_button.isEnabled()


def test_dock_cancel_leaves_no_layers_or_files(dock, qgis_app, tmp_path):
    layer = QgsRasterLayer(str(URBAN), "urban")
    QgsProject.instance().addMapLayer(layer)
    dock.set_input(0, layer)
    dock.option_widget("TILE").setValue(64)  # many small tiles: long enough to cancel mid-run
    dock.option_widget("OVERLAP").setValue(16)
    dock.option_widget("BATCH").setValue(1)
    dock.out_widget.setFilePath(str(tmp_path))
    n_layers = len(QgsProject.instance().mapLayers())
    dock.start_run()
    time.sleep(1.0)
    dock.cancel_run()
    wait_for(dock, qgis_app)
    assert dock.last_error and "cancelled" in dock.last_error
    assert dock.progress.value() == 0  # not frozen at the value it had when cancelled
    assert len(QgsProject.instance().mapLayers()) == n_layers
    assert list(tmp_path.iterdir()) == []


def test_dock_output_folder_is_not_temporary_and_is_remembered(dock, qgis_app, tmp_path):
    from qgis.core import QgsSettings

    from landseg_plugin.settings import KEY_OUTPUT_DIR, output_dir_setting

    QgsSettings().remove(KEY_OUTPUT_DIR)
    assert output_dir_setting() == str(Path.home() / "LandSeg")  # no project saved: not a temporary folder
    layer = QgsRasterLayer(str(SJER), "sjer")
    QgsProject.instance().addMapLayer(layer)
    dock.set_input(0, layer)
    dock.out_widget.setFilePath(str(tmp_path / "chosen"))
    dock.start_run()
    wait_for(dock, qgis_app)
    assert QgsSettings().value(KEY_OUTPUT_DIR) == str(tmp_path / "chosen")
    assert output_dir_setting() == str(tmp_path / "chosen")  # what the next panel starts with


def test_missing_engine_help_names_a_setting_that_exists(monkeypatch):
    from landseg_plugin import engine_process

    monkeypatch.setenv("LANDSEG_PYTHON", "/nowhere/python")
    monkeypatch.setattr(engine_process, "engine_root", lambda: Path("/nowhere"))
    try:
        engine_process.engine_python(None)
    except engine_process.EngineError as exc:
        text = str(exc)
    else:
        pytest.skip("an engine Python was found anyway")
    assert "Settings > LandSeg" not in text and "landseg/python" in text


def _set_task(dock, key: str) -> None:
    dock.task_combo.setCurrentIndex(dock.task_combo.findData(key))


def test_dock_change_task_adds_change_layers(dock, qgis_app, tmp_path):
    import numpy as np
    import rasterio

    after = tmp_path / "after.tif"
    with rasterio.open(SJER) as src:
        data, profile = src.read(), src.profile
    data[:, 100:200, 100:250] = np.array([40, 140, 40], np.uint8)[:, None, None]
    with rasterio.open(after, "w", **profile) as dst:
        dst.write(data)
    before_layer, after_layer = QgsRasterLayer(str(SJER), "2018"), QgsRasterLayer(str(after), "2019")
    QgsProject.instance().addMapLayers([before_layer, after_layer])
    _set_task(dock, "change")
    assert "METHOD" in dock.option_widgets and dock.inputs_table.rowCount() == 2
    dock.set_input(0, before_layer)
    dock.set_input(1, after_layer)
    dock.out_widget.setFilePath(str(tmp_path / "out"))
    dock.start_run()
    wait_for(dock, qgis_app)
    assert dock.last_error is None, dock.last_error
    layers = {n.layer().name(): n.layer() for n in dock.last_group.findLayers()}
    assert set(layers) == {"change polygons", "change raster"}
    polygons = layers["change polygons"]
    assert polygons.featureCount() >= 1 and polygons.renderer().type() == "categorizedSymbol"
    assert polygons.renderer().classAttribute() == "transition"
    assert layers["change raster"].renderer().type() == "paletted"


def test_dock_treecrowns_task(dock, qgis_app, tmp_path):
    layer = QgsRasterLayer(str(URBAN), "urban")
    QgsProject.instance().addMapLayer(layer)
    _set_task(dock, "treecrowns")
    assert dock.inputs_table.rowCount() == 2 and "METHOD" not in dock.option_widgets
    assert dock.inputs_table.cellWidget(1, 1).currentLayer() is None  # the optional CHM row starts empty
    dock.set_input(0, layer)
    dock.out_widget.setFilePath(str(tmp_path))
    dock.start_run()
    wait_for(dock, qgis_app)
    assert dock.last_error is None, dock.last_error
    tops, crowns = (node.layer() for node in dock.last_group.findLayers())
    assert crowns.name() == "tree crowns" and crowns.featureCount() >= 10  # the detector: 46 on this scene
    assert {"score", "height_max", "area_m2", "diameter_m"} <= {f.name() for f in crowns.fields()}
    # treetops above the crowns, one per crown, as points styled by their own QML (a marker, not the crowns' fill)
    assert tops.name() == "treetops" and tops.featureCount() == crowns.featureCount()
    assert tops.geometryType() == QgsWkbTypes.PointGeometry
    assert tops.renderer().symbol().symbolLayer(0).layerType() == "SimpleMarker"
    assert {"score", "height_m", "crown_diameter_m"} <= {f.name() for f in tops.fields()}


def test_every_task_of_the_engines_table_is_in_processing_the_panel_and_the_cli(plugin, dock):
    """The front ends are made from engine.tasks.TASKS: each task is a Processing algorithm whose parameters are
    its options, a task of the panel (adapt: the panel's own group), and a CLI subcommand."""
    from engine.cli_parser import build_parser
    from engine.tasks import TASKS
    from landseg_plugin import forms

    registry = QgsApplication.processingRegistry()
    panel = {dock.task_combo.itemData(i) for i in range(dock.task_combo.count())}
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for task in TASKS:
        alg = registry.algorithmById(f"landseg:{task}")
        assert alg is not None, task
        names = {p.name() for p in alg.parameterDefinitions()}
        assert names == {o["name"] for o in forms.options(task)}, task
        assert task in panel or (task == "adapt" and dock.adapt_button is not None)
        assert task in commands


def test_the_panel_makes_a_form_for_a_task_without_bands(dock, tmp_path):
    """Canopy height from LiDAR: no layer-and-bands table, a file widget for the point cloud, the CRS and cell
    size widgets; the request the panel builds names the output in the output folder."""
    dock.task_combo.setCurrentIndex(dock.task_combo.findData("chm"))
    assert not dock.inputs_box.isVisibleTo(dock) and {"LIDAR", "RESOLUTION", "CRS"} <= set(dock.option_widgets)
    dock.option_widget("LIDAR").setFilePath(str(tmp_path / "cloud.laz"))
    dock.option_widget("RESOLUTION").setValue(1.0)
    request, _what = dock.build_request(str(tmp_path))
    assert request["task"] == "chm" and request["params"]["resolution"] == 1.0
    assert request["params"]["out"].startswith(str(tmp_path / "chm_")) and request["params"]["out"].endswith(".tif")
    dock.task_combo.setCurrentIndex(dock.task_combo.findData("landcover"))
    assert dock.inputs_box.isVisibleTo(dock) and "TILE" in dock.option_widgets


def test_dock_reports_missing_layer(dock):
    dock.start_run()
    assert not dock.is_running()
    assert "choose a layer for the model input 'rgb'" in dock.last_error


def test_dock_screenshot(dock, qgis_app):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    layer = QgsRasterLayer(str(SJER), "neon_sjer_rgb")
    QgsProject.instance().addMapLayer(layer)
    dock.set_input(0, layer)
    dock.out_widget.setFilePath("/home/analyst/LandSeg")  # not the folder an earlier test remembered
    dock.resize(460, 620)
    dock.show()
    qgis_app.processEvents()
    out = ARTIFACTS / "dock_panel.png"
    assert dock.grab().save(str(out))
    assert out.stat().st_size > 2000


def _destinations(folder: Path) -> dict[str, str]:
    """The land-cover algorithm's three outputs, in ``folder``."""
    return {
        k: str(folder / v)
        for k, v in (("OUTPUT", "p.gpkg"), ("OUTPUT_CLASSES", "c.tif"), ("OUTPUT_CONFIDENCE", "f.tif"))
    }


def _run_alg(params: dict):
    from landseg_plugin.processing_provider import algorithm

    alg = algorithm("landcover")
    alg.initAlgorithm()
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = QgsProcessingFeedback()
    return alg.processAlgorithm(params, context, feedback)


def test_processing_algorithm_in_process(qgis_new_project, tmp_path):
    out = _destinations(tmp_path)
    res = _run_alg(
        {
            "INPUT": [str(SJER)],
            "MODEL": str(DEFAULT_MODEL),
            "DEVICE": 0,
            "TILE": 256,
            "OVERLAP": 32,
            "BATCH": 2,
            "MIN_AREA": -1,
            "BANDS": "rgb=1:1,2,3",
            **out,
        }
    )
    assert Path(res["OUTPUT"]).exists() and Path(res["OUTPUT_CLASSES"]).exists()
    assert QgsVectorLayer(res["OUTPUT"], "p", "ogr").featureCount() > 10


def test_processing_prompts_reach_the_engine(qgis_new_project, tmp_path):
    import rasterio

    out = _destinations(tmp_path)
    res = _run_alg(
        {
            "INPUT": [str(SJER)],
            "MODEL": str(DEFAULT_MODEL),
            "DEVICE": 0,
            "TILE": 0,
            "OVERLAP": -1,
            "BATCH": 4,
            "MIN_AREA": -1,
            "BANDS": "",
            "PROMPTS": "trees, lake",
            "UNASKED": 0,
            **out,
        }
    )
    with rasterio.open(res["OUTPUT_CLASSES"]) as ds:
        assert set(ds.tags(1)) == {"CLASS_0", "CLASS_1", "CLASS_2"}
        assert [ds.tags(1)[f"CLASS_{i}"] for i in range(3)] == ["vegetation", "water", "other"]


def test_processing_fuses_models(qgis_new_project, tmp_path):
    """FUSE_MODELS reaches the engine: the class map holds the union of both models' classes."""
    import numpy as np
    import rasterio

    from conftest import band_model, write_raster

    a = band_model(tmp_path / "optical.onnx", [{"id": 0, "name": "woodland"}, {"id": 1, "name": "water"}], "rgb")
    b = band_model(tmp_path / "radar.onnx", [{"id": 0, "name": "water"}, {"id": 1, "name": "building"}], "sar")
    data = np.zeros((3, 20, 30), np.float32)
    data[0, :, :10], data[1, :, 10:20], data[2, :, 20:] = 6.0, 6.0, 6.0
    raster = write_raster(tmp_path / "stack.tif", data)
    out = _destinations(tmp_path)
    res = _run_alg(
        {
            "INPUT": [str(raster)],
            "MODEL": str(a),
            "FUSE_MODELS": [str(b)],
            "BANDS": "rgb=1:1,2; sar=1:2,3",
            "DEVICE": 0,
            "TILE": 0,
            "OVERLAP": -1,
            "BATCH": 4,
            "MIN_AREA": 0,
            **out,
        }
    )
    with rasterio.open(res["OUTPUT_CLASSES"]) as ds:
        assert [ds.tags(1)[f"CLASS_{i}"] for i in range(3)] == ["woodland", "water", "building"]
        cls = ds.read(1)
    assert (cls[:, :10] == 0).all() and (cls[:, 10:20] == 1).all() and (cls[:, 20:] == 2).all()


@pytest.mark.parametrize(
    "params,message",
    [
        ({"INPUT": "VECTOR"}, "is not a raster layer"),
        ({"BANDS": "rgb="}, "expected NAME=[RASTER:]BANDS"),
        ({"BANDS": "nir=1:1"}, "modality 'nir' is not an input"),
        ({"MODEL": "/nowhere/unknown.onnx"}, "model file not found: /nowhere/unknown.onnx"),
    ],
)
def test_processing_bad_input_is_a_clear_error(qgis_new_project, tmp_path, params, message):
    vec = QgsVectorLayer("Polygon?crs=EPSG:4326", "not a raster", "memory")
    QgsProject.instance().addMapLayer(vec)
    base = {
        "INPUT": [str(SJER)],
        "MODEL": str(DEFAULT_MODEL),
        "DEVICE": 0,
        "TILE": 0,
        "OVERLAP": -1,
        "BATCH": 4,
        "MIN_AREA": -1,
        "BANDS": "",
        **_destinations(tmp_path),
    }
    base.update(params)
    if base["INPUT"] == "VECTOR":
        base["INPUT"] = [vec]
    with pytest.raises(QgsProcessingException) as err:
        _run_alg(base)
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_processing_reports_model_input_without_bands(qgis_new_project, tmp_path):
    from conftest import multimodal_model

    model = multimodal_model(tmp_path / "mm.onnx")
    out = tmp_path / "out"
    params = {
        "INPUT": [str(SJER)],
        "MODEL": str(model),
        "DEVICE": 0,
        "TILE": 0,
        "OVERLAP": -1,
        "BATCH": 4,
        "MIN_AREA": -1,
        "BANDS": "rgb=1:1,2,3",
        **_destinations(out),
    }
    with pytest.raises(QgsProcessingException) as err:
        _run_alg(params)
    assert "model input 'nir' (nir) has no bands mapped to it" in str(err.value)
    assert not out.exists()


def test_dock_adapt_to_my_labels_adds_the_new_model(dock, qgis_app, tmp_path):
    """The panel's "Adapt to my labels": a labels layer over the input layer -> a new model in the list."""
    pytest.importorskip("torch")
    import fiona
    import numpy as np
    import rasterio
    from rasterio.features import shapes

    from engine.jobs.landcover import LandcoverParams, run_landcover

    # labels: the default model's own vegetation/bare-land regions on the SJER sample, as an analyst might draw
    res = run_landcover(LandcoverParams(inputs=[SJER], model=DEFAULT_LANDCOVER_MODEL, out_dir=tmp_path / "lc"))
    with rasterio.open(res.class_map) as ds:
        cls, t = ds.read(1), ds.transform
    labels = tmp_path / "labels.gpkg"
    schema = {"geometry": "Polygon", "properties": {"kind": "str"}}
    with fiona.open(labels, "w", driver="GPKG", schema=schema, crs="EPSG:32611") as sink:
        for g, v in list(shapes(cls, mask=np.isin(cls, (2, 3)), transform=t))[:20]:
            sink.write({"geometry": g, "properties": {"kind": "trees" if v == 3 else "bare soil"}})
    raster = QgsRasterLayer(str(SJER), "sjer")
    vec = QgsVectorLayer(str(labels), "labels", "ogr")
    QgsProject.instance().addMapLayers([raster, vec])
    dock.add_model(str(DEFAULT_LANDCOVER_MODEL))
    dock.set_input(0, raster)
    dock.labels_combo.setLayer(vec)
    dock.label_field.setField("kind")
    dock.adapt_minutes.setValue(1)
    dock.out_widget.setFilePath(str(tmp_path / "out"))
    n = dock.model_combo.count()
    dock.start_adapt()
    wait_for(dock, qgis_app, timeout=300)
    assert dock.last_error is None, dock.last_error
    assert dock.model_combo.count() == n + 1
    assert dock.model_combo.currentData().endswith("landcover-unet-lite0-adapted.onnx")


def test_dock_new_labels_layer_is_editable_with_the_models_classes(dock, tmp_path):
    """The panel's "New labels layer": a GeoPackage in the output folder, in the input layer's CRS, with a value
    map of the model's classes on its class field, in the project in edit mode and chosen as the labels."""
    raster = QgsRasterLayer(str(SJER), "sjer")
    QgsProject.instance().addMapLayer(raster)
    dock.add_model(str(DEFAULT_LANDCOVER_MODEL))
    dock.set_input(0, raster)
    dock.out_widget.setFilePath(str(tmp_path / "out"))
    vec = dock.new_labels_layer()
    assert vec is not None and vec.isValid() and vec.isEditable(), dock.last_error
    assert vec.crs() == raster.crs() and vec.geometryType() == QgsWkbTypes.PolygonGeometry
    setup = vec.editorWidgetSetup(vec.fields().indexOf("class"))
    assert setup.type() == "ValueMap"
    assert [next(iter(d)) for d in setup.config()["map"]] == [
        "building", "road", "bare land", "vegetation", "water"
    ]  # fmt: skip
    assert dock.labels_combo.currentLayer() is vec and dock.label_field.currentField() == "class"
    assert Path(vec.source().split("|")[0]).parent == tmp_path / "out"
