"""Accuracy of a class map against reference data, and stratified samples to collect that reference data.

``python -m engine accuracy --classes map.tif --reference ref.gpkg --class-field FIELD --out DIR``:
reference points (the class map's pixel under each point) or polygons (every pixel inside) against the map:
confusion matrix (rows: map, columns: reference), overall accuracy, per-class user's and producer's accuracy
and IoU, Cohen's kappa, and — the good practice of Olofsson et al. (2014, Remote Sensing of Environment 148,
42-57) for a stratified random sample with the map classes as strata — area-adjusted overall, user's and
producer's accuracy and class areas with 95 % confidence intervals. Written as accuracy.json, a confusion-matrix
CSV and a Markdown report.

``--sample N``: a stratified random sample of N points from the class map (every class at least
``min_per_class`` points, the rest proportional to its area), written to a GeoPackage with an empty
``reference`` field for the analyst to fill in, then passed back as ``--reference``.

Class names come from the map's LandSeg tags (CLASS_<id>), or ``--class-names a,b,c`` for any classified raster;
reference values may be names (case-insensitive) or class ids. Memory is bounded: the map is read in strips.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import fiona
import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely.geometry import mapping, shape

from ..areas import AreaCalculator
from ..errors import InputError
from ..outputs import CLASS_NODATA
from ..raster_input import open_raster
from ..task_options import Option, name_option
from .accuracy_report import classes_csv, report_html, report_markdown, write_figure
from .common import JsonResult, atomic_outputs

STRIP_PIXELS = 1 << 22
Z95 = 1.959964


@dataclass
class AccuracyParams:
    class_map: Path
    out_dir: Path
    reference: Path | None = None  # points or polygons with a class field (assess)
    class_field: str = "class"
    class_names: list[str] = field(default_factory=list)  # override the map's own names
    sample: int | None = None  # draw this many stratified random points instead of assessing
    min_per_class: int = 50
    seed: int = 0
    name: str = "accuracy"


OPTIONS = (
    Option("class_map", "--classes", "Class map", "class map (LandSeg's, or any classified)", widget="raster",
           name="CLASSES"),
    Option("reference", "--reference", "Reference points or polygons",
           "reference points or polygons (GeoPackage, Shapefile, ...)", widget="vector"),
    Option("class_field", "--class-field", "Reference class field",
           "the reference layer's class field (default: %(default)s)", widget="field", parent="REFERENCE"),
    Option("class_names", "--class-names", "Class names (ids 0,1,2...)",
           "names of class ids 0,1,2... for a map without LandSeg class tags", widget="text_list"),
    Option("sample", "--sample", "Sample size (0: assess the reference layer)",
           "draw a stratified random sample of N points to label instead", unset=0, minimum=0),
    Option("min_per_class", "--min-per-class", "Fewest sample points a class gets",
           "sample: fewest points a class gets (default: %(default)s)", minimum=1, advanced=True),
    Option("seed", "--seed", "Random seed of the sample", "default: %(default)s", advanced=True),
    Option("out_dir", "--out", "Output folder", "output folder", short="-o", widget="output_folder", name="OUTPUT"),
    name_option(),
)  # fmt: skip


@dataclass
class AccuracyResult(JsonResult):
    report: Path | None
    matrix: Path | None
    json: Path | None
    sample: Path | None
    classes: list[str]
    n: int  # reference units used (pixels of polygons, or points)
    overall_accuracy: float | None = None
    kappa: float | None = None
    per_class: dict = field(default_factory=dict)
    area_adjusted: dict = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        if self.sample:
            return [f"sample: {self.sample} ({self.n} points; fill in the 'reference' field, then pass --reference)"]
        adj = self.area_adjusted
        lines = [
            f"overall accuracy {self.overall_accuracy:.3f} (area-adjusted {adj['overall_accuracy']:.3f} ± "
            f"{adj['overall_ci95']:.3f}), kappa {self.kappa:.3f} on {self.n} reference units"
        ]
        for c, m in self.per_class.items():
            ua, pa = (("-" if v is None else f"{v:.3f}") for v in (m["users_accuracy"], m["producers_accuracy"]))
            lines.append(f"  {c:12} user's {ua}  producer's {pa}")
        return [*lines, f"report: {self.report}"]


def class_names_of(ds, given: list[str]) -> dict[int, str]:
    """id -> name: the given names (ids 0..n-1), else the map's LandSeg tags (CLASS_<id>)."""
    if given:
        return dict(enumerate(given))
    tags = ds.tags(1)
    names = {int(k[6:]): v for k, v in tags.items() if k.startswith("CLASS_") and k[6:].isdigit()}
    if not names:
        raise InputError(f"{ds.name} has no LandSeg class names (CLASS_<id> tags): give them with --class-names a,b,c")
    return dict(sorted(names.items()))


