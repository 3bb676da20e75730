"""Detection metrics: VOC precision/recall/F1/AP at several IoU thresholds, mean IoU, COCO-style AP.

Li et al. (2019) report, per class and per tomogram, precision, recall, F1, AP at IoU 0.5 ... 0.9 and
the mean IoU of the detections. This module computes those numbers from plain Python data:

* ground truth: ``{image_id: [{"class": str, "x1", "y1", "x2", "y2": float, "difficult": bool}, ...]}``
  (``difficult`` may be missing: False). An image with no object is an empty list (or absent);
* detections: ``[{"image": image_id, "class": str, "x1", "y1", "x2", "y2": float, "score": float}, ...]``.

Boxes are float pixels ``[x1, y1, x2, y2]`` with width ``x2 - x1`` (no +1), as everywhere in the package.

Definitions (the ancestors' code got two of them wrong, fixes 7 and 12 in docs/fixes.md):

* **Matching (VOC devkit rule)**, :func:`match_detections`: detections of one class, in descending
  score (stable), each take the ground-truth box of the same image and class that it overlaps most.
  IoU >= threshold: a difficult box makes the detection *ignored* (neither TP nor FP); a box not yet
  taken makes it a TP; a taken box makes it a duplicate FP. Below the threshold, or on an image
  without ground truth of that class: FP.
* **AP (VOC all-point)**, :func:`voc_ap`: area under the precision envelope (precision made
  non-increasing from the right) summed over the recall steps. Missed objects only lower the
  recall reached, so no detections give AP 0 (keras-frcnn's measure_map gave 1). A class with no
  non-difficult ground truth has undefined AP (``nan``) and is left out of every mean over classes.
* **F1**: computed at every distinct score cut (a cut keeps all detections with score >= it, so tied
  scores are never split); the best F1, its score threshold and the precision, recall, TP and FP
  counts there are reported. Choosing the cut on the evaluated data is optimistic; pass
  ``score_threshold`` to :func:`evaluate` for the numbers at a fixed operating point as well.
* **Mean IoU** (``miou``): the arithmetic mean of the IoU between each true positive and its
  ground-truth box, over every TP of the class when matching at IoU ``miou_iou_threshold`` (0.5),
  all scores included (the detections given are the ones counted: filter them by score first if
  wanted). ``nan`` when there is no TP. Each per-threshold entry also has ``mean_iou``, the same
  mean over the TPs at that threshold.
* **COCO-style AP**: COCOeval's rule for area "all" and maxDets 100: per image and class, detections
  sorted by score and cut to ``max_detections``; each detection takes the unmatched ground truth box
  with the highest IoU >= t, preferring non-difficult boxes (difficult ones play COCO's "ignore"
  role: a detection matched to one is ignored); precision interpolated at 101 recall points,
  averaged over IoU 0.50:0.05:0.95 (``coco_ap``), and reported at 0.5 (``ap50``) and 0.75 (``ap75``).
* **Where AP is lost** (``errors``, :func:`error_breakdown`, after Bolya et al.'s TIDE, 2020): at each
  IoU threshold t every false positive is *localisation* (its nearest box, IoU in [0.1, t)),
  *duplicate* (IoU >= t with a box already taken) or *background* (IoU < 0.1 with every box); each
  kind's ``dap`` is the AP gained when those errors are fixed (localisation: boxes that reach IoU 0.1
  count as placed right; duplicates and background: those detections are dropped), counted at the
  best-F1 score cut too, with the objects no detection comes near (``missed``). ``dap["ranking"]`` is
  the AP gained when the same detections are ranked by their true IoU instead of their score: the
  most that a score following box quality could give (the rest of the loss is in the boxes).
* **Means over classes** (the ``"mAP"``/``"mean"`` rows): the unweighted mean of the class values
  over the classes that have ground truth (a class's ``nan`` values are skipped).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .boxes import iou_matrix
from .errors import CryoError

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "COCO_RECALL_POINTS",
    "match_detections",
    "voc_ap",
    "ranked_ap",
    "coco_interpolated_ap",
    "coco_evaluate_class",
    "evaluate",
    "evaluate_by_group",
    "error_breakdown",
    "threshold_key",
]

GroundTruth = Mapping[Hashable, Sequence[Mapping[str, Any]]]
Detections = Sequence[Mapping[str, Any]]

# COCOeval's grids, built the way pycocotools builds them so that thresholds compare identically.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)
_COCO_MAX_DETECTIONS = 100
_BOX_KEYS = ("x1", "y1", "x2", "y2")
# Below this IoU with every object a false positive is "background" (TIDE's background threshold).
ERROR_IOU_FLOOR = 0.1


# ------------------------------------------------------------------------------------------
# input handling
# ------------------------------------------------------------------------------------------
def _read_box(obj: Mapping[str, Any], where: str) -> list[float]:
    """[x1, y1, x2, y2] floats of one record; CryoError when a key is missing or the box is invalid."""
    try:
        box = [float(obj[key]) for key in _BOX_KEYS]
    except KeyError as exc:
        raise CryoError(f"{where}: box without key {exc.args[0]!r}") from None
    if not all(math.isfinite(v) for v in box):
        raise CryoError(f"{where}: non-finite box coordinates {box}")
    if box[2] < box[0] or box[3] < box[1]:
        raise CryoError(f"{where}: box with x2 < x1 or y2 < y1: {box}")
    return box


def _class_of(obj: Mapping[str, Any], where: str) -> str:
    if "class" not in obj:
        raise CryoError(f"{where}: record without a 'class' key")
    return str(obj["class"])


def _gt_for_class(gt: GroundTruth, class_name: str) -> dict[Hashable, tuple[np.ndarray, np.ndarray]]:
    """image_id -> (boxes float64 (G, 4), difficult bool (G,)) for the boxes of ``class_name``."""
    out: dict[Hashable, tuple[np.ndarray, np.ndarray]] = {}
    for image_id, objects in gt.items():
        boxes, difficult = [], []
        for k, obj in enumerate(objects):
            where = f"ground truth of image {image_id!r}, object {k}"
            if _class_of(obj, where) != class_name:
                continue
            boxes.append(_read_box(obj, where))
            difficult.append(bool(obj.get("difficult", False)))
        if boxes:
            out[image_id] = (np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(difficult, dtype=bool))
    return out


def _detections_for_class(detections: Detections, class_name: str) -> tuple[list[Hashable], np.ndarray, np.ndarray]:
    """(image ids, boxes float64 (D, 4), scores float64 (D,)) of ``class_name``, in descending score.

    The sort is stable: detections with equal scores keep their input order.
    """
    images: list[Hashable] = []
    boxes: list[list[float]] = []
    scores: list[float] = []
    for k, det in enumerate(detections):
        where = f"detection {k}"
        if _class_of(det, where) != class_name:
            continue
        if "image" not in det or "score" not in det:
            raise CryoError(f"{where}: record needs 'image' and 'score' keys")
        score = float(det["score"])
        if not math.isfinite(score):
            raise CryoError(f"{where}: non-finite score {score}")
        images.append(det["image"])
        boxes.append(_read_box(det, where))
        scores.append(score)
    score_arr = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-score_arr, kind="stable")
    return ([images[i] for i in order], np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[order], score_arr[order])


def _all_classes(gt: GroundTruth, detections: Detections) -> list[str]:
    names = {_class_of(obj, f"ground truth of image {img!r}") for img, objs in gt.items() for obj in objs}
    names |= {_class_of(det, f"detection {k}") for k, det in enumerate(detections)}
    return sorted(names)


# ------------------------------------------------------------------------------------------
# VOC matching and AP
# ------------------------------------------------------------------------------------------
class _VocPrepared:
    """Threshold-independent part of VOC matching for one class: each detection's best gt and IoU."""

    def __init__(self, gt: GroundTruth, detections: Detections, class_name: str):
        gt_class = _gt_for_class(gt, class_name)
        self.images, self.boxes, self.scores = _detections_for_class(detections, class_name)
        self.n_gt = int(sum(int((~difficult).sum()) for _, difficult in gt_class.values()))
        n_det = len(self.images)
        # global gt index (image offset + position), best IoU and whether that gt is difficult
        offsets: dict[Hashable, int] = {}
        total = 0
        for image_id, (boxes, _) in gt_class.items():
            offsets[image_id] = total
            total += len(boxes)
        self.gt_boxes = (np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1, 4) for b, _ in gt_class.values()])
                         if gt_class else np.zeros((0, 4)))
        self.best_gt = np.full(n_det, -1, dtype=np.int64)
        self.best_iou = np.zeros(n_det, dtype=np.float64)
        self.best_difficult = np.zeros(n_det, dtype=bool)
        for d, image_id in enumerate(self.images):
            if image_id not in gt_class:
                continue
            gt_boxes, difficult = gt_class[image_id]
            overlaps = iou_matrix(self.boxes[d : d + 1], gt_boxes)[0]
            j = int(np.argmax(overlaps))  # first maximum, as the devkit's argmax
            self.best_gt[d] = offsets[image_id] + j
            self.best_iou[d] = overlaps[j]
            self.best_difficult[d] = difficult[j]
        self.n_gt_boxes = total

    def rescored(self, scores: np.ndarray) -> _VocPrepared:
        """The same detections with new ``scores`` (one per detection, in this order), re-sorted by
        them (descending, stable) as :meth:`match` expects."""
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        other = copy.copy(self)
        other.images = [self.images[i] for i in order]
        for name in ("boxes", "best_gt", "best_iou", "best_difficult"):
            setattr(other, name, getattr(self, name)[order])
        other.scores = np.asarray(scores, dtype=np.float64)[order]
        return other

    def match(self, iou_threshold: float) -> dict[str, Any]:
        n_det = len(self.images)
        tp = np.zeros(n_det, dtype=bool)
        fp = np.zeros(n_det, dtype=bool)
        ignored = np.zeros(n_det, dtype=bool)
        taken = np.zeros(self.n_gt_boxes, dtype=bool)
        for d in range(n_det):
            g = self.best_gt[d]
            if g < 0 or self.best_iou[d] < iou_threshold:
                fp[d] = True
            elif self.best_difficult[d]:
                ignored[d] = True
            elif not taken[g]:
                tp[d] = True
                taken[g] = True
            else:
                fp[d] = True
        iou = np.where(tp, self.best_iou, np.nan)
        errors = np.full((n_det, 4), np.nan)
        errors[tp] = self.boxes[tp] - self.gt_boxes[self.best_gt[tp]]
        return {
            "scores": self.scores.copy(),
            "images": list(self.images),
            "tp": tp,
            "fp": fp,
            "ignored": ignored,
            "iou": iou,
            "matched_iou": self.best_iou[tp].copy(),
            "box_errors": errors,
            "n_gt": self.n_gt,
            "iou_threshold": float(iou_threshold),
        }


