"""The shipped model packages. In an installed landseg wheel this folder is the package ``landseg_models``
(pyproject.toml), found by engine.model_package.MODELS_DIR; in a checkout or the QGIS plugin it sits beside
``engine/``."""
