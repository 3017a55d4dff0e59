"""The panel's "Adapt to my labels": fine-tune the selected land-cover model on a labels layer drawn over the
input layer (`engine adapt`); the new model joins the model list when it is done."""

from __future__ import annotations

import time
from pathlib import Path

from qgis.core import (
    QgsCoordinateTransformContext,
    QgsEditorWidgetSetup,
    QgsField,
    QgsFields,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.gui import QgsFieldComboBox, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QVariant
from qgis.PyQt.QtWidgets import QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QPushButton, QSpinBox

from . import forms
from .settings import output_dir_setting, python_setting
from .task import EngineTask


class AdaptPanel:
    """Mixed into LandSegDock: builds the group and runs the adaptation through the dock's task machinery."""

    def _build_adapt_box(self) -> QGroupBox:
        """The "Adapt to my labels" group: a labels layer, its class field, minutes, the new model's pixel size."""
        adapt_box = QGroupBox("Adapt the model to my labels (needs PyTorch: tick it in Engine, Repair / update)")
        af = QFormLayout(adapt_box)
        self.labels_combo = QgsMapLayerComboBox()
        self.labels_combo.setFilters(QgsMapLayerProxyModel.VectorLayer)
        self.labels_combo.setAllowEmptyLayer(True)
        self.labels_combo.setLayer(None)
        self.label_field = QgsFieldComboBox()
        self.labels_combo.layerChanged.connect(self.label_field.setLayer)
        self.adapt_minutes = QSpinBox()
        self.adapt_minutes.setRange(1, 120)
        self.adapt_minutes.setValue(5)
        self.adapt_minutes.setSuffix(" min")
        self.adapt_pixel = QDoubleSpinBox()
        self.adapt_pixel.setRange(0.0, 10.0)
        self.adapt_pixel.setDecimals(3)
        self.adapt_pixel.setSingleStep(0.05)
        self.adapt_pixel.setSpecialValueText("model's")  # 0: keep the base model's pixel size
        self.adapt_pixel.setSuffix(" m")
        self.adapt_pixel.setToolTip(
            "the new model's pixel size: the base model's, or finer for drone imagery (0.15 m separates small roofs)"
        )
        self.adapt_button = QPushButton("Adapt to my labels")
        self.adapt_button.setToolTip(
            "Fine-tune the selected land-cover model on the labelled polygons over the input layer; the new model "
            "(with its held-out accuracy in its card) is added to the model list"
        )
        self.adapt_button.clicked.connect(self.start_adapt)
        self.new_labels_button = QPushButton("New labels layer")
        self.new_labels_button.setToolTip(
            "A GeoPackage polygon layer in the output folder with a 'class' field whose values are the selected "
            "model's classes (a class of your own: add it to the field's value map in the layer's Attributes Form), "
            "added in edit mode: digitize at once"
        )
        self.new_labels_button.clicked.connect(self.new_labels_layer)
        labels_row = QHBoxLayout()
        labels_row.addWidget(self.labels_combo, 1)
        labels_row.addWidget(self.new_labels_button)
        af.addRow("Labels", labels_row)
        af.addRow("Class field", self.label_field)
        row = QHBoxLayout()
        row.addWidget(self.adapt_minutes)
        row.addWidget(self.adapt_pixel)
        row.addWidget(self.adapt_button, 1)
        af.addRow("Training", row)
        return adapt_box

    def new_labels_layer(self) -> QgsVectorLayer | None:
        """A polygon GeoPackage with a "class" field, a value map of the model's classes (free text still allowed:
        a new class), in the input layer's CRS, added to the project in edit mode and chosen as the labels."""
        self.last_error = None
        classes = [c["name"] for c in (self._meta or {}).get("classes", [])]
        layer = self.inputs_table.cellWidget(0, 1).currentLayer() if self.inputs_table.rowCount() else None
        if not classes or layer is None:
            self._fail("choose a land-cover model and its input layer first: the labels take the model's classes")
            return None
        folder = Path(self.out_widget.filePath() or output_dir_setting())
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"labels_{time.strftime('%Y%m%d_%H%M%S')}.gpkg"
        fields = QgsFields()
        fields.append(QgsField("class", QVariant.String))
        opts = QgsVectorFileWriter.SaveVectorOptions()
        opts.driverName = "GPKG"
        opts.layerName = "labels"
        writer = QgsVectorFileWriter.create(
            str(path), fields, QgsWkbTypes.MultiPolygon, layer.crs(), QgsCoordinateTransformContext(), opts
        )
        if writer is None or writer.hasError() != QgsVectorFileWriter.NoError:
            self._fail(f"cannot write {path}: {writer.errorMessage() if writer else 'no writer'}")
            return None
        del writer  # flushes and closes the file
        vec = QgsVectorLayer(f"{path}|layername=labels", "LandSeg labels", "ogr")
        idx = vec.fields().indexOf("class")
        # A value map: the class is picked, not typed (a typo would become a new class).
        vec.setEditorWidgetSetup(idx, QgsEditorWidgetSetup("ValueMap", {"map": [{c: c} for c in classes]}))
        QgsProject.instance().addMapLayer(vec)
        vec.startEditing()
        self.labels_combo.setLayer(vec)
        self.label_field.setLayer(vec)
        self.label_field.setField("class")
        self._set_status(f"labels layer {path.name}: digitize polygons and pick their class, save, then adapt")
        return vec

    def start_adapt(self) -> None:
        """`engine adapt` on the labels layer over the first input layer; the new model joins the model list."""
        self.last_error = None
        labels = self.labels_combo.currentLayer()
        layer = self.inputs_table.cellWidget(0, 1).currentLayer() if self.inputs_table.rowCount() else None
        if labels is None or not self.label_field.currentField() or layer is None:
            self._fail("choose a land-cover model, its input layer, a labels layer and its class field")
            return
        if labels.isEditable() and labels.isModified():  # the engine reads the file: unsaved polygons first
            labels.commitChanges(False)
        out_dir = str(
            Path(self.out_widget.filePath() or output_dir_setting()) / f"model_{time.strftime('%Y%m%d_%H%M%S')}"
        )
        args = forms.build_request("adapt", {
            "INPUT": [layer.source()], "LABELS": labels.source().split("|")[0],
            "CLASS_FIELD": self.label_field.currentField(), "OUTPUT": out_dir, "MODEL": self.model_combo.currentData(),
            "MINUTES": float(self.adapt_minutes.value()), "PIXEL_SIZE": self.adapt_pixel.value(),
        })  # fmt: skip
        self._start(
            EngineTask("LandSeg: adapt", args, "adapt", python_setting(), task="adapt"), self._adapted, "adapting…"
        )

    def _adapted(self, _group) -> None:
        result = (self.task.result or {}) if self.task is not None else {}
        self.progress.setValue(100)
        if result.get("model"):
            self.add_model(result["model"])
        before, after = result.get("holdout_iou_before", {}), result.get("holdout_iou_after", {})
        figures = ", ".join(
            f"{k} {'–' if before.get(k) is None else before[k]} → {v:.2f}" for k, v in after.items() if v is not None
        )
        picture = result.get("picture")
        link = f'<br><a href="file://{picture}">held-out picture</a> (image | before | after | labels)'
        self._set_status(
            f"new model: {result.get('model')}<br>held-out IoU before → after: {figures}" + (link if picture else "")
        )
        self._idle()
