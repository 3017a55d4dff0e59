"""Polygons an analyst can measure: ellipsoidal areas in any CRS, and no region cut at a strip seam."""

from __future__ import annotations

from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Geod, Transformer
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window
from shapely.geometry import shape

from conftest import DEFAULT_MODEL, URBAN
from engine.errors import Cancelled
from engine.gdal_trace import band_count
from engine.jobs.landcover import LandcoverParams, run_landcover
from engine.model_package import load_model_package
from engine.polygonize import PolygonizeOptions, polygonize

GEOD = Geod(ellps="WGS84")
CLASSES = load_model_package(DEFAULT_MODEL).meta.classes


def geodesic_area(geom, crs) -> float:
    """Independent reference: the polygon's vertices to lon/lat, then the WGS84 ellipsoid."""
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    ll = shapely.transform(geom, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    return abs(GEOD.geometry_area_perimeter(ll)[0])


@pytest.fixture(scope="module")
def urban_classes(tmp_path_factory) -> tuple[Path, Path]:
    """A real class map: the colour rule on a 512² crop of the urban river orthophoto (EPSG:3395, 25° N)."""
    d = tmp_path_factory.mktemp("urban")
    with rasterio.open(URBAN) as src:
        win = Window(768, 768, 512, 512)
        prof = src.profile | {"width": 512, "height": 512, "transform": src.window_transform(win)}
        with rasterio.open(d / "crop.tif", "w", **prof) as dst:
            dst.write(src.read(window=win))
    res = run_landcover(LandcoverParams(inputs=[d / "crop.tif"], model=DEFAULT_MODEL, out_dir=d / "o"))
    return res.class_map, res.confidence


def warp(src_path: Path, dst_path: Path, crs: str, resampling: Resampling) -> Path:
    with rasterio.open(src_path) as src:
        transform, w, h = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        prof = src.profile | {"crs": crs, "transform": transform, "width": w, "height": h}
        with rasterio.open(dst_path, "w", **prof) as dst:
            reproject(rasterio.band(src, 1), rasterio.band(dst, 1), resampling=resampling)
    return dst_path


@pytest.mark.parametrize("crs", ["EPSG:3395", "EPSG:4326", "EPSG:32640"])
def test_area_m2_is_ellipsoidal_in_any_crs(urban_classes, tmp_path, crs):
    cls, conf = urban_classes
    if crs != "EPSG:3395":
        cls = warp(cls, tmp_path / "cls.tif", crs, Resampling.nearest)
        conf = warp(conf, tmp_path / "conf.tif", crs, Resampling.bilinear)
    out = tmp_path / "p.gpkg"
    n = polygonize(
        cls, conf, out, load_model_package(DEFAULT_MODEL).meta.classes, PolygonizeOptions(simplify_px=0, min_area_m2=0)
    )
    assert n > 20
    with fiona.open(out) as layer:
        got, ref = [], []
        for f in layer:
            got.append(f["properties"]["area_m2"])
            ref.append(geodesic_area(shape(f.geometry), crs))
    got, ref = np.array(got), np.array(ref)
    big = ref > 1.0  # areas are rounded to mm²; compare regions of a square metre and more
    assert np.all(np.abs(got[big] / ref[big] - 1) < 0.005), np.max(np.abs(got[big] / ref[big] - 1))
    if crs == "EPSG:3395":  # planar areas here are ~ +10 % (scale factor 1/cos 25°, squared): that is the bug
        planar = sum(shape(f.geometry).area for f in fiona.open(out))
        assert planar / ref.sum() > 1.05


def test_a_region_larger_than_a_strip_budget_is_one_polygon(tmp_path):
    """The real urban class map, 2x nearest-upsampled (4096², 16 polygonize strips of 256 rows): its big regions
    (the river, > 1 Mpx) span many seams; no two polygons of a class may share an edge."""
    res = run_landcover(LandcoverParams(inputs=[URBAN], model=DEFAULT_MODEL, out_dir=tmp_path / "o"))
    with rasterio.open(res.class_map) as src, rasterio.open(res.confidence) as cf:
        cls = np.repeat(np.repeat(src.read(1), 2, 0), 2, 1)
        conf = np.repeat(np.repeat(cf.read(1), 2, 0), 2, 1)
        t = src.transform * src.transform.scale(0.5, 0.5)
        prof = src.profile | {"width": cls.shape[1], "height": cls.shape[0], "transform": t}
        paths = []
        for name, a in (("cls.tif", cls), ("conf.tif", conf)):
            with rasterio.open(tmp_path / name, "w", **(prof | {"dtype": a.dtype})) as dst:
                dst.write(a, 1)
            paths.append(tmp_path / name)
    out = tmp_path / "p.gpkg"
    classes = load_model_package(DEFAULT_MODEL).meta.classes
    polygonize(*paths, out, classes, PolygonizeOptions(simplify_px=0, min_area_m2=0))
    with fiona.open(out) as layer:
        feats = [(f["properties"]["class_id"], shape(f.geometry)) for f in layer]
    largest = max(g.area for _, g in feats) / abs(t.a * t.e)
    assert largest > (1 << 20), largest  # a region above the old 1 Mpx cap
    for cid in {c for c, _ in feats}:
        geoms = np.array([g for c, g in feats if c == cid], dtype=object)
        tree = shapely.STRtree(geoms)
        left, right = tree.query(geoms, predicate="touches")
        pairs = [(i, j) for i, j in zip(left, right, strict=True) if i < j]
        shared = [shapely.intersection(geoms[i], geoms[j]).length for i, j in pairs]
        assert not [s for s in shared if s > 0], f"class {cid}: {len([s for s in shared if s > 0])} shared edges"
    # every labelled pixel is in exactly one polygon
    with rasterio.open(paths[0]) as src:
        counts = np.bincount(src.read(1).ravel(), minlength=256)
    for cid in {c for c, _ in feats}:
        px = sum(g.area for c, g in feats if c == cid) / abs(t.a * t.e)
        assert px == pytest.approx(counts[cid], rel=1e-6)


def test_class_maps_are_cloud_optimized_with_overviews(tmp_path):
    res = run_landcover(LandcoverParams(inputs=[URBAN], model=DEFAULT_MODEL, out_dir=tmp_path))
    for path in (res.class_map, res.confidence):
        with rasterio.open(path) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", path
            assert ds.overviews(1)[:2] == [2, 4]
            assert ds.block_shapes[0] == (512, 512)
    with rasterio.open(res.class_map) as ds:
        assert ds.nodata == 255 and ds.colormap(1)[0][:3] != (0, 0, 0)  # colour table kept
        assert ds.tags(1).get("CLASS_0")  # class names kept
        ov = ds.read(1, out_shape=(512, 512))  # an overview holds class ids, not averages of them
        assert set(np.unique(ov)) <= set(range(len(load_model_package(DEFAULT_MODEL).meta.classes))) | {255}
    # The analyst's files are compressed for size (the maps written while the model ran were not: see below).
    with rasterio.open(res.class_map) as cls, rasterio.open(res.confidence) as conf:
        assert (cls.profile["compress"], conf.profile["compress"]) == ("deflate", "zstd")


def test_maps_written_while_the_model_runs_are_compressed_for_speed():
    """PredictionWriter's maps are always copied again at the job's end (COGs, a mosaic, a warp back): zstd level
    1 for class ids, no compression for confidence up to SCRATCH_PLAIN_BYTES (then zstd, to bound the disk)."""
    from affine import Affine

    from engine.outputs import SCRATCH_PLAIN_BYTES, scratch_profile
    from engine.raster_input import Grid

    small, huge = (Grid(None, Affine.identity(), n, n) for n in (4096, 16384))
    assert 4 * 16384**2 > SCRATCH_PLAIN_BYTES >= 4 * 4096**2
    cls = scratch_profile(small, "uint8", 255, 512)
    assert (cls["compress"], cls["zstd_level"], "predictor" in cls) == ("zstd", 1, False)
    assert scratch_profile(small, "float32", -1.0, 512)["compress"] == "none"
    assert scratch_profile(huge, "float32", -1.0, 512)["compress"] == "zstd"
    assert cls["tiled"] and cls["SPARSE_OK"] and cls["blockxsize"] == 512  # the rest as geotiff_profile's


def features(path: Path) -> list[tuple]:
    with fiona.open(path) as src:
        return sorted(
            (f.properties["class_id"], f.properties["area_m2"], f.properties["mean_conf"], shape(f.geometry).wkb)
            for f in src
        )


def textured_classes(folder: Path) -> tuple[Path, Path]:
    """A busy class map from real imagery: the urban orthophoto's 512² crop, its brightness cut at its quartiles
    into 4 classes (roofs, river, trees and shadows make a thousand regions of every size); the brightness as
    the confidence."""
    with rasterio.open(URBAN) as src:
        win = Window(768, 768, 512, 512)
        # Read at a quarter of the resolution, each pixel then 4 x 4: regions of every size, not only specks.
        small = src.read(window=win, out_shape=(src.count, 128, 128), resampling=Resampling.average)
        grey = small.astype(np.float32).mean(axis=0).repeat(4, axis=0).repeat(4, axis=1)
        prof = {"driver": "GTiff", "width": 512, "height": 512, "count": 1, "crs": src.crs,
                "transform": src.window_transform(win), "tiled": True, "blockxsize": 256,
                "blockysize": 256}  # fmt: skip
    classes = np.digitize(grey, np.percentile(grey, [25, 50, 75])).astype(np.uint8)
    with rasterio.open(folder / "cls.tif", "w", dtype="uint8", nodata=255, **prof) as dst:
        dst.write(classes, 1)
    with rasterio.open(folder / "conf.tif", "w", dtype="float32", nodata=-1, **prof) as dst:
        dst.write(grey / 255, 1)
    return folder / "cls.tif", folder / "conf.tif"


def test_a_map_traced_in_bands_gives_the_same_polygons_as_traced_whole(tmp_path):
    """GDAL traces big maps in bands on threads of their own; regions cut by a band seam are joined again. A busy
    512² map from real imagery cut in 16 bands of 32 rows: the same classes, areas, mean confidences, and polygons
    equal to the whole map's with the same vertices (the seams leave none behind)."""
    cls, conf = textured_classes(tmp_path)
    bands = 16
    whole = PolygonizeOptions(min_area_m2=0, simplify_px=0, trace_bands=1)
    banded = PolygonizeOptions(min_area_m2=0, simplify_px=0, trace_bands=bands)
    n_whole = polygonize(cls, conf, tmp_path / "whole.gpkg", CLASSES, whole)
    n_banded = polygonize(cls, conf, tmp_path / "banded.gpkg", CLASSES, banded)
    a, b = features(tmp_path / "whole.gpkg"), features(tmp_path / "banded.gpkg")
    assert n_whole == n_banded == len(a) > 20
    with rasterio.open(cls) as ds:  # the seams' y in map coordinates
        seams = [ds.transform.f + round(k * ds.height / bands) * ds.transform.e for k in range(1, bands)]
    crossed = [sum(g.bounds[1] < y < g.bounds[3] for y in seams) for g in shapely.from_wkb([r[3] for r in a])]
    assert sum(c > 0 for c in crossed) > 100 and max(crossed) >= 3  # many regions cut, some several times
    assert [r[:3] for r in a] == [r[:3] for r in b]

    def by_place(rows: list[tuple]) -> list[tuple]:  # a region's class and bounding box: unique (gdal_trace.py)
        return sorted((r[0], tuple(np.round(shapely.from_wkb(r[3]).bounds, 3)), shapely.from_wkb(r[3])) for r in rows)

    for (ca, box_a, ga), (cb, box_b, gb) in zip(by_place(a), by_place(b), strict=True):
        assert (ca, box_a) == (cb, box_b)
        assert shapely.equals(ga, gb) and shapely.get_num_coordinates(ga) == shapely.get_num_coordinates(gb)
    assert not list(tmp_path.glob(".*.tmp.*"))
    # A band without data (a sparse mosaic's empty rows): GDAL writes an empty file; the other bands stand.
    with rasterio.open(cls, "r+") as ds:
        ds.write(np.full((256, 512), 255, np.uint8), 1, window=Window(0, 256, 512, 256))
    halves = PolygonizeOptions(min_area_m2=0, simplify_px=0, trace_bands=2)
    n_whole = polygonize(cls, conf, tmp_path / "top_whole.gpkg", CLASSES, whole)
    assert polygonize(cls, conf, tmp_path / "top_halves.gpkg", CLASSES, halves) == n_whole > 0
    top_whole, top_halves = features(tmp_path / "top_whole.gpkg"), features(tmp_path / "top_halves.gpkg")
    assert [r[:3] for r in top_whole] == [r[:3] for r in top_halves]
    # By default: bands only above 4096² (one per polygonizing thread), never thinner than 64 rows.
    assert (band_count(16384, 16384, 2), band_count(4096, 4096, 2), band_count(100, 9000, 2, 16)) == (2, 1, 1)


def test_strips_traced_on_two_threads_give_the_same_polygons_as_one(urban_classes, tmp_path):
    # Small strips (32 rows of the 512² map): 16 strips, many regions crossing seams between strips that were
    # traced by different threads, out of order.
    cls, conf = urban_classes
    one = PolygonizeOptions(min_area_m2=0, strip_rows=32, workers=1)
    two = PolygonizeOptions(min_area_m2=0, strip_rows=32, workers=2)
    n1 = polygonize(cls, conf, tmp_path / "one.gpkg", CLASSES, one)
    n2 = polygonize(cls, conf, tmp_path / "two.gpkg", CLASSES, two)
    assert n1 == n2 > 20
    assert features(tmp_path / "one.gpkg") == features(tmp_path / "two.gpkg")


def test_cancelling_while_polygons_and_cogs_are_made_leaves_nothing(tmp_path):
    state = {"polygons": False}

    def progress(fraction: float, message: str) -> None:
        state["polygons"] |= message.startswith("polygonizing")

    with pytest.raises(Cancelled):
        run_landcover(
            LandcoverParams(inputs=[URBAN], model=DEFAULT_MODEL, out_dir=tmp_path / "o", resample="off"),
            progress=progress,
            cancelled=lambda: state["polygons"],
        )
    assert state["polygons"]
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_a_process_that_cancelled_polygonizing_exits_cleanly():
    """The cancellation above, in a process of its own (pytest keeps the exception and its frames, as a log or a
    batch worker may): the process exits with status 0. GDAL's trace datasets, kept alive by the cancellation's
    traceback and freed in the wrong order at exit, crashed the interpreter (status 139, in GDALClose)."""
    import subprocess
    import sys

    test = f"{__file__}::test_cancelling_while_polygons_and_cogs_are_made_leaves_nothing"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert "1 passed" in proc.stdout, proc.stdout[-500:]
    assert proc.returncode == 0, proc.stderr[-500:]


def test_gdal_traced_polygons_match_the_strip_tracer(urban_classes, tmp_path):
    """The default (GDAL traces the whole map, confidence summed by burnt polygon ids; each value's longest
    outline by subtraction) and the strip tracer (labelled strips joined at seams) give the same regions: same
    classes, ellipsoidal areas and mean confidences."""
    cls, conf = urban_classes
    n_gdal = polygonize(cls, conf, tmp_path / "gdal.gpkg", CLASSES, PolygonizeOptions(min_area_m2=0, simplify_px=0))
    strips = PolygonizeOptions(min_area_m2=0, simplify_px=0, strip_rows=64, max_region_pixels=1 << 40)
    n_strips = polygonize(cls, conf, tmp_path / "strips.gpkg", CLASSES, strips)
    assert n_gdal == n_strips > 20

    def summary(path: Path) -> list[tuple]:
        return sorted((c, a, round(m, 3)) for c, a, m, _wkb in features(path))

    assert summary(tmp_path / "gdal.gpkg") == summary(tmp_path / "strips.gpkg")
    assert not list(tmp_path.glob(".*.tmp.*"))  # GDAL's temporary polygons are gone


def test_polygons_without_gdal_python_bindings(urban_classes, tmp_path, monkeypatch):
    """A pip-only environment has no osgeo: the strip tracer gives the same regions as GDAL's trace instead of
    failing at the last stage of a job."""
    import engine.polygonize as pg

    cls, conf = urban_classes
    options = PolygonizeOptions(min_area_m2=0, simplify_px=0)
    n_gdal = polygonize(cls, conf, tmp_path / "gdal.gpkg", CLASSES, options)
    monkeypatch.setattr(pg, "gdal_available", lambda: False)
    monkeypatch.setattr(pg, "GdalTrace", None)  # never reached without the bindings
    assert polygonize(cls, conf, tmp_path / "strips.gpkg", CLASSES, options) == n_gdal > 20

    def summary(path: Path) -> list[tuple]:
        return sorted((c, a, round(m, 3)) for c, a, m, _wkb in features(path))

    assert summary(tmp_path / "gdal.gpkg") == summary(tmp_path / "strips.gpkg")


def _scipy_components(n: int, a: np.ndarray, b: np.ndarray) -> tuple[int, np.ndarray]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    return connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)


