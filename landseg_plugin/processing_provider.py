"""Processing provider `landseg`: its algorithms live in processing_mapping (land cover, change),
processing_trees (tree crowns, CHM), processing_assess (accuracy, adapt) and processing_batch (batch)."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .processing_assess import AccuracyAlgorithm, AdaptAlgorithm
from .processing_batch import BatchAlgorithm
from .processing_common import ICON, in_processing_words, run_in_processing
from .processing_mapping import ChangeAlgorithm, LandcoverAlgorithm
from .processing_trees import ChmAlgorithm, TreeCrownsAlgorithm

__all__ = [
    "AccuracyAlgorithm", "AdaptAlgorithm", "BatchAlgorithm", "ChangeAlgorithm", "ChmAlgorithm", "LandcoverAlgorithm",
    "LandSegProvider", "TreeCrownsAlgorithm", "in_processing_words", "run_in_processing",
]  # fmt: skip


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
        self.addAlgorithm(BatchAlgorithm())
