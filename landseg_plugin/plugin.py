"""Plugin entry: toolbar button and menu entry for the dock panel, and the Processing provider."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .dock import LandSegDock
from .processing_provider import LandSegProvider

ICON = Path(__file__).resolve().parent / "resources" / "icons" / "landseg.svg"
MENU = "&LandSeg"


class LandSegPlugin:
    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: LandSegProvider | None = None
        self.dock: LandSegDock | None = None
        self.action: QAction | None = None

    def initProcessing(self) -> None:
        # Also called by qgis_process, which has no GUI (initGui is not called there).
        self.provider = LandSegProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        self.initProcessing()
        self.action = QAction(QIcon(str(ICON)), "LandSeg panel", self.iface.mainWindow())
        self.action.setCheckable(True)
        self.action.toggled.connect(self._toggle_dock)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToMenu(MENU, self.action)

    def _toggle_dock(self, visible: bool) -> None:
        if self.dock is None:
            self.dock = LandSegDock(self.iface.mainWindow())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
            self.dock.visibilityChanged.connect(self.action.setChecked)
        self.dock.setVisible(visible)

    def unload(self) -> None:
        if self.action is not None:
            self.iface.removeToolBarIcon(self.action)
            self.iface.removePluginMenu(MENU, self.action)
            self.action.deleteLater()
            self.action = None
        if self.dock is not None:
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