def _graphs(urban_classes, monkeypatch) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The run graphs of a real map's strips (as region_stats builds them), and graphs made to be awkward: none,
    no edges, a path numbered to zigzag (each round only halves it), random ones with repeats and self-loops."""
    import engine.region_stats as rs
    from engine.seams import components

    seen = []

    def record(n, a, b):
        seen.append((n, a.copy(), b.copy()))
        return components(n, a, b)

    cls, conf = urban_classes
    wanted = np.ones(1 << 16, dtype=bool)
    with monkeypatch.context() as patch:  # undone on leaving: the caller's own patches stay
        patch.setattr(rs, "components", record)
        for r0 in (0, 128, 256):
            rs.region_strip(cls, conf, r0, r0 + 256, 512, wanted, 9.0)
    assert len(seen) == 3 and min(len(a) for _n, a, _b in seen) > 300  # real graphs, not trivial ones
    zigzag = np.argsort(np.r_[0:4001:2, 4001:0:-2])  # node k of the path is zigzag[k]
    rng = np.random.default_rng(0)
    seen += [(0, np.zeros(0, int), np.zeros(0, int)), (7, np.zeros(0, int), np.zeros(0, int)),
             (len(zigzag), zigzag[:-1], zigzag[1:])]  # fmt: skip
    for n, m in ((50, 30), (2000, 1500), (2000, 4000), (100_000, 60_000)):
        seen.append((n, rng.integers(0, n, m), rng.integers(0, n, m)))
    return seen


def test_components_are_scipys_components(urban_classes, monkeypatch):
    """engine.seams.components (numpy union-find, so that a job never imports scipy's sparse graphs) gives
    scipy's count and numbering on real run graphs and on awkward ones."""
    from engine.seams import components

    for n, a, b in _graphs(urban_classes, monkeypatch):
        count, label = components(n, a, b)
        want_count, want = _scipy_components(n, a, b)
        assert count == want_count and np.array_equal(label, want), (n, len(a))


@pytest.mark.parametrize("rounds", [1, 2])
def test_components_past_the_round_limit_are_finished_by_scipy(urban_classes, monkeypatch, rounds):
    """After MAX_ROUNDS rounds of hooking, the trees so far and the edges still between them go to scipy: the
    result is the same. The real graphs here take 3-4 rounds, so both limits hand them over part-way."""
    import scipy.sparse.csgraph

    import engine.seams as seams

    graphs = _graphs(urban_classes, monkeypatch)
    wanted = [_scipy_components(*g) for g in graphs]
    handed = []
    scipys = scipy.sparse.csgraph.connected_components
    monkeypatch.setattr(seams, "MAX_ROUNDS", rounds)
    monkeypatch.setattr(
        scipy.sparse.csgraph, "connected_components", lambda *a, **k: handed.append(1) or scipys(*a, **k)
    )
    for (n, a, b), (want_count, want) in zip(graphs, wanted, strict=True):
        count, label = seams.components(n, a, b)
        assert count == want_count and np.array_equal(label, want), (n, len(a))
    assert len(handed) >= 3  # the real graphs at least


def test_a_land_cover_job_does_not_import_scipy(tmp_path):
    """Its polygons join runs without scipy (whose sparse graphs cost ~0.12 CPU-s to import, a sixth of what a
    2048² job spends beside the model on 2 cores)."""
    import subprocess
    import sys

    job = (
        "import sys; from pathlib import Path; from engine.jobs.landcover import LandcoverParams, run_landcover; "
        f"r = run_landcover(LandcoverParams(inputs=[Path({str(URBAN)!r})], out_dir=Path({str(tmp_path)!r}))); "
        "print(r.n_polygons, sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))"
    )
    proc = subprocess.run([sys.executable, "-c", job], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parents[1])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-500:]
    n, imported = proc.stdout.split(" ", 1)
    assert int(n) > 0 and imported.strip() == "[]"


