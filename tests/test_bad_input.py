"""Bad input through the CLI: one-line error naming the problem, exit code != 0, no partial output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import DEFAULT_MODEL, ROOT, SJER, write_raster
from export.graph_builder import GraphBuilder


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", "landcover", "--progress", "none", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def assert_clean_failure(proc, code: int, *fragments: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("landseg: error: ")
    assert "Traceback" not in proc.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


def assert_no_output(out) -> None:
    assert not out.exists() or list(out.iterdir()) == []


def test_missing_file(tmp_path):
    out = tmp_path / "out"
    p = run_cli("-i", str(tmp_path / "nope.tif"), "-o", str(out))
    assert_clean_failure(p, 2, "not found", "nope.tif")
    assert_no_output(out)


def test_not_a_raster(tmp_path):
    fake = tmp_path / "notes.tif"
    fake.write_text("this is not an image\n")
    out = tmp_path / "out"
    p = run_cli("-i", str(fake), "-o", str(out))
    assert_clean_failure(p, 2, "is not a raster", "notes.tif")
    assert "  " not in p.stderr.strip()  # issue #29 item 11: "is  not" (two spaces)
    assert_no_output(out)


def test_crs_mismatch_without_overlap(tmp_path):
    far = write_raster(
        tmp_path / "far.tif",
        np.zeros((1, 50, 50), np.uint8),
        crs="EPSG:32633",
        transform=from_origin(300000, 6000000, 1, 1),
    )
    out = tmp_path / "out"
    p = run_cli("-i", str(SJER), "-i", str(far), "-m", "rgb=1:1,2,3", "-m", "nir=2:1", "-o", str(out))
    # A mapping of rgb and nir runs the shipped RGB + NIR model (said on the line before): the rasters are refused.
    assert p.returncode == 2 and "Traceback" not in p.stderr
    note, error = p.stderr.strip().splitlines()
    assert "names a NIR band: model landcover_rgbn_unet_lite0.onnx" in note
    assert error.startswith("landseg: error: input raster 2") and "does not overlap" in error
    # And a model of its own that takes all three rasters: the same refusal, in one line.
    from conftest import multimodal_model

    mm = multimodal_model(tmp_path / "mm.onnx")
    p = run_cli("-i", str(SJER), "-i", str(far), "-i", str(far), "--model", str(mm), "-o", str(out))
    assert_clean_failure(p, 2, "does not overlap", "far.tif", "EPSG:32633")
    assert_no_output(out)


def test_wrong_band_count_for_model(tmp_path):
    one_band = write_raster(tmp_path / "gray.tif", np.zeros((1, 40, 40), np.uint8))
    out = tmp_path / "out"
    p = run_cli("-i", str(one_band), "-o", str(out))
    assert_clean_failure(p, 2, "1 band(s)", "takes 3", "rgb")
    p = run_cli("-i", str(SJER), "-m", "rgb=1,2,4", "-o", str(out))
    assert_clean_failure(p, 2, "band 4", "3 band(s)")
    assert_no_output(out)


def test_corrupt_model_file(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(DEFAULT_MODEL.read_bytes()[:700] + os.urandom(300))
    out = tmp_path / "out"
    p = run_cli("-i", str(SJER), "--model", str(bad), "-o", str(out))
    assert_clean_failure(p, 3, "broken.onnx")
    assert_no_output(out)


def test_model_without_metadata(tmp_path):
    g = GraphBuilder("bare")
    g.output("out", g.input("rgb", 3), 3)
    path = tmp_path / "plain.onnx"
    onnx.save(g.model(), str(path))
    p = run_cli("-i", str(SJER), "--model", str(path), "-o", str(tmp_path / "out"))
    assert_clean_failure(p, 3, "no LandSeg metadata", "plain.onnx")


def test_output_folder_is_a_file(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    p = run_cli("-i", str(SJER), "-o", str(blocker / "sub"))
    assert_clean_failure(p, 4, "cannot create output folder", "taken")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_output_folder_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        p = run_cli("-i", str(SJER), "-o", str(ro))
        assert_clean_failure(p, 4, "not writable", "ro")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_bad_modality_syntax(tmp_path):
    p = run_cli("-i", str(SJER), "-m", "rgb", "-o", str(tmp_path))
    assert p.returncode == 2 and "NAME=[RASTER:]BANDS" in p.stderr and "Traceback" not in p.stderr


def test_success_exit_code_and_summary(tmp_path):
    p = run_cli("-i", str(SJER), "-o", str(tmp_path), "--json")
    assert p.returncode == 0, p.stderr
    import json

    res = json.loads(p.stdout)
    assert res["n_polygons"] > 0 and res["class_map"].endswith("landcover_classes.tif")


def test_the_process_ends_without_teardown_and_says_everything_first():
    """engine/__main__.py ends the process once main has returned, skipping the interpreter's teardown (0.1 s a
    job): what was written to a pipe is whole (the task table, 40 kB: more than a pipe holds at once), main's
    status is the process's, and an exit main did not return from (argparse's, status 2) is Python's own."""
    from engine.tasks import schema_text

    forms = subprocess.run([sys.executable, "-m", "engine", "forms"], capture_output=True, text=True, cwd=ROOT)
    assert forms.returncode == 0 and forms.stdout == schema_text() and len(forms.stdout) > 2**15
    assert run_cli("-i", "/no/such.tif", "-o", "/tmp/x").returncode == 2  # InputError's status, from main
    assert run_cli("--no-such-flag").returncode == 2  # argparse's SystemExit


