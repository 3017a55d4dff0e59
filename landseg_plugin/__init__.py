"""LandSeg QGIS plugin: a thin layer over the engine (which runs in its own Python; see engine_process.py)."""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .plugin import LandSegPlugin

    return LandSegPlugin(iface)
