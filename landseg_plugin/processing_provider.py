"""Processing provider `landseg` and its `landcover` algorithm (toolbox, graphical models, qgis_process)."""

from __future__ import annotations

import os
from pathlib import Path

from qgis.core import (
    QgsMapLayerType,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingProvider,
)
from qgis.PyQt.QtGui import QIcon

from .engine_process import EngineCancelled, EngineError, default_model, landcover_args, run_engine
from .settings import DEVICES, python_setting

ICON = Path(__file__).resolve().parent / "resources" / "icons" / "landseg.svg"


class LandcoverAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    BANDS = "BANDS"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    TILE = "TILE"
    OVERLAP = "OVERLAP"
    BATCH = "BATCH"
    MIN_AREA = "MIN_AREA"
    OUTPUT = "OUTPUT"
    OUTPUT_CLASSES = "OUTPUT_CLASSES"
    OUTPUT_CONFIDENCE = "OUTPUT_CONFIDENCE"

    def name(self) -> str:
        return "landcover"

    def displayName(self) -> str:
        return "Land cover"

    def group(self) -> str:
        return "Segmentation"

    def groupId(self) -> str:
        return "segmentation"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def shortHelpString(self) -> str:
        return (
            "Maps land cover from one or more raster layers with a local ONNX model and writes a class-map "
            "GeoTIFF, a confidence GeoTIFF and styled polygons (class id, class name, area in m², mean "
            "confidence). The first raster sets the output grid; others are warped onto it.\n\n"
            "Band mapping: which bands feed which model input, as NAME=[RASTER:]BANDS separated by ';', with "
            "raster and band numbers starting at 1 in the order of the input layers, e.g. "
            "'rgb=1:1,2,3; nir=1:4; ndsm=2:1'. Empty: the first raster's bands in order.\n"
            "Tile 0, overlap -1 and minimum area -1 use the model's defaults (minimum area: 9 pixels)."
        )

    def createInstance(self) -> LandcoverAlgorithm:
        return LandcoverAlgorithm()

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(
            QgsProcessingParameterMultipleLayers(self.INPUT, "Input raster layers", QgsProcessing.TypeRaster)
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.BANDS, "Band mapping (e.g. rgb=1:1,2,3; nir=1:4)", defaultValue="", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL,
                "Model (.onnx with LandSeg metadata)",
                extension="onnx",
                defaultValue=str(default_model()),
                optional=True,
            )
        )
        self.addParameter(QgsProcessingParameterEnum(self.DEVICE, "Device", options=list(DEVICES), defaultValue=0))
        self.addParameter(
            QgsProcessingParameterNumber(
                self.TILE, "Tile size (0: model default)", QgsProcessingParameterNumber.Integer, 0, minValue=0
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.OVERLAP, "Tile overlap (-1: model default)", QgsProcessingParameterNumber.Integer, -1, minValue=-1
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(self.BATCH, "Batch size", QgsProcessingParameterNumber.Integer, 4, minValue=1)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_AREA,
                "Minimum polygon area, m² (-1: 9 pixels)",
                QgsProcessingParameterNumber.Double,
                -1.0,
                minValue=-1,
            )
        )
        self.addParameter(
            QgsProcessingParameterVectorDestination(self.OUTPUT, "Land-cover polygons", QgsProcessing.TypeVectorPolygon)
        )
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_CLASSES, "Class map"))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_CONFIDENCE, "Confidence"))

    def processAlgorithm(self, parameters, context, feedback):
        layers = self.parameterAsLayerList(parameters, self.INPUT, context)
        if not layers:
            raise QgsProcessingException("no input raster layer given")
        inputs = []
        for layer in layers:
            if layer.type() != QgsMapLayerType.RasterLayer:
                raise QgsProcessingException(f"layer '{layer.name()}' is not a raster layer")
            source = layer.source()
            if layer.providerType() != "gdal" or not os.path.exists(source.split("|")[0]):
                raise QgsProcessingException(
                    f"layer '{layer.name()}' is not a raster file on disk (provider {layer.providerType()}); "
                    "save it as a GeoTIFF first"
                )
            inputs.append(source.split("|")[0])
        model = self.parameterAsFile(parameters, self.MODEL, context) or str(default_model())
        polygons = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if not polygons.lower().endswith(".gpkg"):
            polygons = os.path.splitext(polygons)[0] + ".gpkg"
        classes = self.parameterAsOutputLayer(parameters, self.OUTPUT_CLASSES, context)
        confidence = self.parameterAsOutputLayer(parameters, self.OUTPUT_CONFIDENCE, context)
        args = landcover_args(
            inputs=inputs,
            out_classes=classes,
            out_confidence=confidence,
            out_polygons=polygons,
            model=model,
            band_mapping=self.parameterAsString(parameters, self.BANDS, context),
            device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
            tile=self.parameterAsInt(parameters, self.TILE, context),
            overlap=self.parameterAsInt(parameters, self.OVERLAP, context),
            batch=self.parameterAsInt(parameters, self.BATCH, context),
            min_area=self.parameterAsDouble(parameters, self.MIN_AREA, context),
        )
        try:
            result = run_engine(
                args,
                progress=lambda f, m: feedback.setProgress(100.0 * f),
                message=feedback.pushInfo,
                is_cancelled=feedback.isCanceled,
                python=python_setting(),
            )
        except EngineCancelled:
            feedback.reportError("LandSeg: cancelled; no output was written")
            return {}
        except EngineError as exc:
            raise QgsProcessingException(f"LandSeg: {exc}") from None
        feedback.pushInfo(
            f"LandSeg: {result['n_polygons']} polygons, device {result['device']}, tile {result['tile']}, "
            f"overlap {result['overlap']}, {result['seconds']:.1f} s"
        )
        for name, n in result["class_pixels"].items():
            feedback.pushInfo(f"  {name}: {n} pixels")
        # Processing loads outputs into the project itself; the .qml sidecars style them on load.
        return {
            self.OUTPUT: result["polygons"],
            self.OUTPUT_CLASSES: result["class_map"],
            self.OUTPUT_CONFIDENCE: result["confidence"],
        }


class LandSegProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "landseg"

    def name(self) -> str:
        return "LandSeg"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(LandcoverAlgorithm())
