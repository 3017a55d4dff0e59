"""The panel's option widgets, made from a task's options (forms.py): a widget per option, and its value back in
the form forms.build_request takes. The panel's own rows (layers and bands, model list, output folder) serve the
options they replace; every other option a task has gets a widget here."""

from __future__ import annotations

import re
from typing import Any

from qgis.core import QgsCoordinateReferenceSystem, QgsMapLayerProxyModel
from qgis.gui import QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox, QgsProjectionSelectionWidget
from qgis.PyQt.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox, QWidget

from . import forms

BIG = 1_000_000


def _number(opt: dict[str, Any]) -> QWidget:
    box = QSpinBox() if opt["type"] == "int" else QDoubleSpinBox()
    if isinstance(box, QDoubleSpinBox):
        box.setDecimals(3)
    low = opt.get("minimum", opt.get("unset", -BIG))
    box.setRange(low if low is not None else -BIG, opt.get("maximum", BIG))
    if opt.get("unset") is not None:
        box.setMinimum(opt["unset"])
    # The label says what its lowest value means, e.g. "Tile size (0: model default)": the box shows those words.
    meaning = re.search(rf"\({box.minimum():g}: ([^)]*)\)", opt["label"])
    if meaning or opt.get("unset") is not None:
        box.setSpecialValueText(meaning.group(1) if meaning else "default")
    default = forms.default_value(opt)
    box.setValue(default if default is not None else box.minimum())
    return box


def make_widget(opt: dict[str, Any], widgets: dict[str, QWidget]) -> QWidget:
    """A widget asking for one option; `widgets` (name -> widget made so far) lets a field widget follow its
    layer's widget."""
    widget, default = opt["widget"], forms.default_value(opt)
    if opt.get("choices"):
        w = QComboBox()
        w.addItems(list(opt["choices"]))
        if default in opt["choices"]:
            w.setCurrentIndex(opt["choices"].index(default))
    elif widget in ("raster", "rasters", "vector"):
        w = QgsMapLayerComboBox()
        w.setFilters(QgsMapLayerProxyModel.VectorLayer if widget == "vector" else QgsMapLayerProxyModel.RasterLayer)
        w.setAllowEmptyLayer(True)
        if opt["optional"] or widget == "rasters":  # no layer may silently stand in for an optional one
            w.setLayer(None)
    elif widget == "field":
        w = QgsFieldComboBox()
        parent = widgets.get(opt["parent"])
        if parent is not None:
            parent.layerChanged.connect(w.setLayer)
            w.setLayer(parent.currentLayer())
    elif widget in ("file", "folder", "model", "models"):
        w = QgsFileWidget()
        w.setStorageMode(QgsFileWidget.GetDirectory if widget == "folder" else QgsFileWidget.GetFile)
        w.setFilter(opt.get("file_filter", ""))
        if widget == "model" and default:
            w.setFilePath(default)
    elif widget == "crs":
        w = QgsProjectionSelectionWidget()
        w.setOptionVisible(QgsProjectionSelectionWidget.CrsNotSet, True)
        w.setCrs(QgsCoordinateReferenceSystem())
    elif opt["type"] == "bool":
        w = QCheckBox()
        w.setChecked(bool(default))
    elif opt["type"] in ("int", "float"):
        w = _number(opt)
    else:
        w = QLineEdit(default or "")
        w.setPlaceholderText(opt["help"][:80])
    w.setToolTip(f"{opt['label']}: {opt['help']}" if opt["help"] else opt["label"])
    return w


def widget_value(opt: dict[str, Any], w: QWidget) -> Any:
    if isinstance(w, QComboBox) and not isinstance(w, (QgsMapLayerComboBox, QgsFieldComboBox)):
        return w.currentText()
    if isinstance(w, QgsMapLayerComboBox):
        layer = w.currentLayer()
        return layer.source().split("|")[0] if layer is not None else None
    if isinstance(w, QgsFieldComboBox):
        return w.currentField() or None
    if isinstance(w, QgsFileWidget):
        return w.filePath() or None
    if isinstance(w, QgsProjectionSelectionWidget):
        return w.crs().authid() if w.crs().isValid() else None
    if isinstance(w, QCheckBox):
        return w.isChecked()
    if isinstance(w, (QSpinBox, QDoubleSpinBox)):
        return w.value()
    return w.text()


def shown(task: str, opt: dict[str, Any], panel_rows: bool) -> bool:
    """Does the panel make a widget for this option? With the layer-and-bands table and the model list
    (`panel_rows`), only the options marked for the panel; otherwise every option that is not an output (the
    output folder gives those) and not advanced."""
    if opt["widget"] in forms.OUTPUT_WIDGETS:
        return False
    if panel_rows:
        return bool(opt.get("panel"))
    return not opt.get("advanced")