def map_counts(ds, n_ids: int) -> np.ndarray:
    """Pixels per class id over the whole map (strips)."""
    counts = np.zeros(256, np.int64)
    rows = max(1, STRIP_PIXELS // ds.width)
    for r in range(0, ds.height, rows):
        a = ds.read(1, window=Window(0, r, ds.width, min(rows, ds.height - r)))
        counts += np.bincount(a.ravel(), minlength=256)[:256]
    return counts[:n_ids]


def _reference_ids(value, by_name: dict[str, int], ids: set[int], where: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None  # not labelled yet
    if isinstance(value, (int, np.integer)) or (isinstance(value, str) and value.strip().isdigit()):
        v = int(value)
        if v in ids:
            return v
    key = str(value).strip().lower()
    if key in by_name:
        return by_name[key]
    raise InputError(f"{where}: reference class {value!r} is not a class of the map ({', '.join(by_name)})")


def confusion(params: AccuracyParams, ds, names: dict[int, str]) -> tuple[np.ndarray, int, list[str]]:
    """(map x reference) counts; reference points sample the pixel under them, polygons every pixel inside."""
    ids = sorted(names)
    index = {cid: k for k, cid in enumerate(ids)}
    by_name = {n.lower(): cid for cid, n in names.items()}
    m = np.zeros((len(ids), len(ids)), np.int64)
    skipped, notes = 0, []
    try:
        layer = fiona.open(params.reference)
    except Exception:  # fiona raises DriverError and friends
        raise InputError(f"reference {params.reference} is not a vector layer OGR can read") from None
    with layer:
        if params.class_field not in layer.schema["properties"]:
            raise InputError(
                f"reference {params.reference} has no field {params.class_field!r} "
                f"(it has: {', '.join(layer.schema['properties'])})"
            )
        if layer.crs and ds.crs and rasterio.crs.CRS.from_user_input(layer.crs) != ds.crs:
            from pyproj import Transformer

            tr = Transformer.from_crs(layer.crs, ds.crs, always_xy=True)
            reproject = lambda g: shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))  # noqa: E731
        else:
            reproject = lambda g: g  # noqa: E731
        polys: dict[int, list] = {}
        for f in layer:
            ref = _reference_ids(f["properties"][params.class_field], by_name, set(ids), str(params.reference))
            if ref is None or f.geometry is None:
                skipped += 1
                continue
            g = reproject(shape(f.geometry))
            if g.geom_type == "Point":
                r, c = ds.index(g.x, g.y)
                if not (0 <= r < ds.height and 0 <= c < ds.width):
                    skipped += 1
                    continue
                v = int(ds.read(1, window=Window(c, r, 1, 1))[0, 0])
                if v in index:
                    m[index[v], index[ref]] += 1
                else:
                    skipped += 1
            else:
                polys.setdefault(ref, []).append(g)
        for ref, geoms in polys.items():  # polygons: burn per reference class, count per strip of the map
            bounds = shapely.total_bounds(np.array(geoms, dtype=object))
            win = rasterio.windows.from_bounds(*bounds, transform=ds.transform).round_offsets().round_lengths()
            win = win.intersection(Window(0, 0, ds.width, ds.height))
            rows = max(1, STRIP_PIXELS // max(1, int(win.width)))
            for r in range(int(win.row_off), int(win.row_off + win.height), rows):
                w = Window(win.col_off, r, win.width, min(rows, int(win.row_off + win.height) - r))
                inside = rasterize(
                    [mapping(g) for g in geoms], out_shape=(int(w.height), int(w.width)),
                    transform=ds.window_transform(w), fill=0, default_value=1, dtype="uint8",
                )  # fmt: skip
                vals = ds.read(1, window=w)[inside == 1]
                for v, n in zip(*np.unique(vals, return_counts=True), strict=True):
                    if int(v) in index:
                        m[index[int(v)], index[ref]] += int(n)
    if skipped:
        notes.append(f"{skipped} reference feature(s) without a class, off the map or on no-data were skipped")
    return m, skipped, notes


def metrics(m: np.ndarray, names: list[str], map_pixels: np.ndarray, pixel_area_m2: float) -> dict:
    """Plain and area-adjusted accuracy from a (map x reference) matrix and the map's class pixel counts."""
    n = m.sum()
    if n == 0:
        raise InputError("no reference unit falls on a classified pixel of the map: nothing to assess")
    rows, cols, diag = m.sum(1), m.sum(0), np.diag(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        ua = np.where(rows > 0, diag / rows, np.nan)
        pa = np.where(cols > 0, diag / cols, np.nan)
        iou = np.where(rows + cols - diag > 0, diag / (rows + cols - diag), np.nan)
    oa = diag.sum() / n
    pe = (rows * cols).sum() / n**2
    kappa = (oa - pe) / (1 - pe) if pe < 1 else float("nan")
    per_class = {
        c: {
            "users_accuracy": _f(ua[k]),
            "producers_accuracy": _f(pa[k]),
            "iou": _f(iou[k]),
            "map_count": int(rows[k]),
            "reference_count": int(cols[k]),
        }  # fmt: skip
        for k, c in enumerate(names)
    }
    # Olofsson et al. 2014: strata = map classes, weights W_i = map area share.
    big_n = map_pixels.astype(np.float64)
    W = big_n / big_n.sum()
    n_i = rows.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(n_i[:, None] > 0, m / n_i[:, None], 0.0)  # n_ij / n_i.
        p = W[:, None] * share  # estimated area proportions p_ij
        p_col, p_diag = p.sum(0), np.diag(p)
        oa_adj = p_diag.sum()
        ua_adj = np.where(n_i > 0, np.diag(share), np.nan)
        pa_adj = np.where(p_col > 0, p_diag / p_col, np.nan)
        dof = np.maximum(n_i - 1, 1)
        var_oa = np.nansum(W**2 * ua_adj * (1 - ua_adj) / dof)
        var_ua = ua_adj * (1 - ua_adj) / dof
        var_pcol = np.array([np.sum(W**2 * share[:, j] * (1 - share[:, j]) / dof) for j in range(len(names))])
        # Producer's accuracy variance (Olofsson et al. 2014, eq. 7), with estimated reference-class totals.
        n_hat_col = np.where(n_i[:, None] > 0, big_n[:, None] / np.maximum(n_i[:, None], 1) * m, 0).sum(0)
        var_pa = np.full(len(names), np.nan)
        for j in range(len(names)):
            if n_hat_col[j] <= 0 or n_i[j] < 1:
                continue
            own = big_n[j] ** 2 * (1 - pa_adj[j]) ** 2 * ua_adj[j] * (1 - ua_adj[j]) / dof[j]
            others = sum(
                big_n[i] ** 2 * share[i, j] * (1 - share[i, j]) / dof[i]
                for i in range(len(names))
                if i != j and n_i[i] > 0
            )
            var_pa[j] = (own + pa_adj[j] ** 2 * others) / n_hat_col[j] ** 2
    total_area = big_n.sum() * pixel_area_m2
    area = {
        c: {
            "area_m2": _f(p_col[k] * total_area),
            "area_ci95_m2": _f(Z95 * math.sqrt(var_pcol[k]) * total_area),
            "map_area_m2": _f(big_n[k] * pixel_area_m2),
            "users_accuracy": _f(ua_adj[k]),
            "users_ci95": _f(Z95 * math.sqrt(var_ua[k])) if not np.isnan(var_ua[k]) else None,
            "producers_accuracy": _f(pa_adj[k]),
            "producers_ci95": _f(Z95 * math.sqrt(var_pa[k])) if not np.isnan(var_pa[k]) else None,
        }
        for k, c in enumerate(names)
    }
    return {
        "overall_accuracy": _f(oa),
        "kappa": _f(kappa),
        "per_class": per_class,
        "area_adjusted": {
            "overall_accuracy": _f(oa_adj),
            "overall_ci95": _f(Z95 * math.sqrt(var_oa)),
            "classes": area,
            "note": "valid for a stratified random sample with the map classes as strata (Olofsson et al. 2014)",
        },
    }


def _f(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else round(x, 6)


def stratified_sample(params: AccuracyParams, ds, names: dict[int, str], counts: np.ndarray) -> list[tuple]:
    """[(row, col, class id)]: min_per_class points per class (fewer if it has fewer pixels), the rest of N in
    proportion to the classes' areas; pixels drawn uniformly within each class (two passes over strips)."""
    ids = [cid for cid in sorted(names) if counts[cid] > 0]
    n_total = int(params.sample)
    if n_total < len(ids):
        raise InputError(f"--sample {n_total} is fewer points than the map has classes ({len(ids)})")
    floor = min(params.min_per_class, n_total // len(ids))  # the floor never pushes the total past N
    base = {cid: min(int(counts[cid]), floor) for cid in ids}
    rest = max(0, n_total - sum(base.values()))
    area = np.array([counts[cid] for cid in ids], np.float64)
    quota = rest * area / area.sum()
    extra = np.floor(quota).astype(int)
    extra[np.argsort(-(quota - extra), kind="stable")[: rest - int(extra.sum())]] += 1  # largest remainders
    alloc = {cid: min(int(counts[cid]), base[cid] + int(e)) for cid, e in zip(ids, extra, strict=True)}
    rng = np.random.default_rng(params.seed)
    # Ranks (0-based, among the class's pixels in row-major order) of the pixels drawn for each class.
    wanted = {cid: np.sort(rng.choice(int(counts[cid]), size=alloc[cid], replace=False)) for cid in ids}
    seen = dict.fromkeys(ids, 0)
    out: list[tuple] = []
    rows = max(1, STRIP_PIXELS // ds.width)
    for r in range(0, ds.height, rows):
        a = ds.read(1, window=Window(0, r, ds.width, min(rows, ds.height - r)))
        for cid in ids:
            flat = np.flatnonzero(a == cid)
            lo, hi = seen[cid], seen[cid] + len(flat)
            w = wanted[cid]
            pick = w[(w >= lo) & (w < hi)] - lo
            for k in flat[pick]:
                out.append((r + int(k) // ds.width, int(k) % ds.width, cid))
            seen[cid] = hi
    return out


def run_accuracy(params: AccuracyParams, notify=None) -> AccuracyResult:
    say = notify or (lambda m: None)
    if (params.reference is None) == (params.sample is None):
        raise InputError("give either --reference (to assess the map) or --sample N (to draw points to label)")
    with open_raster(params.class_map, "class map") as ds:
        if ds.count != 1 or ds.dtypes[0] not in ("uint8", "uint16", "int16", "int32", "uint32"):
            raise InputError(f"class map {params.class_map} must be one band of class ids (it has {ds.count} "
                             f"band(s) of {ds.dtypes[0]})")  # fmt: skip
        names = class_names_of(ds, params.class_names)
        names.pop(CLASS_NODATA, None)
        counts = map_counts(ds, 256)
        c, r = ds.width // 2, ds.height // 2
        t = ds.transform
        px = shapely.Polygon([t * xy for xy in ((c, r), (c + 1, r), (c + 1, r + 1), (c, r + 1))])
        pixel_area = AreaCalculator(ds.crs)(px)
        out = Path(params.out_dir)
        if params.sample is not None:
            points = stratified_sample(params, ds, names, counts)
            final = out / f"{params.name}_sample.gpkg"
            schema = {"geometry": "Point", "properties": {"id": "int", "map_class": "str", "reference": "str"}}
            with atomic_outputs(out) as outputs:
                tmp = outputs.temp_for(final)
                with fiona.open(tmp, "w", driver="GPKG", layer="sample", schema=schema,
                                crs=ds.crs.to_wkt() if ds.crs else None) as sink:  # fmt: skip
                    sink.writerecords(
                        {
                            "geometry": {"type": "Point", "coordinates": ds.xy(row, col)},
                            "properties": {"id": k, "map_class": names[cid], "reference": None},
                        }  # fmt: skip
                        for k, (row, col, cid) in enumerate(points)
                    )
                outputs.commit()
            per = {names[cid]: sum(1 for p in points if p[2] == cid) for cid in sorted(names) if counts[cid] > 0}
            say(f"{len(points)} points: " + ", ".join(f"{k} {v}" for k, v in per.items()))
            return AccuracyResult(None, None, None, final, list(per), len(points), messages=[])
        m, _skipped, notes = confusion(params, ds, names)
    for msg in notes:
        say(msg)
    ids = sorted(names)
    cls = [names[i] for i in ids]
    res = metrics(m, cls, counts[ids], pixel_area)
    out = Path(params.out_dir)
    names_out = ("report.json", "confusion_matrix.csv", "classes.csv", "report.md", "report.html", "report.png")
    finals = [out / n for n in names_out]
    with atomic_outputs(out) as outputs:
        tj, tc, tk, tm, th, tp = (outputs.temp_for(p) for p in finals)
        doc = {"class_map": str(params.class_map), "reference": str(params.reference), "units": int(m.sum()),
               "matrix": {"rows_map": cls, "columns_reference": cls, "counts": m.tolist()}, **res}  # fmt: skip
        tj.write_text(json.dumps(doc, indent=1))
        lines = ["map \\ reference," + ",".join(cls)]
        lines += [f"{c}," + ",".join(map(str, row)) for c, row in zip(cls, m, strict=True)]
        tc.write_text("\n".join(lines) + "\n")
        tk.write_text(classes_csv(doc))  # one row per class: a table layer in QGIS
        tm.write_text(report_markdown(doc))
        write_figure(doc, tp)
        th.write_text(report_html(doc, finals[5].name))
        outputs.commit()
    return AccuracyResult(finals[4], finals[1], finals[0], None, cls, int(m.sum()), res["overall_accuracy"],
                          res["kappa"], res["per_class"], res["area_adjusted"], notes)  # fmt: skip
