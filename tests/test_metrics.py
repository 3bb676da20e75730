"""Tests of keras_frcnn_cryo.metrics against hand-computed answers, brute force and pycocotools."""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
from conftest import det, obj

from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.metrics import (
    box_error_summary,
    evaluate,
    evaluate_by_group,
    match_detections,
    ranked_ap,
    voc_ap,
)

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


# ------------------------------------------------------------------------------------------
# IoU and the AP integral
# ------------------------------------------------------------------------------------------
def test_voc_ap_hand_example():
    # recall steps 0.25, 0.25, 0.25, 0.25 (one repeated); envelope of precision from the right:
    # p = [1, 0.5, 0.4, 2/3, 0.5] at r = [.25, .25, .5, .75, .75] -> envelope [1, 2/3, 2/3, 2/3, .5]
    recall = [0.25, 0.25, 0.5, 0.75, 0.75]
    precision = [1.0, 0.5, 0.4, 2.0 / 3.0, 0.5]
    expected = 0.25 * 1.0 + 0.25 * (2.0 / 3.0) + 0.25 * (2.0 / 3.0)  # recall 0.75..1 never reached
    assert voc_ap(recall, precision) == pytest.approx(expected)
    assert voc_ap([], []) == 0.0


def test_voc_ap_matches_integral_of_envelope():
    """Brute force: midpoint sum of p_interp(r) = max{p_i : r_i >= r} on a grid aligned with the steps."""
    rng = np.random.default_rng(0)
    n_gt = 20
    for _ in range(20):
        hits = rng.random(30) < 0.5
        ctp = np.cumsum(hits)
        recall = ctp / n_gt
        precision = ctp / np.arange(1, 31)
        grid = (np.arange(1000) + 0.5) / 1000.0  # breakpoints are multiples of 1/20: never on a midpoint
        interp = np.array([precision[recall >= r].max() if np.any(recall >= r) else 0.0 for r in grid])
        assert voc_ap(recall, precision) == pytest.approx(interp.mean(), abs=1e-12)


# ------------------------------------------------------------------------------------------
# known answers
# ------------------------------------------------------------------------------------------
def test_ranked_ap_agrees_with_the_box_evaluation():
    """ranked_ap on the TP flags of a box match gives evaluate's AP and best F1 (one AP arithmetic)."""
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 50, (4, 3, 2))
    gt = {f"im{i}": [obj(x, y, x + 30, y + 30) for x, y in corners[i]] for i in range(4)}
    dets = []
    for image, boxes in gt.items():
        for b in boxes:
            jitter = rng.uniform(-8, 8, 4)
            dets.append(det(image, b["x1"] + jitter[0], b["y1"] + jitter[1], b["x2"] + jitter[2], b["y2"] + jitter[3],
                            float(rng.uniform(0.2, 1.0))))
        dets.append(det(image, 200, 200, 230, 230, float(rng.uniform(0.2, 1.0))))
    for t in (0.5, 0.7):
        match = match_detections(gt, dets, "mito", t)
        ranked = ranked_ap(match["scores"], match["tp"], match["n_gt"])
        expected = evaluate(gt, dets, iou_thresholds=(t,))["per_class"]["mito"]["thresholds"][t]
        assert ranked["ap"] == pytest.approx(expected["ap"])
        assert ranked["f1"] == pytest.approx(expected["f1"])
        assert ranked["best_threshold"] == pytest.approx(expected["best_threshold"])


def test_ranked_ap_hand_example():
    # descending: FP 0.95, TP 0.9, TP 0.5 with 2 objects: precision 0, 1/2, 2/3 at recall 0, 1/2, 1
    assert ranked_ap([0.5, 0.95, 0.9], [True, False, True], 2)["ap"] == pytest.approx(2 / 3)
    best = ranked_ap([0.5, 0.1, 0.9], [True, False, True], 2)   # the FP ranked last: AP 1
    assert best["ap"] == pytest.approx(1.0) and best["f1"] == 1.0 and best["best_threshold"] == 0.5
    assert ranked_ap([], [], 2)["ap"] == 0.0 and math.isnan(ranked_ap([0.4], [False], 0)["ap"])