def box_error_summary(errors: np.ndarray) -> dict[str, Any]:
    """How far matched boxes lie from the truth, from (D, 4) detection-minus-truth errors (x1 y1 x2 y2,
    image px; rows with nan, the unmatched detections, are left out).

    Returns ``{"n": matched boxes, "bias": mean signed error of x1 y1 x2 y2, "mean_abs": mean absolute
    error of each side, "centre_bias": mean (dx, dy) of the box centre, "size_bias": mean (dw, dh)}``
    (lists of floats; nan without a match). A bias far above its scatter / sqrt(n) is a systematic
    offset (a coordinate convention, a shifted volume); a mean |error| of a few px with no bias is the
    scatter that decides AP at IoU 0.8-0.9.
    """
    rows = np.asarray(errors, dtype=np.float64).reshape(-1, 4)
    rows = rows[np.isfinite(rows).all(axis=1)]
    if rows.shape[0] == 0:
        return {"n": 0, "bias": [math.nan] * 4, "mean_abs": [math.nan] * 4, "centre_bias": [math.nan] * 2,
                "size_bias": [math.nan] * 2}
    centre = (rows[:, :2] + rows[:, 2:]) / 2.0
    size = rows[:, 2:] - rows[:, :2]
    return {"n": int(rows.shape[0]), "bias": rows.mean(axis=0).tolist(),
            "mean_abs": np.abs(rows).mean(axis=0).tolist(), "centre_bias": centre.mean(axis=0).tolist(),
            "size_bias": size.mean(axis=0).tolist()}


