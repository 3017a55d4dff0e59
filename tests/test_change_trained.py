"""Post-classification change with the trained default model on labelled LEVIR-CD pairs (evaluation only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fiona
import numpy as np
import pytest

from conftest import ROOT, SHARED

sys.path.insert(0, str(ROOT / "bench"))
from change_eval import _tif, polygons_mask, prf  # noqa: E402

from engine.jobs.change import ChangeParams, run_change  # noqa: E402
from engine.model_package import DEFAULT_LANDCOVER_MODEL  # noqa: E402

LEVIR = SHARED / "change" / "LEVIR"
pytestmark = pytest.mark.skipif(not LEVIR.exists(), reason="needs ../shared/data/change")
# Building-change F1 over the LEVIR pairs with the engine's defaults (bench/change_eval.py, MODEL_CARD.md).
LEVIR_F1 = 0.325


def _pair(tmp_path: Path, stem: str) -> tuple[Path, Path, np.ndarray]:
    from PIL import Image

    a = _tif(tmp_path / f"{stem}_a.tif", LEVIR / "A" / f"{stem}.png", 0.5)
    b = _tif(tmp_path / f"{stem}_b.tif", LEVIR / "B" / f"{stem}.png", 0.5)
    return a, b, np.asarray(Image.open(LEVIR / "label" / f"{stem}.png").convert("L")) > 127


def test_class_filter_reports_only_changes_of_those_classes(tmp_path):
    stems = sorted(p.stem for p in (LEVIR / "label").glob("*.png"))
    a, b, _ = _pair(tmp_path, stems[0])
    every = run_change(
        ChangeParams(before=[a], after=[b], model=DEFAULT_LANDCOVER_MODEL, out_dir=tmp_path / "all", min_confidence=0)
    )
    only = run_change(
        ChangeParams(
            before=[a],
            after=[b],
            model=DEFAULT_LANDCOVER_MODEL,
            out_dir=tmp_path / "b",
            classes=["Building"],
            min_confidence=0,
        )
    )
    with fiona.open(only.polygons) as layer:
        pairs = {(f["properties"]["from_class"], f["properties"]["to_class"]) for f in layer}
    assert pairs and all("building" in p for p in pairs)
    assert 0 < only.changed_m2 < every.changed_m2
    assert any("changes reported from or to: building" in m for m in only.messages)
    for a_, row in only.transitions_m2.items():
        for b_, v in row.items():
            if a_ != b_ and "building" not in (a_, b_):
                assert v == 0


def test_unknown_class_is_a_one_line_error(tmp_path):
    stems = sorted(p.stem for p in (LEVIR / "label").glob("*.png"))
    a, b, _ = _pair(tmp_path, stems[0])
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "change", "--before", str(a), "--after", str(b), "--classes", "houses",
         "--out", str(tmp_path / "o"), "--progress", "none"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    classes = "building, road, bare land, vegetation, water"
    assert proc.stderr.strip().splitlines() == [
        f"landseg: error: --classes: 'houses' not among the model's classes ({classes})"
    ]


def test_building_change_f1_on_levir(tmp_path):

    tp = fp = fn = 0
    for label in sorted((LEVIR / "label").glob("*.png")):
        a, b, truth = _pair(tmp_path, label.stem)
        res = run_change(
            ChangeParams(
                before=[a],
                after=[b],
                model=DEFAULT_LANDCOVER_MODEL,
                out_dir=tmp_path / label.stem,
                classes=["building"],
            )
        )
        pred = polygons_mask(res.polygons, a, truth.shape)
        tp, fp, fn = tp + int((pred & truth).sum()), fp + int((pred & ~truth).sum()), fn + int((~pred & truth).sum())
    assert prf(tp, fp, fn)[2] >= LEVIR_F1 - 0.05