def _copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


@pytest.mark.parametrize("case", ["out-classes", "out-confidence", "in-out-folder", "link"])
def test_an_output_never_overwrites_an_input(tmp_path, case):
    """An output path that is the input (or reaches it through a link) is a one-line error; the input is intact."""
    import hashlib

    out = tmp_path / "o"
    if case == "in-out-folder":  # the input is named like an output, inside --out
        raster = _copy(SJER, out / "landcover_classes.tif")
        args = ["-i", str(raster), "--out", str(out)]
    elif case == "link":
        raster = _copy(SJER, tmp_path / "ortho.tif")
        (tmp_path / "alias.tif").symlink_to(raster)
        args = ["-i", str(raster), "--out-classes", str(tmp_path / "alias.tif"),
                "--out-confidence", str(out / "c.tif"), "--out-polygons", str(out / "p.gpkg")]  # fmt: skip
    else:
        raster = _copy(SJER, tmp_path / "ortho.tif")
        other = "--out-confidence" if case == "out-classes" else "--out-classes"
        args = ["-i", str(raster), f"--{case}", str(raster), other, str(out / "x.tif"),
                "--out-polygons", str(out / "p.gpkg")]  # fmt: skip
    before = hashlib.sha256(raster.read_bytes()).hexdigest()
    p = run_cli(*args)
    assert_clean_failure(p, 4, "would overwrite the input")
    assert hashlib.sha256(raster.read_bytes()).hexdigest() == before


def test_name_cannot_escape_the_output_folder(tmp_path):
    p = run_cli("-i", str(SJER), "--out", str(tmp_path / "o"), "--name", "../escaped")
    assert_clean_failure(p, 4, "must be a file name")
    assert not list(tmp_path.glob("escaped*"))


def test_nan_pixels_are_nodata_without_a_nodata_tag(tmp_path):
    """NaN in a float raster with no nodata value: no class, no polygon there (was class 0)."""
    import fiona
    import numpy as np
    import rasterio
    from shapely.geometry import box, shape

    with rasterio.open(SJER) as src:
        data, profile = src.read().astype("float32"), src.profile
    data[:, 100:200, 100:200] = np.nan
    data[0, 300:310, 300:310] = np.inf
    profile.update(dtype="float32", nodata=None)
    raster = tmp_path / "nan.tif"
    with rasterio.open(raster, "w", **profile) as dst:
        dst.write(data)
    p = run_cli("-i", str(raster), "--out", str(tmp_path / "o"), "--model", str(DEFAULT_MODEL))
    assert p.returncode == 0, p.stderr
    with rasterio.open(tmp_path / "o/landcover_classes.tif") as ds:
        cls, t = ds.read(1), ds.transform
    assert (cls[100:200, 100:200] == ds.nodata).all() and (cls[300:310, 300:310] == ds.nodata).all()
    assert (cls[:100] != ds.nodata).all()
    hole = box(*(t * (110, 190)), *(t * (190, 110)))
    with fiona.open(tmp_path / "o/landcover.gpkg") as layer:
        assert not any(shape(f.geometry).contains(hole) for f in layer)