def match_detections(gt: GroundTruth, detections: Detections, class_name: str, iou_threshold: float) -> dict[str, Any]:
    """Match the detections of ``class_name`` to the ground truth with the VOC devkit rule.

    Returns a dict of arrays over that class's D detections, sorted by descending score (stable):
    ``scores`` float64 (D,), ``images`` list (D,), ``tp``/``fp``/``ignored`` bool (D,) (exactly one is
    True per detection; ignored = matched to a difficult box), ``iou`` float64 (D,) (the matched IoU for
    TPs, nan elsewhere), ``box_errors`` float64 (D, 4) (each TP's box minus its matched box, x1 y1 x2
    y2 in image px; nan elsewhere), ``matched_iou`` float64 (n_tp,) (IoU of each TP, in score order), plus
    ``n_gt`` (non-difficult boxes of the class) and ``iou_threshold``.
    """
    return _VocPrepared(gt, detections, class_name).match(iou_threshold)


def _ap_without(match: dict[str, Any], drop: np.ndarray | None = None) -> float:
    """VOC AP of ``match`` (a :meth:`_VocPrepared.match` dict), with the detections in ``drop`` left out."""
    if drop is not None:
        match = {**{key: match[key][~drop] for key in ("scores", "tp", "fp", "ignored")}, "n_gt": match["n_gt"]}
    _, _, _, precision, recall = _pr_curve(match)
    return voc_ap(recall, precision)


