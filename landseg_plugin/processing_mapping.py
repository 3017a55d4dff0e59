"""Processing algorithms `landseg:landcover` and `landseg:change`."""

from __future__ import annotations

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from .engine_process import (
    BLENDS,
    MODEL_FILTER,
    PRECISIONS,
    RESAMPLE_MODES,
    change_request,
    default_model,
    landcover_request,
)
from .processing_common import LandSegAlgorithm, raster_paths, resample_parameter, run_in_processing
from .settings import DEVICES


class LandcoverAlgorithm(LandSegAlgorithm):
    INPUT = "INPUT"
    BANDS = "BANDS"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    TILE = "TILE"
    OVERLAP = "OVERLAP"
    BATCH = "BATCH"
    MIN_AREA = "MIN_AREA"
    PROMPTS = "PROMPTS"
    UNASKED = "UNASKED"
    UNASKED_OPTIONS = ("other", "drop")
    FUSE_MODELS = "FUSE_MODELS"
    RESAMPLE = "RESAMPLE"
    BLEND = "BLEND"
    PRECISION = "PRECISION"
    OUTPUT = "OUTPUT"
    OUTPUT_CLASSES = "OUTPUT_CLASSES"
    OUTPUT_CONFIDENCE = "OUTPUT_CONFIDENCE"

    def name(self) -> str:
        return "landcover"

    def displayName(self) -> str:
        return "Land cover"

    def shortHelpString(self) -> str:
        return (
            "Maps land cover from one or more raster layers with a local ONNX model and writes a class-map "
            "GeoTIFF, a confidence GeoTIFF and styled polygons (class id, class name, area in m², mean "
            "confidence). The first raster sets the output grid; others are warped onto it.\n\n"
            "Band mapping: which bands feed which model input, as NAME=[RASTER:]BANDS separated by ';', with "
            "raster and band numbers starting at 1 in the order of the input layers, e.g. "
            "'rgb=1:1,2,3; nir=1:4; ndsm=2:1'. Empty: the first raster's bands in order.\n"
            "Tile 0, overlap -1 and minimum area -1 use the model's defaults (minimum area: 9 pixels).\n"
            "Models to fuse (advanced): more land-cover models run on the same tiles; per class, the most "
            "confident model wins (class-wise confidence-guided fusion). Each takes the band-mapping entries "
            "named after its own inputs' modalities."
        )

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
            QgsProcessingParameterString(
                self.PROMPTS,
                "Class prompts (e.g. woods, lake, houses; empty: all classes)",
                defaultValue="",
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.UNASKED, "Classes no prompt asks for", options=["fold into 'other'", "drop"], defaultValue=0
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL,
                "Model (.onnx with LandSeg or Deepness metadata, or a TensorRT .engine/.plan)",
                fileFilter=MODEL_FILTER,
                defaultValue=str(default_model()),
                optional=True,
            )
        )
        fuse = QgsProcessingParameterMultipleLayers(
            self.FUSE_MODELS, "Models to fuse with it (.onnx)", QgsProcessing.TypeFile, optional=True
        )
        fuse.setFlags(fuse.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(fuse)
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
        self.addParameter(resample_parameter(self.RESAMPLE))
        blend = QgsProcessingParameterEnum(self.BLEND, "Blending of overlapping tiles", list(BLENDS), defaultValue=0)
        blend.setFlags(blend.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(blend)
        precision = QgsProcessingParameterEnum(
            self.PRECISION, "Precision (int8: faster on the CPU; fp16: GPU)", list(PRECISIONS), defaultValue=0
        )
        precision.setFlags(precision.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(precision)
        self.addParameter(
            QgsProcessingParameterVectorDestination(self.OUTPUT, "Land-cover polygons", QgsProcessing.TypeVectorPolygon)
        )
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_CLASSES, "Class map"))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_CONFIDENCE, "Confidence"))

    def processAlgorithm(self, parameters, context, feedback):
        inputs = raster_paths(self, self.parameterAsLayerList(parameters, self.INPUT, context), "input")
        model = self.parameterAsFile(parameters, self.MODEL, context) or str(default_model())
        polygons = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if not polygons.lower().endswith(".gpkg"):
            polygons = os.path.splitext(polygons)[0] + ".gpkg"
        classes = self.parameterAsOutputLayer(parameters, self.OUTPUT_CLASSES, context)
        confidence = self.parameterAsOutputLayer(parameters, self.OUTPUT_CONFIDENCE, context)
        args = landcover_request(
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
            prompts=self.parameterAsString(parameters, self.PROMPTS, context),
            unasked=self.UNASKED_OPTIONS[self.parameterAsEnum(parameters, self.UNASKED, context)],
            fuse_models=[p for p in self.parameterAsFileList(parameters, self.FUSE_MODELS, context) if p],
            resample=RESAMPLE_MODES[self.parameterAsEnum(parameters, self.RESAMPLE, context)],
            blend=BLENDS[self.parameterAsEnum(parameters, self.BLEND, context)],
            precision=PRECISIONS[self.parameterAsEnum(parameters, self.PRECISION, context)],
        )
        result = run_in_processing(args, feedback)
        if result is None:
            return {}
        feedback.pushInfo(f"LandSeg: {result['resampling'].get('message', '')}")
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


