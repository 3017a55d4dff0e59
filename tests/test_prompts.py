"""Class prompts: the real text encoder (all-MiniLM-L6-v2, an int8 ONNX in models/text_encoder) maps prompts to
model classes; unmatched prompts are reported; prompts reach the engine from the CLI and from Processing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import rasterio

from conftest import DEFAULT_MODEL, ROOT, SJER, band_model, save
from engine.errors import InputError
from engine.jobs.landcover import LandcoverParams, run_landcover
from engine.model_package import load_model_package
from engine.prompts import DEFAULT_ENCODER, TextEncoder, map_prompts, parse_prompts
from export.graph_builder import GraphBuilder

CLASSES = [
    {"id": 0, "name": "woodland", "color": "#1b7837", "description": "forest, trees"},
    {"id": 1, "name": "water", "color": "#2166ac", "description": "rivers, lakes, sea"},
    {"id": 2, "name": "building", "color": "#b2182b", "description": "houses, roofs"},
    {"id": 3, "name": "bare ground", "color": "#bf812d", "description": "soil, sand, rock"},
]


@pytest.fixture(scope="module")
def encoder():
    assert (DEFAULT_ENCODER / "text_encoder.json").exists(), "models/text_encoder/ is committed: check it out"
    return TextEncoder()


@pytest.fixture(scope="module")
def four_class_model(tmp_path_factory):
    """Pointwise model whose logits are fixed per band: band k of the input is class k's logit."""
    g = GraphBuilder("four")
    g.output("out", g.input("bands", 4), 4)
    doc = {
        "format": "landseg-model/1",
        "name": "four-classes",
        "task": "landcover",
        "inputs": [
            {
                "name": "bands",
                "modality": "any",
                "bands": ["a", "b", "c", "d"],
                "normalization": {"type": "scale_offset", "scale": 1.0, "offset": 0.0},
            }
        ],
        "output": {"name": "out", "kind": "logits"},
        "classes": CLASSES,
        "tile_size": 64,
        "overlap": 16,
    }
    return save(g.model(), doc, tmp_path_factory.mktemp("m") / "four.onnx")


@pytest.mark.parametrize(
    "prompt,cls",
    [
        ("woods", "woodland"),
        ("trees", "woodland"),
        ("lake", "water"),
        ("river", "water"),
        ("houses", "building"),
        ("buildings", "building"),
        ("sand", "bare ground"),
    ],
)
def test_synonyms_map_to_the_right_class(encoder, four_class_model, prompt, cls):
    mapping = map_prompts([prompt], load_model_package(four_class_model).meta, encoder)
    assert mapping.matches[0].matched and mapping.matches[0].class_name == cls
    assert mapping.matches[0].score >= 0.5


def test_unrelated_prompt_is_reported_not_dropped(encoder, four_class_model):
    mapping = map_prompts(["woods", "solar panels"], load_model_package(four_class_model).meta, encoder)
    solar = mapping.matches[1]
    assert not solar.matched and solar.score < 0.5
    assert any(m.startswith("no class of this model matches 'solar panels' (closest: ") for m in mapping.messages)
    with pytest.raises(InputError, match="no class of this model matches 'solar panels'"):
        map_prompts(["solar panels"], load_model_package(four_class_model).meta, encoder)


def test_prompts_merge_and_unasked_classes_fold_or_drop(encoder, four_class_model, tmp_path):
    meta = load_model_package(four_class_model).meta
    mapping = map_prompts(["woods", "forest", "lake"], meta, encoder)
    assert [c.name for c in mapping.classes] == ["woodland", "water", "other"]  # woods + forest: one class
    # 4 stripes of 10 rows; stripe k has class k's logit high.
    data = np.zeros((4, 40, 30), np.float32)
    for k in range(4):
        data[k, 10 * k : 10 * k + 10] = 5.0
    from conftest import write_raster

    raster = write_raster(tmp_path / "stripes.tif", data)
    for unasked, expected in (("other", [0, 1, 2, 2]), ("drop", [0, 1, 255, 255])):
        res = run_landcover(
            LandcoverParams(
                inputs=[raster],
                model=four_class_model,
                out_dir=tmp_path / unasked,
                prompts=["woods", "forest", "lake"],
                unasked=unasked,
            )
        )
        with rasterio.open(res.class_map) as ds:
            cls = ds.read(1)
        assert [int(np.median(cls[10 * k : 10 * k + 10])) for k in range(4)] == expected
        assert [m["class_name"] for m in res.prompt_matches] == ["woodland", "woodland", "water"]


