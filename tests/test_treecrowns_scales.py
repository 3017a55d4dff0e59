"""Tree crowns at two scales (issue #31): the detector's pixel range and per-scale settings, its NIR band, the
treetops layer, the vectorised crown records, and the two-scale training data. Fast: no trained model needed
beyond the shipped one."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import fiona
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.transform import from_origin
from shapely import affinity

from conftest import ROOT, SHARED
from engine.areas import AreaCalculator
from engine.errors import InputError, OutputError
from engine.jobs.crown_detector import DetectorBands, crown_records, scale_settings
from engine.jobs.treecrowns import TreeCrownParams, _detector_bands, _detector_pixel, run_treecrowns

SJER = ROOT / "data/sample/neon_sjer_rgb.tif"
TWO_SCALES = {
    "kind": "centernet",
    "score_threshold": 0.15,
    "tta": "d4",
    "pixel_size_range_m": [0.1, 0.6],
    "scales": [{"pixel_m": 0.1, "score_threshold": 0.15, "tta": "d4"},
               {"pixel_m": 0.6, "score_threshold": 0.3, "tta": "none"}],
}  # fmt: skip


def _meta(detector: dict, bands=("red", "green", "blue", "chm", "chm_missing", "nir", "nir_missing")):
    return SimpleNamespace(extra={"detector": detector}, pixel_size_m=0.1, inputs=[SimpleNamespace(bands=bands)])


def test_settings_are_the_nearest_trained_scales():
    assert scale_settings(TWO_SCALES, 0.1).tta == "d4"
    assert scale_settings(TWO_SCALES, 0.2) == scale_settings(TWO_SCALES, 0.1)  # log-nearer 0.1 than 0.6
    s = scale_settings(TWO_SCALES, 0.5)
    assert (s.threshold, s.tta, s.pixel_m) == (0.3, "none", 0.6)
    one = {"kind": "centernet", "score_threshold": 0.2, "tta": "d4"}  # the former single-scale detector
    assert scale_settings(one, 0.6).threshold == 0.2 and scale_settings(one, 0.6).tta == "d4"


def test_images_inside_the_range_are_read_at_their_own_pixel_size():
    meta = _meta(TWO_SCALES)
    assert _detector_pixel(0.3, meta, "auto")[0] == 0.3
    assert _detector_pixel(0.6, meta, "auto")[0] == 0.6
    assert _detector_pixel(0.65, meta, "auto")[0] == 0.65  # within 15 % of the range's end
    assert _detector_pixel(1.0, meta, "auto")[0] == 0.6  # outside: the nearer end
    assert _detector_pixel(0.05, meta, "auto")[0] == 0.1
    single = _meta({"kind": "centernet", "score_threshold": 0.2}, bands=("red", "green", "blue", "chm", "chm_missing"))
    assert _detector_pixel(0.6, single, "auto")[0] == 0.1  # a 0.1 m detector resamples everything to 0.1 m


def _rgbn(path: Path, descriptions=("red", "green", "blue", "nir"), count=4) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=count, dtype="uint8",
                       crs="EPSG:32611", transform=from_origin(300000, 4100000, 0.6, 0.6)) as ds:  # fmt: skip
        ds.write(np.full((count, 64, 64), 100, np.uint8))
        ds.descriptions = descriptions[:count]
    return path


def test_the_nir_band_is_found_by_description_or_mapping(tmp_path):
    from engine.raster_input import BandSource

    said = []
    params = TreeCrownParams(image=_rgbn(tmp_path / "a.tif"), out_dir=tmp_path)
    with rasterio.open(params.image) as src:
        assert _detector_bands(params, src, _meta(TWO_SCALES), said.append) == DetectorBands((1, 2, 3), 4)
        # a detector without NIR bands reads RGB and says why the NIR band is left
        old = _meta(TWO_SCALES, bands=("red", "green", "blue", "chm", "chm_missing"))
        assert _detector_bands(params, src, old, said.append) == DetectorBands((1, 2, 3), None)
        assert "takes RGB only" in said[-1]
    # bands in another order, undescribed: the mapping says which
    params.image = _rgbn(tmp_path / "b.tif", ("", "", "", ""))
    params.modalities = {"rgb": BandSource(0, (3, 2, 1)), "nir": BandSource(0, (4,))}
    with rasterio.open(params.image) as src:
        assert _detector_bands(params, src, _meta(TWO_SCALES), said.append) == DetectorBands((3, 2, 1), 4)
        params.modalities = {"rgb": BandSource(0, (1, 2, 3)), "nir": BandSource(0, (5,))}
        with pytest.raises(InputError, match="no band 5"):
            _detector_bands(params, src, _meta(TWO_SCALES), said.append)
        params.modalities = {"chm": BandSource(0, (1,))}
        with pytest.raises(InputError, match="takes rgb and nir"):
            _detector_bands(params, src, _meta(TWO_SCALES), said.append)
    params.image, params.modalities = _rgbn(tmp_path / "c.tif", count=2), {}
    with rasterio.open(params.image) as src, pytest.raises(InputError, match="needs red, green, blue"):
        _detector_bands(params, src, _meta(TWO_SCALES), said.append)


def _reference_crown(box, transform, chm, area_of):
    """The former per-crown code: one shapely buffer and a whole-window CHM mask per crown."""
    x0, y0, x1, y1, score = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max(0.5, (x1 - x0) / 2), max(0.5, (y1 - y0) / 2)
    ellipse = affinity.scale(shapely.Point(cx, cy).buffer(1.0, quad_segs=8), rx, ry)
    t = transform
    geom = affinity.affine_transform(ellipse, [t.a, t.b, t.d, t.e, t.c, t.f])
    yy, xx = np.ogrid[: chm.shape[0], : chm.shape[1]]
    inside = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1
    hmax = round(float(chm[inside].max()), 2) if inside.any() else None
    return geom, area_of(geom), hmax


@pytest.mark.parametrize("crs", ["EPSG:32611", "EPSG:3395", "EPSG:4326", "EPSG:5070"])
def test_vectorised_crowns_equal_the_per_crown_code(crs):
    rng = np.random.default_rng(0)
    n = 200
    c = rng.uniform(0, 512, (n, 2))
    half = rng.uniform(0.3, 40, (n, 2))
    boxes = np.column_stack([c - half, c + half, rng.uniform(0.1, 1, n)]).astype(np.float32)
    boxes = boxes[:, [0, 1, 2, 3, 4]]
    geographic = crs == "EPSG:4326"
    transform = from_origin(-117.7, 34.1, 1e-6, 1e-6) if geographic else from_origin(430000, 3780000, 0.6, 0.6)
    if crs == "EPSG:3395":
        transform = from_origin(-13100000, 4040000, 0.6, 0.6)
    chm = rng.uniform(0, 30, (512, 512)).astype(np.float32)
    area_of = AreaCalculator(CRS.from_string(crs))
    got = crown_records(boxes, transform, chm, area_of)
    assert len(got) == n
    for rec, box in zip(got, boxes, strict=True):
        geom, area, hmax = _reference_crown(box, transform, chm, area_of)
        tol = 1e-12 if geographic else 1e-6
        assert shapely.normalize(rec["geom"]).equals_exact(shapely.normalize(geom), tol)
        assert rec["geom"].exterior.is_ccw  # the simple-features orientation (GeoPackage, shapefile readers)
        assert rec["area_m2"] == pytest.approx(area, rel=1e-6, abs=1e-3)
        assert rec["height_max"] == hmax
        assert rec["diameter_m"] == pytest.approx(2 * math.sqrt(area / math.pi), abs=1e-3)


def test_treetops_layer_beside_the_crowns(tmp_path):
    res = run_treecrowns(TreeCrownParams(image=SJER, out_dir=tmp_path))
    assert res.treetops == tmp_path / "treecrowns_treetops.gpkg"
    assert (tmp_path / "treecrowns_treetops.qml").read_text().count("SimpleMarker") == 1
    with fiona.open(res.crowns) as crowns, fiona.open(res.treetops, layer="treetops") as tops:
        assert tops.schema["geometry"] == "Point" and crowns.crs == tops.crs
        cr, tp = list(crowns), list(tops)
    assert len(tp) == len(cr) == res.n_crowns > 3
    for c, t in zip(cr, tp, strict=True):
        assert t.geometry.coordinates == pytest.approx((c.properties["top_x"], c.properties["top_y"]))
        assert shapely.geometry.shape(c.geometry).contains(shapely.Point(t.geometry.coordinates))
        assert t.properties["crown_diameter_m"] == c.properties["diameter_m"]
        assert t.properties["score"] == c.properties["score"]
    # its own path and format; the crowns' own path is refused before anything is written
    shp = run_treecrowns(TreeCrownParams(image=SJER, out_dir=tmp_path, crowns_path=tmp_path / "s/c.shp"))
    assert shp.treetops == tmp_path / "s/c_treetops.shp" and shp.treetops.exists()
    with pytest.raises(InputError, match="crowns' own path"):
        run_treecrowns(
            TreeCrownParams(image=SJER, out_dir=tmp_path / "x", treetops_path=tmp_path / "x/treecrowns.gpkg")
        )
    with pytest.raises(OutputError, match="treetops output"):
        run_treecrowns(TreeCrownParams(image=SJER, out_dir=tmp_path / "y", treetops_path=tmp_path / "y/t.txt"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_many_areas_equal_one_by_one():
    rng = np.random.default_rng(1)
    for crs, x0, y0, size in (("EPSG:32611", 430000, 3780000, 30), ("EPSG:3395", -13100000, 4040000, 30),
                              ("EPSG:32611", 430000, 3780000, 5000), ("EPSG:4326", -117.7, 34.1, 1e-4),
                              ("EPSG:5070", -2000000, 2000000, 30)):  # fmt: skip
        geoms = np.array([shapely.box(x, y, x + size * rng.uniform(0.2, 1), y + size)
                          for x, y in rng.uniform(0, 1000, (20, 2)) * (size / 30) + (x0, y0)])  # fmt: skip
        calc = AreaCalculator(CRS.from_string(crs))
        assert calc.many(geoms) == pytest.approx([calc(g) for g in geoms], rel=1e-9)


needs_data = pytest.mark.skipif(not (SHARED / "landcover/naip_california").exists(), reason="needs ../shared/data")


@needs_data
def test_two_scale_batches_are_deterministic_and_mark_every_tree():
    torch = pytest.importorskip("torch")
    from export.train import crown_data as C
    from export.train_treecrowns import CrownTrainParams

    p = CrownTrainParams(data=SHARED, batch=4, naip_per_batch=2, crop=128, limit_images=4, coarse=0.5)
    batches = C.CrownBatches(p, log=lambda *_: None)
    x, heat, wh, mask = batches(3)
    x2, heat2, _, _ = batches(3)
    assert torch.equal(x, x2) and torch.equal(heat, heat2)  # batch k from (seed, k) alone: resumable
    assert x.shape == (4, len(C.BANDS), 128, 128)
    # NAIP crops: NIR present or flagged missing, no CHM, centres without sizes; NEON crops: sizes, no NIR
    for i in range(2):
        nir_missing = x[i, C.BANDS.index("nir_missing")]
        assert bool((nir_missing == 1).all()) or bool((nir_missing == 0).all())
        assert bool((x[i, C.BANDS.index("chm_missing")] == 1).all()) and not mask[i].any()
        assert heat[i].eq(1).sum() > 0
    for i in (2, 3):
        assert bool((x[i, C.BANDS.index("nir_missing")] == 1).all())
        assert mask[i].sum() == heat[i].eq(1).sum()  # every box centre carries its size


def test_points_follow_the_crop_through_turns_and_flips():
    torch = pytest.importorskip("torch")
    from export.train.crown_data import STRIDE, targets, transform_points

    s = 64
    pts = np.array([[10.0, 20.0], [50.0, 7.0], [33.0, 60.0]], np.float32)
    img = torch.zeros((1, s, s))
    for x, y in pts:
        img[0, int(y), int(x)] = 1
    for k in range(4):
        for flip in (False, True):
            t = torch.rot90(img, k, (1, 2))
            t = t.flip(2) if flip else t
            ys, xs = np.nonzero(t[0].numpy())
            moved = transform_points(pts + 0.5, k, flip, s)  # pixel centres
            assert sorted(map(tuple, np.floor(moved).astype(int))) == sorted(zip(xs.tolist(), ys.tolist(), strict=True))
    heat, _, mask = targets(np.zeros((0, 4)), pts, s)
    assert heat.eq(1).sum() == len(pts) and not mask.any()
    assert heat[0, int(pts[0, 1] // STRIDE), int(pts[0, 0] // STRIDE)] == 1


def test_point_matching_is_one_to_one_within_the_distance():
    from export.train_treecrowns import match_points

    truth = np.array([[0, 0], [10, 0], [20, 0]], float)
    assert match_points(np.array([[0.5, 0], [9, 0], [100, 100]]), truth, 5) == 2
    assert match_points(np.array([[5, 0]]), truth, 5) == 1  # one prediction between two trees: one hit
    assert match_points(np.array([[0, 0], [0, 1]]), truth[:1], 5) == 1  # two on one tree: one hit
    assert match_points(np.zeros((0, 2)), truth, 5) == 0
    # nearest-first would give (1, 0) the tree at (0, 0) and leave (-1.5, 0) with none: the assignment gets both
    assert match_points(np.array([[1, 0], [-1.5, 0]]), np.array([[0, 0], [3, 0]], float), 3.0) == 2


def test_engine_input_equals_the_training_input():
    """The engine's normalised detector input is the trainer's, with and without the optional CHM and NIR (an
    absent band is 0 after normalisation, its flag 1): a raw 0 for a missing NIR would read as black NIR."""
    from engine.jobs.crown_detector import model_input
    from engine.model_package import Normalization
    from export.train.crown_data import BANDS, make_input
    from export.treecrowns_package import metadata

    norm = metadata({"threshold": 0.2, "threshold_naip": 0.3})["inputs"][0]["normalization"]
    norm = Normalization.from_dict(norm, len(BANDS), "test")
    g = np.random.default_rng(0)
    rgb = g.integers(0, 256, (3, 8, 8)).astype(np.float32)
    chm, nir = g.uniform(0, 30, (8, 8)).astype(np.float32), g.integers(0, 256, (8, 8)).astype(np.float32)
    for c, n in ((None, None), (chm, None), (None, nir), (chm, nir)):
        want = make_input(rgb, c, n).numpy()
        assert np.allclose(model_input(BANDS, norm, rgb, c, n), want, atol=1e-5)


def test_the_detector_is_chosen_by_pixel_size(tmp_path):
    """No --model: coarse pixels (the NAIP sample, 0.6 m) get the two-scale detector and say so, 0.1 m imagery
    the 0.1 m one; --model wins."""
    from conftest import SJER
    from engine.model_choice import COARSE_CROWNS_FROM_M, choose_treecrown_model
    from engine.model_package import COARSE_TREECROWN_MODEL, DEFAULT_TREECROWN_MODEL

    naip_sample = ROOT / "data/sample/naip_claremont_2018_rgbn.tif"
    coarse = choose_treecrown_model(naip_sample, None)
    assert coarse.model == COARSE_TREECROWN_MODEL and "0.6 m pixels" in coarse.message
    assert choose_treecrown_model(SJER, None).model == DEFAULT_TREECROWN_MODEL
    assert choose_treecrown_model(naip_sample, DEFAULT_TREECROWN_MODEL).model == DEFAULT_TREECROWN_MODEL
    with rasterio.open(SJER) as ds:  # just above the switch: the two-scale one
        prof = ds.profile | {"transform": from_origin(ds.transform.c, ds.transform.f, COARSE_CROWNS_FROM_M * 1.01,
                                                      COARSE_CROWNS_FROM_M * 1.01)}  # fmt: skip
        data = ds.read()
    with rasterio.open(tmp_path / "coarse.tif", "w", **prof) as out:
        out.write(data)
    assert choose_treecrown_model(tmp_path / "coarse.tif", None).model == COARSE_TREECROWN_MODEL
