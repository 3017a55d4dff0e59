"""The same pixels get the same class whatever the raster's extent (issue #29): tiles and the resampled model grid
sit on a lattice fixed in the CRS (--anchor crs, the default). bench/stability.py prints the same figures for both
anchors side by side."""

from __future__ import annotations

import pytest

from bench.stability import cases, classes, measure

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> dict[str, dict[str, float]]:
    return measure(tmp_path_factory.mktemp("stability"), anchors=("crs",))


def test_a_crop_agrees_with_the_whole_raster_at_the_models_pixel_size(figures):
    assert figures["crop 100 px at 0.5 m"]["crs"] >= 0.99


def test_a_crop_agrees_with_the_whole_raster_when_both_are_resampled(figures):
    assert figures["crop 184 px at 0.1 m (resampled)"]["crs"] >= 0.99


def test_nodata_beside_data_leaves_the_classes_64_model_pixels_away(figures):
    assert figures["left half nodata at 0.5 m"]["crs"] >= 0.99


def test_tiles_from_the_rasters_corner_do_not_hold_the_line(tmp_path):
    """What --anchor raster (the old behaviour) gives on the same crop: the check above can fail."""
    name, whole, crop, offset, margin, _ = cases(tmp_path)[0]
    from bench.stability import agreement

    a = classes(whole, tmp_path / "a", "raster")[offset:, offset:]
    b = classes(crop, tmp_path / "b", "raster")
    assert agreement(a, b, margin) < 0.98, name
