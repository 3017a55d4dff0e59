"""The accuracy report's files: classes.csv (a table layer), report.md, report.png (matplotlib), report.html."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def classes_csv(doc: dict) -> str:
    cols = ["class", "users_accuracy", "producers_accuracy", "iou", "map_count", "reference_count",
            "adj_users_accuracy", "adj_users_ci95", "adj_producers_accuracy", "adj_producers_ci95",
            "map_area_m2", "estimated_area_m2", "estimated_area_ci95_m2"]  # fmt: skip
    rows = [",".join(cols)]
    for c in doc["matrix"]["rows_map"]:
        p, a = doc["per_class"][c], doc["area_adjusted"]["classes"][c]
        vals = [p["users_accuracy"], p["producers_accuracy"], p["iou"], p["map_count"], p["reference_count"],
                a["users_accuracy"], a["users_ci95"], a["producers_accuracy"], a["producers_ci95"],
                a["map_area_m2"], a["area_m2"], a["area_ci95_m2"]]  # fmt: skip
        rows.append(",".join([f'"{c}"', *("" if v is None else str(v) for v in vals)]))
    return "\n".join(rows) + "\n"


def write_figure(doc: dict, path: Path) -> None:
    """Confusion matrix (shares of each reference class) and user's/producer's accuracy per class, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cls = doc["matrix"]["rows_map"]
    m = np.array(doc["matrix"]["counts"], np.float64)
    share = m / np.maximum(m.sum(0, keepdims=True), 1)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1, 1.2]})
    ax0.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(cls)):
        for j in range(len(cls)):
            ax0.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8,
                     color="white" if share[i, j] > 0.6 else "black")  # fmt: skip
    ax0.set_xticks(range(len(cls)), cls, rotation=30, ha="right")
    ax0.set_yticks(range(len(cls)), cls)
    ax0.set_xlabel("reference")
    ax0.set_ylabel("map")
    ax0.set_title(f"confusion matrix ({doc['units']} units)")
    x = np.arange(len(cls))
    get = lambda k: [doc["per_class"][c][k] or 0 for c in cls]  # noqa: E731
    ax1.bar(x - 0.3, get("users_accuracy"), 0.3, label="user's")
    ax1.bar(x, get("producers_accuracy"), 0.3, label="producer's")
    ax1.bar(x + 0.3, get("iou"), 0.3, label="IoU")
    ax1.set_xticks(x, cls, rotation=30, ha="right")
    ax1.set_ylim(0, 1)
    ax1.legend(loc="lower right", fontsize=8)
    ax1.set_title(f"overall accuracy {doc['overall_accuracy']:.3f}, kappa {doc['kappa']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def report_html(doc: dict, png_name: str) -> str:
    """The Markdown report's tables as HTML (QGIS and any browser open it), with the figure on top."""
    import html

    body, table = [], []
    for line in report_markdown(doc).splitlines():
        if line.startswith("|"):
            if set(line.replace("|", "").strip()) <= {"-"}:
                continue  # the Markdown header rule
            tag = "th" if not table else "td"
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            table.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if table:
            body.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1><img src='{png_name}' alt='figure'>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if table:
        body.append("<table>" + "".join(table) + "</table>")
    style = "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 6px}"
    head = f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head>"
    return f"{head}<body>{''.join(body)}</body></html>"


def report_markdown(doc: dict) -> str:
    cls = doc["matrix"]["rows_map"]
    pct = lambda x: "–" if x is None else f"{100 * x:.1f}"  # noqa: E731
    out = [f"# Accuracy of {doc['class_map']}", "", f"Reference: {doc['reference']} ({doc['units']} units)", "",
           "## Confusion matrix (rows: map, columns: reference)", "", "| map \\ ref | " + " | ".join(cls) + " |",
           "|---" * (len(cls) + 1) + "|"]  # fmt: skip
    for c, row in zip(cls, doc["matrix"]["counts"], strict=True):
        out.append(f"| {c} | " + " | ".join(map(str, row)) + " |")
    out += ["", f"Overall accuracy {pct(doc['overall_accuracy'])} %, kappa {doc['kappa']}", "",
            "| class | user's % | producer's % | IoU % |", "|---|---|---|---|"]  # fmt: skip
    for c in cls:
        p = doc["per_class"][c]
        out.append(f"| {c} | {pct(p['users_accuracy'])} | {pct(p['producers_accuracy'])} | {pct(p['iou'])} |")
    a = doc["area_adjusted"]
    out += ["", "## Area-adjusted (Olofsson et al. 2014; stratified random sample, 95 % confidence)", "",
            f"Overall accuracy {pct(a['overall_accuracy'])} ± {pct(a['overall_ci95'])} %", "",
            "| class | map area m² | estimated area m² (± 95 %) | user's % (±) | producer's % (±) |",
            "|---|---|---|---|---|"]  # fmt: skip
    for c in cls:
        k = a["classes"][c]
        out.append(
            f"| {c} | {k['map_area_m2']:.0f} | {k['area_m2']:.0f} ± {k['area_ci95_m2']:.0f} | "
            f"{pct(k['users_accuracy'])} ± {pct(k['users_ci95'])} | "
            f"{pct(k['producers_accuracy'])} ± {pct(k['producers_ci95'])} |"
        )
    out += ["", a["note"], ""]
    return "\n".join(out)