def _ranked_by_truth_ap(prepared: _VocPrepared, iou_threshold: float) -> float:
    """VOC AP at ``iou_threshold`` of the same detections ranked by their true IoU (their best IoU with
    a box of their class, 0 without one) instead of their score: what a score that followed box
    quality exactly would give, with no box moved or dropped."""
    return _ap_without(prepared.rescored(prepared.best_iou).match(iou_threshold))


def error_breakdown(prepared: _VocPrepared, match: dict[str, Any], entry: Mapping[str, Any],
                    loose_ap: float, floor: float = ERROR_IOU_FLOOR) -> dict[str, Any]:
    """What keeps one class's AP at ``match``'s IoU threshold below 1 (see the module docstring).

    ``match`` is ``prepared.match(t)``, ``entry`` :func:`evaluate`'s figures at t (its ``ap`` and its
    best-F1 score cut ``best_threshold``, nan without one) and ``loose_ap`` the AP of
    ``prepared.match(floor)`` (every box reaching IoU ``floor`` placed right).
    Returns ``{"ap": AP, "dap": {"localisation", "duplicate", "background": AP gained by fixing that
    kind, "ranking": AP gained by ranking the same detections by their true IoU}, "missed": objects
    that no detection (any score) has as its nearest box at IoU >= floor,
    "at_best_f1": {"score_threshold", "tp", "localisation", "duplicate", "background": detection
    counts at the best-F1 score cut, "missed": objects left without a TP there}}`` (nan AP and
    dAPs without ground truth).
    """
    n_gt, ap, best_threshold = match["n_gt"], entry["ap"], entry["best_threshold"]
    near = (prepared.best_gt >= 0) & (prepared.best_iou >= floor)
    duplicate = match["fp"] & near & (prepared.best_iou >= match["iou_threshold"])
    background = match["fp"] & ~near
    localisation = match["fp"] & near & ~duplicate
    at_cut = (match["scores"] >= best_threshold if math.isfinite(best_threshold)
              else np.zeros(len(match["scores"]), bool))
    reached = np.zeros(prepared.n_gt_boxes, dtype=bool)
    reached[prepared.best_gt[near & ~prepared.best_difficult]] = True
    if n_gt > 0:
        dap = {"localisation": loose_ap - ap, "duplicate": _ap_without(match, duplicate) - ap,
               "background": _ap_without(match, background) - ap,
               "ranking": _ranked_by_truth_ap(prepared, match["iou_threshold"]) - ap}
    else:
        dap = {key: math.nan for key in ("localisation", "duplicate", "background", "ranking")}
    return {
        "ap": ap,
        "dap": dap,
        "missed": int(n_gt - int(reached.sum())),
        "at_best_f1": {"score_threshold": best_threshold, "tp": int((match["tp"] & at_cut).sum()),
                       "localisation": int((localisation & at_cut).sum()),
                       "duplicate": int((duplicate & at_cut).sum()),
                       "background": int((background & at_cut).sum()),
                       "missed": int(n_gt - int((match["tp"] & at_cut).sum()))},
    }


