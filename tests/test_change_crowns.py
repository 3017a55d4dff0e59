"""Change detection (post-classification and direct) and tree crowns, on the real samples."""

from __future__ import annotations

import csv
import json

import fiona
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import DEFAULT_MODEL, SJER, URBAN, meta_doc, write_raster
from engine.errors import InputError
from engine.jobs.change import ChangeParams, run_change
from engine.jobs.treecrowns import TreeCrownParams, run_treecrowns

PARK = (slice(1200, 1500), slice(300, 700))  # rows, cols painted green in the "after" image
LOT = (slice(400, 600), slice(1300, 1600))  # painted grey


@pytest.fixture(scope="module")
def after_image(tmp_path_factory):
    """The real urban sample with a new park and a new paved lot painted in: a known change."""
    path = tmp_path_factory.mktemp("change") / "urban_after.tif"
    with rasterio.open(URBAN) as src:
        data, profile = src.read(), src.profile
    data[:, PARK[0], PARK[1]] = np.array([40, 140, 40], np.uint8)[:, None, None]
    data[:, LOT[0], LOT[1]] = np.array([150, 150, 160], np.uint8)[:, None, None]
    profile.update(compress="deflate", photometric="RGB")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_postclass_change_finds_the_painted_areas(tmp_path, after_image):
    res = run_change(ChangeParams(before=[URBAN], after=[after_image], model=DEFAULT_MODEL, out_dir=tmp_path))
    with rasterio.open(res.change_map) as ds, rasterio.open(URBAN) as src:
        code = ds.read(1)
        assert (ds.crs, ds.transform, ds.shape) == (src.crs, src.transform, src.shape)
    changed = (code > 0) & (code != 65535)
    assert changed[PARK].mean() > 0.4 and changed[LOT].mean() > 0.4
    outside = np.ones(code.shape, bool)
    outside[PARK] = outside[LOT] = False
    assert changed[outside].mean() < 0.001  # identical pixels elsewhere: no change
    with fiona.open(res.polygons) as layer:
        feats = list(layer)
    assert feats and {"from_class", "to_class", "area_m2", "confidence"} <= set(feats[0]["properties"])
    assert any(f["properties"]["to_class"] == "vegetation" for f in feats)
    with open(res.matrix) as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == res.classes and len(rows) == len(res.classes) + 1
    assert res.transitions_m2["bare ground"]["vegetation"] > 100
    assert res.changed_m2 == pytest.approx(
        sum(v for a, r in res.transitions_m2.items() for b, v in r.items() if a != b), rel=1e-6
    )
    assert "transition" in (tmp_path / "change.qml").read_text()


def test_direct_change_with_an_exported_siamese_model(tmp_path, after_image):
    pytest.importorskip("torch")
    from export.torch_export import ExportParams, export_package

    rgb = {
        "modality": "rgb",
        "bands": ["red", "green", "blue"],
        "normalization": {"type": "scale_offset", "scale": 1 / 255, "offset": 0},
    }
    doc = meta_doc(
        [{"name": "before", "date": "before", **rgb}, {"name": "after", "date": "after", **rgb}],
        2,
        task="change",
        tile_size=256,
        overlap=32,
    )
    doc["classes"] = [
        {"id": 0, "name": "no change", "color": "#ffffff"},
        {"id": 1, "name": "change", "color": "#e31a1c"},
    ]
    (tmp_path / "meta.json").write_text(json.dumps(doc))
    model, _ = export_package(
        ExportParams(meta=tmp_path / "meta.json", out=tmp_path / "siamese.onnx", entry="torch_models:siamese_change"),
        log=lambda m: None,
    )
    bare = run_change(
        ChangeParams(
            before=[URBAN],
            after=[after_image],
            model=model,
            out_dir=tmp_path / "o",
            method="direct",
            landcover_model="none",
        )  # fmt: skip
    )
    with rasterio.open(bare.change_map) as ds:
        code = ds.read(1)
    assert (code[PARK] == 1).mean() > 0.9 and (code[LOT] == 1).mean() > 0.9
    assert bare.n_polygons >= 2 and bare.transitions_m2["change"]["change"] > 500
    # with a land-cover model on both dates (the colour rule: the park's flat paint is its kind of green), the
    # same change pixels are named from -> to
    res = run_change(
        ChangeParams(
            before=[URBAN],
            after=[after_image],
            model=model,
            out_dir=tmp_path / "n",
            method="direct",
            landcover_model=DEFAULT_MODEL,
        )  # fmt: skip
    )
    k = len(res.classes)
    with rasterio.open(res.change_map) as ds:
        named = ds.read(1)
    changed = (named > 0) & (named != 65535)
    assert not (changed & (code != 1)).any() and np.array_equal(named == 0, code == 0)
    assert changed.sum() >= 0.95 * (code == 1).sum()  # only pixels a date could not classify lose their change
    assert res.changed_m2 == pytest.approx(bare.changed_m2, rel=0.05)
    assert res.changed_m2 == pytest.approx(sum(v for row in res.transitions_m2.values() for v in row.values()))
    park_to = np.bincount((named[PARK][changed[PARK]] - 1) % k, minlength=k).argmax()
    assert res.classes[park_to] == "vegetation"  # painted green in the "after" image
    with fiona.open(res.polygons) as layer:
        props = [f["properties"] for f in layer]
    assert props and all(p["from_class"] in res.classes and p["to_class"] in res.classes for p in props)
    assert all(0.0 <= p["probability"] <= 1.0 for p in props)


