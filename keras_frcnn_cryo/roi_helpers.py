"""The two stages' glue (keras-frcnn's roi_helpers): RPN decoding (rpn_to_roi), classifier targets
(calc_iou) and RoI sampling (sample_rois).

numpy only. Every box is a float ``[x1, y1, x2, y2]`` in pixels of the resized (network-input) image,
0-based, x right, y down, width = x2 - x1 (no +1). Nothing is rounded to the feature grid: the RoIs
returned here are in pixels and the RoI pooling layer converts them with ``cfg.rpn_stride``.
The box arithmetic (IoU, coding, NMS) lives in :mod:`keras_frcnn_cryo.boxes` and is re-exported here
under keras-frcnn's module name.
"""
from __future__ import annotations

import numpy as np

from .anchors import generate_anchors
from .boxes import MAX_LOG_SCALE, BoxCoder, apply_regr, as_boxes, box_voting, clip_boxes, encode_boxes, iou_matrix, nms
from .config import Config

__all__ = ["MAX_LOG_SCALE", "apply_regr", "as_boxes", "box_voting", "calc_iou", "encode_boxes", "iou_matrix",
           "nms", "rpn_to_roi", "sample_rois"]


def rpn_to_roi(
    rpn_cls: np.ndarray, rpn_regr: np.ndarray, cfg: Config, img_width: int, img_height: int,
    max_proposals: int | None = None, min_score: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Turn the RPN outputs of one image into proposals.

    rpn_cls: (H, W, K) objectness in [0, 1]; rpn_regr: (H, W, 4K), channels 4k..4k+3 are anchor k's
    deltas weighted by ``BoxCoder.rpn(cfg)``. A leading batch axis of size 1 is accepted.
    Anchors come from :func:`keras_frcnn_cryo.anchors.generate_anchors` (as calc_rpn's targets).
    Steps: decode every anchor, clip to ``[0, img_width] x [0, img_height]``, drop boxes narrower or
    lower than ``cfg.rpn_min_box_size`` and those scoring below ``min_score``, keep the
    ``cfg.rpn_pre_nms_top_n`` best scores, NMS at ``cfg.rpn_nms_overlap``, keep at most
    ``max_proposals`` (default ``cfg.rpn_max_proposals``).

    Returns ``rois`` (M, 4) float64 in network-input pixels and their ``scores`` (M,), best first.
    """
    cls_map = np.asarray(rpn_cls)
    regr_map = np.asarray(rpn_regr)
    if cls_map.ndim == 4 and cls_map.shape[0] == 1:
        cls_map = cls_map[0]
    if regr_map.ndim == 4 and regr_map.shape[0] == 1:
        regr_map = regr_map[0]
    if cls_map.ndim != 3:
        raise ValueError(f"rpn_cls must have shape (H, W, K), got {np.shape(rpn_cls)}")
    feat_h, feat_w, num_anchors = cls_map.shape
    if num_anchors != cfg.num_anchors or regr_map.shape != (feat_h, feat_w, 4 * num_anchors):
        raise ValueError(
            f"rpn_cls {cls_map.shape} / rpn_regr {regr_map.shape} do not match {cfg.num_anchors} anchors per cell"
        )

    anchors = generate_anchors(feat_w, feat_h, cfg).reshape(-1, 4)
    scores = cls_map.reshape(-1).astype(np.float64)
    boxes = clip_boxes(BoxCoder.rpn(cfg).decode(anchors, regr_map.reshape(-1, 4)), img_width, img_height)

    kept_boxes = ((boxes[:, 2] - boxes[:, 0]) >= cfg.rpn_min_box_size) & (
        (boxes[:, 3] - boxes[:, 1]) >= cfg.rpn_min_box_size
    ) & (scores >= min_score)
    boxes, scores = boxes[kept_boxes], scores[kept_boxes]

    top = np.argsort(-scores, kind="stable")[: cfg.rpn_pre_nms_top_n]
    boxes, scores = boxes[top], scores[top]

    limit = cfg.rpn_max_proposals if max_proposals is None else max_proposals
    kept = nms(boxes, scores, cfg.rpn_nms_overlap, limit)
    return boxes[kept], scores[kept]


def calc_iou(
    rois: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray, cfg: Config, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Classifier targets for proposals (keras-frcnn's calc_iou, in pixels, without grid rounding).

    rois: (M, 4) proposals; gt_boxes: (N, 4) and gt_labels: (N,) int class indices in
    ``[0, num_classes - 2]``, all in network-input pixels. ``num_classes`` counts "bg" (last index).
    Each RoI is matched to the gt box of highest IoU: IoU >= ``cfg.classifier_max_overlap`` gives that
    gt's class, ``cfg.classifier_min_overlap`` <= IoU < max gives bg, IoU < min drops the RoI.
    With no gt boxes at all there is no IoU to judge: every RoI is kept as bg (IoU 0).

    Returns, for the R kept RoIs (input order):
      rois (R, 4) float64;
      y_class (R, num_classes) float32 one-hot;
      y_regr (R, 8 * (num_classes - 1)) float32: the first 4 * (num_classes - 1) columns are a mask
        (1 on the 4 slots ``4c..4c+3`` of a positive's class c), the last 4 * (num_classes - 1) hold
        ``BoxCoder.head(cfg).encode(roi, gt)`` in those slots;
      ious (R,) float64: IoU with the matched gt box.
    """
    boxes = as_boxes(rois, "rois")
    gts = as_boxes(gt_boxes, "gt_boxes")
    labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    if labels.shape[0] != gts.shape[0]:
        raise ValueError(f"{gts.shape[0]} gt boxes but {labels.shape[0]} labels")
    num_fg = num_classes - 1
    if num_fg < 1:
        raise ValueError(f"num_classes must count at least one class plus bg, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_fg):
        raise ValueError(f"gt labels must lie in [0, {num_fg - 1}] (bg is {num_fg}), got {labels.tolist()}")

    if gts.shape[0] == 0:
        best_iou = np.zeros(boxes.shape[0])
        best_gt = np.zeros(boxes.shape[0], dtype=np.int64)
        keep = np.ones(boxes.shape[0], dtype=bool)
    else:
        overlaps = iou_matrix(boxes, gts)
        best_gt = np.argmax(overlaps, axis=1)
        best_iou = overlaps[np.arange(boxes.shape[0]), best_gt]
        keep = best_iou >= cfg.classifier_min_overlap

    boxes, best_gt, best_iou = boxes[keep], best_gt[keep], best_iou[keep]
    num_kept = boxes.shape[0]
    positive = best_iou >= cfg.classifier_max_overlap if gts.shape[0] else np.zeros(num_kept, dtype=bool)
    class_idx = np.full(num_kept, num_fg, dtype=np.int64)
    if gts.shape[0]:
        class_idx[positive] = labels[best_gt[positive]]

    y_class = np.zeros((num_kept, num_classes), dtype=np.float32)
    y_class[np.arange(num_kept), class_idx] = 1.0

    y_regr = np.zeros((num_kept, 8 * num_fg), dtype=np.float32)
    pos_rows = np.flatnonzero(positive)
    if pos_rows.size:
        targets = BoxCoder.head(cfg).encode(boxes[pos_rows], gts[best_gt[pos_rows]])
        cols = 4 * class_idx[pos_rows][:, None] + np.arange(4)[None, :]
        y_regr[pos_rows[:, None], cols] = 1.0
        y_regr[pos_rows[:, None], 4 * num_fg + cols] = targets
    return boxes, y_class, y_regr, best_iou


def far_negatives(rois: np.ndarray, gt_boxes: np.ndarray, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """The hard background calc_iou drops: of ``rois`` (M, 4), best first (rpn_to_roi's order), the
    first ``cfg.hard_negative_count()`` whose IoU with every gt box (N, 4) is below
    ``cfg.classifier_min_overlap``: (H, 4) boxes and (H,) best IoUs, H <= that count. These are the
    proposals the RPN ranks highest away from every labelled object, look-alikes the head should
    learn to call background. With no gt boxes calc_iou keeps every RoI as bg already: none here."""
    boxes = as_boxes(rois, "rois")
    gts = as_boxes(gt_boxes, "gt_boxes")
    if cfg.hard_negative_count() <= 0 or gts.shape[0] == 0 or boxes.shape[0] == 0:
        return boxes[:0], np.zeros(0)
    best_iou = iou_matrix(boxes, gts).max(axis=1)
    far = np.flatnonzero(best_iou < cfg.classifier_min_overlap)[: cfg.hard_negative_count()]
    return boxes[far], best_iou[far]


def background_rows(count: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """calc_iou's y_class (count, C) and y_regr (count, 8(C-1)) for RoIs labelled bg."""
    y_class = np.zeros((count, num_classes), dtype=np.float32)
    y_class[:, -1] = 1.0
    return y_class, np.zeros((count, 8 * (num_classes - 1)), dtype=np.float32)


def sample_rois(
    y_class: np.ndarray, num_rois: int, positive_fraction: float, rng: np.random.Generator,
    size: int | None = None,
) -> np.ndarray:
    """Choose exactly ``size`` (default ``num_rois``) rows of ``y_class`` (R, C) for one classifier step.

    Rows whose argmax is the last column are negatives (bg), the others positives. At most
    ``int(num_rois * positive_fraction)`` distinct positives (and at most ``size``), the rest
    negatives, drawn without replacement. If that leaves the batch short, negatives are drawn again
    with replacement; with no negatives at all the batch is filled with positives (distinct while
    they last), so the positive share then exceeds the fraction. R == 0 gives an empty array.
    Returns int64 indices, positives first. ``size`` < ``num_rois`` leaves room for rows the caller
    adds (far_negatives) without lowering the positive cap.
    """
    num_rois = int(num_rois)
    if num_rois <= 0:
        raise ValueError(f"num_rois must be positive, got {num_rois}")
    size = num_rois if size is None else int(size)
    if not 0 < size <= num_rois:
        raise ValueError(f"size must lie in [1, num_rois={num_rois}], got {size}")
    labels = np.asarray(y_class)
    if labels.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    is_bg = np.argmax(labels, axis=1) == labels.shape[1] - 1
    pos_idx = np.flatnonzero(~is_bg)
    neg_idx = np.flatnonzero(is_bg)

    if neg_idx.size == 0:
        return _draw(pos_idx, size, rng)
    max_pos = min(int(num_rois * positive_fraction), size)
    num_pos = min(max_pos, pos_idx.size)
    chosen_pos = rng.choice(pos_idx, size=num_pos, replace=False)
    chosen_neg = _draw(neg_idx, size - num_pos, rng)
    return np.concatenate([chosen_pos, chosen_neg]).astype(np.int64)


def _draw(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` items of a non-empty ``pool``: distinct while they last, then repeats drawn uniformly."""
    distinct = rng.choice(pool, size=min(count, pool.size), replace=False)
    extra = rng.choice(pool, size=count - distinct.size, replace=True)
    return np.concatenate([distinct, extra]).astype(np.int64)