def voc_ap(recall: Sequence[float] | np.ndarray, precision: Sequence[float] | np.ndarray) -> float:
    """VOC all-point interpolated AP from cumulative ``recall`` and ``precision`` (1-D, same length).

    The arrays follow the detections in descending score (recall non-decreasing). Precision is
    replaced by its running maximum from the right and summed over the recall increments. Empty
    arrays (no detections) give 0.0. Undefined AP (no ground truth) is the caller's case: see
    :func:`evaluate`, which reports nan there.
    """
    rec = np.asarray(recall, dtype=np.float64).ravel()
    prec = np.asarray(precision, dtype=np.float64).ravel()
    if rec.shape != prec.shape:
        raise ValueError(f"recall and precision differ in length: {rec.shape} vs {prec.shape}")
    if rec.size == 0:
        return 0.0
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _pr_curve(match: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scores, cumulative tp, cumulative fp, precision, recall) over the non-ignored detections.

    Recall is nan everywhere when the class has no ground truth.
    """
    keep = ~match["ignored"]
    scores = match["scores"][keep]
    ctp = np.cumsum(match["tp"][keep]).astype(np.float64)
    cfp = np.cumsum(match["fp"][keep]).astype(np.float64)
    precision = ctp / np.maximum(ctp + cfp, 1.0)
    n_gt = match["n_gt"]
    recall = ctp / n_gt if n_gt > 0 else np.full_like(ctp, np.nan)
    return scores, ctp, cfp, precision, recall


def _best_f1(scores: np.ndarray, ctp: np.ndarray, cfp: np.ndarray, n_gt: int) -> dict[str, Any]:
    """Best F1 over the distinct score cuts (ties never split); the highest cut wins ties in F1."""
    if n_gt == 0:
        return {"f1": math.nan, "best_threshold": math.nan, "precision": math.nan, "recall": math.nan,
                "n_tp_at_best": 0, "n_fp_at_best": int(cfp[-1]) if cfp.size else 0}
    if scores.size == 0:
        return {"f1": 0.0, "best_threshold": math.nan, "precision": 0.0, "recall": 0.0,
                "n_tp_at_best": 0, "n_fp_at_best": 0}
    cuts = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))  # last index of each score run
    tp, fp = ctp[cuts], cfp[cuts]
    precision = tp / np.maximum(tp + fp, 1.0)
    recall = tp / n_gt
    denom = precision + recall
    f1 = np.divide(2.0 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    k = int(np.argmax(f1))
    return {"f1": float(f1[k]), "best_threshold": float(scores[cuts[k]]), "precision": float(precision[k]),
            "recall": float(recall[k]), "n_tp_at_best": int(tp[k]), "n_fp_at_best": int(fp[k])}


def _at_score(scores: np.ndarray, ctp: np.ndarray, cfp: np.ndarray, n_gt: int, score_threshold: float) -> dict[str, Any]:
    """Precision, recall and F1 of the detections with score >= ``score_threshold``."""
    count = int(np.sum(scores >= score_threshold))
    tp = float(ctp[count - 1]) if count else 0.0
    fp = float(cfp[count - 1]) if count else 0.0
    precision = tp / (tp + fp) if count else 0.0
    recall = tp / n_gt if n_gt > 0 else math.nan
    if n_gt == 0:
        f1 = math.nan
    else:
        f1 = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"score_threshold": float(score_threshold), "f1": f1, "precision": precision, "recall": recall,
            "n_tp": int(tp), "n_fp": int(fp)}


def ranked_ap(scores: Sequence[float] | np.ndarray, tp: Sequence[bool] | np.ndarray, n_gt: int) -> dict[str, Any]:
    """AP and best F1 of already-matched predictions (any kind: 2D boxes, 3D objects).

    ``scores`` (N,) and ``tp`` (N,) bool, one entry per prediction in any order (sorted here by
    descending score, stable); ``n_gt``: the ground-truth objects. Returns ``{"ap", "f1",
    "best_threshold", "precision", "recall", "n_tp_at_best", "n_fp_at_best"}`` (:func:`voc_ap`; the
    best F1 over whole score cuts as in :func:`evaluate`); AP and F1 are nan without ground truth.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    flags = np.asarray(tp, dtype=bool).ravel()
    if scores.shape != flags.shape:
        raise ValueError(f"scores and tp differ in length: {scores.shape} vs {flags.shape}")
    order = np.argsort(-scores, kind="stable")
    scores, flags = scores[order], flags[order]
    ctp = np.cumsum(flags).astype(np.float64)
    cfp = np.cumsum(~flags).astype(np.float64)
    best = _best_f1(scores, ctp, cfp, n_gt)
    ap = voc_ap(ctp / n_gt, ctp / np.maximum(ctp + cfp, 1.0)) if n_gt > 0 else math.nan
    return {"ap": ap, **best}


def _nanmean(values: Iterable[float]) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


# ------------------------------------------------------------------------------------------
# COCO-style AP
# ------------------------------------------------------------------------------------------
def coco_interpolated_ap(recall: np.ndarray, precision: np.ndarray,
                         recall_points: np.ndarray = COCO_RECALL_POINTS) -> float:
    """COCO's interpolated AP: mean over ``recall_points`` of the precision envelope at recall >= r.

    ``recall``/``precision`` are cumulative over detections in descending score (1-D, same length);
    recall points beyond the recall reached count as precision 0. Empty arrays give 0.0.
    """
    rec = np.asarray(recall, dtype=np.float64).ravel()
    prec = np.asarray(precision, dtype=np.float64).ravel()
    if rec.size == 0:
        return 0.0
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    idx = np.searchsorted(rec, recall_points, side="left")
    sampled = np.zeros(len(recall_points), dtype=np.float64)
    inside = idx < rec.size
    sampled[inside] = envelope[idx[inside]]
    return float(sampled.mean())


