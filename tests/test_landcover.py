"""The land-cover job end to end: normalisation, nodata, modalities, alignment, polygons, cancellation."""

from __future__ import annotations

import fiona
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import DEFAULT_MODEL, SJER, URBAN, multimodal_model, sign_model, write_raster
from engine.errors import Cancelled
from engine.jobs.landcover import LandcoverParams, run_landcover
from engine.model_package import load_model_package
from engine.polygonize import PolygonizeOptions, polygonize
from engine.raster_input import BandSource


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile


def _expected_conf(z):
    return 1 / (1 + np.exp(-2 * np.abs(z)))  # softmax([z, -z]).max()


@pytest.mark.parametrize(
    "dtype,values,normalization,z",
    [
        # uint16 (e.g. Sentinel-2 reflectance x 10000) with mean/std.
        ("uint16", [800, 1200, 3000], {"type": "mean_std", "mean": 1000, "std": 500}, [-0.4, 0.4, 4.0]),
        # float32 (e.g. SAR backscatter in dB) with scale/offset.
        ("float32", [-20.0, -12.0, -5.0], {"type": "scale_offset", "scale": 0.1, "offset": 1.5}, [-0.5, 0.3, 1.0]),
        # uint8 with the usual /255 expressed in metadata, not hard-coded.
        (
            "uint8",
            [0, 100, 255],
            {"type": "scale_offset", "scale": 1 / 255, "offset": -0.5},
            [-0.5, 100 / 255 - 0.5, 0.5],
        ),
    ],
)
def test_inputs_normalise_per_metadata(tmp_path, dtype, values, normalization, z):
    model = sign_model(tmp_path / "m.onnx", normalization)
    data = np.repeat(np.array(values, dtype=dtype)[:, None], 40, axis=1).repeat(20, axis=0)  # 3 bands of rows
    raster = write_raster(tmp_path / "in.tif", data)
    res = run_landcover(LandcoverParams(inputs=[raster], model=model, out_dir=tmp_path / "o", tile=32, overlap=16))
    cls, _ = _read(res.class_map)
    conf, _ = _read(res.confidence)
    for k, zk in enumerate(z):
        rows = slice(20 * k, 20 * k + 20)
        assert (cls[rows] == (0 if zk > 0 else 1)).all()
        np.testing.assert_allclose(conf[rows], _expected_conf(zk), atol=1e-3)


def test_nodata_pixels_stay_nodata(tmp_path):
    data = np.full((3, 64, 64), 150, dtype=np.uint8)
    data[:, 10:20, 30:50] = 0
    raster = write_raster(tmp_path / "in.tif", data, nodata=0)
    res = run_landcover(
        LandcoverParams(inputs=[raster], model=DEFAULT_MODEL, out_dir=tmp_path / "o", tile=32, overlap=16)
    )
    cls, prof = _read(res.class_map)
    conf, cprof = _read(res.confidence)
    hole = np.zeros(cls.shape, bool)
    hole[10:20, 30:50] = True
    assert prof["nodata"] == 255 and (cls[hole] == 255).all() and (cls[~hole] != 255).all()
    assert (conf[hole] == cprof["nodata"]).all() and (conf[~hole] > 0).all()
    with fiona.open(res.polygons) as layer:
        total = sum(f["properties"]["area_m2"] for f in layer)
    # ellipsoidal m²: on UTM's central meridian (scale 0.9996) a 1 m pixel is 1.0008 m² of ground
    assert total == pytest.approx((64 * 64 - 200) / 0.9996**2, rel=1e-4)


def test_real_nodata_footprint(tmp_path):
    # The real urban sample has nodata (0) outside the flight footprint: the class map must keep it.
    res = run_landcover(LandcoverParams(inputs=[URBAN], model=DEFAULT_MODEL, out_dir=tmp_path))
    cls, prof = _read(res.class_map)
    with rasterio.open(URBAN) as ds:
        invalid = ds.read_masks().min(axis=0) == 0
        assert (prof["crs"], prof["transform"], cls.shape) == (ds.crs, ds.transform, ds.shape)
    assert invalid.mean() > 0.1
    assert ((cls == 255) == invalid).all()