def test_raster_without_georeference_needs_an_explicit_flag(tmp_path):
    """No CRS: a one-line error, or with --allow-pixel-coordinates a run that says its unit."""
    import numpy as np
    import rasterio

    with rasterio.open(SJER) as src:
        data = src.read()
    raster = tmp_path / "plain.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=400, height=400, count=3, dtype="uint8") as dst:
        dst.write(data)
    p = run_cli("-i", str(raster), "--out", str(tmp_path / "o"))
    assert_clean_failure(p, 2, "has no georeference", "--allow-pixel-coordinates")
    assert not (tmp_path / "o").exists()
    p = run_cli("-i", str(raster), "--out", str(tmp_path / "o"), "--allow-pixel-coordinates", "--json")
    assert p.returncode == 0, p.stderr
    assert "area_m2 holds square pixels" in p.stderr and np.isfinite(json.loads(p.stdout)["n_polygons"])


def _nan_model(path, nan_everywhere: bool = False):
    """One band in, two classes: logits (sqrt(z), -z); z < 0 (raw values below 100) gives NaN."""
    from conftest import meta_doc, save

    g = GraphBuilder("nan")
    x = g.input("band", 1)
    root = g.op("Sqrt", g.mul(x, -1.0) if nan_everywhere else x)
    g.output("out", g.concat(root, g.mul(x, -1.0)), 2)
    norm = {"type": "mean_std", "mean": [100.0] if not nan_everywhere else [-1000.0], "std": [50.0]}
    inputs = [{"name": "band", "modality": "any", "bands": ["b1"], "normalization": norm}]
    return save(g.model(), meta_doc(inputs, 2, name="nan-model", pixel_size_m=1.0), path)


@pytest.mark.parametrize("everywhere", [False, True], ids=["some pixels", "every pixel"])
def test_a_model_returning_nan_is_refused_not_mapped_as_class_0(tmp_path, everywhere):
    # Issue #29 item 1: NaN pixels became class 0 with confidence NaN, exit 0; an all-NaN model one polygon.
    model = _nan_model(tmp_path / "nan.onnx", everywhere)
    values = np.tile(np.linspace(0, 200, 64, dtype=np.float32), (64, 1))  # half below 100: NaN there
    raster = write_raster(tmp_path / "ramp.tif", values, transform=from_origin(500000, 4100000, 1.0, 1.0))
    out = tmp_path / "out"
    p = run_cli("-i", str(raster), "--model", str(model), "-o", str(out))
    assert p.returncode == 3 and "Traceback" not in p.stderr, p.stderr
    last = p.stderr.strip().splitlines()[-1]  # after the run's own notes (no resampling, ...)
    assert last.startswith("landseg: error: model 'nan-model' returned NaN or infinite values for"), last
    assert_no_output(out)