def test_perfect_predictions_ap_one_everywhere():
    gt = {"a": [obj(0, 0, 10, 10), obj(20, 20, 40, 35)], "b": [obj(5, 5, 25, 30)]}
    dets = [det(img, o["x1"], o["y1"], o["x2"], o["y2"], 0.9 - 0.1 * k)
            for k, (img, o) in enumerate((img, o) for img, objs in gt.items() for o in objs)]
    res = evaluate(gt, dets, THRESHOLDS)
    for t in THRESHOLDS:
        assert res["mAP"][t] == 1.0
        entry = res["per_class"]["mito"]["thresholds"][t]
        assert (entry["f1"], entry["precision"], entry["recall"]) == (1.0, 1.0, 1.0)
        assert entry["best_threshold"] == pytest.approx(0.7)
    assert res["per_class"]["mito"]["miou"] == 1.0
    assert res["mean"]["coco_ap"] == pytest.approx(1.0)


def test_no_predictions_give_zero_not_one():
    gt = {"a": [obj(0, 0, 10, 10)], "b": [obj(5, 5, 25, 30)]}
    res = evaluate(gt, [], THRESHOLDS)
    for t in THRESHOLDS:
        assert res["mAP"][t] == 0.0
        entry = res["per_class"]["mito"]["thresholds"][t]
        assert entry["f1"] == 0.0 and entry["recall"] == 0.0 and entry["n_tp"] == 0
    assert res["mean"]["coco_ap"] == 0.0
    assert math.isnan(res["per_class"]["mito"]["miou"])


def test_false_positive_ranked_above_true_positive():
    gt = {"a": [obj(0, 0, 10, 10)]}
    dets = [det("a", 50, 50, 60, 60, 0.9), det("a", 0, 0, 10, 10, 0.8)]
    res = evaluate(gt, dets, THRESHOLDS)
    # recall 1 reached at precision 1/2
    assert all(res["mAP"][t] == pytest.approx(0.5) for t in THRESHOLDS)


def test_half_the_objects_found_without_fp():
    gt = {"a": [obj(0, 0, 10, 10), obj(20, 0, 30, 10)], "b": [obj(0, 0, 10, 10), obj(20, 0, 30, 10)]}
    dets = [det("a", 0, 0, 10, 10, 0.9), det("b", 20, 0, 30, 10, 0.3)]
    res = evaluate(gt, dets, THRESHOLDS)
    assert all(res["mAP"][t] == pytest.approx(0.5) for t in THRESHOLDS)
    entry = res["per_class"]["mito"]["thresholds"][0.5]
    assert entry["precision"] == 1.0 and entry["recall"] == 0.5 and entry["f1"] == pytest.approx(2.0 / 3.0)


def test_duplicates_one_tp_rest_fp():
    gt = {"a": [obj(0, 0, 10, 10)]}
    dets = [det("a", 0, 0, 10, 10, 0.5), det("a", 0, 0, 10, 9.5, 0.9), det("a", 0.5, 0, 10, 10, 0.7)]
    match = match_detections(gt, dets, "mito", 0.5)
    np.testing.assert_array_equal(match["scores"], [0.9, 0.7, 0.5])
    np.testing.assert_array_equal(match["tp"], [True, False, False])
    np.testing.assert_array_equal(match["fp"], [False, True, True])
    np.testing.assert_allclose(match["matched_iou"], [0.95])
    res = evaluate(gt, dets, THRESHOLDS)
    entry = res["per_class"]["mito"]["thresholds"][0.5]
    assert entry["ap"] == 1.0 and entry["n_tp"] == 1 and entry["n_fp"] == 2
    assert entry["best_threshold"] == 0.9 and entry["f1"] == 1.0


def test_keras_frcnn_counterexample_recall_steps():
    """Defect 7. One FP ranked first, then one TP.

    Two objects (one missed): cumulative (R, P) = (0, 0), (1/2, 1/2); recall rises once, by 1/2, at
    envelope precision 1/2 -> VOC AP = 1/2 * 1/2 = 0.25.
    Three objects (two missed): the single step is 1/3 at precision 1/2 -> VOC AP = 1/6.
    """
    dets = [det("a", 50, 50, 60, 60, 0.9), det("a", 0, 0, 10, 10, 0.8)]
    two = {"a": [obj(0, 0, 10, 10), obj(20, 20, 30, 30)]}
    three = {"a": [obj(0, 0, 10, 10), obj(20, 20, 30, 30), obj(70, 70, 80, 80)]}
    assert evaluate(two, dets, (0.5,))["mAP"][0.5] == pytest.approx(0.25)
    assert evaluate(three, dets, (0.5,))["mAP"][0.5] == pytest.approx(1.0 / 6.0)


