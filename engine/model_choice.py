"""Which shipped model a run uses when none is named. Land cover: the RGB + NIR model where the input has a
near-infrared band (told by the band mapping, or by the bands' descriptions), the RGB model otherwise. Tree
crowns: the two-scale detector for coarse pixels (NAIP-type, >= COARSE_CROWNS_FROM_M), the 0.1 m one otherwise. A
model given with --model always wins. GDAL 3.6 (QGIS 3.22's) has no NIR colour interpretation, so descriptions it
is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .model_package import (
    COARSE_TREECROWN_MODEL,
    DEFAULT_LANDCOVER_MODEL,
    DEFAULT_TREECROWN_MODEL,
    RGBN_LANDCOVER_MODEL,
)
from .raster_input import BandSource, Grid, open_raster, same_band

# Between the two detectors' home pixel sizes (0.1 m NEON, 0.6 m NAIP), about their geometric mean: from here on a
# crown is nearer in pixels to what the two-scale detector learned on NAIP.
COARSE_CROWNS_FROM_M = 0.25

_RGB = ("red", "green", "blue")


@dataclass
class ModelChoice:
    model: Path
    modalities: dict[str, BandSource] = field(default_factory=dict)
    message: str | None = None


def nir_band(path: Path | str) -> tuple[int | None, list[str]]:
    """The 1-based number of the band described as near-infrared (None: none is), and every band's description."""
    with open_raster(path, "input raster") as ds:
        names = [(d or "").strip().lower() for d in ds.descriptions]
    hits = [i + 1 for i, n in enumerate(names) if same_band(n, "nir")]
    return (hits[0] if hits else None), names


def rgb_bands(names: list[str], nir: int | None) -> tuple[int, ...] | None:
    """Bands described red, green, blue; else the first three that are not NIR (None: fewer than three)."""
    by_name = [names.index(c) + 1 for c in _RGB if c in names]
    if len(by_name) == 3:
        return tuple(by_name)
    others = [i + 1 for i in range(len(names)) if i + 1 != nir]
    return tuple(others[:3]) if len(others) >= 3 else None


def choose_landcover_model(inputs: list[Path], model: Path | None, modalities: dict[str, BandSource]) -> ModelChoice:
    if model is not None:
        return ModelChoice(Path(model), modalities)
    if {"rgb", "nir"} <= set(modalities) and RGBN_LANDCOVER_MODEL.exists():  # (nir alone: the RGB model's error)
        name = RGBN_LANDCOVER_MODEL.name
        return ModelChoice(RGBN_LANDCOVER_MODEL, modalities, f"the band mapping names a NIR band: model {name}")
    # A mapping of the RGB bands alone (the panel always sends one) still lets a NIR band of that raster be used.
    if len(inputs) != 1 or set(modalities) - {"rgb"}:
        return ModelChoice(DEFAULT_LANDCOVER_MODEL, modalities)
    nir, names = nir_band(inputs[0])
    rgb = modalities["rgb"].bands if "rgb" in modalities else (rgb_bands(names, nir) if nir is not None else None)
    if nir is None or rgb is None or nir in rgb:
        return ModelChoice(DEFAULT_LANDCOVER_MODEL, modalities)
    src = Path(str(inputs[0])).name
    mapping = {"rgb": BandSource(0, tuple(rgb))}
    if not RGBN_LANDCOVER_MODEL.exists():  # a package without the RGB + NIR model: its RGB bands, said
        said = f"band {nir} of {src} is near-infrared; the RGB model reads rgb={mapping['rgb']}"
        return ModelChoice(DEFAULT_LANDCOVER_MODEL, mapping, said)
    mapping["nir"] = BandSource(0, (nir,))
    return ModelChoice(
        RGBN_LANDCOVER_MODEL,
        mapping,
        f"band {nir} of {src} is near-infrared ({names[nir - 1]!r}): model {RGBN_LANDCOVER_MODEL.name} with "
        f"rgb={mapping['rgb']} nir={mapping['nir']} (--model {DEFAULT_LANDCOVER_MODEL.name} for RGB only)",
    )


def choose_treecrown_model(image: Path | str, model: Path | None) -> ModelChoice:
    """The 0.1 m detector (ahead at 0.1 m: SJER) unless the image's pixels are coarse and the two-scale detector
    is shipped; a pixel size that cannot be told (no CRS) keeps the default."""
    if model is not None:
        return ModelChoice(Path(model))
    if not COARSE_TREECROWN_MODEL.exists():
        return ModelChoice(DEFAULT_TREECROWN_MODEL)
    from .resample import ground_pixel_size_m

    with open_raster(image, "input raster") as ds:
        px = ground_pixel_size_m(Grid(ds.crs, ds.transform, ds.width, ds.height))
    if px is None or px < COARSE_CROWNS_FROM_M:
        return ModelChoice(DEFAULT_TREECROWN_MODEL)
    return ModelChoice(
        COARSE_TREECROWN_MODEL,
        message=f"{px:.2g} m pixels: model {COARSE_TREECROWN_MODEL.name}, trained on NAIP trees at 0.6 m and NEON "
        f"plots (--model {DEFAULT_TREECROWN_MODEL.name} for the 0.1 m detector)",
    )
