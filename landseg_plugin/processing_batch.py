"""Processing algorithm `landseg:batch`: a task on a folder of rasters or a list of layers, on Dask distributed
(the engine's `batch` command: a LocalCluster here, or a cluster's scheduler)."""

from __future__ import annotations

import glob
import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from .engine_process import MODEL_FILTER, batch_request
from .processing_common import LandSegAlgorithm, raster_paths, run_in_processing

TASKS = ("landcover", "treecrowns")  # engine.batch.TASKS


class BatchAlgorithm(LandSegAlgorithm):
    INPUT = "INPUT"
    FOLDER = "FOLDER"
    PATTERN = "PATTERN"
    TASK = "TASK"
    MODEL = "MODEL"
    WORKERS = "WORKERS"
    CHUNK_PX = "CHUNK_PX"
    SCHEDULER = "SCHEDULER"
    OUTPUT = "OUTPUT"
    SUMMARY = "SUMMARY"

    def name(self) -> str:
        return "batch"

    def displayName(self) -> str:
        return "Batch: run a task on many rasters (Dask)"

    def shortHelpString(self) -> str:
        return (
            "Runs land cover or tree crowns on every raster of a folder (file pattern) and/or of a list of layers, "
            "one subfolder of outputs per input, on Dask distributed: a local cluster sized to this machine, or "
            "the cluster whose scheduler address is given (tcp://host:8786). Rasters larger than the chunk size "
            "(model pixels on a side) are cut into chunks run in parallel and stitched into one class map and one "
            "polygon layer. Re-running into the same folder does only what is missing; inputs that fail are "
            "listed in batch_summary.json while the others finish."
        )

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterEnum(self.TASK, "Task", list(TASKS), defaultValue=0))
        self.addParameter(
            QgsProcessingParameterMultipleLayers(self.INPUT, "Raster layers", QgsProcessing.TypeRaster, optional=True)
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.FOLDER, "Folder of rasters", QgsProcessingParameterFile.Folder, optional=True
            )  # fmt: skip
        )
        self.addParameter(QgsProcessingParameterString(self.PATTERN, "File pattern in the folder", "*.tif"))
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL, "Model (empty: the task's shipped model)", optional=True, fileFilter=MODEL_FILTER
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.WORKERS,
                "Local workers (0: one per 2 cores)",
                QgsProcessingParameterNumber.Integer,
                0,
                minValue=0,
            )  # fmt: skip
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.CHUNK_PX,
                "Chunk size for large rasters (model pixels)",
                QgsProcessingParameterNumber.Integer,
                8192,
                minValue=256,
            )  # fmt: skip
        )
        self.addParameter(
            QgsProcessingParameterString(self.SCHEDULER, "Dask scheduler address (empty: local)", "", optional=True)
        )
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Output folder"))
        self.addOutput(QgsProcessingOutputFile(self.SUMMARY, "Batch summary (JSON)"))

    def processAlgorithm(self, parameters, context, feedback):
        inputs = []
        layers = self.parameterAsLayerList(parameters, self.INPUT, context)
        if layers:
            inputs += raster_paths(self, layers, "input")
        folder = self.parameterAsFile(parameters, self.FOLDER, context)
        if folder:
            pattern = self.parameterAsString(parameters, self.PATTERN, context) or "*.tif"
            found = sorted(glob.glob(os.path.join(folder, pattern)))
            if not found:
                raise QgsProcessingException(f"no file in {folder} matches {pattern}")
            inputs += [f for f in found if f not in inputs]
        if not inputs:
            raise QgsProcessingException("give raster layers, or a folder of rasters")
        out = self.parameterAsString(parameters, self.OUTPUT, context)
        args = batch_request(
            TASKS[self.parameterAsEnum(parameters, self.TASK, context)],
            inputs,
            out,
            self.parameterAsFile(parameters, self.MODEL, context),
            self.parameterAsInt(parameters, self.WORKERS, context),
            self.parameterAsInt(parameters, self.CHUNK_PX, context),
            self.parameterAsString(parameters, self.SCHEDULER, context),
        )
        result = run_in_processing(args, feedback, accept=(0, 5))
        if result is None:
            return {}
        feedback.pushInfo(
            f"LandSeg: {len(result['done'])} done, {len(result['skipped'])} done earlier, "
            f"{len(result['failed'])} failed"
        )
        for path, error in result["failed"].items():
            feedback.reportError(f"LandSeg: {path}: {error}", False)
        return {self.OUTPUT: out, self.SUMMARY: result["summary"]}
