"""Processing provider `landseg` and its `landcover` algorithm (toolbox, graphical models, qgis_process)."""

from __future__ import annotations

import os
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsMapLayerType,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
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
    QgsProcessingProvider,
)
from qgis.PyQt.QtGui import QIcon

from .engine_process import (
    BLENDS,
    MODEL_FILTER,
    RESAMPLE_MODES,
    EngineCancelled,
    EngineError,
    accuracy_args,
    adapt_args,
    change_args,
    chm_args,
    default_model,
    landcover_args,
    run_engine,
    treecrown_model,
    treecrowns_args,
)
from .settings import DEVICES, python_setting

ICON = Path(__file__).resolve().parent / "resources" / "icons" / "landseg.svg"


def raster_paths(alg: QgsProcessingAlgorithm, layers, what: str) -> list[str]:
    """File paths of raster layers, or a clear QgsProcessingException."""
    if not layers:
        raise QgsProcessingException(f"no {what} raster layer given")
    paths = []
    for layer in layers:
        if layer is None:
            raise QgsProcessingException(f"the {what} layer could not be loaded")
        if layer.type() != QgsMapLayerType.RasterLayer:
            raise QgsProcessingException(f"layer '{layer.name()}' is not a raster layer")
        source = layer.source().split("|")[0]
        if layer.providerType() != "gdal" or not os.path.exists(source):
            raise QgsProcessingException(
                f"layer '{layer.name()}' is not a raster file on disk (provider {layer.providerType()}); "
                "save it as a GeoTIFF first"
            )
        paths.append(source)
    return paths


def run_in_processing(args: list[str], feedback, accept: tuple[int, ...] = (0,)) -> dict | None:
    try:
        return run_engine(
            args,
            progress=lambda f, m: feedback.setProgress(100.0 * f),
            message=feedback.pushInfo,
            is_cancelled=feedback.isCanceled,
            python=python_setting(),
            accept=accept,
        )
    except EngineCancelled:
        feedback.reportError("LandSeg: cancelled; no output was written")
        return None
    except EngineError as exc:
        message = f"LandSeg: {in_processing_words(str(exc))}"
        if QgsApplication.instance() is not None and QgsApplication.instance().platform() == "qgis_process":
            # Headless, qgis_process logs, reports and prints an exception's text (three times): report it
            # once here and raise an empty exception, which only sets the exit code.
            feedback.reportError(message, False)
            raise QgsProcessingException("") from None
        raise QgsProcessingException(message) from None  # in QGIS and processing.run(): the text is the API


# Engine (CLI) options named in error messages -> the Processing parameter that sets the same thing.
CLI_TO_PARAMETER = {
    "--modality": "the band mapping parameter (BANDS)",
    "--resample": "the RESAMPLE parameter",
    "--classes": "the CLASSES parameter",
    "--prompts": "the PROMPTS parameter",
}


def in_processing_words(message: str) -> str:
    """An engine error with its CLI options replaced by the Processing parameters that set them."""
    import re

    def swap(m: re.Match) -> str:
        flag, value = m.group(1), (m.group(2) or "").rstrip(".,")
        name = CLI_TO_PARAMETER.get(flag)
        if name is None:
            return m.group(0)
        return f"{name}, e.g. {value.removeprefix('NAME=')}" if value else name

    return re.sub(r"(--[a-z-]+)(?:[ =]([^\s;,)]+(?:=[^\s;,)]+)?))?", swap, message)