def test_stored_class_embeddings_are_used(encoder):
    meta = load_model_package(DEFAULT_MODEL).meta
    assert len(meta.extra["class_embeddings"]) == len(meta.classes)  # written at export time
    mapping = map_prompts(["trees", "houses", "paved roads"], meta, encoder)
    assert [m.class_name for m in mapping.matches] == ["vegetation", "impervious", "impervious"]


def test_prompts_reach_the_engine_from_the_cli(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "landcover",
            "-i",
            str(SJER),
            "-o",
            str(tmp_path),
            "--prompts",
            "trees, solar panels",
            "--progress",
            "none",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert [(m["prompt"], m["matched"]) for m in res["prompt_matches"]] == [("trees", True), ("solar panels", False)]
    assert set(res["class_pixels"]) == {"vegetation", "other"}
    assert "no class of this model matches 'solar panels'" in proc.stderr


def test_make_demo_runs_the_default_model_with_prompts(tmp_path):
    """The README's first command: the demo's engine call, as the Makefile has it, runs with its prompts."""
    recipe = subprocess.run(
        ["make", "-n", "-o", "setup", f"DEMO_OUT={tmp_path}", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cmd = next(line for line in recipe.replace("\\\n", " ").splitlines() if "-m engine landcover" in line)
    proc = subprocess.run(cmd + " --progress none", shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for prompt, cls in (
        ("buildings", "building"),
        ("trees", "vegetation"),
        ("river", "water"),
        ("paved roads", "road"),
        ("bare soil", "bare land"),
    ):
        assert f"prompt '{prompt}' -> {cls}" in proc.stderr
    with rasterio.open(tmp_path / "landcover_classes.tif") as ds:
        names = [ds.tags(1)[f"CLASS_{i}"] for i in range(5)]
    assert names == ["building", "road", "bare land", "vegetation", "water"]
    assert (tmp_path / "landcover.gpkg").stat().st_size > 0


def test_parse_prompts():
    assert parse_prompts("woods, lake;houses, , Woods") == ["woods", "lake", "houses"]
    assert parse_prompts("") == []


def test_text_encoder_matches_sentence_transformers(encoder):
    st = pytest.importorskip("sentence_transformers")
    from export.text_encoder import package_model_dir

    model = st.SentenceTransformer(str(package_model_dir()), device="cpu")
    texts = ["a field of wheat", "open water", "woods", "Gebäude", "paved roads"]
    got, ref = encoder.embed(texts), model.encode(texts, normalize_embeddings=True)
    cosine = np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cosine.min() >= 0.99, cosine  # the shipped int8-weight encoder against the fp32 original
    doc = json.loads((DEFAULT_ENCODER / "text_encoder.json").read_text())
    assert onnx.load(str(DEFAULT_ENCODER / doc["model"])).graph.input[0].name == "input_ids"


def test_open_vocabulary_model_gets_prompt_embeddings(encoder, tmp_path):
    """A model whose graph takes prompt embeddings: per-pixel embeddings . prompt embeddings = logits."""
    from onnx import TensorProto, helper

    from conftest import write_raster

    veg, water = encoder.embed(["vegetation", "water"])
    g = GraphBuilder("open-vocab")
    x = g.input("rgb", 3)
    g.inputs.append(helper.make_tensor_value_info("text_embeddings", TensorProto.FLOAT, ["K", veg.shape[0]]))
    w = np.zeros((veg.shape[0], 3, 1, 1), np.float32)
    w[:, 1, 0, 0], w[:, 2, 0, 0] = 10 * veg, 10 * water  # green pixels embed as "vegetation", blue as "water"
    pix = g.op("Transpose", g.conv(x, w, np.zeros(veg.shape[0], np.float32)), perm=[0, 2, 3, 1])
    logits = g.op("MatMul", pix, g.op("Transpose", "text_embeddings", perm=[1, 0]))
    g.output("out", g.op("Transpose", logits, perm=[0, 3, 1, 2]), 2)
    doc = {
        "format": "landseg-model/1",
        "name": "open-vocab",
        "task": "landcover",
        "inputs": [
            {
                "name": "rgb",
                "modality": "rgb",
                "bands": ["r", "g", "b"],
                "normalization": {"type": "scale_offset", "scale": 1 / 255, "offset": 0},
            }
        ],
        "output": {"name": "out", "kind": "logits"},
        "tile_size": 64,
        "overlap": 16,
        "classes": [
            {"id": 0, "name": "vegetation", "color": "#2e7d32"},
            {"id": 1, "name": "water", "color": "#1e64c8"},
        ],
        "text_input": {"name": "text_embeddings", "dim": int(veg.shape[0])},
    }
    model = save(g.model(), doc, tmp_path / "open_vocab.onnx")
    data = np.zeros((3, 50, 80), np.uint8)
    data[1, :, :40] = 200
    data[2, :, 40:] = 200
    raster = write_raster(tmp_path / "gb.tif", data)
    res = run_landcover(
        LandcoverParams(inputs=[raster], model=model, out_dir=tmp_path / "o", prompts=["lake", "trees", "parking lots"])
    )
    assert list(res.class_pixels) == ["lake", "trees", "parking lots"]
    with rasterio.open(res.class_map) as ds:
        cls = ds.read(1)
    assert (cls[:, :40] == 1).mean() > 0.95 and (cls[:, 40:] == 0).mean() > 0.95  # trees left, lake right
    assert any("open-vocabulary model" in m for m in res.messages)


def test_class_wise_confidence_fusion_of_two_models(tmp_path):
    """Model A (optical) knows woodland/water, model B (SAR) water/building; per class, the surer model wins."""
    from conftest import write_raster
    from engine.raster_input import BandSource

    a = band_model(tmp_path / "a.onnx", CLASSES[:2], "multispectral")
    b = band_model(tmp_path / "b.onnx", [dict(CLASSES[1], id=0), dict(CLASSES[2], id=1)], "sar")
    data = np.zeros((3, 30, 60), np.float32)  # band 1: woodland (A), band 2: water (A and B), band 3: building (B)
    data[0, :, :20] = 6.0  # A sure of woodland, B undecided
    data[2, :, 20:40] = 6.0  # B sure of building, A undecided
    data[1, :, 40:] = 4.0  # both say water
    raster = write_raster(tmp_path / "three.tif", data)
    res = run_landcover(
        LandcoverParams(
            inputs=[raster],
            model=a,
            fuse_models=[b],
            out_dir=tmp_path / "o",
            modalities={"multispectral": BandSource(0, (1, 2)), "sar": BandSource(0, (2, 3))},
        )
    )
    assert list(res.class_pixels) == ["woodland", "water", "building"]
    with rasterio.open(res.class_map) as ds:
        cls = ds.read(1)
    assert (cls[:, :20] == 0).all() and (cls[:, 20:40] == 2).all() and (cls[:, 40:] == 1).all()
    assert any("fusing 2 models" in m for m in res.messages)


@pytest.mark.parametrize("model", ["colour rule", "trained"])
def test_a_prompt_never_moves_pixels_out_of_its_class(tmp_path, model):
    """--prompts trees keeps every vegetation pixel (unasked classes summed into 'other' used to outvote it)."""
    from engine.model_package import DEFAULT_LANDCOVER_MODEL

    path = DEFAULT_MODEL if model == "colour rule" else DEFAULT_LANDCOVER_MODEL
    plain = run_landcover(LandcoverParams(inputs=[SJER], model=path, out_dir=tmp_path / "plain"))
    asked = run_landcover(LandcoverParams(inputs=[SJER], model=path, out_dir=tmp_path / "asked", prompts=["trees"]))
    with rasterio.open(plain.class_map) as a, rasterio.open(asked.class_map) as b:
        veg = a.read(1) == next(c.id for c in load_model_package(path).meta.classes if c.name == "vegetation")
        trees = b.read(1) == 0
    assert veg.sum() > 1000 and np.array_equal(veg, trees)
    assert asked.class_pixels["vegetation"] == plain.class_pixels["vegetation"]


@pytest.mark.parametrize("text", ["", ",", "   ", "x" * 201])
def test_empty_or_overlong_prompts_are_one_line_errors(tmp_path, text):
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "landcover", "-i", str(SJER), "--out", str(tmp_path / "o"),
         "--prompts", text, "--progress", "none"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    said = lines[0] if len(lines) == 1 else ""
    assert ("--prompts" in said and "holds nothing" in said) or "at most 200" in said, lines
    assert len(lines[0]) < 200 and not (tmp_path / "o").exists()


def test_prompt_lines_come_before_the_progress_bar(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "landcover", "-i", str(SJER), "--out", str(tmp_path / "o"),
         "--prompts", "trees, water"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first = proc.stderr.splitlines()[:2]
    assert first[0].startswith("landseg: prompt 'trees' -> ") and first[1].startswith("landseg: prompt 'water' -> ")
