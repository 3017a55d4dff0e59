"""The LandSeg dock panel: pick layers and map their bands to the model's inputs, choose model, device and
tiling, press Run. It only collects parameters; the engine does the work (see task.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from qgis.core import QgsApplication, QgsMapLayerProxyModel, QgsRasterLayer
from qgis.gui import QgsDockWidget, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from .dock_adapt import AdaptPanel
from .engine_process import (
    MODEL_FILTER,
    RESAMPLE_MODES,
    EngineError,
    change_request,
    default_model,
    describe_model,
    installed_models,
    landcover_request,
    treecrown_model,
    treecrowns_request,
)
from .settings import DEVICES, models_dir_setting, output_dir_setting, python_setting, remember_output_dir
from .task import EngineTask

TASKS = [("landcover", "Land cover"), ("change", "Change detection"), ("treecrowns", "Tree crowns")]
CHANGE_METHODS = [("postclass", "Land cover on both dates (from → to)"), ("direct", "Change model (direct)")]


class LandSegDock(AdaptPanel, QgsDockWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("LandSeg", parent)
        self.setObjectName("LandSegDock")
        self.task: EngineTask | None = None
        self.last_group = None
        self.last_error: str | None = None
        self._meta: dict[str, Any] | None = None
        self._meta_cache: dict[str, dict[str, Any]] = {}  # model path -> metadata (describe runs a subprocess)
        self._build()
        self._load_models()

    # ---- layout -------------------------------------------------------------------------------------------
    def _build(self) -> None:
        root = QWidget()
        lay = QVBoxLayout(root)

        form = QFormLayout()
        self.task_combo = QComboBox()
        for key, label in TASKS:
            self.task_combo.addItem(label, key)
        self.task_combo.currentIndexChanged.connect(self._model_changed)
        form.addRow("Task", self.task_combo)
        self.method_combo = QComboBox()
        for key, label in CHANGE_METHODS:
            self.method_combo.addItem(label, key)
        self.method_label = QLabel("Method")
        form.addRow(self.method_label, self.method_combo)
        self.change_classes = QLineEdit()
        self.change_classes.setPlaceholderText("building, road (empty: every class)")
        self.change_classes.setToolTip("Land cover on both dates: report changes from or to these classes only")
        self.change_classes_label = QLabel("Changed classes")
        form.addRow(self.change_classes_label, self.change_classes)
        model_row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        browse = QPushButton("…")
        browse.setToolTip("Add a model file (.onnx with LandSeg metadata)")
        browse.clicked.connect(self._browse_model)
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(browse)
        form.addRow("Model", model_row)
        self.prompts = QLineEdit()
        self.prompts.setPlaceholderText("woodland, water, buildings")
        self.prompts.setToolTip(
            "Comma-separated; each is matched to the model class it means (shown after the "
            "run). Empty: all the model's classes. Classes not asked for become 'other'."
        )
        form.addRow("Class prompts", self.prompts)
        lay.addLayout(form)

        inputs_box = QGroupBox("Inputs: layer and bands for each model input")
        ib = QVBoxLayout(inputs_box)
        self.inputs_table = QTableWidget(0, 3)
        self.inputs_table.setHorizontalHeaderLabels(["Model input", "Layer", "Bands"])
        self.inputs_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)
        self.inputs_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.Stretch)
        self.inputs_table.setMaximumHeight(140)
        self.inputs_table.verticalHeader().setVisible(False)
        ib.addWidget(self.inputs_table)
        lay.addWidget(inputs_box)

        opts = QFormLayout()
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        opts.addRow("Device", self.device_combo)
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 4096)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setSpecialValueText("model default")
        self.overlap_spin = QSpinBox()
        self.overlap_spin.setRange(-1, 1024)
        self.overlap_spin.setValue(-1)
        self.overlap_spin.setSpecialValueText("model default")
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 256)
        self.batch_spin.setValue(4)
        tiling = QHBoxLayout()
        for label, w in (("tile", self.tile_spin), ("overlap", self.overlap_spin), ("batch", self.batch_spin)):
            tiling.addWidget(QLabel(label))
            tiling.addWidget(w)
        opts.addRow("Tiling", tiling)
        self.resample_combo = QComboBox()
        self.resample_combo.addItems(list(RESAMPLE_MODES))
        self.resample_combo.setToolTip(
            "auto: when the layer's pixel size differs from the model's by more than 15%, infer at the model's "
            "pixel size and write the results back on the layer's grid"
        )
        opts.addRow("Resample", self.resample_combo)
        self.out_widget = QgsFileWidget()
        self.out_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.out_widget.setFilePath(output_dir_setting())
        self.out_widget.setToolTip(
            "results are written here (remembered); default: a LandSeg folder next to the project"
        )
        opts.addRow("Output folder", self.out_widget)
        lay.addLayout(opts)

        lay.addWidget(self._build_adapt_box())

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.start_run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_run)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        lay.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        lay.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self.setWidget(root)

    # ---- models -------------------------------------------------------------------------------------------
    def _load_models(self) -> None:
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for path in installed_models(models_dir_setting()):
            self.model_combo.addItem(path.stem, str(path))
        default = self.model_combo.findData(str(default_model()))
        self.model_combo.setCurrentIndex(max(default, 0))
        self.model_combo.blockSignals(False)
        self._model_changed()

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "LandSeg model", "", MODEL_FILTER)
        if path:
            self.add_model(path)

    def add_model(self, path: str) -> None:
        idx = self.model_combo.findData(path)
        if idx < 0:
            self.model_combo.addItem(Path(path).stem, path)
            idx = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(idx)

    def _model_changed(self) -> None:
        model = self.model_combo.currentData()
        self._meta = None
        self.inputs_table.setRowCount(0)
        if not model:
            self._set_status("No model installed: add one with …")
            return
        try:
            if model not in self._meta_cache:
                self._meta_cache[model] = describe_model(model, python_setting())
            self._meta = self._meta_cache[model]
        except EngineError as exc:
            self._set_status(f"Model: {exc}")
            return
        self._set_status(self._meta.get("description", ""))
        task = self.task_combo.currentData()
        self.method_combo.setVisible(task == "change")
        self.method_label.setVisible(task == "change")
        self.change_classes.setVisible(task == "change")
        self.change_classes_label.setVisible(task == "change")
        if task == "change":
            first = [i for i in self._meta["inputs"] if i.get("date") in (None, "before")][0]
            n = len(first["bands"])
            self._fill_rows([("before", "first date", n), ("after", "second date", n)])
        elif task == "treecrowns":
            # A detector's one input holds RGB + CHM bands; the image row takes the red, green and blue.
            n = 3 if self._meta.get("task") == "treecrowns" else len(self._meta["inputs"][0]["bands"])
            self._fill_rows([("image", "RGB image", n), ("chm", "CHM / nDSM (optional), metres", 1)])
        else:
            self._fill_inputs(self._meta["inputs"])

    def _fill_rows(self, rows: list[tuple[str, str, int]]) -> None:
        """Inputs table for change / tree crowns: one layer per row, with its band numbers."""
        self.inputs_table.setRowCount(len(rows))
        for row, (key, text, n_bands) in enumerate(rows):
            label = QLabel(f"{key}: {text}")
            combo = QgsMapLayerComboBox()
            combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
            combo.setAllowEmptyLayer(True)
            if "optional" in text:  # no other layer may silently stand in for an optional one (e.g. RGB as CHM)
                combo.setLayer(None)
            self.inputs_table.setCellWidget(row, 0, label)
            self.inputs_table.setCellWidget(row, 1, combo)
            self.inputs_table.setCellWidget(row, 2, QLineEdit(",".join(str(b) for b in range(1, n_bands + 1))))

    def _fill_inputs(self, inputs: list[dict[str, Any]]) -> None:
        self.inputs_table.setRowCount(len(inputs))
        band = 1
        for row, mi in enumerate(inputs):
            label = QLabel(f"{mi['modality']}: {', '.join(mi['bands'])}")
            label.setToolTip(f"model input '{mi['name']}'")
            combo = QgsMapLayerComboBox()
            combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
            combo.setAllowEmptyLayer(True)
            # One raster feeding several inputs (e.g. RGBN): continue its band numbering by default.
            bands = QLineEdit(",".join(str(b) for b in range(band, band + len(mi["bands"]))))
            band += len(mi["bands"])
            bands.setToolTip("band numbers of the chosen layer, starting at 1, in the model's band order")
            self.inputs_table.setCellWidget(row, 0, label)
            self.inputs_table.setCellWidget(row, 1, combo)
            self.inputs_table.setCellWidget(row, 2, bands)

    # ---- run ----------------------------------------------------------------------------------------------
    def set_input(self, row: int, layer: QgsRasterLayer, bands: str | None = None) -> None:
        self.inputs_table.cellWidget(row, 1).setLayer(layer)
        if bands is not None:
            self.inputs_table.cellWidget(row, 2).setText(bands)

    def collect(self) -> tuple[list[str], str]:
        """(raster paths, band mapping) from the inputs table; raises EngineError with a readable message."""
        if self._meta is None:
            raise EngineError("choose a valid model first")
        paths: list[str] = []
        mapping: list[str] = []
        for row, mi in enumerate(self._meta["inputs"]):
            layer = self.inputs_table.cellWidget(row, 1).currentLayer()
            if layer is None:
                raise EngineError(f"choose a layer for the model input '{mi['modality']}'")
            if layer.providerType() != "gdal":
                raise EngineError(f"layer '{layer.name()}' is not a raster file; save it as a GeoTIFF first")
            source = layer.source().split("|")[0]
            if source not in paths:
                paths.append(source)
            bands = self.inputs_table.cellWidget(row, 2).text().strip()
            if not bands:
                raise EngineError(f"no bands mapped to the model input '{mi['modality']}'")
            mapping.append(f"{mi['modality']}={paths.index(source) + 1}:{bands}")
        return paths, "; ".join(mapping)

    def _row_layer(self, row: int, what: str, required: bool = True):
        layer = self.inputs_table.cellWidget(row, 1).currentLayer()
        if layer is None:
            if required:
                raise EngineError(f"choose a layer for the {what}")
            return None
        if layer.providerType() != "gdal":
            raise EngineError(f"layer '{layer.name()}' is not a raster file; save it as a GeoTIFF first")
        return layer.source().split("|")[0]

    def build_request(self, out_dir: str) -> tuple[dict, str]:
        """(engine request, short description) for the chosen task; raises EngineError if incomplete."""
        task = self.task_combo.currentData()
        stamp = time.strftime("%Y%m%d_%H%M%S")
        base = Path(out_dir) / f"{task}_{stamp}"
        model = self.model_combo.currentData()
        device = self.device_combo.currentText()
        if self._meta is None:
            raise EngineError("choose a valid model first")
        if task == "change":
            before = self._row_layer(0, "first date (before)")
            after = self._row_layer(1, "second date (after)")
            bands = self.inputs_table.cellWidget(0, 2).text().strip()
            modality = [i for i in self._meta["inputs"] if i.get("date") in (None, "before")][0]["modality"]
            return change_request(
                [before],
                [after],
                f"{base}_map.tif",
                f"{base}.gpkg",
                f"{base}_transitions.csv",
                model=model,
                method=self.method_combo.currentData(),
                band_mapping=f"{modality}=1:{bands}" if bands else "",
                device=device,
                classes=self.change_classes.text(),
                resample=self.resample_combo.currentText(),
            ), "change"
        if task == "treecrowns":
            image = self._row_layer(0, "RGB image")
            chm = self._row_layer(1, "CHM", required=False)
            if model == str(default_model()):
                # The default land-cover model is for land cover: tree crowns come from the crown detector, as in
                # the CLI and Processing (another model chosen on purpose is used as it is).
                model = str(treecrown_model())
            return treecrowns_request(image, f"{base}.gpkg", chm=chm, model=model, device=device), "tree crowns"
        paths, mapping = self.collect()
        return landcover_request(
            inputs=paths,
            out_classes=f"{base}_classes.tif",
            out_confidence=f"{base}_confidence.tif",
            out_polygons=f"{base}.gpkg",
            model=model,
            band_mapping=mapping,
            device=device,
            tile=self.tile_spin.value(),
            overlap=self.overlap_spin.value(),
            batch=self.batch_spin.value(),
            prompts=self.prompts.text(),
            resample=self.resample_combo.currentText(),
        ), "land cover"

    def start_run(self) -> None:
        self.last_error = None
        out_dir = self.out_widget.filePath() or output_dir_setting()
        self.out_widget.setFilePath(out_dir)
        remember_output_dir(out_dir)
        try:
            args, what = self.build_request(out_dir)
        except EngineError as exc:
            self._fail(str(exc))
            return
        group_name = f"LandSeg {what} {time.strftime('%H:%M:%S')} ({self.model_combo.currentText()})"
        task = EngineTask(
            f"LandSeg: {group_name}", args, group_name, python_setting(), task=self.task_combo.currentData()
        )
        self._start(task, self._done, "running…")

    def _start(self, task: EngineTask, on_done, status: str) -> None:
        """Hand an engine task to QGIS's task manager with the panel's progress, status and buttons."""
        self.task = task
        task.progressChanged.connect(lambda v: self.progress.setValue(int(v)))
        task.progress_message.connect(self._set_status)
        task.done.connect(on_done)
        task.failed.connect(self._fail)
        self.run_button.setEnabled(False)
        self.adapt_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self._set_status(status)
        QgsApplication.taskManager().addTask(task)

    def cancel_run(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _done(self, group) -> None:
        self.last_group = group
        self.progress.setValue(100)
        notes = (self.task.result or {}).get("messages", []) if self.task is not None else []
        self._set_status("<br>".join([f"done: layers added to '{group.name()}'", *notes]))
        self._idle()

    def _fail(self, message: str) -> None:
        self.last_error = message
        self.progress.setValue(0)  # a cancelled or failed run has no partial result to show progress for
        self._set_status(f"<span style='color:#b00020'>{message}</span>")
        self._idle()

    def _idle(self) -> None:
        self.run_button.setEnabled(True)
        self.adapt_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.task = None

    def _set_status(self, text: str) -> None:
        self.status.setText(text)

    def is_running(self) -> bool:
        return self.task is not None