def test_change_bad_inputs(tmp_path):
    gray = write_raster(
        tmp_path / "gray.tif",
        np.zeros((1, 50, 50), np.uint8),
        crs="EPSG:32611",
        transform=from_origin(252000, 4107400, 0.1, 0.1),
    )
    with pytest.raises(InputError, match="has 3 band\\(s\\) but after raster .* has 1"):
        run_change(ChangeParams(before=[SJER], after=[gray], model=DEFAULT_MODEL, out_dir=tmp_path / "o"))
    far = write_raster(
        tmp_path / "far.tif",
        np.zeros((3, 50, 50), np.uint8),
        crs="EPSG:32633",
        transform=from_origin(300000, 6000000, 1, 1),
    )
    with pytest.raises(InputError, match="do not overlap"):
        run_change(ChangeParams(before=[SJER], after=[far], model=DEFAULT_MODEL, out_dir=tmp_path / "o"))
    with pytest.raises(InputError, match="needs a change model"):
        run_change(
            ChangeParams(before=[SJER], after=[SJER], model=DEFAULT_MODEL, out_dir=tmp_path / "o", method="direct")
        )
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_change_on_partial_overlap_uses_the_common_grid(tmp_path):
    with rasterio.open(SJER) as src:
        win = rasterio.windows.Window(100, 150, 250, 200)
        write_raster(tmp_path / "after.tif", src.read(window=win), transform=src.window_transform(win), crs=src.crs)
        res = run_change(
            ChangeParams(before=[SJER], after=[tmp_path / "after.tif"], model=DEFAULT_MODEL, out_dir=tmp_path / "o")
        )
        with rasterio.open(res.change_map) as ds:
            assert ds.shape == (200, 250) and ds.transform == src.window_transform(win)
            assert (ds.read(1)[5:-5, 5:-5] == 0).mean() > 0.99  # same pixels: no change


def test_tree_crowns_with_chm(tmp_path):
    """Two synthetic trees in a CHM over the real SJER image: two crowns, heights from the CHM."""
    with rasterio.open(SJER) as src:
        chm = np.zeros((1, *src.shape), np.float32)
        yy, xx = np.mgrid[: src.height, : src.width]
        for cy, cx, h in ((100, 100, 12.0), (280, 300, 8.0)):
            chm[0] = np.maximum(chm[0], h * np.clip(1 - np.hypot(yy - cy, xx - cx) / 40, 0, None))
        chm_path = write_raster(tmp_path / "chm.tif", chm, transform=src.transform, crs=src.crs)
    green = tmp_path / "green.tif"  # vegetation everywhere, so the CHM decides
    data = np.zeros((3, 400, 400), np.uint8)
    data[1] = 200
    with rasterio.open(SJER) as src:
        write_raster(green, data, transform=src.transform, crs=src.crs)
    res = run_treecrowns(
        TreeCrownParams(
            image=green, model=DEFAULT_MODEL, chm=chm_path, out_dir=tmp_path, window=256, max_crown_diameter_m=10
        )
    )
    with fiona.open(res.crowns) as layer:
        feats = sorted(layer, key=lambda f: -f["properties"]["height_max"])
    assert len(feats) == 2
    top = feats[0]["properties"]
    assert top["height_max"] == pytest.approx(12.0, abs=0.5) and 2 < top["height_mean"] < 12
    # crown where CHM > 2 m: radius 40 px * (1 - 2/12) = 33 px = 3.3 m -> about 6.7 m across
    assert top["diameter_m"] == pytest.approx(6.7, abs=0.8)
    assert top["area_m2"] == pytest.approx(np.pi * 3.33**2, rel=0.15)


