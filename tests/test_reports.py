"""Tests of keras_frcnn_cryo.reports: tables, the JSON summary and PR pictures of metrics results."""
from __future__ import annotations

import json
import os

import pytest
from conftest import det, obj

from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.metrics import evaluate
from keras_frcnn_cryo.reports import (
    format_box_errors,
    format_error_breakdown,
    format_summary,
    plot_pr_curves,
    render_table,
    results_to_json,
)

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _small_results():
    gt = {"a": [obj(0, 0, 10, 10), obj(20, 0, 30, 10, cls="vesicle")], "b": [obj(0, 0, 10, 10)]}
    dets = [det("a", 0, 0, 10, 10, 0.9), det("b", 50, 50, 60, 60, 0.8), det("b", 0, 0, 10, 10, 0.7),
            det("a", 20, 0, 30, 10, 0.6, cls="vesicle"), det("a", 0, 0, 1, 1, 0.6, cls="membrane")]
    return evaluate(gt, dets, THRESHOLDS)


def test_results_to_json_is_strict_json():
    out = results_to_json(_small_results())
    text = json.dumps(out, allow_nan=False)
    back = json.loads(text)
    assert set(back["classes"]) == {"mito", "vesicle", "membrane"}
    assert list(back["mAP"]["ap"]) == ["0.5", "0.6", "0.7", "0.8", "0.9"]
    mito = back["classes"]["mito"]
    assert mito["ap"]["0.5"] == pytest.approx(5.0 / 6.0)  # TP, FP, TP over 2 objects: 1/2*1 + 1/2*2/3
    assert mito["best_threshold"]["0.5"] == pytest.approx(0.7) and mito["miou"] == 1.0
    assert back["classes"]["membrane"]["ap"]["0.5"] is None  # no ground truth: undefined
    assert back["mAP"]["ap"]["0.5"] == pytest.approx((5.0 / 6.0 + 1.0) / 2.0)
    assert back["mAP"]["best_threshold"]["0.5"] is None
    assert {"coco_ap", "ap50", "ap75", "f1", "precision", "recall", "miou"} <= set(back["mAP"])


def test_summary_table_lists_classes_and_mean():
    res = _small_results()
    lines = format_summary(res, table_iou=0.5).splitlines()
    assert "AP@0.5" in lines[0] and "AP@0.9" in lines[0] and "mIoU@0.5" in lines[0] and "AP@.5:.95" in lines[0]
    assert lines[-1].split()[0] == "mAP" and lines[-1].split()[1] == "0.917"
    assert any(line.split()[0] == "membrane" and line.split()[1] == "-" for line in lines)
    md = format_summary(res, table_iou=0.7, markdown=True).splitlines()
    assert md[0].startswith("| class | AP@0.5") and "F1@0.7" in md[0] and md[1].startswith("|---|---:")
    assert md[-1].startswith("| mAP | 0.917")
    with pytest.raises(CryoError, match="not evaluated"):
        format_summary(res, table_iou=0.75)


def test_box_error_table_one_row_per_class():
    gt = {"a": [obj(0, 0, 20, 20)]}
    res = evaluate(gt, [det("a", 2, 1, 22, 21, 0.9)], THRESHOLDS)
    lines = format_box_errors(res).splitlines()
    assert lines[0].split()[:3] == ["class", "TPs", "bias"]
    assert lines[2].split() == ["mito", "1", "+2.00", "+1.00", "+2.00", "+1.00", "+2.00", "+1.00",
                                "2.000", "1.000", "2.000", "1.000"]
    empty = format_box_errors(_small_results()).splitlines()
    assert any(line.split()[:3] == ["membrane", "0", "-"] for line in empty)   # no ground truth, no TP
    assert json.loads(json.dumps(results_to_json(res)))["classes"]["mito"]["box_error"]["n"] == 1


def test_error_breakdown_table_one_row_per_class_with_objects():
    res = _small_results()
    lines = format_error_breakdown(res, table_iou=0.5).splitlines()
    assert lines[0].split() == ["class", "AP@0.5", "+loc", "+dup", "+bg", "+rank", "missed", "score", "cut", "TP",
                                "loc", "dup", "bg", "not", "found"]
    # mito: TP, background FP, TP; dropping the FP gives AP 1, and so does ranking it last (its IoU is 0)
    assert lines[2].split() == ["mito", "0.833", "+0.000", "+0.000", "+0.167", "+0.167", "0", "0.700", "2", "0", "0",
                                "1", "0"]
    assert not any(line.startswith("membrane") for line in lines)      # no objects: no row
    errors = json.loads(json.dumps(results_to_json(res)))["classes"]["mito"]["errors"]["0.5"]
    assert errors["dap"]["background"] == pytest.approx(1.0 / 6.0)


def test_render_table_aligns_numbers_right():
    lines = render_table(["class", "AP"], [["mito", "0.5"], ["mAP", "-"]]).splitlines()
    assert lines[0] == "class   AP" and set(lines[1]) == {"-"} and lines[2] == "mito   0.5" and lines[3] == "mAP      -"
    md = render_table(["a", "b", "c"], [["x", "y", "1"]], markdown=True, text_columns=2).splitlines()
    assert md[1] == "|---|---|---:|" and md[2] == "| x | y | 1 |"


def test_plot_pr_curves_writes_png_atomically(tmp_path):
    out = tmp_path / "pr.png"
    plot_pr_curves(_small_results(), 0.5, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["pr.png"]
