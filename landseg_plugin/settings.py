"""Plugin settings (QgsSettings under `landseg/`) and the choices shown in the panel and Processing."""

from __future__ import annotations

from qgis.core import QgsSettings

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
KEY_PYTHON = "landseg/python"
KEY_MODELS_DIR = "landseg/models_dir"


def python_setting() -> str | None:
    return QgsSettings().value(KEY_PYTHON, "", type=str) or None


def models_dir_setting() -> str | None:
    return QgsSettings().value(KEY_MODELS_DIR, "", type=str) or None
