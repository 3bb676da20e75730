"""What people read of an evaluation: tables (plain text and Markdown), the JSON summary, PR-curve
pictures. The arithmetic is :mod:`keras_frcnn_cryo.metrics`'s; nothing here computes a metric.

Inputs are :func:`metrics.evaluate` results (``results``), :func:`metrics.evaluate_by_group`
tables, evaluation.EvaluatedRun objects (anything with ``label`` and ``results``) and
evaluation.evaluate_objects_3d results. Missing values (NaN, None) print as "-".
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .atomic import atomic_path
from .config import PAPER_TABLE_IOU
from .metrics import threshold_key
from .textio import jsonable
from .tomo_io import natural_sort_key


# ------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------
def _num(value: Any) -> str:
    if value is None or (isinstance(value, (float, np.floating)) and not math.isfinite(float(value))):
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.3f}"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False,
                 text_columns: int = 1) -> str:
    """Plain-text (aligned) or Markdown table; the first ``text_columns`` columns are left-aligned."""
    if markdown:
        align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < text_columns else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _class_cells(results: Mapping[str, Any], name: str, table_iou: float) -> dict[str, str]:
    """Cells of one class (or "mAP") row, keyed by column name."""
    thresholds = results["iou_thresholds"]
    t = threshold_key(results, table_iou)
    if name == "mAP":
        mean = results["mean"]
        cells = {f"AP@{u:g}": _num(mean["ap"][u]) for u in thresholds}
        cells.update({"AP@.5:.95": _num(mean["coco_ap"]), "AP50": _num(mean["ap50"]), "AP75": _num(mean["ap75"]),
                      f"F1@{t:g}": _num(mean["f1"][t]), "score@F1": "-", f"P@{t:g}": _num(mean["precision"][t]),
                      f"R@{t:g}": _num(mean["recall"][t]), f"mIoU@{results['miou_iou_threshold']:g}": _num(mean["miou"]),
                      "n_gt": str(sum(results["per_class"][c]["n_gt"] for c in results["classes"]))})
        return cells
    cls = results["per_class"][name]
    entry = cls["thresholds"]
    cells = {f"AP@{u:g}": _num(entry[u]["ap"]) for u in thresholds}
    cells.update({"AP@.5:.95": _num(cls["coco_ap"]), "AP50": _num(cls["ap50"]), "AP75": _num(cls["ap75"]),
                  f"F1@{t:g}": _num(entry[t]["f1"]), "score@F1": _num(entry[t]["best_threshold"]),
                  f"P@{t:g}": _num(entry[t]["precision"]), f"R@{t:g}": _num(entry[t]["recall"]),
                  f"mIoU@{results['miou_iou_threshold']:g}": _num(cls["miou"]), "n_gt": str(cls["n_gt"])})
    return cells


def format_summary(results: Mapping[str, Any], table_iou: float = PAPER_TABLE_IOU, markdown: bool = False) -> str:
    """Table of :func:`metrics.evaluate` results: one row per class and "mAP" (mean over classes with
    ground truth); AP at each IoU, COCO AP 0.50:0.95 / AP50 / AP75, best F1 at ``table_iou`` with its
    score threshold, precision and recall there, mean IoU of the TPs, number of objects."""
    names = list(results["classes"]) + ["mAP"]
    rows_cells = [_class_cells(results, name, table_iou) for name in names]
    header = ["class", *rows_cells[0].keys()]
    rows = [[name, *cells.values()] for name, cells in zip(names, rows_cells)]
    return render_table(header, rows, markdown)


def format_box_errors(results: Mapping[str, Any], markdown: bool = False) -> str:
    """Where the true positives at the mean-IoU threshold lie against their boxes, per class: their
    number, the mean signed error (detection minus truth, image px) of x1, y1, x2, y2 and of the box
    centre, and the mean absolute error of each side (:func:`metrics.box_error_summary`)."""
    header = ["class", "TPs", "bias x1", "bias y1", "bias x2", "bias y2", "centre dx", "centre dy",
              "|err| x1", "|err| y1", "|err| x2", "|err| y2"]
    rows = []
    for name in results["classes"]:
        err = results["per_class"][name]["box_error"]
        rows.append([name, str(err["n"]), *(f"{v:+.2f}" if math.isfinite(v) else "-" for v in
                                            [*err["bias"], *err["centre_bias"]]),
                     *(_num(v) for v in err["mean_abs"])])
    return render_table(header, rows, markdown)


def format_error_breakdown(results: Mapping[str, Any], table_iou: float = PAPER_TABLE_IOU,
                           markdown: bool = False) -> str:
    """Where each class loses AP at ``table_iou`` (:func:`metrics.error_breakdown`): AP, the AP gained
    by fixing localisation, duplicate and background errors and by ranking by true IoU, the objects no
    detection came near, and the same kinds counted among the detections kept at the best-F1 score cut."""
    t = threshold_key(results, table_iou)
    header = ["class", f"AP@{t:g}", "+loc", "+dup", "+bg", "+rank", "missed", "score cut", "TP", "loc", "dup",
              "bg", "not found"]
    rows = []
    for name in results["classes"]:
        if results["per_class"][name]["n_gt"] == 0:
            continue
        err = results["per_class"][name]["errors"][t]
        cut = err["at_best_f1"]
        rows.append([name, _num(err["ap"]),
                     *(f"{err['dap'][k]:+.3f}" for k in ("localisation", "duplicate", "background", "ranking")),
                     str(err["missed"]), _num(cut["score_threshold"]),
                     *(str(cut[k]) for k in ("tp", "localisation", "duplicate", "background", "missed"))])
    return render_table(header, rows, markdown)


def error_breakdown_title(results: Mapping[str, Any], table_iou: float = PAPER_TABLE_IOU) -> str:
    """Heading of the :func:`format_error_breakdown` table."""
    t = threshold_key(results, table_iou)
    return (f"Where AP@{t:g} is lost: AP gained by fixing each kind of false positive (loc: nearest object at IoU "
            f"0.1-{t:g}; dup: a second box on an object; bg: IoU < 0.1 with every object), and by ranking the same "
            "boxes by their true IoU instead of their score (rank); objects no detection came near; the kinds counted "
            "at the best-F1 score cut (not found: objects without a TP there)")


def box_errors_title(results: Mapping[str, Any]) -> str:
    """Heading of the :func:`format_box_errors` table."""
    return (f"Box errors of the true positives at IoU {results['miou_iou_threshold']:g} (detection minus truth, "
            "image px; a bias far above |err| / sqrt(TPs) is systematic)")


def format_group_table(by_group: Mapping[Any, Mapping[str, Any]], iou_threshold: float = PAPER_TABLE_IOU,
                       markdown: bool = False) -> str:
    """Per-tomogram table (the paper's Table 2): F1, AP, mIoU, precision, recall at ``iou_threshold``,
    and the group's estimated SNR when known (``snr_estimate``, :func:`group_snr`)."""
    t = f"{iou_threshold:g}"
    header = ["group", "images", "objects", f"F1@{t}", f"AP@{t}", f"mIoU@{t}", f"P@{t}", f"R@{t}", "SNR est."]
    rows = [[str(name), str(v["n_images"]), str(v["n_gt"]), *(_num(v[k]) for k in ("f1", "ap", "miou", "precision",
                                                                                      "recall")),
             _num(v.get("snr_estimate", math.nan))]
            for name, v in sorted(by_group.items(), key=lambda kv: natural_sort_key(str(kv[0])))]
    return render_table(header, rows, markdown)


def format_comparison(runs: Sequence[Any], table_iou: float = PAPER_TABLE_IOU, markdown: bool = False) -> str:
    """Runs side by side: for each class with ground truth and for "mAP", one row per run (AP at each
    IoU, COCO AP, F1 and its score threshold at ``table_iou``, mean IoU) and, for two runs, a
    "Δ first − second" row."""
    first = runs[0].results
    blocks = [c for c in first["classes"] if first["per_class"][c]["n_gt"] > 0] + ["mAP"]
    keep = [f"AP@{u:g}" for u in first["iou_thresholds"]] + [
        "AP@.5:.95", f"F1@{threshold_key(first, table_iou):g}", "score@F1",
        f"mIoU@{first['miou_iou_threshold']:g}"]
    header = ["class", "run", *keep]
    rows = []
    for name in blocks:
        cells = [_class_cells(run.results, name, table_iou) for run in runs]
        rows += [[name, run.label, *(c[k] for k in keep)] for run, c in zip(runs, cells)]
        if len(runs) == 2:
            delta = []
            for k in keep:
                a, b = cells[0][k], cells[1][k]
                delta.append("-" if k == "score@F1" or "-" in (a, b) else f"{float(a) - float(b):+.3f}")
            rows.append([name, f"Δ {runs[0].label} − {runs[1].label}", *delta])
    return render_table(header, rows, markdown, text_columns=2)


def format_objects_3d(result: Mapping[str, Any], markdown: bool = False) -> str:
    """Table of :func:`evaluate_objects_3d`: one row per class and threshold, then "all".

    TP ... F1 count every object in the file; AP ranks them by object score, and best F1 / score@F1
    give the best score cut."""
    header = ["class", "IoU3D", "objects", "incomplete", "found", "TP", "FP", "FN", "precision", "recall", "F1",
              "AP", "best F1", "score@F1"]
    rows = []
    for name, per_t in [*result["classes"].items(), ("all", result["all"])]:
        for t, c in per_t.items():
            rows.append([name, f"{t:g}", str(c["n_gt"]), str(c["n_incomplete"]), str(c["n_pred"]), str(c["tp"]),
                         str(c["fp"]), str(c["fn"]), _num(c["precision"]), _num(c["recall"]), _num(c["f1"]),
                         _num(c["ap"]), _num(c["best_f1"]), _num(c["best_threshold"])])
    return render_table(header, rows, markdown)


# ------------------------------------------------------------------------------------------
# JSON and pictures
# ------------------------------------------------------------------------------------------
def results_to_json(results: Mapping[str, Any]) -> dict[str, Any]:
    """Summary of :func:`evaluate`'s results as plain JSON data (curves left out; nan -> None).

    ``{"iou_thresholds", "miou_iou_threshold", "score_threshold", "classes": {name: row}, "mAP": row}``
    where a row has ``"ap"``, ``"f1"``, ``"precision"``, ``"recall"``, ``"best_threshold"``,
    ``"n_tp"``, ``"n_fp"`` keyed by the IoU thresholds as strings ("0.5" ... "0.9"), and ``"miou"``,
    ``"coco_ap"``, ``"ap50"``, ``"ap75"``, ``"n_gt"``, ``"box_error"`` (:func:`metrics.box_error_summary`)
    and ``"errors"`` (:func:`metrics.error_breakdown` per threshold).
    The "mAP" row holds the means over classes with ground truth; its ``best_threshold``, ``n_tp`` and
    ``n_fp`` are None (no common score cut).
    """
    thresholds = results["iou_thresholds"]
    classes: dict[str, Any] = {}
    for name in results["classes"]:
        cls = results["per_class"][name]
        row: dict[str, Any] = {
            key: {t: cls["thresholds"][t][src] for t in thresholds}
            for key, src in (("ap", "ap"), ("f1", "f1"), ("precision", "precision"), ("recall", "recall"),
                             ("best_threshold", "best_threshold"), ("n_tp", "n_tp_at_best"), ("n_fp", "n_fp_at_best"))
        }
        if results.get("score_threshold") is not None:
            row["at_score"] = {t: cls["thresholds"][t]["at_score"] for t in thresholds}
        row.update({key: cls[key] for key in ("miou", "n_miou", "coco_ap", "ap50", "ap75", "n_gt", "box_error", "errors")})
        classes[name] = row
    mean = results["mean"]
    mean_row: dict[str, Any] = {key: dict(mean[key]) for key in ("ap", "f1", "precision", "recall")}
    mean_row.update({key: {t: None for t in thresholds} for key in ("best_threshold", "n_tp", "n_fp")})
    if "at_score" in mean:
        mean_row["at_score"] = mean["at_score"]
    mean_row.update({key: mean[key] for key in ("miou", "coco_ap", "ap50", "ap75")})
    mean_row["n_gt"] = int(sum(results["per_class"][name]["n_gt"] for name in results["classes"]))
    return jsonable({
        "iou_thresholds": thresholds,
        "miou_iou_threshold": results["miou_iou_threshold"],
        "score_threshold": results.get("score_threshold"),
        "classes": classes,
        "mAP": mean_row,
    })


def plot_pr_curves(results: Mapping[str, Any], iou_threshold: float, out_png: str | os.PathLike) -> None:
    """Precision-recall curve of each class (with ground truth) at ``iou_threshold`` to a PNG.

    Headless (Agg canvas, no pyplot state); written to a temporary name then renamed.
    """
    plot_pr_runs({"": results}, iou_threshold, out_png)


def plot_pr_runs(runs: Mapping[str, Mapping[str, Any]], iou_threshold: float, out_png: str | os.PathLike) -> None:
    """Precision-recall curves of several runs (``{label: evaluate() results}``) in one PNG.

    One colour per class, one line style per run (the ablation with and without preprocessing; a run
    labelled "" is drawn without a label prefix);
    classes without ground truth are left out. Headless; written to a temporary name then renamed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    styles = ["-", "--", ":", "-."]
    colours = [f"C{k}" for k in range(10)]
    class_names: list[str] = []
    for results in runs.values():
        class_names += [c for c in results["classes"] if c not in class_names]
    for r, (label, results) in enumerate(runs.items()):
        t = threshold_key(results, iou_threshold)
        for c, name in enumerate(class_names):
            if name not in results["per_class"]:
                continue
            entry = results["per_class"][name]["thresholds"][t]
            if entry["n_gt"] == 0:
                continue
            recall = np.concatenate(([0.0], entry["recall_curve"]))
            precision = np.concatenate(([1.0 if entry["precision_curve"].size else 0.0], entry["precision_curve"]))
            ax.step(recall, precision, where="post", linestyle=styles[r % len(styles)],
                    color=colours[c % len(colours)],
                    label=f"{label + ': ' if label else ''}{name} (AP {entry['ap']:.3f})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"precision-recall at IoU {iou_threshold:g}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize="small")
    ax.grid(True, alpha=0.3)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