def test_holes_are_taken_off_the_area_and_rings_are_written_ogc_oriented(tmp_path):
    # Issue #29 item 3: at 70 deg N in EPSG:4326 a polygon with a hole measured shell + hole when the rings ran one
    # way (pyproj sums signed ring areas). A square ring of class 1 (60 px, its hole 20 px) in class 2.
    from rasterio.transform import from_origin

    cls = np.full((100, 100), 2, np.uint8)
    cls[20:80, 20:80] = 1
    cls[40:60, 40:60] = 2
    t = from_origin(20.0, 70.0, 0.0001, 0.0001)
    prof = {"driver": "GTiff", "width": 100, "height": 100, "count": 1, "crs": "EPSG:4326", "transform": t}
    with rasterio.open(tmp_path / "c.tif", "w", dtype="uint8", **prof) as ds:
        ds.write(cls, 1)
    with rasterio.open(tmp_path / "f.tif", "w", dtype="float32", **prof) as ds:
        ds.write(np.ones((100, 100), np.float32), 1)
    out = tmp_path / "p.gpkg"
    polygonize(tmp_path / "c.tif", tmp_path / "f.tif", out, CLASSES, PolygonizeOptions(simplify_px=0, min_area_m2=0))
    with fiona.open(out) as layer:
        feats = [(shape(f.geometry), f["properties"]["area_m2"]) for f in layer]
    ring = [(g, a) for g, a in feats if len(g.interiors) == 1 and g.area < 0.0001**2 * 3700]
    assert len(ring) == 1
    geom, area = ring[0]

    def ring_area(coords) -> float:
        lon, lat = np.asarray(coords).T
        return abs(GEOD.polygon_area_perimeter(lon, lat)[0])

    truth = ring_area(geom.exterior.coords) - ring_area(geom.interiors[0].coords)
    assert area == pytest.approx(truth, rel=1e-4)  # shell minus hole, not plus (it was +25 % here)
    for g, _a in feats:  # every written polygon: shell counter-clockwise, holes clockwise
        assert g.exterior.is_ccw and not any(r.is_ccw for r in g.interiors)
