"""Adapt a land-cover model to the analyst's own labels (``python -m engine adapt``; needs the training extra).

The analyst draws polygons (or points, buffered) in their area with a class field. Label values are matched to
the model's classes by name, then by meaning through the prompt text encoder ("woods" -> vegetation); a value
that matches no class adds an output class. The polygons are split by location: the part lying beyond the 80 %
quantile (by area) along the labels' longer extent is held out, so the held-out figures measure the map away
from the training polygons, not next to them. Chips (tile-sized windows on the model's pixel grid, read and
normalised exactly as inference reads them) are cut around the polygons; pixels outside the labels are ignored.
The base model is fine-tuned (encoder at a tenth of the learning rate, batch norm frozen: a few hundred labelled
pixels must not move its statistics) for the time budget, and per-class IoU on the held-out polygons is measured
before and after. Output: a complete model package (ONNX + metadata with its card + torch weights beside it,
so it can be adapted again) that the CLI, panel and Processing run like any other.

A package can be adapted when its torch weights sit beside it as ``<model>.pt`` (a state_dict of
export.effnet_lite.LandcoverUNet), as they do for the shipped land-cover model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import fiona
import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely.geometry import mapping, shape

from engine.errors import Cancelled, InputError, ModelError
from engine.model_package import DEFAULT_LANDCOVER_MODEL, load_model_package, meta_to_dict
from engine.raster_input import AlignedInputs, reference_grid
from engine.resample import plan as plan_resampling

IGNORE = 255
NEW_CLASS_COLOURS = ("#6a3d9a", "#ff7f00", "#b15928", "#cab2d6", "#fb9a99", "#ffff99", "#a6cee3", "#33a02c")


@dataclass
class AdaptParams:
    inputs: list[Path]
    labels: Path
    out_dir: Path
    class_field: str = "class"
    model: Path = DEFAULT_LANDCOVER_MODEL
    minutes: float = 5.0
    max_steps: int | None = None  # stop earlier (tests)
    holdout: float = 0.2  # share of the labelled area held out, by location
    point_buffer_m: float = 2.0  # points become discs of this radius
    chip: int = 256
    batch: int = 4
    lr: float = 3e-4
    seed: int = 0
    threads: int = 2
    name: str | None = None  # default: <base name>-adapted
    max_chips: int = 400


@dataclass
class AdaptResult:
    model: Path
    classes: list[str]
    label_matches: dict[str, str]  # label value -> model class (new classes map to themselves)
    new_classes: list[str]
    steps: int
    minutes: float
    holdout_iou_before: dict[str, float | None]
    holdout_iou_after: dict[str, float | None]
    train_polygons: int
    holdout_polygons: int
    messages: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()})


def match_labels(values: list[str], meta, say) -> tuple[dict[str, str], list[str]]:
    """label value -> class name; values matching no class (by name, then by meaning) become new classes."""
    names = {c.name.lower(): c.name for c in meta.classes}
    out, unknown = {}, []
    for v in values:
        if v.lower() in names:
            out[v] = names[v.lower()]
        else:
            unknown.append(v)
    new: list[str] = []
    if unknown:
        from engine.prompts import DEFAULT_THRESHOLD, TextEncoder, class_embeddings

        encoder = TextEncoder()
        sims = encoder.embed(unknown) @ class_embeddings(meta, encoder).T
        for value, row in zip(unknown, sims, strict=True):
            best = int(row.argmax())
            closest, score = meta.classes[best].name, float(row[best])
            if score >= DEFAULT_THRESHOLD:
                out[value] = closest
                say(f"label '{value}' -> class '{closest}' (by meaning, score {score:.2f})")
            else:
                out[value] = value
                new.append(value)
                say(f"label '{value}' matches no class (closest '{closest}', {score:.2f}): a new class")
    return out, new


def read_labels(p: AdaptParams, crs) -> list[tuple[shapely.Geometry, str]]:
    try:
        layer = fiona.open(p.labels)
    except Exception:  # fiona's DriverError and friends
        raise InputError(f"labels {p.labels} are not a vector layer OGR can read") from None
    out = []
    with layer:
        if p.class_field not in layer.schema["properties"]:
            raise InputError(
                f"labels {p.labels} have no field {p.class_field!r} "
                f"(they have: {', '.join(layer.schema['properties'])})"
            )
        tr = None
        if layer.crs and crs is not None:
            from pyproj import CRS, Transformer

            if CRS.from_user_input(layer.crs) != CRS.from_user_input(crs.to_wkt()):
                tr = Transformer.from_crs(layer.crs, crs.to_wkt(), always_xy=True)
        for f in layer:
            v = f["properties"][p.class_field]
            if f.geometry is None or v is None or not str(v).strip():
                continue
            g = shape(f.geometry)
            if tr is not None:
                g = shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
            if g.geom_type in ("Point", "MultiPoint"):
                g = g.buffer(p.point_buffer_m)
            if not g.is_empty and g.area > 0:
                out.append((g, str(v).strip()))
    if len(out) < 2:
        raise InputError(
            f"labels {p.labels}: at least 2 labelled polygons are needed (found {len(out)} with a value in "
            f"{p.class_field!r})"
        )
    values = {c for _g, c in out}
    if len(values) < 2:
        raise InputError(
            f"labels {p.labels} hold one class only ({values.pop()!r}): label at least two classes, so the model "
            "learns where one ends"
        )
    return out


def spatial_holdout(geoms: list[shapely.Geometry], share: float) -> np.ndarray:
    """True for the polygons beyond the (1 - share) area quantile along the labels' longer extent."""
    x0, y0, x1, y1 = shapely.total_bounds(np.array(geoms, dtype=object))
    axis = 0 if (x1 - x0) >= (y1 - y0) else 1
    pos = np.array([g.centroid.coords[0][axis] for g in geoms])
    area = np.array([g.area for g in geoms])
    order = np.argsort(pos, kind="stable")
    cum = np.cumsum(area[order]) / area.sum()
    held = np.zeros(len(geoms), bool)
    held[order[cum > 1 - share]] = True
    if held.all() or not held.any():  # keep both sides non-empty
        held[:] = False
        held[order[-1]] = True
    return held