def _fixed_shape(src, dst, batch=None, tile=None):
    """The same graph with its input (and output) batch and/or tile size fixed, as some exporters save them."""
    m = onnx.load(str(src))
    for vi in [*m.graph.input, *m.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        for k, v in ((0, batch), (2, tile), (3, tile)):
            if v is not None:
                dims[k].ClearField("dim_param")
                dims[k].dim_value = v
    onnx.save(m, str(dst))
    return dst


@pytest.mark.parametrize(("batch", "tile"), [(1, None), (2, 64)], ids=["batch 1", "batch 2, tile 64"])
def test_fixed_batch_or_tile_models_run_with_the_graphs_shape(tmp_path, batch, tile):
    # Issue #29 item 10: a batch-1 export failed with onnxruntime's message cut off and no hint.
    from conftest import conv_model

    free = conv_model(tmp_path / "free.onnx")
    fixed = _fixed_shape(free, tmp_path / "fixed.onnx", batch, tile)
    img = write_raster(tmp_path / "img.tif", np.random.default_rng(0).integers(0, 255, (3, 150, 170), np.uint8))
    args = ["-i", str(img), "--batch", "4", "--json", "--tile", "64" if tile else "128"]
    ref = run_cli(*args, "--model", str(free), "-o", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    # A fixed tile size is the run's tile without asking (the free model ran with --tile at that size).
    got = run_cli(*(args[:-2] if tile else args), "--model", str(fixed), "-o", str(tmp_path / "got"))
    assert got.returncode == 0, got.stderr
    res = json.loads(got.stdout)
    assert any(f"exactly {batch} tile(s)" in m for m in res["messages"]), res["messages"]
    assert res["tile"] == (tile or 128)
    with rasterio.open(json.loads(ref.stdout)["class_map"]) as a, rasterio.open(res["class_map"]) as b:
        assert np.array_equal(a.read(1), b.read(1))
    if tile:  # another tile size than the graph's: one line with the fix
        bad = run_cli(*args[:-2], "--tile", "128", "--model", str(fixed), "-o", str(tmp_path / "bad"))
        assert bad.returncode == 2 and "takes tiles of exactly 64 px" in bad.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("placed_by", ["crs only", "gcps only"])
def test_a_crs_without_a_geotransform_is_refused_not_read_as_metres(tmp_path, placed_by):
    # Issue #29 items 4 and 11: a CRS with GDAL's identity geotransform gave "does not overlap" (or, without a
    # model pixel size, pixel coordinates labelled as metres); a GCP-only raster was called "no CRS".
    from rasterio.control import GroundControlPoint

    with rasterio.open(SJER) as src:
        data, crs = src.read(), src.crs
    raster = tmp_path / "placed.tif"
    prof = {"driver": "GTiff", "width": 400, "height": 400, "count": 3, "dtype": "uint8"}
    if placed_by == "crs only":
        prof["crs"] = crs
    with rasterio.open(raster, "w", **prof) as dst:
        dst.write(data)
        if placed_by == "gcps only":
            corners = [(0, 0, 252000, 4107400), (0, 400, 252000, 4107360), (400, 0, 252040, 4107400)]
            dst.gcps = ([GroundControlPoint(r, c, x, y) for r, c, x, y in corners], crs)
    for model in (DEFAULT_MODEL, ROOT / "models/landcover_unet_lite0.onnx"):
        p = run_cli("-i", str(raster), "--model", str(model), "--out", str(tmp_path / "o"))
        if placed_by == "crs only":
            assert_clean_failure(p, 2, "names a CRS (EPSG:32611) but has no geotransform", "placed.tif")
        else:
            assert_clean_failure(p, 2, "placed by 3 ground control points, EPSG:32611", "gdalwarp")
        assert not (tmp_path / "o").exists()


def test_a_paletted_raster_is_classified_by_its_colours(tmp_path):
    # Issue #29 item 8: `--modality rgb=1,2,3` failed on a paletted raster and `rgb=1,1,1` classified indices.
    with rasterio.open(SJER) as src:
        rgb, prof = src.read(), src.profile
    # The real image quantized to 64 colours (index = the colour's rank), written with its colour table.
    from PIL import Image

    quant = Image.fromarray(np.moveaxis(rgb, 0, -1)).quantize(64)
    index = np.asarray(quant)
    pal = np.asarray(quant.getpalette()[: 64 * 3]).reshape(64, 3)
    paletted = tmp_path / "paletted.tif"
    prof.update(count=1, photometric="palette", compress="deflate")
    with rasterio.open(paletted, "w", **prof) as dst:
        dst.write(index.astype(np.uint8), 1)
        dst.write_colormap(1, {k: (*map(int, pal[k]), 255) for k in range(64)})
    truecolour = write_raster(tmp_path / "truecolour.tif", np.moveaxis(pal[index], -1, 0).astype(np.uint8),
                              transform=prof["transform"], crs=prof["crs"])  # fmt: skip
    want = run_cli("-i", str(truecolour), "--model", str(DEFAULT_MODEL), "-o", str(tmp_path / "a"), "--json")
    for extra in ([], ["--modality", "rgb=1,2,3"]):
        got = run_cli("-i", str(paletted), "--model", str(DEFAULT_MODEL), "-o", str(tmp_path / "b"), "--json", *extra)
        assert got.returncode == 0, got.stderr
        res = json.loads(got.stdout)
        assert any("is paletted" in m for m in res["messages"])
        with rasterio.open(json.loads(want.stdout)["class_map"]) as a, rasterio.open(res["class_map"]) as b:
            assert np.array_equal(a.read(1), b.read(1))