def test_difficult_ground_truth_is_ignored():
    gt = {"a": [obj(0, 0, 10, 10), obj(30, 30, 40, 40, difficult=True)]}
    dets = [det("a", 30, 30, 40, 40, 0.95), det("a", 0, 0, 10, 10, 0.5)]
    match = match_detections(gt, dets, "mito", 0.5)
    assert match["n_gt"] == 1
    np.testing.assert_array_equal(match["ignored"], [True, False])
    np.testing.assert_array_equal(match["tp"], [False, True])
    np.testing.assert_array_equal(match["fp"], [False, False])
    res = evaluate(gt, dets, THRESHOLDS)
    assert res["mAP"][0.5] == 1.0
    assert res["per_class"]["mito"]["thresholds"][0.5]["n_ignored"] == 1
    assert res["per_class"]["mito"]["coco_ap"] == pytest.approx(1.0)
    # missing the difficult object costs nothing
    assert evaluate(gt, dets[1:], THRESHOLDS)["mAP"][0.9] == 1.0


def test_false_positives_on_images_without_ground_truth_count():
    gt = {"a": [obj(0, 0, 10, 10)], "empty": []}
    dets = [det("empty", 0, 0, 10, 10, 0.9), det("unlisted", 0, 0, 10, 10, 0.8), det("a", 0, 0, 10, 10, 0.7)]
    match = match_detections(gt, dets, "mito", 0.5)
    np.testing.assert_array_equal(match["fp"], [True, True, False])
    res = evaluate(gt, dets, THRESHOLDS)
    assert res["mAP"][0.5] == pytest.approx(1.0 / 3.0)
    assert res["per_class"]["mito"]["thresholds"][0.5]["n_fp"] == 2


def test_voc_rule_takes_the_most_overlapping_gt_only():
    """VOC: a detection whose best gt is taken is a duplicate, even if another gt is free (COCO differs)."""
    gt = {"a": [obj(0, 0, 10, 10), obj(2, 0, 12, 10)]}
    dets = [det("a", 0, 0, 10, 10, 0.9), det("a", 0.5, 0, 10.5, 10, 0.8)]
    # second detection: IoU 9.5/10.5 with the first (taken) box, 8.5/11.5 with the second
    match = match_detections(gt, dets, "mito", 0.5)
    np.testing.assert_array_equal(match["tp"], [True, False])
    res = evaluate(gt, dets, (0.5,))
    assert res["mAP"][0.5] == pytest.approx(0.5)
    # COCO rule: the second detection takes the free box (IoU 0.739) for t <= 0.70 -> AP 1 there;
    # for t >= 0.75 recall 1/2 at precision 1 -> 101-point AP = 51/101 (points 0, 0.01, ..., 0.50).
    cls = res["per_class"]["mito"]
    assert cls["ap50"] == pytest.approx(1.0)
    assert cls["ap75"] == pytest.approx(51.0 / 101.0)
    assert cls["coco_ap"] == pytest.approx((5 * 1.0 + 5 * 51.0 / 101.0) / 10.0)


def test_mean_iou_is_a_mean():
    gt = {"a": [obj(0, 0, 10, 10)], "b": [obj(0, 0, 10, 10)], "c": [obj(0, 0, 10, 10)]}
    dets = [det("a", 0, 0, 10, 6, 0.9),    # IoU 0.6
            det("b", 0, 0, 10, 9, 0.8),    # IoU 0.9
            det("c", 0, 0, 10, 3, 0.7)]    # IoU 0.3: below 0.5, an FP, not part of the mean
    res = evaluate(gt, dets, THRESHOLDS)
    cls = res["per_class"]["mito"]
    assert cls["miou"] == pytest.approx(0.75) and cls["n_miou"] == 2
    assert cls["thresholds"][0.7]["mean_iou"] == pytest.approx(0.9)
    assert res["mean"]["miou"] == pytest.approx(0.75)