def coco_evaluate_class(gt: GroundTruth, detections: Detections, class_name: str,
                        iou_thresholds: Sequence[float] | np.ndarray = COCO_IOU_THRESHOLDS,
                        max_detections: int = _COCO_MAX_DETECTIONS) -> dict[str, Any]:
    """COCO-rule AP of one class at each IoU threshold (area "all", ``max_detections`` per image).

    Returns ``{"ap": float64 (T,), "iou_thresholds": float64 (T,), "n_gt": int}``; ``ap`` is nan
    everywhere when the class has no non-difficult ground truth. Difficult boxes are COCO's ignored
    ground truth: matched at most once, only when no free non-difficult box reaches the threshold,
    and a detection matched to one is left out of precision and recall.
    """
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).ravel()
    n_thr = len(thresholds)
    gt_class = _gt_for_class(gt, class_name)
    images, boxes, scores = _detections_for_class(detections, class_name)
    by_image: dict[Hashable, list[int]] = {}
    for d, image_id in enumerate(images):  # already in descending score, stable
        by_image.setdefault(image_id, []).append(d)
    image_order = list(gt_class) + [i for i in by_image if i not in gt_class]
    all_scores, all_matched, all_ignored = [], [], []
    n_gt = 0
    for image_id in image_order:
        if image_id in gt_class:
            gt_boxes, difficult = gt_class[image_id]
            order = np.argsort(difficult, kind="stable")  # non-difficult first, as COCOeval
            gt_boxes, difficult = gt_boxes[order], difficult[order]
        else:
            gt_boxes, difficult = np.zeros((0, 4)), np.zeros(0, dtype=bool)
        n_gt += int((~difficult).sum())
        dets = by_image.get(image_id, [])[:max_detections]
        if not dets:
            continue
        overlaps = iou_matrix(boxes[dets], gt_boxes)
        matched = np.zeros((n_thr, len(dets)), dtype=bool)
        ignored = np.zeros((n_thr, len(dets)), dtype=bool)
        for t, threshold in enumerate(thresholds):
            floor = min(float(threshold), 1.0 - 1e-10)
            taken = np.zeros(len(gt_boxes), dtype=bool)
            for d in range(len(dets)):
                row = overlaps[d]
                for pool in (~taken & ~difficult, ~taken & difficult):
                    candidates = np.flatnonzero(pool & (row >= floor))
                    if candidates.size:
                        values = row[candidates]
                        g = int(candidates[np.flatnonzero(values == values.max())[-1]])  # last maximum wins
                        taken[g] = True
                        matched[t, d] = True
                        ignored[t, d] = bool(difficult[g])
                        break
        all_scores.append(scores[dets])
        all_matched.append(matched)
        all_ignored.append(ignored)
    ap = np.full(n_thr, np.nan)
    if n_gt > 0:
        if all_scores:
            cat_scores = np.concatenate(all_scores)
            order = np.argsort(-cat_scores, kind="stable")
            matched = np.concatenate(all_matched, axis=1)[:, order]
            ignored = np.concatenate(all_ignored, axis=1)[:, order]
        else:
            matched = ignored = np.zeros((n_thr, 0), dtype=bool)
        for t in range(n_thr):
            keep = ~ignored[t]
            ctp = np.cumsum(matched[t][keep]).astype(np.float64)
            cfp = np.cumsum(~matched[t][keep]).astype(np.float64)
            precision = ctp / np.maximum(ctp + cfp, 1.0)
            ap[t] = coco_interpolated_ap(ctp / n_gt, precision)
    return {"ap": ap, "iou_thresholds": thresholds, "n_gt": n_gt}


def _coco_summary(per_threshold_ap: np.ndarray, thresholds: np.ndarray) -> dict[str, float]:
    def at(value: float) -> float:
        hits = np.flatnonzero(np.isclose(thresholds, value))
        return float(per_threshold_ap[hits[0]]) if hits.size else math.nan

    coco_ap = float(per_threshold_ap.mean()) if np.all(np.isfinite(per_threshold_ap)) else math.nan
    return {"coco_ap": coco_ap, "ap50": at(0.5), "ap75": at(0.75)}


