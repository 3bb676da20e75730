"""Box arithmetic for both stages: IoU, box coding, NMS, RPN decoding (rpn_to_roi), classifier targets (calc_iou).

numpy only. Every box is a float ``[x1, y1, x2, y2]`` in pixels of the resized (network-input) image,
0-based, x right, y down, width = x2 - x1 (no +1). Nothing is rounded to the feature grid: the RoIs
returned here are in pixels and the RoI pooling layer converts them with ``cfg.rpn_stride``.

Box coding (Faster R-CNN): for a reference box r and a target box t with centres (cx, cy) and sizes
(w, h), ``tx = (cx_t - cx_r) / w_r``, ``ty = (cy_t - cy_r) / h_r``, ``tw = log(w_t / w_r)``,
``th = log(h_t / h_r)``. The RPN scales these by ``cfg.std_scaling``, the classifier by
``cfg.classifier_regr_std`` (per component), as keras-frcnn does.
"""
from __future__ import annotations

import numpy as np

from .config import Config

# exp(tw) is clamped at 1000/16 (as torchvision's BoxCoder): a box may grow at most 62.5x per
# decoding step, which keeps exp() finite for any network output.
MAX_LOG_SCALE = float(np.log(1000.0 / 16.0))


def as_boxes(boxes: np.ndarray, name: str) -> np.ndarray:
    """``boxes`` as a float64 (N, 4) array (a view when possible); an empty input becomes (0, 4)."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {arr.shape}")
    return arr


def _areas(boxes: np.ndarray) -> np.ndarray:
    """(N,) areas; inverted boxes (x2 < x1 or y2 < y1) count as 0."""
    return np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0.0, None)


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair.

    boxes_a: (N, 4), boxes_b: (M, 4), float ``[x1, y1, x2, y2]``. Returns (N, M) float64 in [0, 1].
    A pair whose union is empty (both boxes of zero area) has IoU 0, never NaN.
    """
    a = as_boxes(boxes_a, "boxes_a")
    b = as_boxes(boxes_b, "boxes_b")
    inter_w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0.0, None)
    inter_h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0.0, None)
    inter = inter_w * inter_h
    union = _areas(a)[:, None] + _areas(b)[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _centre_size(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * width, boxes[:, 1] + 0.5 * height, width, height


def encode_boxes(reference: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Regression deltas that move each ``reference`` box onto the ``target`` box of the same row.

    reference, target: (N, 4) boxes with positive width and height. Returns (N, 4) float64
    ``[tx, ty, tw, th]`` (unscaled; see the module docstring).
    """
    ref = as_boxes(reference, "reference")
    tgt = as_boxes(target, "target")
    if ref.shape != tgt.shape:
        raise ValueError(f"reference {ref.shape} and target {tgt.shape} must have the same shape")
    cx_r, cy_r, w_r, h_r = _centre_size(ref)
    cx_t, cy_t, w_t, h_t = _centre_size(tgt)
    return np.stack(
        [(cx_t - cx_r) / w_r, (cy_t - cy_r) / h_r, np.log(w_t / w_r), np.log(h_t / h_r)], axis=1
    )


def apply_regr(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_boxes`: move each box by its (unscaled) deltas.

    boxes: (N, 4); deltas: (N, 4) ``[tx, ty, tw, th]``. tw and th are clamped at ``MAX_LOG_SCALE``
    before exp. Returns (N, 4) float64 boxes (not clipped to any image).
    """
    ref = as_boxes(boxes, "boxes")
    dlt = np.asarray(deltas, dtype=np.float64)
    if dlt.size == 0:
        dlt = dlt.reshape(0, 4)
    if dlt.shape != ref.shape:
        raise ValueError(f"deltas {dlt.shape} must have the shape of boxes {ref.shape}")
    cx, cy, width, height = _centre_size(ref)
    new_cx = dlt[:, 0] * width + cx
    new_cy = dlt[:, 1] * height + cy
    new_w = np.exp(np.minimum(dlt[:, 2], MAX_LOG_SCALE)) * width
    new_h = np.exp(np.minimum(dlt[:, 3], MAX_LOG_SCALE)) * height
    return np.stack(
        [new_cx - 0.5 * new_w, new_cy - 0.5 * new_h, new_cx + 0.5 * new_w, new_cy + 0.5 * new_h], axis=1
    )


def nms(boxes: np.ndarray, scores: np.ndarray, overlap_thresh: float, max_boxes: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression.

    boxes: (N, 4); scores: (N,). Repeatedly keeps the best remaining box and drops every remaining
    box whose IoU with it is greater than ``overlap_thresh``. Equal scores keep input order.
    Stops after ``max_boxes`` kept boxes (None: no limit). Returns int64 indices into ``boxes``, in
    descending score order.
    """
    bxs = as_boxes(boxes, "boxes")
    scr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scr.shape[0] != bxs.shape[0]:
        raise ValueError(f"{bxs.shape[0]} boxes but {scr.shape[0]} scores")
    limit = bxs.shape[0] if max_boxes is None else int(max_boxes)
    order = np.argsort(-scr, kind="stable")
    areas = _areas(bxs)
    keep: list[int] = []
    while order.size > 0 and len(keep) < limit:
        best = order[0]
        keep.append(int(best))
        rest = order[1:]
        inter_w = np.clip(np.minimum(bxs[best, 2], bxs[rest, 2]) - np.maximum(bxs[best, 0], bxs[rest, 0]), 0.0, None)
        inter_h = np.clip(np.minimum(bxs[best, 3], bxs[rest, 3]) - np.maximum(bxs[best, 1], bxs[rest, 1]), 0.0, None)
        inter = inter_w * inter_h
        union = areas[best] + areas[rest] - inter
        overlap = np.zeros_like(inter)
        np.divide(inter, union, out=overlap, where=union > 0)
        order = rest[overlap <= overlap_thresh]
    return np.asarray(keep, dtype=np.int64)


def box_voting(kept: np.ndarray, candidates: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Each kept box replaced by the score-weighted mean of the candidates overlapping it at IoU >= ``iou_thresh``.

    kept: (K, 4); candidates: (N, 4) with scores (N,) >= 0 (the kept boxes are normally among them).
    A kept box with no such candidate (or zero total weight) is returned unchanged. Returns (K, 4) float64.
    """
    kept_boxes = as_boxes(kept, "kept")
    cand = as_boxes(candidates, "candidates")
    weights = np.asarray(scores, dtype=np.float64).reshape(-1)
    if kept_boxes.shape[0] == 0 or cand.shape[0] == 0:
        return kept_boxes.copy()
    members = (iou_matrix(kept_boxes, cand) >= iou_thresh) * weights[None, :]      # (K, N)
    total = members.sum(axis=1, keepdims=True)
    voted = members @ cand / np.where(total > 0, total, 1.0)
    return np.where(total > 0, voted, kept_boxes)


def rpn_to_roi(
    rpn_cls: np.ndarray, rpn_regr: np.ndarray, cfg: Config, img_width: int, img_height: int,
    max_proposals: int | None = None, min_score: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Turn the RPN outputs of one image into proposals.

    rpn_cls: (H, W, K) objectness in [0, 1]; rpn_regr: (H, W, 4K), channels 4k..4k+3 are anchor k's
    ``[tx, ty, tw, th] * cfg.std_scaling``. A leading batch axis of size 1 is accepted. Anchors come
    from :func:`keras_frcnn_cryo.data_generators.generate_anchors` (the function calc_rpn uses).
    Steps: decode every anchor, clip to ``[0, img_width] x [0, img_height]``, drop boxes narrower or
    lower than ``cfg.rpn_min_box_size`` and those scoring below ``min_score``, keep the
    ``cfg.rpn_pre_nms_top_n`` best scores, NMS at ``cfg.rpn_nms_overlap``, keep at most
    ``max_proposals`` (default ``cfg.rpn_max_proposals``).

    Returns ``rois`` (M, 4) float64 in network-input pixels and their ``scores`` (M,), best first.
    """
    # imported here: data_generators imports this module's box functions at load time
    from .data_generators import generate_anchors

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
    deltas = regr_map.reshape(-1, 4).astype(np.float64) / cfg.std_scaling
    scores = cls_map.reshape(-1).astype(np.float64)
    boxes = apply_regr(anchors, deltas)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0.0, float(img_width))
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0.0, float(img_height))

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
        ``encode_boxes(roi, gt) * cfg.classifier_regr_std`` in those slots;
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
        targets = encode_boxes(boxes[pos_rows], gts[best_gt[pos_rows]]) * np.asarray(cfg.classifier_regr_std)
        cols = 4 * class_idx[pos_rows][:, None] + np.arange(4)[None, :]
        y_regr[pos_rows[:, None], cols] = 1.0
        y_regr[pos_rows[:, None], 4 * num_fg + cols] = targets
    return boxes, y_class, y_regr, best_iou


def sample_rois(
    y_class: np.ndarray, num_rois: int, positive_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Choose exactly ``num_rois`` rows of ``y_class`` (R, C) for one classifier step.

    Rows whose argmax is the last column are negatives (bg), the others positives. At most
    ``int(num_rois * positive_fraction)`` distinct positives, the rest negatives, drawn without
    replacement. If that leaves the batch short, negatives are drawn again with replacement; with no
    negatives at all the batch is filled with positives (distinct while they last), so the positive
    share then exceeds the fraction. R == 0 gives an empty array. Returns int64 indices, positives first.
    """
    num_rois = int(num_rois)
    if num_rois <= 0:
        raise ValueError(f"num_rois must be positive, got {num_rois}")
    labels = np.asarray(y_class)
    if labels.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    is_bg = np.argmax(labels, axis=1) == labels.shape[1] - 1
    pos_idx = np.flatnonzero(~is_bg)
    neg_idx = np.flatnonzero(is_bg)

    if neg_idx.size == 0:
        return _draw(pos_idx, num_rois, rng)
    max_pos = int(num_rois * positive_fraction)
    num_pos = min(max_pos, pos_idx.size)
    chosen_pos = rng.choice(pos_idx, size=num_pos, replace=False)
    chosen_neg = _draw(neg_idx, num_rois - num_pos, rng)
    return np.concatenate([chosen_pos, chosen_neg]).astype(np.int64)


def _draw(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` items of a non-empty ``pool``: distinct while they last, then repeats drawn uniformly."""
    distinct = rng.choice(pool, size=min(count, pool.size), replace=False)
    extra = rng.choice(pool, size=count - distinct.size, replace=True)
    return np.concatenate([distinct, extra]).astype(np.int64)
