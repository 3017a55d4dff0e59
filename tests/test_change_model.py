"""The bi-temporal change model's training pairs, network and package (issue #32): synthetic changes pasted into
real imagery, real NAIP two-year pairs as no change, a siamese net that does not care which date comes first, and
a smoke run from training to `engine change --method direct`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SHARED

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not (SHARED / "landcover/naip_california").exists(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def pairs():
    from export.train.change_pairs import ChangePairs

    return ChangePairs.training(SHARED, 128, limit=4, log=lambda *_: None)


def test_pairs_are_deterministic_and_labelled(pairs):
    from export.train import change_pairs as P

    one = [pairs.pair(torch.Generator().manual_seed(k)) for k in range(12)]
    two = [pairs.pair(torch.Generator().manual_seed(k)) for k in range(12)]
    changed = 0
    for (a, b, y), (a2, b2, y2) in zip(one, two, strict=True):
        assert torch.equal(a, a2) and torch.equal(b, b2) and torch.equal(y, y2)  # pair k from (seed, k): resumable
        assert a.shape == b.shape == (3, 128, 128) and set(np.unique(y.numpy())) <= {P.NO_CHANGE, P.CHANGE, P.IGNORE}
        if (y == P.CHANGE).any():
            changed += 1
            # a band along each footprint's edge is ignored (misregistration of up to 2 px must not count): no
            # change pixel touches a no-change pixel (a vegetation patch or roof cut at the crop's border may)
            ch, no = (y == P.CHANGE)[1:-1, 1:-1], y == P.NO_CHANGE
            near = no[:-2, 1:-1] | no[2:, 1:-1] | no[1:-1, :-2] | no[1:-1, 2:]
            assert not (ch & near).any()
    assert 0 < changed < 12  # changed and unchanged pairs both


def test_naip_pairs_are_never_labelled_change(pairs):
    from export.train import change_pairs as P

    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        _a, _b, y = pairs._naip(g)
        assert not (y == P.CHANGE).any() and (y == P.NO_CHANGE).float().mean() > 0.5


def test_the_net_does_not_care_which_date_comes_first():
    from export.train_change import SiameseChangeNet

    net = SiameseChangeNet().eval()
    a, b = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ab, ba, aa = net(a, b), net(b, a), net(a, a)
    assert ab.shape == (2, 2, 64, 64) and torch.allclose(ab, ba, atol=1e-5)
    assert not torch.allclose(ab, aa)  # a difference of the dates moves it


@pytest.mark.slow
def test_train_export_and_run_direct(tmp_path):
    work = tmp_path / "w"
    proc = subprocess.run(
        [sys.executable, "-m", "export", "train", "change", "--work", str(work), "--out", str(tmp_path / "c.onnx"),
         "--iterations", "2", "--batch", "2", "--limit-images", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((work / "report.json").read_text())
    assert "threshold" in report and str(report["threshold"]) in report["by_threshold"]
    pair = sorted((SHARED / "change/LEVIR/A").glob("*.png"))[0]
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "change", "--before", str(pair), "--after", str(pair.parent.parent / "B" /
         pair.name), "--method", "direct", "--model", str(tmp_path / "c.onnx"), "-o", str(tmp_path / "o"), "--json",
         "--progress", "none"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["method"] == "direct"
    # no --threshold: the one chosen in training, carried in the package's metadata
    assert f"change where its probability > {report['threshold']:g} (the model's own threshold)" in result["messages"]
