"""Processing provider `landseg`: one algorithm per task of the engine's table (processing_tasks.TaskAlgorithm)."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from . import forms
from .processing_common import ICON, in_processing_words, run_in_processing
from .processing_tasks import TaskAlgorithm

__all__ = ["LandSegProvider", "TaskAlgorithm", "algorithm", "in_processing_words", "run_in_processing"]


def algorithm(task: str) -> TaskAlgorithm:
    return TaskAlgorithm(task)


class LandSegProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "landseg"

    def name(self) -> str:
        return "LandSeg"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def loadAlgorithms(self) -> None:
        for task in forms.tasks():
            self.addAlgorithm(TaskAlgorithm(task))
