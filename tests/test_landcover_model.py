"""The shipped land-cover model on real data: Dubai validation tile, held-out NEON plots, Kampala roofs, resampling.

Figures measured with the committed model are in MODEL_CARD.md; each test allows a small margin below them.
Needs ../shared/data (CI has it beside the clone).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import ROOT, SHARED, write_raster
from engine.jobs.landcover import LandcoverParams, run_landcover
from engine.model_package import COLOUR_RULE_MODEL, DEFAULT_LANDCOVER_MODEL, load_model_package
from export.train import landcover_data as D
from export.train_landcover import confusion, iou_from_confusion

pytestmark = pytest.mark.skipif(not (SHARED / "landcover").exists(), reason="needs ../shared/data")

# One validation image (tile_2, never trained on) and the mIoU the shipped model reaches on it via the CLI.
VAL_IMAGE = "tile_2/image_part_005"
VAL_IMAGE_MIOU = 0.584  # measured with the committed model (MODEL_CARD.md)
KAMPALA_IOU = 0.420  # building IoU on the Kampala z21 mosaic, measured with the committed model
# Through the engine on 12 chips of the held-out NAIP city (vegetation IoU vs NDVI, tree points on vegetation)
NAIP_SAMPLE = {"rgb": (0.424, 0.825), "rgbn": (0.805, 0.936)}  # measured with the committed models
BANEPA_IOU = 0.544  # building IoU on the held-out Banepa column (0.5 m), the committed RGB model


def _georef(tmp_path, name: str, rgb: np.ndarray, pixel_m: float, crs="EPSG:32640"):
    return write_raster(
        tmp_path / f"{name}.tif", rgb, transform=from_origin(500000, 2800000, pixel_m, pixel_m), crs=crs
    )


def _classes(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _run(tmp_path, raster, model=DEFAULT_LANDCOVER_MODEL, name="lc", **kw):
    res = run_landcover(LandcoverParams(inputs=[raster], model=model, out_dir=tmp_path / name, **kw))
    return res, _classes(res.class_map)


def test_imagenet_encoder_loads_exactly():
    torch = pytest.importorskip("torch")
    from export.effnet_lite import N_WEIGHT_TENSORS, LandcoverUNet, imagenet_weights_path, load_imagenet

    model = LandcoverUNet()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    counts = load_imagenet(model.encoder)
    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    assert counts == {"checkpoint": N_WEIGHT_TENSORS, "loaded": 288, "unused": 8}
    # Every encoder tensor is the checkpoint's, none is left at its random initialisation.
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, state[k]), k
    changed = [
        k for k, v in model.encoder.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])
    ]
    assert len(changed) >= 200
    unused = set(state) - set(model.encoder.state_dict())
    assert all(k.startswith(("_conv_head", "_bn1.", "_fc")) for k in unused)


def test_cli_on_a_validation_image(tmp_path):
    jpg = SHARED / "landcover/dubai_aerial" / f"{VAL_IMAGE}.jpg"
    truth = D.dubai_mask(jpg.with_suffix(".png"))
    raster = _georef(tmp_path, "val", D._read_rgb(jpg), D.DUBAI_PIXEL_M)
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "landcover", "-i", str(raster), "--out", str(tmp_path / "o"), "--json",
         "--progress", "none"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    # The Dubai images are the model's own pixel size (export/train/landcover_data.py): nothing to resample.
    assert not result["resampling"]["resampled"] and "within 15%" in result["resampling"]["message"]
    pred = _classes(tmp_path / "o/landcover_classes.tif")
    iou = iou_from_confusion(confusion(pred, truth, 5))
    print(f"{VAL_IMAGE}: mIoU {np.nanmean(iou):.3f}", iou)
    assert np.nanmean(iou) >= VAL_IMAGE_MIOU - 0.05, iou


def _veg_shares(tmp_path, model, site_filter=None):
    out: dict[str, list[int]] = {}
    for site, rgb_path, xml, _chm in D.neon_plots(SHARED, "val"):
        rgb, _ = D.read_plot(rgb_path, None)
        if rgb_path.suffix == ".tif":
            raster = rgb_path
        else:  # SOAP: a PNG without georeference, 0.1 m (NEON AOP)
            raster = _georef(tmp_path, rgb_path.stem, rgb, D.NEON_PIXEL_M, crs="EPSG:32611")
        _res, pred = _run(tmp_path, raster, model, name=f"{model.stem}_{rgb_path.parent.name}_{rgb_path.stem}")
        inside = D.box_mask(rgb.shape[1:], D.voc_boxes(xml))
        veg = pred == next(c.id for c in load_model_package(model).meta.classes if c.name == "vegetation")
        a = out.setdefault(site, [0, 0, 0, 0])
        a[0] += int((veg & inside).sum())
        a[1] += int(inside.sum())
        a[2] += int((veg & ~inside).sum())
        a[3] += int((~inside).sum())
    return {s: (a[0] / a[1], a[2] / a[3]) for s, a in out.items()}


def test_vegetation_in_held_out_neon_tree_boxes(tmp_path):
    trained = _veg_shares(tmp_path, DEFAULT_LANDCOVER_MODEL)
    rule = _veg_shares(tmp_path, COLOUR_RULE_MODEL)
    print("vegetation share inside / outside the boxes, trained:", trained, "colour rule:", rule)
    assert set(trained) == {"SJER", "TEAK", "SOAP"}
    # "Everything is vegetation" would pass the check on the boxes. Outside the boxes is open ground in the SJER
    # savanna, but understory, shrubs and unboxed trees in the TEAK and SOAP conifer forests: SJER tells.
    assert trained["SJER"][1] <= 0.40, trained["SJER"]
    for site, (inside, outside) in trained.items():
        assert inside >= 0.80, (site, inside, outside)
        # The colour rule must not find more of the crowns (its outside shares are printed for the card).
        assert inside > rule[site][0], (site, trained[site], rule[site])


def _kampala_raster(tmp_path):
    img, mask, (x0, y0) = D.kampala_mosaic(SHARED, 21)
    transform = D.web_mercator_transform(x0, y0, 21)
    # Where no tile is, the mosaic is 0: no-data, not black ground.
    return write_raster(tmp_path / "kampala.tif", img, transform=transform, crs="EPSG:3857", nodata=0), mask


def _building_iou(pred, mask, building_ids):
    ok = mask != D.IGNORE
    p, t = np.isin(pred, building_ids) & ok, (mask == 1) & ok
    return (p & t).sum() / (p | t).sum()


def test_kampala_buildings_out_of_domain(tmp_path):
    raster, mask = _kampala_raster(tmp_path)
    res, pred = _run(tmp_path, raster)
    assert res.resampling["resampled"] and abs(res.resampling["input_pixel_m"] - 0.0746) < 0.002
    iou = _building_iou(pred, mask, [0])
    _res, rule = _run(tmp_path, raster, COLOUR_RULE_MODEL, name="rule")
    rule_iou = _building_iou(rule, mask, [2])  # the colour rule's closest class: impervious
    print(f"Kampala building IoU: trained {iou:.3f}, colour rule (impervious) {rule_iou:.3f}")
    # Measured 0.420 with the shipped model (MODEL_CARD.md); the target of 0.50 is not reached yet.
    assert iou >= KAMPALA_IOU - 0.05, iou
    assert iou > rule_iou


def _naip_checks(tmp_path, model, chips) -> dict:
    """Through the engine: vegetation IoU against NDVI and tree points on vegetation over the given chips of the
    held-out city (issue #27's reference: NDVI > 0.3 vegetation, < 0.1 not, between ignored)."""
    from export.train import naip

    inter = union = hits = n = 0
    for chip in chips:
        res, pred = _run(tmp_path, chip.path, model, name=f"{chip.path.stem}_{model.stem if model else 'auto'}")
        veg_id = next(c.id for c in load_model_package(res.model).meta.classes if c.name == "vegetation")
        img = naip.read_chip(chip)
        truth = naip.vegetation_truth(img)
        ok = truth != 255
        veg, t = (pred == veg_id) & ok, (truth == 1) & ok
        inter, union = inter + int((veg & t).sum()), union + int((veg | t).sum())
        pts = naip.tree_points(chip).astype(int).clip(0, 255)
        hits, n = hits + int((pred[pts[:, 1], pts[:, 0]] == veg_id).sum()), n + len(pts)
    return {"iou": inter / union, "points": hits / n, "model": res.model.name}


@pytest.fixture(scope="module")
def naip_sample():
    from export.train import naip

    return naip.chips(SHARED, "val")[::23]  # 12 of the 276 claremont chips, spread over places and years


def test_naip_held_out_city_vegetation_rgb_and_rgbn(tmp_path, naip_sample):
    from engine.model_package import RGBN_LANDCOVER_MODEL

    rgb = _naip_checks(tmp_path, DEFAULT_LANDCOVER_MODEL, naip_sample)
    auto = _naip_checks(tmp_path, None, naip_sample)  # no --model: a band described as NIR picks the RGBN model
    rule = _naip_checks(tmp_path, COLOUR_RULE_MODEL, naip_sample)
    print(f"NAIP claremont sample: RGB {rgb}, auto {auto}, colour rule {rule}")
    # The RGB + NIR model beats the colour rule on both; the RGB default (trained on Dubai) does not on vegetation
    # IoU (0.42 against 0.66 here, MODEL_CARD.md): the v2 RGB weights that would are not shipped (they lose NEON).
    assert auto["iou"] > rule["iou"] and auto["points"] > rule["points"]
    assert rgb["points"] > rule["points"]
    assert auto["model"] == RGBN_LANDCOVER_MODEL.name
    assert rgb["iou"] >= NAIP_SAMPLE["rgb"][0] - 0.03 and rgb["points"] >= NAIP_SAMPLE["rgb"][1] - 0.03, rgb
    assert auto["iou"] >= NAIP_SAMPLE["rgbn"][0] - 0.03 and auto["points"] >= NAIP_SAMPLE["rgbn"][1] - 0.03, auto


def test_banepa_held_out_column_buildings(tmp_path):
    from export.train import banepa

    val = banepa.load_banepa(SHARED, "val")[0]
    raster = _georef(tmp_path, "banepa_val", val.image, D.MODEL_PIXEL_M, crs="EPSG:32645")
    _res, pred = _run(tmp_path, raster)
    ok = val.label != D.IGNORE
    p, t = (pred == D.BUILDING) & ok, (val.label == D.BUILDING) & ok
    iou = (p & t).sum() / (p | t).sum()
    print(f"Banepa held-out column building IoU {iou:.3f}")
    assert iou >= BANEPA_IOU - 0.03, iou


def test_resampled_input_agrees_with_original(tmp_path):
    """The same image at 4x smaller pixels, run with --resample auto, gives the same classes."""
    jpg = SHARED / "landcover/dubai_aerial" / f"{VAL_IMAGE}.jpg"
    rgb = D._read_rgb(jpg)
    base = _georef(tmp_path, "x1", rgb, D.MODEL_PIXEL_M)
    big, _ = D.resize(rgb, None, 4.0)
    fine = _georef(tmp_path, "x4", big, D.MODEL_PIXEL_M / 4)
    _r1, a = _run(tmp_path, base, name="a")
    r4, b = _run(tmp_path, fine, name="b")
    assert "0.125 m -> model 0.5 m" in r4.resampling["message"]
    assert b.shape == (4 * a.shape[0], 4 * a.shape[1])
    agreement = (b[::4, ::4] == a).mean()  # nearest-neighbour back onto the coarse grid
    assert agreement >= 0.95, agreement


def test_resample_off_is_reported(tmp_path):
    raster = _georef(tmp_path, "x", D._read_rgb(SHARED / "landcover/dubai_aerial/tile_2/image_part_001.jpg"), 0.1)
    res, _ = _run(tmp_path, raster, resample="off")
    assert not res.resampling["resampled"] and res.resampling["message"] == "not resampled: --resample off"


def test_describe_shows_classes_pixel_size_and_card():
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "describe"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [c["name"] for c in doc["classes"]] == list(D.CLASSES)
    assert doc["pixel_size_m"] == D.MODEL_PIXEL_M
    # The card's own figure (0.617 for the committed model; the 0.70 is not reached yet).
    assert "mIoU" in doc["card"]["summary"] and doc["card"]["dubai_val_miou"] >= 0.60


def test_one_band_raster_names_the_band_problem(tmp_path):
    gray = write_raster(tmp_path / "gray.tif", np.full((1, 64, 64), 100, np.uint8))
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "landcover", "-i", str(gray), "--out", str(tmp_path / "o"),
         "--progress", "none"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "1 band(s)" in lines[0] and "rgb (red, green, blue)" in lines[0]
    assert not (tmp_path / "o").exists()


def test_the_training_command_passes_its_recipe_options_and_keeps_the_defaults_of_those_left_out():
    from export.__main__ import build_parser, train_params
    from export.train_landcover import TrainParams

    args = ["train", "landcover", "--data", str(SHARED), "--crop", "384", "--batch", "4", "--weak-per-batch", "1",
            "--encoder-bn", "train", "--average", "0.99", "--iterations", "5", "--seed", "3",
            "--no-export"]  # fmt: skip
    p = train_params(build_parser().parse_args(args))
    assert (p.crop, p.batch, p.weak_per_batch, p.encoder_bn, p.average) == (384, 4, 1, "train", 0.99)
    assert (p.iterations, p.seed, p.export, p.data) == (5, 3, False, SHARED)
    default = train_params(build_parser().parse_args(["train", "landcover", "--data", str(SHARED)]))
    assert default == TrainParams(data=SHARED)  # the shipped recipe


@pytest.mark.parametrize(
    ("option", "named"),
    [
        (["landcover", "--crop", "100"], "--crop"),
        (["landcover", "--batch", "4", "--weak-per-batch", "5"], "--weak-per-batch"),
        (["landcover", "--average", "1.5"], "--average"),
        (["treecrowns", "--encoder-bn", "train"], "--encoder-bn"),  # a landcover option: refused, not ignored
    ],
)
def test_a_training_option_out_of_range_is_one_line_naming_it(tmp_path, option, named):
    proc = subprocess.run(
        [sys.executable, "-m", "export", "train", *option, "--data", str(SHARED), "--work", str(tmp_path / "w")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], proc.stderr
    assert not (tmp_path / "w").exists()  # refused before anything is written


@pytest.mark.parametrize(("average", "encoder_bn"), [(0.0, "frozen"), (0.5, "train")])
def test_training_smoke(tmp_path, average, encoder_bn):
    """A few iterations on 2 images per source: the command runs, checkpoints, and is deterministic — a run
    stopped early and resumed ends with the same weights as the same run done in one go (with a weight average
    too: it is checkpointed and resumed, and it is what model.pt holds). The encoder's batch-norm statistics stay
    ImageNet's unless asked to be re-estimated."""
    import torch

    from export.effnet_lite import NIR_CHANNELS, LandcoverUNet, load_imagenet
    from export.train_landcover import TrainParams, train

    def params(work: str, **kw) -> TrainParams:
        return TrainParams(
            data=SHARED, work=tmp_path / work, iterations=3, batch=4, crop=64, weak_per_batch=1, naip_per_batch=1,
            banepa_per_batch=1, limit_images=2, checkpoint_every=1, eval_every=100, export=False, average=average,
            encoder_bn=encoder_bn, **kw,
        )  # fmt: skip

    report = train(params("once"), log=lambda *_: None)
    assert 0 <= report["dubai_val"]["miou"] <= 1
    # The new sources' checks run on their held-out parts (the NAIP city with and without NIR, Banepa's column).
    assert report["naip_val"]["city"] == "claremont" and 0 <= report["naip_val_rgbn"]["vegetation_iou"] <= 1
    assert 0 <= report["banepa_building_iou"] <= 1
    assert train(params("resumed", minutes=0.0), log=lambda *_: None) == {"stopped_at": 1}
    train(params("resumed", resume=True), log=lambda *_: None)
    assert torch.load(tmp_path / "resumed/last.pt", weights_only=False)["step"] == 3
    once = torch.load(tmp_path / "once/model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed/model.pt", weights_only=True)
    assert all(torch.equal(once[k], resumed[k]) for k in once)
    imagenet = LandcoverUNet(5, in_channels=NIR_CHANNELS)  # the recipe's RGB(+NIR) net
    load_imagenet(imagenet.encoder)
    trained = torch.load(tmp_path / "once/last.pt", weights_only=False)["model"]
    stats = [k for k in trained if k.startswith("encoder.") and k.endswith(("running_mean", "running_var"))]
    assert len(stats) > 50
    kept = [torch.equal(trained[k], imagenet.state_dict()[k]) for k in stats]
    assert all(kept) if encoder_bn == "frozen" else not any(kept)
    if average:  # model.pt is the average, not the last weights
        last = torch.load(tmp_path / "once/model_last_weights.pt", weights_only=True)
        assert "last_weights" in report
        assert not all(torch.equal(once[k], last[k]) for k in once if once[k].dtype.is_floating_point)