def test_three_modalities_from_separate_rasters(tmp_path):
    """RGB (0.5 m, UTM), NIR (1 m, same CRS) and nDSM (in WGS84) as separate model inputs."""
    model = multimodal_model(tmp_path / "mm.onnx")
    rgb = np.zeros((3, 80, 80), dtype=np.uint8)
    rgb[2] = 200  # blue everywhere -> class 2 unless overridden
    rgb_path = write_raster(tmp_path / "rgb.tif", rgb, transform=from_origin(500000, 4100000, 0.5, 0.5))
    nir = np.zeros((1, 40, 40), dtype=np.uint8)
    nir[0, :, :20] = 255  # west half vegetated -> class 0
    nir_path = write_raster(tmp_path / "nir.tif", nir, transform=from_origin(500000, 4100000, 1.0, 1.0))
    # nDSM: 40 m tall box in the south-east quarter, in geographic coordinates.
    with rasterio.open(rgb_path) as ds:
        from rasterio.warp import transform_bounds

        w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    ndsm = np.zeros((1, 100, 100), dtype=np.float32)
    ndsm[0, 50:, 50:] = 40.0
    ndsm_path = write_raster(
        tmp_path / "ndsm.tif", ndsm, crs="EPSG:4326", transform=rasterio.transform.from_bounds(w, s, e, n, 100, 100)
    )
    res = run_landcover(
        LandcoverParams(
            inputs=[rgb_path, nir_path, ndsm_path],
            model=model,
            out_dir=tmp_path / "o",
            tile=32,
            overlap=16,
            modalities={"rgb": BandSource(0, (1, 2, 3)), "nir": BandSource(1, (1,)), "ndsm": BandSource(2, (1,))},
        )
    )
    cls, prof = _read(res.class_map)
    assert cls.shape == (80, 80) and prof["transform"] == from_origin(500000, 4100000, 0.5, 0.5)
    assert (cls[5:35, 5:35] == 0).all()  # vegetated (NIR), low
    assert (cls[45:75, 45:75] == 1).all()  # tall (nDSM)
    assert (cls[5:35, 45:75] == 2).all()  # neither: blue wins


def test_default_model_on_real_sample_outputs(tmp_path):
    res = run_landcover(LandcoverParams(inputs=[SJER], model=DEFAULT_MODEL, out_dir=tmp_path))
    with rasterio.open(res.class_map) as ds, rasterio.open(SJER) as src:
        assert (ds.crs, ds.transform, ds.shape) == (src.crs, src.transform, src.shape)
        assert ds.colormap(1)[0][:3] == (0x2E, 0x7D, 0x32)
        assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
    with fiona.open(res.polygons, layer="landcover") as layer:
        feats = list(layer)
        assert layer.crs.to_epsg() == 32611
    assert len(feats) == res.n_polygons > 10
    names = {f["properties"]["class_name"] for f in feats}
    assert "vegetation" in names
    for f in feats:
        p = f["properties"]
        assert 0 < p["mean_conf"] <= 1 and p["area_m2"] >= 9 * 0.1 * 0.1 * 0.99
    for qml in ("landcover.qml", "landcover_classes.qml", "landcover_confidence.qml"):
        assert (tmp_path / qml).read_text().startswith("<!DOCTYPE qgis")
    assert not list(tmp_path.glob(".*tmp*"))


def test_polygons_merge_across_strips(tmp_path):
    res = run_landcover(LandcoverParams(inputs=[SJER], model=DEFAULT_MODEL, out_dir=tmp_path))

    def summary(strip_rows, name):
        out = tmp_path / name
        n = polygonize(
            res.class_map,
            res.confidence,
            out,
            load_model_package(DEFAULT_MODEL).meta.classes,
            PolygonizeOptions(strip_rows=strip_rows, min_area_m2=0, simplify_px=0),
        )
        with fiona.open(out) as layer:
            areas = {}
            for f in layer:
                areas[f["properties"]["class_id"]] = (
                    areas.get(f["properties"]["class_id"], 0) + f["properties"]["area_m2"]
                )
        return n, areas

    n_whole, a_whole = summary(4096, "whole.gpkg")
    n_strips, a_strips = summary(37, "strips.gpkg")
    assert n_strips == n_whole
    for k in a_whole:
        assert a_strips[k] == pytest.approx(a_whole[k], rel=1e-5)  # areas are rounded to mm²
    cls, prof = _read(res.class_map)
    # ellipsoidal m²: planar pixel area over UTM's areal scale here (250 km west of the central meridian)
    from pyproj import Proj, Transformer

    x, y = prof["transform"] * (200, 200)
    lon, lat = Transformer.from_crs(prof["crs"], "EPSG:4326", always_xy=True).transform(x, y)
    k2 = Proj(prof["crs"]).get_factors(lon, lat).areal_scale
    assert sum(a_whole.values()) == pytest.approx((cls != 255).sum() * 0.100235 * 0.0997475 / k2, rel=1e-4)