def test_box_errors_of_true_positives_only():
    """Signed errors are detection minus truth per side, over the TPs at the mean-IoU threshold; a
    duplicate (FP) and a miss below IoU 0.5 do not count."""
    gt = {"a": [obj(0, 0, 20, 20)], "b": [obj(10, 10, 30, 40)], "c": [obj(0, 0, 20, 20)]}
    dets = [det("a", 2, 0, 22, 20, 0.9),       # shifted 2 px right: IoU 18/22
            det("a", 0, 0, 20, 20, 0.8),       # duplicate of a: an FP, not counted
            det("b", 10, 9, 30, 43, 0.7),      # 1 px higher, 3 px taller at the bottom
            det("c", 15, 15, 35, 35, 0.6)]     # IoU 25/775: missed, not counted
    err = evaluate(gt, dets, THRESHOLDS)["per_class"]["mito"]["box_error"]
    assert err["n"] == 2
    assert err["bias"] == pytest.approx([1.0, -0.5, 1.0, 1.5])
    assert err["mean_abs"] == pytest.approx([1.0, 0.5, 1.0, 1.5])
    assert err["centre_bias"] == pytest.approx([1.0, 0.5])     # a: (2, 0), b: (0, 1)
    assert err["size_bias"] == pytest.approx([0.0, 2.0])       # a: (0, 0), b: (0, 4)
    none = box_error_summary(np.full((3, 4), np.nan))
    assert none["n"] == 0 and all(math.isnan(v) for v in none["bias"] + none["size_bias"])


def test_error_breakdown_hand_example():
    """Each kind of false positive and the AP its fix gains, computed by hand at IoU 0.7."""
    gt = {"a": [obj(0, 0, 10, 10), obj(20, 20, 30, 30)], "b": [obj(0, 0, 10, 10)], "c": [obj(0, 0, 10, 10)]}
    dets = [det("a", 0, 0, 10, 10, 0.9),       # TP
            det("a", 0, 0, 10, 9, 0.8),        # IoU 0.9 with the taken box: duplicate
            det("b", 0, 0, 10, 5, 0.7),        # IoU 0.5: localisation
            det("a", 20, 20, 30, 30, 0.65),    # TP
            det("a", 50, 50, 60, 60, 0.6),     # background
            det("z", 0, 0, 10, 10, 0.1)]       # an image without objects: background
    err = evaluate(gt, dets, THRESHOLDS)["per_class"]["mito"]["errors"][0.7]
    # 4 objects; TP FP FP TP FP FP: AP = 1/4 * 1 + 1/4 * 1/2
    assert err["ap"] == pytest.approx(0.375)
    # localisation fixed (matched at 0.1): TP FP TP TP FP FP -> 1/4 + 1/4 * 3/4 + 1/4 * 3/4
    assert err["dap"]["localisation"] == pytest.approx(0.625 - 0.375)
    # duplicate dropped: TP FP TP FP FP -> 1/4 + 1/4 * 2/3
    assert err["dap"]["duplicate"] == pytest.approx(0.25 + 0.25 * 2 / 3 - 0.375)
    assert err["dap"]["background"] == pytest.approx(0.0)   # both come after the last TP
    # ranked by true IoU (1, 1, 0.9, 0.5, 0, 0): TP TP FP FP FP FP -> 1/4 + 1/4
    assert err["dap"]["ranking"] == pytest.approx(0.5 - 0.375)
    assert err["missed"] == 1                               # image c: nothing near its object
    # best F1 at the cut 0.65 (P 2/4, R 2/4): the duplicate and the loose box are kept, the background not
    assert err["at_best_f1"] == {"score_threshold": pytest.approx(0.65), "tp": 2, "localisation": 1,
                                 "duplicate": 1, "background": 0, "missed": 2}
    none = evaluate({}, [det("a", 0, 0, 5, 5, 0.5)], THRESHOLDS)["per_class"]["mito"]["errors"][0.5]
    assert math.isnan(none["ap"]) and none["at_best_f1"]["background"] == 0