def cut_chips(inputs: AlignedInputs, labelled, class_index: dict[str, int], chip: int, cap: int, rng):
    """(x (n, 3, chip, chip) float32 normalised, y (n, chip, chip) uint8) around the polygons."""
    grid = inputs.grid
    inv = ~grid.transform
    seen, xs, ys = set(), [], []
    shapes_all = [(mapping(g), class_index[c]) for g, c in labelled]
    for g, _c in labelled:
        cx, cy = inv * g.centroid.coords[0]
        c0, r0 = int(cx) - chip // 2, int(cy) - chip // 2
        key = (r0 // (chip // 2), c0 // (chip // 2))
        off_grid = c0 + chip <= 0 or r0 + chip <= 0 or c0 >= grid.width or r0 >= grid.height
        if key in seen or off_grid:
            continue
        seen.add(key)
        win = Window(c0, r0, chip, chip)
        feeds, valid = inputs.read(win)
        at = grid.transform * Affine.translation(c0, r0)
        lab = rasterize(shapes_all, out_shape=(chip, chip), transform=at, fill=IGNORE, dtype="uint8")
        lab[~valid] = IGNORE
        if (lab != IGNORE).any():
            xs.append(next(iter(feeds.values())))
            ys.append(lab)
    if not xs:
        raise InputError("no labelled pixel lies on the input raster(s): check the labels' location and CRS")
    if len(xs) > cap:
        keep = np.sort(rng.choice(len(xs), cap, replace=False))
        xs, ys = [xs[i] for i in keep], [ys[i] for i in keep]
    return np.stack(xs).astype(np.float32), np.stack(ys)


def iou_per_class(model, x: np.ndarray, y: np.ndarray, names: list[str], n_model: int) -> dict[str, float | None]:
    import torch

    inter = np.zeros(len(names))
    union = np.zeros(len(names))
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), 4):
            pred = model(torch.from_numpy(x[i : i + 4])).argmax(1).numpy()
            t = y[i : i + 4]
            ok = t != IGNORE
            for k in range(len(names)):
                p_k, t_k = (pred == k) & ok, (t == k) & ok
                inter[k] += (p_k & t_k).sum()
                union[k] += (p_k | t_k).sum()
    present = {k for k in range(len(names)) if (y == k).any()}
    return {
        n: (round(float(inter[k] / union[k]), 4) if k in present and union[k] else None) for k, n in enumerate(names)
    }