def test_regions_across_seams_keep_exact_areas(tmp_path):
    """Pieces of a region from different strips join exactly (pixel coordinates, no snapping): a 3 x 3 speck cut
    by a seam keeps its exact 9-pixel area and so passes the default minimum area (9 pixels); an L-shaped
    region spanning three strips comes out as one polygon with its exact area."""
    cls = np.zeros((30, 40), np.uint8)
    cls[8:11, 5:8] = 1  # speck: rows 8-10, cut by the seam at row 10
    cls[2:25, 20:23] = 2  # L: a bar down through both seams ...
    cls[22:25, 23:35] = 2  # ... and a foot
    transform = from_origin(500000.3, 4100000.7, 0.3, 0.3)  # 0.3 m: not exact in binary
    class_map = write_raster(tmp_path / "c.tif", cls, transform=transform)
    conf = write_raster(tmp_path / "f.tif", np.full((30, 40), 0.5, np.float32), transform=transform)
    out = tmp_path / "p.gpkg"
    classes = load_model_package(DEFAULT_MODEL).meta.classes
    polygonize(class_map, conf, out, classes[:3], PolygonizeOptions(strip_rows=10, simplify_px=0))
    with fiona.open(out) as layer:
        feats = {f["properties"]["class_id"]: f for f in layer if f["properties"]["class_id"] != 0}
    k2 = 0.9996**2  # UTM's areal scale on its central meridian: areas are ellipsoidal m²
    assert feats[1]["properties"]["area_m2"] == pytest.approx(9 * 0.09 / k2, abs=1e-3)  # rounded to 0.001 m²
    assert feats[2]["geometry"]["type"] == "Polygon" and len(feats[2]["geometry"]["coordinates"]) == 1
    assert feats[2]["properties"]["area_m2"] == pytest.approx((23 * 3 + 3 * 12) * 0.09 / k2, abs=1e-3)


def test_cancel_leaves_no_output(tmp_path):
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        run_landcover(
            LandcoverParams(inputs=[URBAN], model=DEFAULT_MODEL, out_dir=tmp_path, tile=256, overlap=32),
            cancelled=cancelled,
        )
    assert list(tmp_path.iterdir()) == []


def test_requested_gpu_falls_back_to_cpu_with_a_message(tmp_path):
    from engine.runtime import RuntimeOptions

    msgs = []
    res = run_landcover(
        LandcoverParams(inputs=[SJER], model=DEFAULT_MODEL, out_dir=tmp_path, runtime=RuntimeOptions(device="cuda")),
        notify=msgs.append,
    )
    assert res.device == "CPU"
    assert any("device 'cuda' requested" in m and "running on CPU" in m for m in msgs)


def test_huge_region_is_cut_at_seams_with_exact_areas(tmp_path):
    # One class everywhere: a single region as large as the raster. With a region cap it is closed at strip
    # seams (bounded memory) and the pieces still add up to the whole area.
    data = np.full((3, 200, 120), 90, dtype=np.uint8)
    data[1] = 200  # green: vegetation everywhere
    raster = write_raster(tmp_path / "green.tif", data)
    res = run_landcover(
        LandcoverParams(inputs=[raster], model=DEFAULT_MODEL, out_dir=tmp_path / "o", tile=64, overlap=16)
    )
    out = tmp_path / "cut.gpkg"
    n = polygonize(
        res.class_map,
        res.confidence,
        out,
        load_model_package(DEFAULT_MODEL).meta.classes,
        PolygonizeOptions(strip_rows=50, max_region_pixels=120 * 100, min_area_m2=0, simplify_px=0),
    )
    with fiona.open(out) as layer:
        areas = [f["properties"]["area_m2"] for f in layer]
    assert n == len(areas) == 2  # closed once past 12000 px (after 150 rows), then the last 50 rows
    assert sum(areas) == pytest.approx(200 * 120 / 0.9996**2, rel=1e-5)  # ellipsoidal m² (UTM scale 0.9996)
    with fiona.open(res.polygons) as layer:
        assert len(layer) == 1  # by default a region is never cut
