"""Processing algorithms `landseg:treecrowns` and `landseg:chm`."""

from __future__ import annotations

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingParameterCrs,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
)

from .engine_process import (
    MODEL_FILTER,
    chm_request,
    treecrown_model,
    treecrowns_request,
)
from .processing_common import LandSegAlgorithm, raster_paths, run_in_processing
from .settings import DEVICES


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
        args = treecrowns_request(
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
        args = chm_request(
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
