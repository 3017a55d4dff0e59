"""Run inside a real QGIS (``qgis --code first_use.py``) by tests/test_install_qgis.py: what a new user does after
installing the plugin zip. Opens the LandSeg panel, presses "Set up LandSeg", then runs land cover on the bundled
sample through the panel, and writes what it saw to $LANDSEG_FIRST_USE_OUT/report.json with screenshots.

It runs from a QTimer inside QGIS's event loop; it ends QGIS itself (os._exit: no "save the project?" dialog).
"""

import json
import os
import time
import traceback
from pathlib import Path

from qgis.core import QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication

OUT = Path(os.environ["LANDSEG_FIRST_USE_OUT"])
SAMPLE = os.environ["LANDSEG_FIRST_USE_SAMPLE"]
WHEELS = os.environ.get("LANDSEG_FIRST_USE_WHEELHOUSE", "")


def wait_idle(dock, timeout: float) -> None:
    t0 = time.monotonic()
    while dock.is_running():
        QApplication.processEvents()
        time.sleep(0.05)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"LandSeg task still running after {timeout} s: {dock.status.text()}")
    QApplication.processEvents()


def main() -> None:
    report: dict = {}
    try:
        from qgis.utils import iface, plugins

        import landseg_plugin

        plugin = plugins["landseg_plugin"]
        report["plugin_dir"] = str(Path(landseg_plugin.__file__).parent)
        plugin.action.setChecked(True)  # the toolbar button: opens the panel
        QApplication.processEvents()
        dock = plugin.dock
        report["engine_before"] = dock.engine_label.text()
        report["button_before"] = dock.setup_button.text()
        if WHEELS:
            dock.wheelhouse_widget.setFilePath(WHEELS)
        dock.setup_button.click()  # the button's own code path: SetupTask -> engine_setup.set_up
        wait_idle(dock, 1200)
        report["setup_error"] = dock.last_error
        report["engine_after"] = dock.engine_label.text()
        report["button_after"] = dock.setup_button.text()
        layer = QgsRasterLayer(SAMPLE, "urban_river_rgb")
        QgsProject.instance().addMapLayer(layer)
        dock.set_input(0, layer)
        dock.out_widget.setFilePath(str(OUT / "results"))
        dock.run_button.click()
        wait_idle(dock, 600)
        report["run_error"] = dock.last_error
        report["run_status"] = dock.status.text()
        report["layers"] = sorted(lyr.name() for lyr in QgsProject.instance().mapLayers().values())
        report["group"] = dock.last_group.name() if dock.last_group is not None else None
        dock.resize(480, 820)
        QApplication.processEvents()
        dock.grab().save(str(OUT / "panel_after_first_run.png"))
        iface.mapCanvas().zoomToFullExtent()
        iface.mapCanvas().refreshAllLayers()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:
            QApplication.processEvents()
            time.sleep(0.05)
        iface.mainWindow().grab().save(str(OUT / "qgis_after_first_run.png"))
    except Exception:
        report["error"] = traceback.format_exc()
    (OUT / "report.json").write_text(json.dumps(report, indent=1))
    os._exit(0)


QTimer.singleShot(500, main)