class LandSegAlgorithm(QgsProcessingAlgorithm):
    def group(self) -> str:
        return "Segmentation"

    def groupId(self) -> str:
        return "segmentation"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def createInstance(self):
        return type(self)()


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
        self.addParameter(_resample_parameter(self.RESAMPLE))
        blend = QgsProcessingParameterEnum(self.BLEND, "Blending of overlapping tiles", list(BLENDS), defaultValue=0)
        blend.setFlags(blend.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(blend)
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
            prompts=self.parameterAsString(parameters, self.PROMPTS, context),
            unasked=self.UNASKED_OPTIONS[self.parameterAsEnum(parameters, self.UNASKED, context)],
            fuse_models=[p for p in self.parameterAsFileList(parameters, self.FUSE_MODELS, context) if p],
            resample=RESAMPLE_MODES[self.parameterAsEnum(parameters, self.RESAMPLE, context)],
            blend=BLENDS[self.parameterAsEnum(parameters, self.BLEND, context)],
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


def _resample_parameter(name: str) -> QgsProcessingParameterEnum:
    return QgsProcessingParameterEnum(
        name,
        "Resample to the model's pixel size (auto: when the input's differs by more than 15%)",
        options=list(RESAMPLE_MODES),
        defaultValue=0,
    )


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
        self.addParameter(_resample_parameter(self.RESAMPLE))
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
        args = change_args(
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


class TreeCrownsAlgorithm(LandSegAlgorithm):
    INPUT = "INPUT"
    CHM = "CHM"
    MODEL = "MODEL"
    SAM = "SAM"
    DEVICE = "DEVICE"
    MIN_HEIGHT = "MIN_HEIGHT"
    MIN_DISTANCE = "MIN_DISTANCE"
    SCORE_THRESHOLD = "SCORE_THRESHOLD"
    OUTPUT = "OUTPUT"

    def name(self) -> str:
        return "treecrowns"

    def displayName(self) -> str:
        return "Tree crowns"

    def shortHelpString(self) -> str:
        return (
            "Individual tree crowns (score, height max/mean from the CHM, area, diameter) from an RGB image and an "
            "optional canopy height model (nDSM, metres, same CRS). Tree tops are local maxima of the CHM (or of "
            "the distance inside the vegetation mask); crowns grow from them by watershed, or by SAM when a SAM "
            "folder exported by `python -m export sam` is given."
        )

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "RGB image"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.CHM, "Canopy height model (optional)", optional=True))
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL,
                "Crown detector, or a land-cover model for the watershed method",
                fileFilter=MODEL_FILTER,
                optional=True,
                defaultValue=str(treecrown_model()),
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.SAM, "SAM folder (optional)", behavior=QgsProcessingParameterFile.Folder, optional=True
            )
        )
        self.addParameter(QgsProcessingParameterEnum(self.DEVICE, "Device", options=list(DEVICES), defaultValue=0))
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_HEIGHT, "Minimum tree height (m, CHM)", QgsProcessingParameterNumber.Double, 2.0, minValue=0
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_DISTANCE,
                "Minimum distance between tree tops (m)",
                QgsProcessingParameterNumber.Double,
                3.0,
                minValue=0.1,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.SCORE_THRESHOLD,
                "Detector: lowest crown score (-1: the model's, chosen on validation)",
                QgsProcessingParameterNumber.Double,
                -1.0,
                minValue=-1.0,
                maxValue=1.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterVectorDestination(self.OUTPUT, "Tree crowns", QgsProcessing.TypeVectorPolygon)
        )

    def processAlgorithm(self, parameters, context, feedback):
        image = raster_paths(self, [self.parameterAsRasterLayer(parameters, self.INPUT, context)], "image")[0]
        chm_layer = self.parameterAsRasterLayer(parameters, self.CHM, context)
        chm = raster_paths(self, [chm_layer], "CHM")[0] if chm_layer is not None else None
        crowns = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if not crowns.lower().endswith(".gpkg"):
            crowns = os.path.splitext(crowns)[0] + ".gpkg"
        args = treecrowns_args(
            image,
            crowns,
            chm=chm,
            model=self.parameterAsFile(parameters, self.MODEL, context) or str(treecrown_model()),
            sam=self.parameterAsFile(parameters, self.SAM, context) or None,
            device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
            min_height=self.parameterAsDouble(parameters, self.MIN_HEIGHT, context),
            min_distance=self.parameterAsDouble(parameters, self.MIN_DISTANCE, context),
            score_threshold=self.parameterAsDouble(parameters, self.SCORE_THRESHOLD, context),
        )
        result = run_in_processing(args, feedback)
        if result is None:
            return {}
        feedback.pushInfo(f"LandSeg: {result['n_crowns']} tree crowns ({result['method']})")
        return {self.OUTPUT: result["crowns"]}


class ChmAlgorithm(LandSegAlgorithm):
    LIDAR = "LIDAR"
    RESOLUTION = "RESOLUTION"
    CRS = "CRS"
    OUTPUT = "OUTPUT"

    def name(self) -> str:
        return "chm"

    def displayName(self) -> str:
        return "Canopy height model from LiDAR"

    def shortHelpString(self) -> str:
        return (
            "Canopy height (m) from a LAS/LAZ point cloud: highest return per cell minus a terrain model from the "
            "ground returns (class 2, or a ground filter when the file has no ground class). The CRS is read from "
            "the file; give one when its header has none."
        )

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(
            QgsProcessingParameterFile(self.LIDAR, "LiDAR point cloud (LAS/LAZ)", fileFilter="LiDAR (*.las *.laz)")
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.RESOLUTION, "Cell size (m)", QgsProcessingParameterNumber.Double, 0.5, minValue=0.05
            )
        )
        self.addParameter(
            QgsProcessingParameterCrs(self.CRS, "CRS of the points (when the file has none)", optional=True)
        )
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Canopy height model"))

    def processAlgorithm(self, parameters, context, feedback):
        crs = self.parameterAsCrs(parameters, self.CRS, context)
        args = chm_args(
            self.parameterAsFile(parameters, self.LIDAR, context),
            self.parameterAsOutputLayer(parameters, self.OUTPUT, context),
            self.parameterAsDouble(parameters, self.RESOLUTION, context),
            crs.authid() if crs.isValid() else "",
        )
        result = run_in_processing(args, feedback)
        if result is None:
            return {}
        feedback.pushInfo(f"LandSeg: CHM {result['width']} x {result['height']}, highest {result['height_max']} m")
        return {self.OUTPUT: result["chm"]}


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
        args = accuracy_args(
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
        args = adapt_args(
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


class LandSegProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "landseg"

    def name(self) -> str:
        return "LandSeg"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(LandcoverAlgorithm())
        self.addAlgorithm(ChangeAlgorithm())
        self.addAlgorithm(TreeCrownsAlgorithm())
        self.addAlgorithm(ChmAlgorithm())
        self.addAlgorithm(AccuracyAlgorithm())
        self.addAlgorithm(AdaptAlgorithm())
        from .processing_batch import BatchAlgorithm  # its own module: this one is long enough

        self.addAlgorithm(BatchAlgorithm())