def test_tree_crowns_rgb_only_merge_across_windows(tmp_path):
    """Same crowns whether the image is processed in one window or in many small ones."""
    one = run_treecrowns(TreeCrownParams(image=URBAN, model=DEFAULT_MODEL, out_dir=tmp_path / "a", window=2048))
    many = run_treecrowns(TreeCrownParams(image=URBAN, model=DEFAULT_MODEL, out_dir=tmp_path / "b", window=512))
    assert one.n_crowns > 20
    assert abs(many.n_crowns - one.n_crowns) <= max(2, 0.05 * one.n_crowns)


def test_tree_crowns_with_sam(tmp_path):
    pytest.importorskip("torch")
    from export.sam_export import SamExportParams, export_sam

    export_sam(SamExportParams("tiny", tmp_path / "sam"), log=lambda m: None)
    res = run_treecrowns(
        TreeCrownParams(
            image=URBAN, model=DEFAULT_MODEL, out_dir=tmp_path, sam=tmp_path / "sam", max_crown_diameter_m=5
        )
    )
    assert res.method == "sam"
    with fiona.open(res.crowns) as layer:
        feats = list(layer)
    assert res.n_crowns == len(feats) > 0  # random weights: shapes are arbitrary, the path is what is tested
    assert all(f["properties"]["method"] == "sam" for f in feats)


def test_tree_crowns_bad_chm(tmp_path):
    other = write_raster(
        tmp_path / "chm_wgs84.tif",
        np.zeros((1, 20, 20), np.float32),
        crs="EPSG:4326",
        transform=from_origin(-119.7, 37.1, 0.0001, 0.0001),
    )
    with pytest.raises(InputError, match="CHM .* is in EPSG:4326 but the image is in EPSG:32611"):
        run_treecrowns(TreeCrownParams(image=SJER, chm=other, out_dir=tmp_path / "o"))
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("rgb", "has 3 bands: a canopy height model is one band of heights in metres"),
        ("dsm", "not plausible tree heights"),
        ("flat", "is flat"),
        ("feet", "if it is in feet, add --chm-scale 0.3048"),
        ("untagged -9999", "-9999, a no-data value that is not tagged as one: add --chm-nodata -9999"),
        ("negative", "of its heights are below -1 m"),
    ],
)
def test_tree_crowns_refuse_an_implausible_chm(tmp_path, what, message):
    """The RGB image itself, a DSM (elevations above sea level), an all-zero raster, a CHM in feet (a 40 m
    forest is 131 "m"), untagged -9999 rows or mostly negative heights is no CHM in metres (issue #29 item 5)."""
    if what == "rgb":
        chm = SJER
    else:
        with rasterio.open(SJER) as src:
            values = np.full((1, *src.shape), 1350.0 if what == "dsm" else 0.0, np.float32)
            yy, xx = np.mgrid[: src.height, : src.width]
            trees = np.clip(40 - np.hypot((yy % 100) - 50, (xx % 100) - 50), 0, None).astype(np.float32)
            if what == "feet":
                values[0] = trees / 0.3048
            elif what == "untagged -9999":
                values[0] = trees
                values[0, :40] = -9999
            elif what == "negative":
                values[0] = trees - 20
            chm = write_raster(tmp_path / f"{what}.tif", values, transform=src.transform, crs=src.crs)
    with pytest.raises(InputError, match=message):
        run_treecrowns(TreeCrownParams(image=SJER, chm=chm, out_dir=tmp_path / "o"))
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_a_chm_in_feet_or_with_untagged_nodata_runs_with_the_named_fix(tmp_path):
    """The fixes the errors name: --chm-scale 0.3048 gives the metre result, --chm-nodata -9999 the result of
    the tagged file."""
    from engine.jobs.treecrowns import ChmSource

    with rasterio.open(SJER) as src:
        yy, xx = np.mgrid[: src.height, : src.width]
        trees = np.clip(12 - np.hypot((yy % 100) - 50, (xx % 100) - 50) / 3, 0, None).astype(np.float32)
        metres = write_raster(tmp_path / "m.tif", trees[None], transform=src.transform, crs=src.crs)
        feet = write_raster(tmp_path / "ft.tif", (trees / 0.3048)[None], transform=src.transform, crs=src.crs)
        holes = trees.copy()
        holes[:100] = -9999  # the first row of trees
        untagged = write_raster(tmp_path / "u.tif", holes[None], transform=src.transform, crs=src.crs)
    with rasterio.open(feet) as ds:
        assert np.allclose(ChmSource(ds, 0.3048).heights(None), trees, atol=1e-4)
    with rasterio.open(untagged) as ds:
        h = ChmSource(ds, 1.0, -9999).heights(None)
        assert (h[:100] == 0).all() and np.allclose(h[100:], trees[100:])
    green = tmp_path / "green.tif"  # vegetation everywhere (the watershed method): the CHM decides
    data = np.zeros((3, *trees.shape), np.uint8)
    data[1] = 200
    write_raster(green, data, transform=src.transform, crs=src.crs)
    runs = {}
    for key, chm, extra in (
        ("m", metres, {}),
        ("ft", feet, {"chm_scale": 0.3048}),
        ("u", untagged, {"chm_nodata": -9999}),
    ):
        res = run_treecrowns(TreeCrownParams(image=green, chm=chm, model=DEFAULT_MODEL, out_dir=tmp_path / key,
                                             window=256, max_crown_diameter_m=10, **extra))  # fmt: skip
        with fiona.open(res.crowns) as layer:
            runs[key] = sorted(round(f["properties"]["height_max"], 1) for f in layer)
    assert len(runs["m"]) >= 9 and runs["m"] == runs["ft"]
    assert len(runs["u"]) == len(runs["m"]) - 4  # the no-data rows hold no tree