class ChangeAlgorithm(LandSegAlgorithm):
    BEFORE = "BEFORE"
    AFTER = "AFTER"
    METHOD = "METHOD"
    MODEL = "MODEL"
    BANDS = "BANDS"
    DEVICE = "DEVICE"
    THRESHOLD = "THRESHOLD"
    CLASSES = "CLASSES"
    RESAMPLE = "RESAMPLE"
    OUTPUT = "OUTPUT"
    OUTPUT_MAP = "OUTPUT_MAP"
    OUTPUT_MATRIX = "OUTPUT_MATRIX"
    METHODS = ("postclass", "direct")

    def name(self) -> str:
        return "change"

    def displayName(self) -> str:
        return "Change detection"

    def shortHelpString(self) -> str:
        return (
            "Change between a 'before' and an 'after' raster (any CRS and resolution: both are aligned to the "
            "before raster's grid over their overlap). 'postclass' maps land cover on both dates and reports "
            "from -> to transitions (polygons, change raster, transition matrix CSV, also printed here); "
            "'direct' runs a bi-temporal change model (task 'change') and thresholds its change probability."
        )

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.BEFORE, "Before (first date)"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.AFTER, "After (second date)"))
        self.addParameter(QgsProcessingParameterEnum(self.METHOD, "Method", options=list(self.METHODS), defaultValue=0))
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL,
                "Model (land cover for postclass, change for direct)",
                fileFilter=MODEL_FILTER,
                optional=True,
                defaultValue=str(default_model()),
            )
        )
        self.addParameter(
            QgsProcessingParameterString(self.BANDS, "Band mapping (both dates)", defaultValue="", optional=True)
        )
        self.addParameter(QgsProcessingParameterEnum(self.DEVICE, "Device", options=list(DEVICES), defaultValue=0))
        self.addParameter(
            QgsProcessingParameterNumber(
                self.THRESHOLD,
                "Change probability threshold (direct)",
                QgsProcessingParameterNumber.Double,
                0.5,
                minValue=0,
                maxValue=1,
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.CLASSES,
                "Report changes from or to these classes only (postclass; e.g. building, road; empty: all)",
                defaultValue="",
                optional=True,
            )
        )
        self.addParameter(resample_parameter(self.RESAMPLE))
        self.addParameter(
            QgsProcessingParameterVectorDestination(self.OUTPUT, "Change polygons", QgsProcessing.TypeVectorPolygon)
        )
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_MAP, "Change raster"))
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_MATRIX, "Transition matrix", fileFilter="CSV files (*.csv)"
            )
        )

    def processAlgorithm(self, parameters, context, feedback):
        before = raster_paths(self, [self.parameterAsRasterLayer(parameters, self.BEFORE, context)], "before")
        after = raster_paths(self, [self.parameterAsRasterLayer(parameters, self.AFTER, context)], "after")
        polygons = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if not polygons.lower().endswith(".gpkg"):
            polygons = os.path.splitext(polygons)[0] + ".gpkg"
        matrix = self.parameterAsFileOutput(parameters, self.OUTPUT_MATRIX, context)
        if not matrix.lower().endswith(".csv"):
            matrix = os.path.splitext(matrix)[0] + ".csv"
        args = change_request(
            before,
            after,
            out_map=self.parameterAsOutputLayer(parameters, self.OUTPUT_MAP, context),
            out_polygons=polygons,
            out_matrix=matrix,
            model=self.parameterAsFile(parameters, self.MODEL, context) or str(default_model()),
            method=self.METHODS[self.parameterAsEnum(parameters, self.METHOD, context)],
            band_mapping=self.parameterAsString(parameters, self.BANDS, context),
            device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
            threshold=self.parameterAsDouble(parameters, self.THRESHOLD, context),
            classes=self.parameterAsString(parameters, self.CLASSES, context),
            resample=RESAMPLE_MODES[self.parameterAsEnum(parameters, self.RESAMPLE, context)],
        )
        result = run_in_processing(args, feedback)
        if result is None:
            return {}
        feedback.pushInfo(f"LandSeg: {result['n_polygons']} change polygons, {result['changed_m2']:.1f} m2 changed")
        names = result["classes"]
        feedback.pushInfo("Transition matrix (m2), rows: before, columns: after")
        feedback.pushInfo("\t".join(["from \\ to", *names]))
        for a in names:
            feedback.pushInfo("\t".join([a, *(f"{result['transitions_m2'][a][b]:.1f}" for b in names)]))
        return {
            self.OUTPUT: result["polygons"],
            self.OUTPUT_MAP: result["change_map"],
            self.OUTPUT_MATRIX: result["matrix"],
        }
