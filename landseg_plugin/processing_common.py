"""What every LandSeg Processing algorithm shares: the base class, raster paths, running the engine and
reporting its errors in Processing words."""

from __future__ import annotations

import os
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsMapLayerType,
    QgsProcessingAlgorithm,
    QgsProcessingException,
)

from .engine_process import EngineCancelled, EngineError, run_engine
from .forms import flag_words
from .settings import python_setting

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


def run_in_processing(job: dict, feedback, whole_answer: bool = False) -> dict | None:
    try:
        return run_engine(
            job,
            progress=lambda f, m: feedback.setProgress(100.0 * f),
            message=feedback.pushInfo,
            is_cancelled=feedback.isCanceled,
            python=python_setting(),
            whole_answer=whole_answer,
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


def in_processing_words(message: str) -> str:
    """An engine error with its CLI options replaced by the Processing parameters that set them."""
    import re

    def swap(m: re.Match) -> str:
        flag, value = m.group(1), (m.group(2) or "").rstrip(".,")
        name = flag_words().get(flag)
        if name is None:
            return m.group(0)
        return f"{name}, e.g. {value.removeprefix('NAME=')}" if value else name

    return re.sub(r"(--[a-z-]+)(?:[ =]([^\s;,)]+(?:=[^\s;,)]+)?))?", swap, message)