def test_best_f1_never_splits_tied_scores():
    gt = {"a": [obj(0, 0, 10, 10)]}
    dets = [det("a", 0, 0, 10, 10, 0.5), det("a", 40, 40, 50, 50, 0.5)]  # TP listed first, same score
    entry = evaluate(gt, dets, (0.5,))["per_class"]["mito"]["thresholds"][0.5]
    assert entry["f1"] == pytest.approx(2.0 / 3.0)  # splitting the tie would claim 1.0
    assert entry["best_threshold"] == 0.5 and entry["n_fp_at_best"] == 1


def test_fixed_score_operating_point():
    gt = {"a": [obj(0, 0, 10, 10), obj(20, 0, 30, 10)]}
    dets = [det("a", 0, 0, 10, 10, 0.9), det("a", 20, 0, 30, 10, 0.3), det("a", 50, 50, 60, 60, 0.2)]
    res = evaluate(gt, dets, (0.5,), score_threshold=0.8)
    at = res["per_class"]["mito"]["thresholds"][0.5]["at_score"]
    assert (at["precision"], at["recall"], at["n_tp"], at["n_fp"]) == (1.0, 0.5, 1, 0)
    assert at["f1"] == pytest.approx(2.0 / 3.0)
    best = res["per_class"]["mito"]["thresholds"][0.5]
    assert (best["f1"], best["best_threshold"]) == (1.0, 0.3)  # the best cut keeps both TPs


def test_class_without_ground_truth_is_nan_and_left_out_of_the_mean():
    gt = {"a": [obj(0, 0, 10, 10)]}
    dets = [det("a", 0, 0, 10, 10, 0.9), det("a", 0, 0, 10, 10, 0.8, cls="vesicle")]
    res = evaluate(gt, dets, THRESHOLDS)
    assert res["classes"] == ["mito", "vesicle"]
    assert math.isnan(res["per_class"]["vesicle"]["thresholds"][0.5]["ap"])
    assert res["per_class"]["vesicle"]["thresholds"][0.5]["n_fp"] == 1
    assert res["mAP"][0.5] == 1.0 and res["mean"]["coco_ap"] == pytest.approx(1.0)


def test_two_classes_do_not_match_each_other():
    gt = {"a": [obj(0, 0, 10, 10, cls="mito"), obj(20, 20, 30, 30, cls="vesicle")]}
    dets = [det("a", 0, 0, 10, 10, 0.9, cls="vesicle"), det("a", 20, 20, 30, 30, 0.8, cls="vesicle")]
    res = evaluate(gt, dets, (0.5,))
    assert res["per_class"]["mito"]["thresholds"][0.5]["ap"] == 0.0
    assert res["per_class"]["vesicle"]["thresholds"][0.5]["ap"] == pytest.approx(0.5)
    assert res["mAP"][0.5] == pytest.approx(0.25)


def test_bad_input_raises_cryo_error():
    with pytest.raises(CryoError, match="x2"):
        evaluate({"a": [{"class": "mito", "x1": 0, "y1": 0, "y2": 5}]}, [])
    with pytest.raises(CryoError, match="x2 < x1"):
        evaluate({"a": [obj(10, 0, 0, 5)]}, [])


# ------------------------------------------------------------------------------------------
# per group (per tomogram)
# ------------------------------------------------------------------------------------------
def test_evaluate_by_group():
    gt = {"A0": [obj(0, 0, 10, 10)], "A1": [obj(0, 0, 10, 10)],
          "B0": [obj(0, 0, 10, 10), obj(20, 0, 30, 10)], "B1": []}
    dets = [det("A0", 0, 0, 10, 10, 0.9), det("A1", 0, 0, 10, 10, 0.8),
            det("B0", 0, 0, 10, 8, 0.7)]  # IoU 0.8 >= 0.7: TP; the other B object is missed
    groups = {"A0": "tomoA", "A1": "tomoA", "B0": "tomoB", "B1": "tomoB", "B2": "tomoB"}
    table = evaluate_by_group(gt, dets, groups, iou_threshold=0.7)
    assert set(table) == {"tomoA", "tomoB"}
    a, b = table["tomoA"], table["tomoB"]
    assert (a["f1"], a["ap"], a["miou"], a["precision"], a["recall"]) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert (a["n_images"], a["n_gt"]) == (2, 2)
    assert b["ap"] == pytest.approx(0.5) and b["recall"] == 0.5 and b["precision"] == 1.0
    assert b["f1"] == pytest.approx(2.0 / 3.0) and b["miou"] == pytest.approx(0.8)
    assert (b["n_images"], b["n_gt"]) == (3, 2)
    with pytest.raises(CryoError, match="no group"):
        evaluate_by_group(gt, dets, {"A0": "tomoA"})


