"""One Processing algorithm per task of the engine's table (`landseg:<task>`), its parameters made from the
task's options (forms.py): a task added to the engine appears here with no code of its own."""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingOutputFile,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterCrs,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingParameterVectorLayer,
)
from qgis.PyQt.QtGui import QIcon

from . import forms
from .processing_common import ICON, raster_paths, run_in_processing


def _optional(task: str, opt: dict[str, Any]) -> bool:
    return opt["optional"] or forms.shared_field(task, opt)


def make_parameter(task: str, opt: dict[str, Any]) -> QgsProcessingParameterDefinition:
    """The Processing parameter that asks for one option."""
    name, label, widget = opt["name"], opt["label"], opt["widget"]
    optional = _optional(task, opt)
    default = forms.default_value(opt)
    if opt.get("choices"):
        index = opt["choices"].index(default) if default in opt["choices"] else 0
        return QgsProcessingParameterEnum(name, label, list(opt["choices"]), defaultValue=index)
    if widget == "rasters":
        return QgsProcessingParameterMultipleLayers(name, label, QgsProcessing.TypeRaster, optional=optional)
    if widget == "raster":
        return QgsProcessingParameterRasterLayer(name, label, optional=optional)
    if widget == "vector":
        return QgsProcessingParameterVectorLayer(name, label, optional=optional)
    if widget == "field":
        # no default: a layer without a field of the default's name would fail Processing's check; the engine's
        # default applies when it is left empty
        return QgsProcessingParameterField(name, label, parentLayerParameterName=opt["parent"], optional=True)
    if widget in ("file", "model"):
        return QgsProcessingParameterFile(
            name, label, fileFilter=opt.get("file_filter", ""), defaultValue=default, optional=optional
        )
    if widget == "folder":
        return QgsProcessingParameterFile(name, label, QgsProcessingParameterFile.Folder, optional=optional)
    if widget == "models":
        return QgsProcessingParameterMultipleLayers(name, label, QgsProcessing.TypeFile, optional=optional)
    if widget == "crs":
        return QgsProcessingParameterCrs(name, label, optional=True)
    if widget == "output_raster":
        return QgsProcessingParameterRasterDestination(name, label)
    if widget in ("output_vector", "output_points"):
        kind = QgsProcessing.TypeVectorPoint if widget == "output_points" else QgsProcessing.TypeVectorPolygon
        # Left empty (qgis_process, a model), the engine writes it beside the output it derives from.
        derived = forms.derived_output(task, opt)
        return QgsProcessingParameterVectorDestination(name, label, kind, optional=derived, createByDefault=True)
    if widget == "output_file":
        return QgsProcessingParameterFileDestination(name, label, fileFilter=opt.get("file_filter", ""))
    if widget == "output_folder":
        return QgsProcessingParameterFolderDestination(name, label)
    if opt["type"] == "bool":
        return QgsProcessingParameterBoolean(name, label, bool(default))
    if opt["type"] in ("int", "float"):
        kind = QgsProcessingParameterNumber.Integer if opt["type"] == "int" else QgsProcessingParameterNumber.Double
        limits = {k: opt[k] for k in ("minimum", "maximum") if opt.get(k) is not None}
        return QgsProcessingParameterNumber(
            name, label, kind, default, optional=default is None,
            **{{"minimum": "minValue", "maximum": "maxValue"}[k]: v for k, v in limits.items()},
        )  # fmt: skip
    return QgsProcessingParameterString(name, label, default or "", optional=optional)


def parameter_value(alg, task: str, opt: dict[str, Any], parameters, context) -> Any:
    """The value the user gave for one option, as forms.build_request takes it."""
    name, widget = opt["name"], opt["widget"]
    if opt.get("choices"):  # an enum left out is its default, which a required one (batch's task) needs
        return opt["choices"][alg.parameterAsEnum(parameters, name, context)]
    if name not in parameters and widget not in forms.OUTPUT_WIDGETS:
        return None  # left out: the engine's default
    if widget == "rasters":
        layers = alg.parameterAsLayerList(parameters, name, context)
        return raster_paths(alg, layers, opt["label"].lower()) if layers or not _optional(task, opt) else None
    if widget == "raster":
        layer = alg.parameterAsRasterLayer(parameters, name, context)
        if layer is None and (_optional(task, opt) and not parameters.get(name)):
            return None
        return raster_paths(alg, [layer], opt["label"].lower())[0]
    if widget == "vector":
        layer = alg.parameterAsVectorLayer(parameters, name, context)
        return layer.source().split("|")[0] if layer is not None else None
    if widget in ("file", "folder", "model"):
        return alg.parameterAsFile(parameters, name, context)
    if widget == "models":
        return [p for p in alg.parameterAsFileList(parameters, name, context) if p]
    if widget == "crs":
        crs = alg.parameterAsCrs(parameters, name, context)
        return crs.authid() if crs.isValid() else None
    if widget in ("output_raster", "output_vector", "output_points"):
        return alg.parameterAsOutputLayer(parameters, name, context)
    if widget == "output_file":
        return alg.parameterAsFileOutput(parameters, name, context)
    if opt["type"] == "bool":
        return alg.parameterAsBoolean(parameters, name, context)
    if opt["type"] == "int":
        return alg.parameterAsInt(parameters, name, context) if parameters.get(name) is not None else None
    if opt["type"] == "float":
        return alg.parameterAsDouble(parameters, name, context) if parameters.get(name) is not None else None
    return alg.parameterAsString(parameters, name, context)


class TaskAlgorithm(QgsProcessingAlgorithm):
    """`landseg:<task>`: parameters from the task's options, the engine run through a request."""

    def __init__(self, task: str) -> None:
        super().__init__()
        self.task = task
        self.form = forms.tasks()[task]

    def createInstance(self):
        return type(self)(self.task)

    def name(self) -> str:
        return self.task

    def displayName(self) -> str:
        return self.form["title"]

    def shortHelpString(self) -> str:
        return self.form["about"]

    # No group(): seven algorithms sit directly under the LandSeg provider, one click closer.
    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def initAlgorithm(self, config=None) -> None:
        for opt in forms.options(self.task):
            param = make_parameter(self.task, opt)
            if opt.get("advanced"):
                param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(param)
        for name, label in self.form["result_outputs"].values():
            self.addOutput(QgsProcessingOutputFile(name, label))

    def processAlgorithm(self, parameters, context, feedback):
        opts = forms.options(self.task)
        values = {o["name"]: parameter_value(self, self.task, o, parameters, context) for o in opts}
        answer = run_in_processing(forms.build_request(self.task, values), feedback, whole_answer=True)
        if answer is None:
            return {}
        result = answer["result"]
        for line in answer.get("lines", []):
            feedback.pushInfo(f"LandSeg: {line}")
        for path, error in (result.get("failed") or {}).items():  # batch: inputs that failed, the others done
            feedback.reportError(f"LandSeg: {path}: {error}", False)
        outputs = {
            o["name"]: result.get(o.get("result", ""), values[o["name"]])
            for o in opts
            if o["widget"] in forms.OUTPUT_WIDGETS
        }
        outputs.update({name: result[key] for key, (name, _label) in self.form["result_outputs"].items()})
        return outputs  # Processing loads outputs into the project itself; the .qml sidecars style them on load