def run_adapt(p: AdaptParams, progress=None, cancelled=None, notify=None) -> AdaptResult:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        raise InputError(
            "adapting a model needs the training extra (torch): run `make dev`, or "
            "`.venv/bin/pip install -c constraints.txt -r requirements-export.txt`"
        ) from None
    from .effnet_lite import LandcoverUNet
    from .torch_export import check_parity, export_onnx, read_meta

    t0 = time.time()
    messages: list[str] = []

    def say(m: str) -> None:
        messages.append(m)
        if notify:
            notify(m)

    base = load_model_package(p.model)
    meta = base.meta
    weights = Path(p.model).with_suffix(".pt")
    if meta.task != "landcover" or not weights.exists():
        raise ModelError(
            f"model {p.model} cannot be adapted: it needs its torch weights beside it ({weights.name}, a "
            "LandcoverUNet state_dict), as the shipped land-cover model has"
        )
    ref = reference_grid(p.inputs[0])
    labelled = read_labels(p, ref.crs)
    label_map, new = match_labels(sorted({c for _g, c in labelled}), meta, say)
    names = [c.name for c in meta.classes] + new
    class_index = {v: names.index(label_map[v]) for v in label_map}
    held = spatial_holdout([g for g, _c in labelled], p.holdout)
    train = [(g, c) for (g, c), h in zip(labelled, held, strict=True) if not h]
    hold = [(g, c) for (g, c), h in zip(labelled, held, strict=True) if h]
    say(f"labels: {len(train)} polygons to train on, {len(hold)} held out (the far {p.holdout:.0%} by location)")
    rng = np.random.default_rng(p.seed)
    plan = plan_resampling(ref, meta.pixel_size_m, "auto")
    kw = {"grid": plan.model_grid, "resampling": plan.read_resampling} if plan.active else {}
    with AlignedInputs(p.inputs, meta, **kw) as inputs:
        for m in inputs.messages:
            say(m)
        xt, yt = cut_chips(inputs, train, class_index, p.chip, p.max_chips, rng)
        xh, yh = cut_chips(inputs, hold, class_index, p.chip, p.max_chips // 4, rng)
    say(f"{len(xt)} training chips, {len(xh)} held-out chips of {p.chip} px at {plan.model_grid.pixel_size[0]:.2f}")

    torch.manual_seed(p.seed)
    torch.set_num_threads(p.threads)
    model = LandcoverUNet(len(meta.classes))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    before = iou_per_class(model, xh, yh, names, len(meta.classes))
    if new:  # more outputs: the old rows kept, the new ones start near "never"
        old = model.head
        model.head = torch.nn.Conv2d(old.in_channels, len(names), 1)
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.weight[: old.out_channels] = old.weight
            model.head.bias.fill_(float(old.bias.min()) - 2.0)
            model.head.bias[: old.out_channels] = old.bias
    enc = list(model.encoder.parameters())
    rest = [q for n, q in model.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.AdamW([{"params": enc, "lr": p.lr * 0.1}, {"params": rest, "lr": p.lr}], weight_decay=1e-4)
    budget = p.minutes * 60
    t_train, step = time.time(), 0
    g = torch.Generator().manual_seed(p.seed)
    while time.time() - t_train < budget and (p.max_steps is None or step < p.max_steps):
        if cancelled and cancelled():
            raise Cancelled("cancelled by the user")
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        idx = torch.randint(0, len(xt), (p.batch,), generator=g)
        x, y = torch.from_numpy(xt[idx.numpy()]), torch.from_numpy(yt[idx.numpy()]).long()
        k = int(torch.randint(0, 4, (), generator=g))
        x, y = torch.rot90(x, k, (2, 3)), torch.rot90(y, k, (1, 2))
        if float(torch.rand((), generator=g)) < 0.5:
            x, y = x.flip(3), y.flip(2)
        loss = F.cross_entropy(model(x), y, ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if progress:
            frac = (time.time() - t_train) / budget
            if p.max_steps:
                frac = max(frac, step / p.max_steps)
            progress(min(0.95, 0.05 + 0.9 * frac), f"adapting: step {step}, loss {float(loss):.3f}")
    after = iou_per_class(model, xh, yh, names, len(names))
    minutes = round((time.time() - t0) / 60, 2)
    for n in names:
        if before.get(n) is not None or after.get(n) is not None:
            say(f"held-out IoU {n}: before {before.get(n)}, after {after.get(n)}")

    out_dir = Path(p.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = p.name or f"{meta.name}-adapted"
    onnx_path = out_dir / f"{name}.onnx"
    doc = meta_to_dict(meta)
    doc.pop("class_embeddings", None)  # recomputed below for the new class list
    old_classes = {c["name"]: c for c in doc["classes"]}
    doc["classes"] = [
        old_classes.get(
            n,
            {
                "id": i,
                "name": n,
                "color": NEW_CLASS_COLOURS[(i - len(meta.classes)) % 8],
                "description": f"added from the labels' class '{n}'",
            },
        )
        | {"id": i}  # fmt: skip
        for i, n in enumerate(names)
    ]
    doc["name"] = name
    doc["description"] = f"{meta.name} adapted to {Path(p.labels).name}; see the card"
    doc["card"] = {
        "summary": f"{meta.name} fine-tuned on {len(train)} labelled polygons ({Path(p.labels).name}) for "
        f"{step} steps ({minutes} min)",
        "base_model": str(p.model),
        "data": {
            "inputs": [str(x) for x in p.inputs],
            "labels": str(p.labels),
            "class_field": p.class_field,
            "label_matches": label_map,
        },  # fmt: skip
        "recipe": {
            "steps": step,
            "batch": p.batch,
            "chip": p.chip,
            "lr": p.lr,
            "encoder_lr": p.lr * 0.1,
            "batchnorm": "frozen",
            "augmentation": "rotations, flips",
            "seed": p.seed,
        },  # fmt: skip
        "holdout": f"the far {p.holdout:.0%} of the labelled area along its longer extent ({len(hold)} polygons)",
        "holdout_iou_before": before,
        "holdout_iou_after": after,
    }
    meta_path = out_dir / f".{name}.meta.json"
    meta_path.write_text(json.dumps(doc))
    meta_doc, new_meta = read_meta(meta_path)
    meta_path.unlink()
    model.eval()
    export_onnx(model, meta_doc, new_meta, onnx_path)
    check_parity(model, onnx_path, new_meta, [], size=128)
    torch.save(model.state_dict(), onnx_path.with_suffix(".pt"))
    from .class_embeddings import embed_classes

    embed_classes(onnx_path, missing_ok=True)
    if progress:
        progress(1.0, "done")
    return AdaptResult(onnx_path, names, label_map, new, step, minutes, before, after, len(train), len(hold), messages)
