"""Processing algorithms `landseg:accuracy` and `landseg:adapt`."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorLayer,
)

from .engine_process import (
    accuracy_request,
    adapt_request,
)
from .processing_common import LandSegAlgorithm, raster_paths, run_in_processing


class AccuracyAlgorithm(LandSegAlgorithm):
    CLASSES = "CLASSES"
    REFERENCE = "REFERENCE"
    CLASS_FIELD = "CLASS_FIELD"
    CLASS_NAMES = "CLASS_NAMES"
    SAMPLE = "SAMPLE"
    OUTPUT = "OUTPUT"

    def name(self) -> str:
        return "accuracy"

    def displayName(self) -> str:
        return "Accuracy assessment of a class map"

    def shortHelpString(self) -> str:
        return (
            "Reference points or polygons (a class field holding class names or ids) against a class map: "
            "confusion matrix, overall/user's/producer's accuracy, IoU, kappa, and area-adjusted accuracy and "
            "class areas with 95 % confidence intervals (Olofsson et al. 2014). With a sample size instead of a "
            "reference layer: a stratified random sample of points to label. Class names come from a LandSeg "
            "class map, or from 'Class names' (ids 0, 1, 2 ...) for any classified raster."
        )

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.CLASSES, "Class map"))
        self.addParameter(
            QgsProcessingParameterVectorLayer(self.REFERENCE, "Reference points or polygons", optional=True)
        )
        self.addParameter(
            QgsProcessingParameterField(
                self.CLASS_FIELD, "Reference class field", parentLayerParameterName=self.REFERENCE, optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterString(self.CLASS_NAMES, "Class names (ids 0,1,2...)", "", optional=True)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.SAMPLE, "Sample size (0: assess the reference layer)", QgsProcessingParameterNumber.Integer, 0,
                minValue=0,
            )
        )  # fmt: skip
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Output folder"))

    def processAlgorithm(self, parameters, context, feedback):
        ref = self.parameterAsVectorLayer(parameters, self.REFERENCE, context)
        sample = self.parameterAsInt(parameters, self.SAMPLE, context)
        if ref is None and sample <= 0:
            raise QgsProcessingException("give a reference layer, or a sample size to draw points to label")
        out = self.parameterAsString(parameters, self.OUTPUT, context)
        args = accuracy_request(
            raster_paths(self, [self.parameterAsRasterLayer(parameters, self.CLASSES, context)], "class map")[0],
            out,
            ref.source().split("|")[0] if ref is not None else "",
            self.parameterAsString(parameters, self.CLASS_FIELD, context) or "class",
            self.parameterAsString(parameters, self.CLASS_NAMES, context),
            sample,
        )
        result = run_in_processing(args, feedback)
        if result is None:
            return {}
        if result.get("sample"):
            feedback.pushInfo(f"LandSeg: {result['n']} sample points in {result['sample']}")
        else:
            feedback.pushInfo(f"LandSeg: overall accuracy {result['overall_accuracy']}, kappa {result['kappa']}")
        return {self.OUTPUT: out}


class AdaptAlgorithm(LandSegAlgorithm):
    INPUT = "INPUT"
    LABELS = "LABELS"
    CLASS_FIELD = "CLASS_FIELD"
    MODEL = "MODEL"
    MINUTES = "MINUTES"
    PIXEL_SIZE = "PIXEL_SIZE"
    OUTPUT = "OUTPUT"

    def name(self) -> str:
        return "adapt"

    def displayName(self) -> str:
        return "Adapt the land-cover model to my labels"

    def shortHelpString(self) -> str:
        return (
            "Fine-tunes a land-cover model (default: the shipped one) on labelled polygons or points drawn on "
            "the raster(s): label values are matched to the model's classes by name or meaning, a value that "
            "matches none adds a class. 20 % of the labels (by location) are held out and the per-class IoU "
            "before/after is written into the new model's card. Pixel size: 0 keeps the base model's (0.5 m); "
            "a finer one (e.g. 0.15 m for drone imagery) lets the new model separate small roofs. Needs the "
            "training extra (torch): `make dev`."
        )

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterMultipleLayers(self.INPUT, "Raster(s)", QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterVectorLayer(self.LABELS, "Labelled polygons or points"))
        self.addParameter(
            QgsProcessingParameterField(self.CLASS_FIELD, "Class field", parentLayerParameterName=self.LABELS)
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL,
                "Base model (empty: the shipped land-cover model)",
                optional=True,
                fileFilter="ONNX (*.onnx)",
            )  # fmt: skip
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MINUTES, "Training time (minutes)", QgsProcessingParameterNumber.Double, 5.0, minValue=0.1
            )  # fmt: skip
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.PIXEL_SIZE,
                "New model's pixel size, m (0: the base model's)",
                QgsProcessingParameterNumber.Double,
                0.0,
                minValue=0.0,
            )  # fmt: skip
        )
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Folder for the new model"))

    def processAlgorithm(self, parameters, context, feedback):
        labels = self.parameterAsVectorLayer(parameters, self.LABELS, context)
        out = self.parameterAsString(parameters, self.OUTPUT, context)
        args = adapt_request(
            raster_paths(self, self.parameterAsLayerList(parameters, self.INPUT, context), "input"),
            labels.source().split("|")[0],
            self.parameterAsString(parameters, self.CLASS_FIELD, context),
            out,
            self.parameterAsFile(parameters, self.MODEL, context),
            self.parameterAsDouble(parameters, self.MINUTES, context),
            self.parameterAsDouble(parameters, self.PIXEL_SIZE, context),
        )
        result = run_in_processing(args, feedback)
        if result is None:
            return {}
        feedback.pushInfo(f"LandSeg: new model {result['model']}; held-out IoU after: {result['holdout_iou_after']}")
        return {self.OUTPUT: out}
