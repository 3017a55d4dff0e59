"""The land-cover training sources added for issue #27 (NAIP NDVI labels, Banepa buildings), the partial-label
loss, the 5-channel RGB(+NIR) net and the choice of the shipped model by the input's bands. Real data where it
exists (../shared/data); each test runs in seconds."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from conftest import SHARED, write_raster
from engine.model_choice import choose_landcover_model
from engine.model_package import DEFAULT_LANDCOVER_MODEL
from engine.raster_input import BandSource

pytestmark = pytest.mark.skipif(not (SHARED / "landcover/naip_california").exists(), reason="needs ../shared/data")
NAIP = SHARED / "landcover/naip_california/images"


def test_naip_split_holds_one_whole_city_out():
    from export.train import naip

    train, val = naip.chips(SHARED, "train"), naip.chips(SHARED, "val")
    assert {c.city for c in val} == {naip.VAL_CITY} and naip.VAL_CITY not in {c.city for c in train}
    assert len(train) + len(val) == 1350 and len(val) == 276  # claremont: 92 places x 3 years
    # The same place in several years stays on one side (it is one city's footprint).
    assert not {(c.city, c.n) for c in train} & {(c.city, c.n) for c in val}


def test_ndvi_labels_put_the_annotated_trees_on_vegetation():
    from export.train import naip
    from export.train.landcover_data import IGNORE, NOT_VEG, VEG
    from export.train.weak_labels import ndvi_label

    on_veg = on_not = total = 0
    for chip in naip.chips(SHARED, "train")[:40]:
        img, pts = naip.read_chip(chip), naip.tree_points(chip)
        lab = ndvi_label(img)
        assert set(np.unique(lab)) <= {VEG, NOT_VEG, IGNORE}
        r, c = pts[:, 1].astype(int).clip(0, 255), pts[:, 0].astype(int).clip(0, 255)
        on_veg += int((lab[r, c] == VEG).sum())
        on_not += int((lab[r, c] == NOT_VEG).sum())
        total += len(pts)
    assert total > 500
    # Tree centres are vegetation by the NIR band; almost none is labelled "not vegetation".
    assert on_veg / total >= 0.8 and on_not / total <= 0.05, (on_veg / total, on_not / total)


def test_banepa_labels_follow_the_outlines_and_keep_the_held_out_column_apart():
    from export.train import banepa
    from export.train.landcover_data import BUILDING, IGNORE, NOT_BUILDING

    train, val = banepa.load_banepa(SHARED, "train"), banepa.load_banepa(SHARED, "val")
    assert len(train) == len(val) == 1
    t, v = train[0], val[0]
    # 5 columns x 8 rows of 512 px at ~0.132 m -> 0.5 m; the held-out column is one fifth as wide.
    assert abs(t.image.shape[2] / v.image.shape[2] - 5) < 0.05 and t.image.shape[1] == v.image.shape[1]
    share = (t.label == BUILDING).mean()
    assert 0.15 < share < 0.7, share  # a dense town: roofs cover a large part, not all
    assert set(np.unique(t.label)) == {BUILDING, NOT_BUILDING, IGNORE}
    # Roofs are brighter and less green than the ground between them here: the label is aligned with the image.
    img = t.image.astype(np.float32)
    exg = 2 * img[1] - img[0] - img[2]
    assert exg[t.label == BUILDING].mean() < exg[t.label == NOT_BUILDING].mean()


def test_partial_labels_push_down_only_the_class_they_rule_out():
    torch = pytest.importorskip("torch")
    from export.train.landcover_data import BUILDING, NOT_BUILDING, NOT_VEG, VEG
    from export.train_landcover import loss_fn

    logits = torch.zeros(1, 5, 1, 2, requires_grad=True)
    target = torch.tensor([[[NOT_BUILDING, NOT_VEG]]])
    loss_fn(logits, target).backward()
    g = logits.grad[0, :, 0]
    # Gradient descent lowers a logit whose gradient is positive: building at pixel 0, vegetation at pixel 1.
    assert g[BUILDING, 0] > 0 and g[VEG, 0] < 0
    assert g[VEG, 1] > 0 and g[BUILDING, 1] < 0


def test_five_channel_net_is_the_rgb_net_until_nir_is_learned():
    torch = pytest.importorskip("torch")
    from export.effnet_lite import NIR_CHANNELS, LandcoverUNet, landcover_unet_for, load_imagenet

    torch.manual_seed(0)
    rgb_net, five = LandcoverUNet(5), LandcoverUNet(5, in_channels=NIR_CHANNELS)
    load_imagenet(rgb_net.encoder)
    load_imagenet(five.encoder)  # NIR and its flag start at zero weight
    five.load_state_dict({k: v for k, v in five.state_dict().items()} | {
        k: v for k, v in rgb_net.state_dict().items() if k != "encoder._conv_stem.weight"
    })  # fmt: skip
    x = torch.rand(1, 3, 64, 64)
    nir = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        a, b, c = rgb_net.eval()(x), five.eval()(x), five(torch.cat([x, nir], 1))
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
    assert landcover_unet_for(five.state_dict()).in_channels == NIR_CHANNELS
    assert landcover_unet_for(rgb_net.state_dict()).in_channels == 3


@pytest.fixture
def rgbn_present(monkeypatch, tmp_path):
    """A stand-in RGB + NIR package path that exists, so the choice can be tested with or without the real one."""
    import engine.model_choice as mc

    fake = tmp_path / "landcover_rgbn_unet_lite0.onnx"
    fake.write_bytes(b"")
    monkeypatch.setattr(mc, "RGBN_LANDCOVER_MODEL", fake)
    return fake


def test_a_band_described_nir_picks_the_rgbn_model(rgbn_present, tmp_path):
    chip = NAIP / "claremont_2018_10.tif"
    got = choose_landcover_model([chip], None, {})
    assert got.model == rgbn_present
    assert got.modalities == {"rgb": BandSource(0, (1, 2, 3)), "nir": BandSource(0, (4,))}
    assert "band 4" in got.message and "near-infrared" in got.message
    # The panel sends the RGB bands it shows: the NIR band is still used.
    got = choose_landcover_model([chip], None, {"rgb": BandSource(0, (1, 2, 3))})
    assert got.model == rgbn_present and got.modalities["nir"] == BandSource(0, (4,))
    # --model wins.
    assert choose_landcover_model([chip], DEFAULT_LANDCOVER_MODEL, {}).model == DEFAULT_LANDCOVER_MODEL


def test_nir_found_by_description_in_any_band_order(rgbn_present, tmp_path):
    with rasterio.open(NAIP / "claremont_2018_10.tif") as ds:
        r, g, b, n = ds.read()
    cir = write_raster(tmp_path / "cir.tif", np.stack([n, r, g, b]), crs="EPSG:26911")
    with rasterio.open(cir, "r+") as ds:
        for i, d in enumerate(("near infrared", "red", "green", "blue"), 1):
            ds.set_band_description(i, d)
    got = choose_landcover_model([cir], None, {})
    assert got.modalities == {"rgb": BandSource(0, (2, 3, 4)), "nir": BandSource(0, (1,))}
    plain = write_raster(tmp_path / "plain.tif", np.stack([r, g, b, n]), crs="EPSG:26911")  # no descriptions
    assert choose_landcover_model([plain], None, {}).model == DEFAULT_LANDCOVER_MODEL


def test_without_the_rgbn_package_a_nir_raster_runs_on_its_rgb_bands(monkeypatch, tmp_path):
    import engine.model_choice as mc

    monkeypatch.setattr(mc, "RGBN_LANDCOVER_MODEL", tmp_path / "missing.onnx")
    got = choose_landcover_model([NAIP / "claremont_2018_10.tif"], None, {})
    assert got.model == DEFAULT_LANDCOVER_MODEL and got.modalities == {"rgb": BandSource(0, (1, 2, 3))}
