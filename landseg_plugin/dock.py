"""The LandSeg dock panel: pick a task, layers and the bands feeding the model's inputs, a model, options, press
Run. It only collects parameters; the engine does the work (see task.py). The task list and each task's option
widgets are made from the engine's task table (forms.py, dock_forms.py); land cover, change and tree crowns also
get the layer-and-bands table and the model list, which serve their layer, band-mapping and model options."""

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
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from . import forms
from .dock_adapt import AdaptPanel
from .dock_forms import make_widget, shown, widget_value
from .dock_setup import SetupPanel
from .engine_process import MODEL_FILTER, EngineError, default_model, describe_model, installed_models
from .settings import models_dir_setting, output_dir_setting, python_setting, remember_output_dir
from .task import EngineTask

# The panel's own rows serve these tasks' layer, band-mapping and model options: option names per inputs-table row.
TABLE_ROWS = {"change": ("BEFORE", "AFTER"), "treecrowns": ("INPUT", "CHM")}  # land cover: a row per model input
PANEL_ADAPT = "adapt"  # served by its own group (dock_adapt.py): it needs the model list and a labels layer


class LandSegDock(SetupPanel, AdaptPanel, QgsDockWidget):
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
        lay.addWidget(self._build_setup_box())  # first: without an engine nothing else works

        form = QFormLayout()
        self.task_combo = QComboBox()
        for key, task in forms.tasks().items():
            if key != PANEL_ADAPT:
                self.task_combo.addItem(task["title"], key)
        self.task_combo.currentIndexChanged.connect(self._model_changed)
        form.addRow("Task", self.task_combo)
        model_row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        browse = QPushButton("…")
        browse.setToolTip("Add a model file (.onnx with LandSeg metadata)")
        browse.clicked.connect(self._browse_model)
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(browse)
        self.model_label = QLabel("Model")
        form.addRow(self.model_label, model_row)
        self.model_row = [self.model_combo, browse]
        lay.addLayout(form)

        self.inputs_box = QGroupBox("Inputs: layer and bands for each model input")
        ib = QVBoxLayout(self.inputs_box)
        self.inputs_table = QTableWidget(0, 3)
        self.inputs_table.setHorizontalHeaderLabels(["Model input", "Layer", "Bands"])
        self.inputs_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)
        self.inputs_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.Stretch)
        self.inputs_table.setMaximumHeight(140)
        self.inputs_table.verticalHeader().setVisible(False)
        ib.addWidget(self.inputs_table)
        lay.addWidget(self.inputs_box)

        # The chosen task's option widgets (dock_forms), remade when the task changes.
        self.options_box = QWidget()
        self.options_form = QFormLayout(self.options_box)
        self.options_form.setContentsMargins(0, 0, 0, 0)
        self.options_form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        self.option_widgets: dict[str, QWidget] = {}
        self._options_task: str | None = None
        lay.addWidget(self.options_box)
        opts = QFormLayout()
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

    # ---- the chosen task's options ----------------------------------------------------------------------------
    def uses_table(self, task: str | None = None) -> bool:
        """Does the task take its layers through the layer-and-bands table and its model from the model list?"""
        task = task or self.task_combo.currentData()
        return any(o["widget"] == "band_mapping" for o in forms.options(task))

    def _build_options(self, task: str) -> None:
        if task == self._options_task:
            return
        while self.options_form.rowCount():
            self.options_form.removeRow(0)
        self.option_widgets = {}
        for opt in forms.options(task):
            if shown(task, opt, self.uses_table(task)):
                self.option_widgets[opt["name"]] = make_widget(opt, self.option_widgets)
                # The label's words before its parenthesis: the rest (defaults, examples) is in the tooltip.
                label = QLabel(opt["label"].split(" (")[0])
                label.setToolTip(opt["label"])
                self.options_form.addRow(label, self.option_widgets[opt["name"]])
        self._options_task = task
        table = self.uses_table(task)
        self.inputs_box.setVisible(table)
        self.model_label.setVisible(table)
        for w in self.model_row:
            w.setVisible(table)

    def option_widget(self, name: str) -> QWidget:
        """The widget of the option `name` (its Processing name, e.g. TILE) of the chosen task."""
        return self.option_widgets[name]

    def _model_changed(self) -> None:
        self._build_options(self.task_combo.currentData())
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
                raise EngineError(f"choose a layer for '{what}'")
            return None
        if layer.providerType() != "gdal":
            raise EngineError(f"layer '{layer.name()}' is not a raster file; save it as a GeoTIFF first")
        return layer.source().split("|")[0]

    def _table_values(self, task: str) -> dict[str, Any]:
        """The layer, band-mapping and model options the table and the model list give (forms' names)."""
        if self._meta is None:
            raise EngineError("choose a valid model first")
        model = self.model_combo.currentData()
        by_name = {o["name"]: o for o in forms.options(task)}
        # The list starts at the land-cover model: a task whose own default is another model (tree crowns: the
        # crown detector) keeps its default unless another model is chosen on purpose.
        own = forms.default_value(by_name["MODEL"])
        values: dict[str, Any] = {"MODEL": None if model == str(default_model()) and own != model else model}
        if task in TABLE_ROWS:
            first, second = TABLE_ROWS[task]
            values[first] = self._row_layer(0, by_name[first]["label"])
            values[second] = self._row_layer(1, by_name[second]["label"], required=not by_name[second]["optional"])
            bands = self.inputs_table.cellWidget(0, 2).text().strip()
            if task == "change" and bands:
                modality = [i for i in self._meta["inputs"] if i.get("date") in (None, "before")][0]["modality"]
                values["BANDS"] = f"{modality}=1:{bands}"
            return values
        values["INPUT"], values["BANDS"] = self.collect()
        return values

    def build_request(self, out_dir: str) -> tuple[dict, str]:
        """(engine request, short description) for the chosen task; raises EngineError if incomplete."""
        task = self.task_combo.currentData()
        name = f"{task}_{time.strftime('%Y%m%d_%H%M%S')}"
        values = {n: widget_value(o, self.option_widgets[n]) for o in forms.options(task)
                  if (n := o["name"]) in self.option_widgets}  # fmt: skip
        if self.uses_table(task):
            values.update(self._table_values(task))
        for opt in forms.options(task):  # outputs: named after the task and the time, in the output folder
            if opt["widget"] == "output_folder":
                values[opt["name"]] = str(Path(out_dir) / name)
            elif opt["widget"] in forms.OUTPUT_WIDGETS and opt.get("suffix") and not self.uses_table(task):
                values[opt["name"]] = str(Path(out_dir) / f"{name}{opt['suffix']}")
        request = forms.build_request(task, values)
        fields = {o["field"] for o in forms.options(task, front_end=False)}
        request["params"].update({k: v for k, v in (("out_dir", out_dir), ("name", name)) if k in fields})
        for opt in forms.options(task):
            if not opt["optional"] and opt["field"] not in request["params"]:
                raise EngineError(f"choose {opt['label'].lower()}")
        return request, forms.tasks()[task]["title"].lower()

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
        for b in (self.run_button, self.adapt_button, self.setup_button):
            b.setEnabled(False)
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
        result = (self.task.result or {}) if self.task is not None else {}
        ran = [f"ran on {result['device_detail']}"] if result.get("device_detail") else []
        notes = result.get("messages", [])
        self._set_status("<br>".join([f"done: layers added to '{group.name()}'", *ran, *notes]))
        self._idle()

    def _fail(self, message: str) -> None:
        self.last_error = message
        self.progress.setValue(0)  # a cancelled or failed run has no partial result to show progress for
        self._set_status(f"<span style='color:#b00020'>{message}</span>")
        self._idle()

    def _idle(self) -> None:
        for b in (self.run_button, self.adapt_button, self.setup_button):
            b.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.task = None

    def _set_status(self, text: str) -> None:
        self.status.setText(text)

    def is_running(self) -> bool:
        return self.task is not None