def test_change_reads_gdal_virtual_paths_as_landcover_does(tmp_path):
    # Issue #29 item 9: `change --before /vsizip/...` said "before raster not found".
    import zipfile

    with zipfile.ZipFile(tmp_path / "dates.zip", "w") as zf:
        zf.write(SJER, "sjer.tif")
    before = f"/vsizip/{tmp_path / 'dates.zip'}/sjer.tif"
    res = run_change(ChangeParams(before=[before], after=[SJER], model=DEFAULT_MODEL, out_dir=tmp_path / "o"))
    assert res.changed_m2 == 0  # the same image on both dates
    with pytest.raises(InputError, match="before raster .*missing.tif"):
        run_change(
            ChangeParams(before=[f"/vsizip/{tmp_path / 'dates.zip'}/missing.tif"], after=[SJER],
                         model=DEFAULT_MODEL, out_dir=tmp_path / "o2")
        )  # fmt: skip


def test_change_with_a_date_without_valid_data_is_an_error_not_no_change(tmp_path):
    # Issue #29 item 6: one date all nodata reported "0 m2 changed", exit 0.
    with rasterio.open(SJER) as src:
        empty = write_raster(
            tmp_path / "empty.tif", np.zeros((3, src.height, src.width), np.uint8), transform=src.transform,
            crs=src.crs, nodata=0,
        )  # fmt: skip
    with pytest.raises(InputError, match="the after raster .*empty.tif has no valid pixel"):
        run_change(ChangeParams(before=[SJER], after=[empty], model=DEFAULT_MODEL, out_dir=tmp_path / "o"))
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_one_scene_at_8_and_16_bit_is_not_change(tmp_path):
    """Issue #29 item 2: only the 16-bit date used to be stretched (2-98 %), so one scene at 8 bit (before) and
    16 bit (after) came out 6-15 % "changed". Both dates are now stretched where only one needs it, and said."""
    with rasterio.open(SJER) as ds:
        prof, data = ds.profile, ds.read()
    before = tmp_path / "b8.tif"
    after = tmp_path / "a16.tif"
    with rasterio.open(before, "w", **prof) as dst:
        dst.write(data)
    with rasterio.open(after, "w", **(prof | {"dtype": "uint16"})) as dst:
        dst.write(data.astype(np.uint16) * 16)
    res = run_change(ChangeParams(before=[before], after=[after], out_dir=tmp_path / "o", method="postclass"))
    area = ds.width * ds.height * abs(ds.transform.a * ds.transform.e)
    assert res.changed_m2 / area < 0.01, res.changed_m2 / area
    assert any("compared on one scale" in m for m in res.messages), res.messages
    assert {k.split(":")[0] for k in res.rescaling} == {"before", "after"}