# ------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------
def threshold_key(results: Mapping[str, Any], iou_threshold: float) -> float:
    """The IoU threshold of :func:`evaluate`'s ``results`` equal to ``iou_threshold``, as stored (a dict key);
    CryoError when it was not evaluated."""
    for t in results["iou_thresholds"]:
        if math.isclose(t, iou_threshold, abs_tol=1e-9):
            return t
    available = ", ".join(f"{t:g}" for t in results["iou_thresholds"])
    raise CryoError(f"IoU threshold {iou_threshold:g} was not evaluated (available: {available})")


def evaluate(gt: GroundTruth, detections: Detections,
             iou_thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
             classes: Sequence[str] | None = None, miou_iou_threshold: float = 0.5,
             score_threshold: float | None = None,
             max_detections: int = _COCO_MAX_DETECTIONS) -> dict[str, Any]:
    """Per-class and mean detection metrics.

    ``classes`` defaults to every class in ``gt`` or ``detections`` (sorted). Returns::

        {"iou_thresholds": [floats], "classes": [names], "miou_iou_threshold": float,
         "score_threshold": float | None,
         "per_class": {name: {"n_gt": int, "miou": float, "n_miou": int, "box_error": dict,
                              "coco_ap", "ap50", "ap75": float, "coco_ap_per_threshold": float64 (10,),
                              "thresholds": {t: entry}, "errors": {t: error_breakdown(..., t)}}},
         "mAP": {t: float},
         "mean": {"ap", "f1", "precision", "recall": {t: float}, "miou", "coco_ap", "ap50", "ap75": float}}

    where ``entry`` holds ``ap``; ``f1``, ``best_threshold`` (score cut), ``precision``, ``recall``,
    ``n_tp_at_best``, ``n_fp_at_best`` at the best F1; ``n_tp``, ``n_fp``, ``n_ignored`` over all
    detections; ``n_gt``; ``mean_iou`` (mean IoU of the TPs at t); curves ``precision_curve``,
    ``recall_curve``, ``score_curve`` (float64 (n_tp + n_fp,), descending score, ignored left out);
    and, when ``score_threshold`` is given, ``at_score`` (f1/precision/recall/n_tp/n_fp at score >= it).
    ``miou`` is the mean IoU of the TPs matched at ``miou_iou_threshold``, over all scores;
    ``box_error`` (:func:`box_error_summary`) says how far those TPs lie from their boxes.
    nan marks undefined values (no ground truth; no TP for a mean IoU; no detection for a score cut).
    """
    thresholds = [float(t) for t in iou_thresholds]
    if not thresholds:
        raise CryoError("no IoU thresholds to evaluate")
    for t in thresholds:
        if not 0.0 < t <= 1.0:
            raise CryoError(f"IoU threshold {t:g} outside (0, 1]")
    class_names = list(classes) if classes is not None else _all_classes(gt, detections)
    per_class: dict[str, Any] = {}
    for name in class_names:
        prepared = _VocPrepared(gt, detections, name)
        entries: dict[float, dict[str, Any]] = {}
        errors: dict[float, dict[str, Any]] = {}
        loose_ap = _ap_without(prepared.match(ERROR_IOU_FLOOR))
        for t in thresholds:
            match = prepared.match(t)
            scores, ctp, cfp, precision, recall = _pr_curve(match)
            n_gt = match["n_gt"]
            entry: dict[str, Any] = {
                "ap": voc_ap(recall, precision) if n_gt > 0 else math.nan,
                "n_gt": n_gt,
                "n_tp": int(match["tp"].sum()),
                "n_fp": int(match["fp"].sum()),
                "n_ignored": int(match["ignored"].sum()),
                "mean_iou": float(match["matched_iou"].mean()) if match["matched_iou"].size else math.nan,
                "precision_curve": precision,
                "recall_curve": recall,
                "score_curve": scores,
            }
            entry.update(_best_f1(scores, ctp, cfp, n_gt))
            if score_threshold is not None:
                entry["at_score"] = _at_score(scores, ctp, cfp, n_gt, score_threshold)
            entries[t] = entry
            errors[t] = error_breakdown(prepared, match, entry, loose_ap)
        miou_key = next((t for t in thresholds if math.isclose(t, miou_iou_threshold, abs_tol=1e-9)), None)
        miou_match = prepared.match(miou_iou_threshold if miou_key is None else miou_key)
        matched_iou = miou_match["matched_iou"]
        coco = coco_evaluate_class(gt, detections, name, max_detections=max_detections)
        per_class[name] = {
            "n_gt": prepared.n_gt,
            "miou": float(matched_iou.mean()) if matched_iou.size else math.nan,
            "n_miou": int(matched_iou.size),
            "box_error": box_error_summary(miou_match["box_errors"]),
            "coco_ap_per_threshold": coco["ap"],
            **_coco_summary(coco["ap"], coco["iou_thresholds"]),
            "thresholds": entries,
            "errors": errors,
        }
    valid = [name for name in class_names if per_class[name]["n_gt"] > 0]

    def mean_of(getter: Any) -> float:
        return _nanmean(getter(per_class[name]) for name in valid)

    mean: dict[str, Any] = {
        key: {t: mean_of(lambda c, t=t, key=key: c["thresholds"][t][key]) for t in thresholds}
        for key in ("ap", "f1", "precision", "recall")
    }
    for key in ("miou", "coco_ap", "ap50", "ap75"):
        mean[key] = mean_of(lambda c, key=key: c[key])
    if score_threshold is not None:
        mean["at_score"] = {
            t: {key: mean_of(lambda c, t=t, key=key: c["thresholds"][t]["at_score"][key])
                for key in ("f1", "precision", "recall")} for t in thresholds}
    return {
        "iou_thresholds": thresholds,
        "classes": class_names,
        "miou_iou_threshold": float(miou_iou_threshold),
        "score_threshold": None if score_threshold is None else float(score_threshold),
        "per_class": per_class,
        "mAP": dict(mean["ap"]),
        "mean": mean,
    }


