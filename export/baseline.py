"""The bundled default model: a physically based RGB colour-index classifier expressed as an ONNX graph.

It is NOT a trained network. Each class score is a hand-set linear function of colour indices computed
per pixel (normalised excess green, warmth (R-B)/sum, chroma, brightness), smoothed over 5x5 pixels.
It exists so that the whole engine path (metadata, tiling, blending, polygons, styles) runs out of the
box on any 8-bit RGB orthophoto without downloading weights. Expect it to confuse muddy water with bare
ground and grey soil with pavement; see MODEL_CARD.md.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from engine.model_package import FORMAT, embed_metadata

from .graph_builder import GraphBuilder

NAME = "rgb-index-baseline"
CLASSES = [
    {"id": 0, "name": "vegetation", "color": "#2e7d32", "description": "trees, shrubs, grass: green vegetation"},
    {"id": 1, "name": "bare ground", "color": "#bc8f5a", "description": "soil, sand, dry grass, rock"},
    {
        "id": 2,
        "name": "impervious",
        "color": "#9696a0",
        "description": "roads, roofs and buildings, concrete, pavement",
    },
    {"id": 3, "name": "water", "color": "#1e64c8", "description": "rivers, lakes, sea, ponds"},
    {"id": 4, "name": "shadow", "color": "#282828", "description": "shadow and very dark surfaces"},
]
SMOOTH = 5  # the model's receptive field, in pixels


def metadata() -> dict:
    return {
        "format": FORMAT,
        "name": NAME,
        "task": "landcover",
        "description": "Physically based RGB colour-index baseline (not trained); see MODEL_CARD.md",
        "inputs": [
            {
                "name": "rgb",
                "modality": "rgb",
                "bands": ["red", "green", "blue"],
                "normalization": {"type": "scale_offset", "scale": 1 / 255, "offset": 0.0},
                "value_range": [0, 255],  # 8-bit imagery; other data is stretched onto it (engine.value_range)
            }
        ],
        "output": {"name": "logits", "kind": "logits"},
        "classes": CLASSES,
        "tile_size": 512,
        "overlap": 64,
        "pixel_size_m": None,
        "receptive_field": SMOOTH,
    }


def build() -> onnx.ModelProto:
    g = GraphBuilder(NAME)
    x = g.input("rgb", 3)
    r, gr, b = g.channels(x, 3)
    s = g.add(g.add(g.add(r, gr), b), 0.03)  # +0.03 keeps ratios finite on black pixels
    lum = g.div(s, 3.0)
    mx, mn = g.reduce("ReduceMax", x), g.reduce("ReduceMin", x)
    chroma = g.div(g.sub(mx, mn), g.add(mx, 0.05))
    nexg = g.div(g.sub(g.mul(gr, 2.0), g.add(r, b)), s)
    warm = g.div(g.sub(r, b), s)

    def lin(*terms: tuple[float, str], bias: float) -> str:
        acc = None
        for k, t in terms:
            v = g.mul(t, k)
            acc = v if acc is None else g.add(acc, v)
        return g.add(acc, bias)

    vegetation = lin((30.0, nexg), bias=-1.2)
    bare = lin((8.0, warm), (8.0, chroma), bias=-0.3 - 8.0 * 0.32)
    impervious = lin((-12.0, chroma), (4.0, lum), bias=12.0 * 0.18 - 4.0 * 0.35)
    water = lin((-10.0, warm), (-8.0, lum), bias=8.0 * 0.35 - 1.5)
    shadow = lin((-30.0, lum), bias=30.0 * 0.15)
    logits = g.smooth(g.concat(vegetation, bare, impervious, water, shadow), SMOOTH)
    g.output("logits", logits, len(CLASSES))
    model = g.model(doc=__doc__ or "")
    embed_metadata(model, metadata())
    return model


def write(path: str | Path) -> Path:
    """Write the model; with the text encoder present, its class embeddings go into the metadata too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build(), str(path))
    from .class_embeddings import embed_classes

    embed_classes(path, missing_ok=True)
    return path