# ------------------------------------------------------------------------------------------
# agreement with pycocotools
# ------------------------------------------------------------------------------------------
def _random_dataset(seed: int, n_images: int = 20, crowded_image: bool = False):
    rng = np.random.default_rng(seed)
    classes = ["mito", "vesicle"]
    gt, dets = {}, []
    for img in range(1, n_images + 1):
        objects = []
        for cls in classes:
            for _ in range(rng.integers(0, 5)):
                x1, y1 = rng.uniform(0, 200, 2)
                w, h = rng.uniform(8, 80, 2)
                objects.append(obj(x1, y1, x1 + w, y1 + h, cls=cls))
                for _ in range(rng.integers(0, 3)):  # 0-2 jittered detections per object
                    jx1, jy1 = x1 + rng.normal(0, 0.06 * w), y1 + rng.normal(0, 0.06 * h)
                    jw, jh = w * rng.uniform(0.85, 1.15), h * rng.uniform(0.85, 1.15)
                    dcls = cls if rng.random() < 0.9 else classes[1 - classes.index(cls)]
                    dets.append(det(img, jx1, jy1, jx1 + jw, jy1 + jh, float(rng.uniform(0.2, 1.0)), cls=dcls))
        for _ in range(rng.integers(0, 4)):  # random false positives
            x1, y1 = rng.uniform(0, 220, 2)
            w, h = rng.uniform(5, 60, 2)
            dets.append(det(img, x1, y1, x1 + w, y1 + h, float(rng.uniform(0.0, 0.8)), cls=classes[rng.integers(0, 2)]))
        gt[img] = objects
    if crowded_image:  # > 100 detections of one class on one image: both sides cut to 100 per image
        for _ in range(130):
            x1, y1 = rng.uniform(0, 200, 2)
            dets.append(det(1, x1, y1, x1 + rng.uniform(8, 80), y1 + rng.uniform(8, 80), float(rng.random())))
    return classes, gt, dets


def _pycocotools_stats(classes, gt, dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cat_id = {c: k + 1 for k, c in enumerate(classes)}
    anns = []
    for img, objects in gt.items():
        for o in objects:
            w, h = o["x2"] - o["x1"], o["y2"] - o["y1"]
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat_id[o["class"]],
                         "bbox": [o["x1"], o["y1"], w, h], "area": w * h, "iscrowd": 0})
    results = [{"image_id": d["image"], "category_id": cat_id[d["class"]], "score": d["score"],
                "bbox": [d["x1"], d["y1"], d["x2"] - d["x1"], d["y2"] - d["y1"]]} for d in dets]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": [{"id": img} for img in gt], "annotations": anns,
                           "categories": [{"id": cat_id[c], "name": c} for c in classes]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (T, R, K, A, M); area "all" = 0, maxDets 100 = 2
    per_class = {c: precision[:, :, k, 0, 2].mean() for k, c in enumerate(classes)}
    return ev.stats, per_class


@pytest.mark.parametrize("seed,crowded", [(0, False), (1, False), (2, True)])
def test_coco_ap_agrees_with_pycocotools(seed, crowded):
    classes, gt, dets = _random_dataset(seed, crowded_image=crowded)
    stats, per_class = _pycocotools_stats(classes, gt, dets)
    res = evaluate(gt, dets, (0.5,), classes=classes)
    assert res["mean"]["coco_ap"] == pytest.approx(stats[0], abs=1e-6)
    assert res["mean"]["ap50"] == pytest.approx(stats[1], abs=1e-6)
    assert res["mean"]["ap75"] == pytest.approx(stats[2], abs=1e-6)
    for c in classes:
        assert res["per_class"][c]["coco_ap"] == pytest.approx(per_class[c], abs=1e-6)
    assert 0.05 < stats[0] < 0.95  # a non-trivial case
