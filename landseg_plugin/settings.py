"""Plugin settings (QgsSettings under `landseg/`) and the choices shown in the panel and Processing."""

from __future__ import annotations

from qgis.core import QgsSettings

KEY_PYTHON = "landseg/python"
KEY_MODELS_DIR = "landseg/models_dir"


def python_setting() -> str | None:
    return QgsSettings().value(KEY_PYTHON, "", type=str) or None


def models_dir_setting() -> str | None:
    return QgsSettings().value(KEY_MODELS_DIR, "", type=str) or None


KEY_OUTPUT_DIR = "landseg/output_dir"


def output_dir_setting() -> str:
    """Where the panel writes results: the folder chosen last time, else a LandSeg folder next to the saved
    project, else ~/LandSeg. Never a temporary folder: results must outlive the session."""
    from pathlib import Path

    from qgis.core import QgsProject

    last = QgsSettings().value(KEY_OUTPUT_DIR, "", type=str)
    if last:
        return last
    home = QgsProject.instance().homePath()
    return str(Path(home) / "LandSeg") if home else str(Path.home() / "LandSeg")


def remember_output_dir(path: str) -> None:
    QgsSettings().setValue(KEY_OUTPUT_DIR, path)
