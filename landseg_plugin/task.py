"""Background run of the engine as a QgsTask, and the result layers it adds to the project."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsLayerTreeGroup,
    QgsMessageLog,
    QgsProject,
    QgsRasterLayer,
    QgsTask,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import pyqtSignal

from . import forms
from .engine_process import EngineCancelled, EngineError, run_engine

LOG_TAG = "LandSeg"


def add_result_layers(
    result: dict[str, Any], group_name: str, task: str = "landcover", project: QgsProject | None = None
) -> QgsLayerTreeGroup:
    """The task's outputs in a new group at the top of the layer tree, styled from the QML sidecars the engine
    wrote (the one source of class colours)."""
    project = project or QgsProject.instance()
    specs = forms.result_layers(task, result)
    layers = []
    for source, name, visible in specs:
        path = source.split("|")[0]
        vector = path.lower().endswith(tuple(forms.schema()["vector_suffixes"]))
        layer = QgsVectorLayer(source, name, "ogr") if vector else QgsRasterLayer(source, name)
        if not layer.isValid():
            raise EngineError(f"QGIS cannot open the result {path}")
        qml = Path(path).with_suffix(".qml")
        if qml.exists():
            layer.loadNamedStyle(str(qml))
        layers.append((layer, visible))
    group = project.layerTreeRoot().insertGroup(0, group_name)
    for layer, visible in layers:
        project.addMapLayer(layer, False)
        group.addLayer(layer).setItemVisibilityChecked(visible)
    return group


def guarded(work: Callable[[], Any], cancelled: str | None = None) -> tuple[Any, str | None]:
    """(work's result, None), or (None, the one-line error) from a QgsTask's worker thread: QGIS stays alive
    whatever happens there. ``cancelled``: what a cancel says (default: the engine's own words)."""
    try:
        return work(), None
    except EngineCancelled as exc:
        return None, cancelled or str(exc)
    except EngineError as exc:
        return None, str(exc)
    except Exception as exc:  # keep QGIS alive whatever happens in the worker
        return None, f"{type(exc).__name__}: {exc}"


class PanelTask(QgsTask):
    """A background task of the panel: progress messages while it runs, then done(payload) or failed(message),
    each also in QGIS's message log."""

    progress_message = pyqtSignal(str)
    done = pyqtSignal(object)
    failed = pyqtSignal(str)

    def report(self, payload: Any, info: str, error: str | None, logged_as: str = "{}") -> None:
        """GUI thread (finished): log ``info`` and emit done(payload), or log the error (as ``logged_as``
        formats it) and emit failed(error)."""
        if error is None:
            QgsMessageLog.logMessage(info, LOG_TAG, Qgis.Info)
            self.done.emit(payload)
        else:
            QgsMessageLog.logMessage(logged_as.format(error), LOG_TAG, Qgis.Warning)
            self.failed.emit(error)


class EngineTask(PanelTask):
    """Runs the engine subprocess off the GUI thread; QGIS stays responsive, Cancel stops the engine. done: the
    group added."""

    def __init__(
        self, description: str, args: dict, group_name: str, python: str | None = None, task: str = "landcover"
    ) -> None:
        super().__init__(description, QgsTask.CanCancel)
        self.args = args
        self.task_kind = task
        self.group_name = group_name
        self.python = python
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self.group: QgsLayerTreeGroup | None = None
        self._last_message = 0.0

    def run(self) -> bool:  # worker thread: no GUI calls here
        def progress(frac: float, msg: str) -> None:
            self.setProgress(100.0 * frac)
            now = time.monotonic()
            if now - self._last_message > 0.2:
                self._last_message = now
                self.progress_message.emit(msg)

        self.result, self.error = guarded(
            lambda: run_engine(
                self.args,
                progress=progress,
                message=self.progress_message.emit,
                is_cancelled=self.isCanceled,
                python=self.python,
            ),
            "cancelled: no output was written",
        )
        return self.error is None

    def finished(self, ok: bool) -> None:  # GUI thread
        if ok and self.result is not None:
            try:
                self.group = add_result_layers(self.result, self.group_name, self.task_kind)
            except EngineError as exc:
                self.error = str(exc)
                ok = False
        n = self.result.get("n_polygons", self.result.get("n_crowns")) if ok else None
        error = None if ok else self.error or "cancelled: no output was written"
        self.report(self.group, f"{self.group_name}: {n} features", error, f"{self.group_name}: {{}}")
