"""LandSeg inference engine: pure Python (rasterio, onnxruntime, shapely), never imports qgis."""

__version__ = "0.1.0"