def evaluate_by_group(gt: GroundTruth, detections: Detections, groups: Mapping[Hashable, Hashable],
                      iou_threshold: float = 0.7, classes: Sequence[str] | None = None,
                      miou_iou_threshold: float = 0.5, score_threshold: float | None = None) -> dict[Hashable, dict[str, Any]]:
    """Metrics per group of images (per tomogram: the paper's Table 2).

    ``groups`` maps every image id (of ``gt`` and of ``detections``) to its group; an image missing
    from it raises CryoError. Images of a group absent from ``gt`` have no objects. Returns
    ``{group: {"f1", "ap", "miou", "precision", "recall": float, "n_images", "n_gt": int,
    "operating_point": str, "per_class": {name: same keys}}}``; values are the means over the classes
    with ground truth in that group. F1, precision and recall are at the best-F1 score cut of the
    group, or at ``score >= score_threshold`` when given (``operating_point`` says which). AP is at
    ``iou_threshold``; ``miou`` is the mean IoU of the TPs at ``miou_iou_threshold``.
    """
    missing = [img for img in gt if img not in groups]
    missing += [det["image"] for det in detections if det.get("image") not in groups]
    if missing:
        raise CryoError(f"{len(missing)} image(s) have no group, e.g. {missing[0]!r}")
    class_names = list(classes) if classes is not None else _all_classes(gt, detections)
    members: dict[Hashable, list[Hashable]] = {}
    for image_id, group in groups.items():
        members.setdefault(group, []).append(image_id)
    point = "best_f1" if score_threshold is None else f"score>={score_threshold:g}"
    table: dict[Hashable, dict[str, Any]] = {}
    for group, image_ids in members.items():
        wanted = set(image_ids)
        sub_gt = {img: gt.get(img, []) for img in image_ids}
        sub_det = [det for det in detections if det["image"] in wanted]
        res = evaluate(sub_gt, sub_det, iou_thresholds=(iou_threshold,), classes=class_names,
                       miou_iou_threshold=miou_iou_threshold, score_threshold=score_threshold)
        t = res["iou_thresholds"][0]
        rows: dict[str, dict[str, Any]] = {}
        for name in class_names:
            cls = res["per_class"][name]
            entry = cls["thresholds"][t]
            src = entry if score_threshold is None else entry["at_score"]
            rows[name] = {"f1": src["f1"], "ap": entry["ap"], "miou": cls["miou"], "precision": src["precision"],
                          "recall": src["recall"], "n_gt": cls["n_gt"]}
        valid = [rows[name] for name in class_names if rows[name]["n_gt"] > 0]
        table[group] = {
            **{key: _nanmean(r[key] for r in valid) for key in ("f1", "ap", "miou", "precision", "recall")},
            "n_images": len(image_ids),
            "n_gt": int(sum(r["n_gt"] for r in rows.values())),
            "operating_point": point,
            "per_class": rows,
        }
    return table
