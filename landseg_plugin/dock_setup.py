"""The panel's "Set up LandSeg" / "Repair / update": the engine's Python environment made from inside QGIS
(engine_setup.py does the work, in a QgsTask: progress, log, Cancel)."""

from __future__ import annotations

from pathlib import Path

from qgis.gui import QgsCollapsibleGroupBox, QgsFileWidget
from qgis.PyQt.QtWidgets import QCheckBox, QFormLayout, QHBoxLayout, QLabel, QPushButton

from .engine_process import EngineError, engine_python
from .engine_setup import SetupParams, env_record, set_up
from .settings import python_setting
from .task import PanelTask, guarded


class SetupTask(PanelTask):
    """Runs engine_setup.set_up off the GUI thread. done: the SetupResult."""

    def __init__(self, params: SetupParams) -> None:
        super().__init__("LandSeg: set up the engine", PanelTask.CanCancel)
        self.params = params
        self.result_ = None
        self.error: str | None = None

    def run(self) -> bool:  # worker thread
        def progress(frac: float, what: str) -> None:
            self.setProgress(100.0 * frac)
            self.progress_message.emit(what)

        self.result_, self.error = guarded(lambda: set_up(self.params, progress=progress, is_cancelled=self.isCanceled))
        return self.error is None

    def finished(self, ok: bool) -> None:  # GUI thread
        error = None if ok else self.error or "cancelled: the previous environment (if any) is unchanged"
        info = f"engine set up: {self.result_.python}" if ok else ""
        self.report(self.result_, info, None if ok else f"set-up failed: {error}")


def engine_summary() -> tuple[bool, str, str]:
    """(is there an engine, a line saying which and what it runs on, the set-up's device summary or "")."""
    try:
        python = engine_python(python_setting())
    except EngineError:
        return False, "The engine is not set up yet: press <b>Set up LandSeg</b> (a few minutes, once).", ""
    summary = env_record().get("device_summary", "")
    return True, f"Engine: {python} ({summary or 'set up outside the panel'})", summary


class SetupPanel:
    """Mixed into LandSegDock: the "Engine" group at the top of the panel."""

    def _build_setup_box(self) -> QgsCollapsibleGroupBox:
        box = QgsCollapsibleGroupBox("Engine")
        form = QFormLayout(box)
        self.engine_label = QLabel("")
        self.engine_label.setWordWrap(True)
        form.addRow(self.engine_label)
        self.wheelhouse_widget = QgsFileWidget()
        self.wheelhouse_widget.setStorageMode(QgsFileWidget.GetFile)
        self.wheelhouse_widget.setFilter("Wheelhouse (*.zip *.whl)")
        self.wheelhouse_widget.setToolTip(
            "offline set-up: a wheelhouse zip (`make wheelhouse`), or any wheel in a wheelhouse folder (the folder "
            "is used); empty: the package index"
        )
        form.addRow("Offline wheels", self.wheelhouse_widget)
        self.setup_adapt = QCheckBox("also what 'Adapt to my labels' needs (PyTorch CPU, ~200 MB)")
        form.addRow(self.setup_adapt)
        row = QHBoxLayout()
        self.setup_button = QPushButton("Set up LandSeg")
        self.setup_button.setToolTip(
            "make the engine's Python environment in your user folder (outside the plugin: updates keep it), "
            "with onnxruntime-gpu where an NVIDIA GPU is found"
        )
        self.setup_button.clicked.connect(self.start_setup)
        row.addWidget(self.setup_button)
        form.addRow(row)
        self.setup_box = box
        self._show_engine()
        return box

    def _show_engine(self) -> None:
        ok, text, summary = engine_summary()
        self.engine_label.setText(text)
        short = summary.split(":")[0] if summary.startswith("CPU") else summary
        self.setup_box.setTitle(f"Engine: {short or 'ready'}" if ok else "Engine: not set up")
        self.setup_button.setText("Repair / update" if ok else "Set up LandSeg")
        self.setup_box.setCollapsed(ok)

    def setup_params(self) -> SetupParams:
        wheels = self.wheelhouse_widget.filePath().strip()
        return SetupParams(wheelhouse=Path(wheels) if wheels else None, adapt=self.setup_adapt.isChecked())

    def start_setup(self) -> None:
        self.last_error = None
        task = SetupTask(self.setup_params())
        task.failed.connect(lambda _message: self._show_engine())  # before the dock's own failure handling
        self._start(task, self._setup_done, "setting up the engine…")

    def _setup_done(self, result) -> None:
        self._meta_cache.clear()
        self._show_engine()
        self._idle()
        self.progress.setValue(100)
        self._model_changed()  # the model list's metadata comes from the engine, now there
        self._set_status(f"engine set up ({result.record['device_summary']}): {result.python}")
