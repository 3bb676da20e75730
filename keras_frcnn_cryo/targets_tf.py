"""Proposals and classifier targets as TensorFlow ops, for the compiled joint training step.

The numpy functions stay the reference and the home of each rule: anchors.generate_anchors
(anchor positions), boxes.BoxCoder (deltas), boxes.nms, roi_helpers.rpn_to_roi (proposals),
roi_helpers.calc_iou (labels and regression targets of each RoI) and roi_helpers.sample_rois (the
RoIs of one step). This module computes the same things inside a ``tf.function``, so the joint step
needs no ``tf.numpy_function`` (which keeps shared state on the host, blocks XLA and cannot run per
replica under tf.distribute); tests/test_targets_tf.py checks each function against its numpy twin.

Boxes are ``[x1, y1, x2, y2]`` in network-input pixels (x right, y down), float32. Randomness is
stateless: the RoI sample is a function of the ``seed`` (2,) int tensor given to it, so replicas
sharing no state draw reproducibly.
"""
from __future__ import annotations

import tensorflow as tf

from .anchors import anchor_shapes, to_feature_units
from .boxes import MAX_LOG_SCALE, BoxCoder
from .config import Config


def generate_anchors(feat_h: tf.Tensor, feat_w: tf.Tensor, cfg: Config) -> tf.Tensor:
    """(feat_h * feat_w * K, 4) anchors, rows in the order of anchors.generate_anchors(...).reshape(-1, 4)."""
    shapes = tf.constant(anchor_shapes(cfg), tf.float32)                      # (K, 2) [w, h]
    stride = float(cfg.rpn_stride)
    centre_x = float(cfg.feature_centre_px) + tf.cast(tf.range(feat_w), tf.float32) * stride   # anchors.cell_centres
    centre_y = float(cfg.feature_centre_px) + tf.cast(tf.range(feat_h), tf.float32) * stride
    cx = tf.broadcast_to(centre_x[None, :, None], tf.stack([feat_h, feat_w, tf.shape(shapes)[0]]))
    cy = tf.broadcast_to(centre_y[:, None, None], tf.shape(cx))
    half_w = 0.5 * shapes[None, None, :, 0]
    half_h = 0.5 * shapes[None, None, :, 1]
    return tf.reshape(tf.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1), (-1, 4))


def decode(reference: tf.Tensor, deltas: tf.Tensor, coder: BoxCoder) -> tf.Tensor:
    """BoxCoder.decode: weighted deltas (N, 4) applied to reference boxes (N, 4) -> (N, 4), not clipped."""
    dlt = deltas / tf.constant(coder.weights, tf.float32)
    width = reference[:, 2] - reference[:, 0]
    height = reference[:, 3] - reference[:, 1]
    cx = reference[:, 0] + 0.5 * width + dlt[:, 0] * width
    cy = reference[:, 1] + 0.5 * height + dlt[:, 1] * height
    new_w = tf.exp(tf.minimum(dlt[:, 2], MAX_LOG_SCALE)) * width
    new_h = tf.exp(tf.minimum(dlt[:, 3], MAX_LOG_SCALE)) * height
    return tf.stack([cx - 0.5 * new_w, cy - 0.5 * new_h, cx + 0.5 * new_w, cy + 0.5 * new_h], axis=1)


def encode(reference: tf.Tensor, target: tf.Tensor, coder: BoxCoder) -> tf.Tensor:
    """BoxCoder.encode: weighted deltas (N, 4) that move each reference box (N, 4) onto its target (N, 4)."""
    ref_w = reference[:, 2] - reference[:, 0]
    ref_h = reference[:, 3] - reference[:, 1]
    tgt_w = target[:, 2] - target[:, 0]
    tgt_h = target[:, 3] - target[:, 1]
    deltas = tf.stack([
        (target[:, 0] + 0.5 * tgt_w - reference[:, 0] - 0.5 * ref_w) / ref_w,
        (target[:, 1] + 0.5 * tgt_h - reference[:, 1] - 0.5 * ref_h) / ref_h,
        tf.math.log(tgt_w / ref_w),
        tf.math.log(tgt_h / ref_h)], axis=1)
    return deltas * tf.constant(coder.weights, tf.float32)


def refined_box_iou(y_regr: tf.Tensor, pred_regr: tf.Tensor, roi_iou: tf.Tensor, coder: BoxCoder) -> tf.Tensor:
    """The IoU head's "box" target (Config.classifier_iou_target): (R,) for R RoIs.

    y_regr (R, 8(C - 1)): calc_iou's regression mask and targets; pred_regr (R, 4(C - 1)): the head's
    deltas; roi_iou (R,): each RoI's IoU with its matched box. A positive RoI gets the IoU of the box
    its own class's predicted deltas give with the box its targets give; the others keep roi_iou.
    Both boxes are decoded from one unit box: IoU does not change when x and y are scaled and shifted,
    so the RoI's own place and size drop out.
    """
    width = tf.shape(pred_regr)[1]
    mask, values = y_regr[:, :width], y_regr[:, width:]
    own_pred = tf.reduce_sum(tf.reshape(mask * pred_regr, (-1, width // 4, 4)), axis=1)   # (R, 4)
    own_true = tf.reduce_sum(tf.reshape(values, (-1, width // 4, 4)), axis=1)
    unit = tf.tile(tf.constant([[0.0, 0.0, 1.0, 1.0]]), tf.stack([tf.shape(own_pred)[0], 1]))
    box_iou = tf.linalg.diag_part(iou_matrix(decode(unit, own_pred, coder), decode(unit, own_true, coder)))
    return tf.where(tf.reduce_max(mask, axis=1) > 0, box_iou, tf.cast(roi_iou, tf.float32))


def clip_boxes(boxes: tf.Tensor, width: tf.Tensor, height: tf.Tensor) -> tf.Tensor:
    """boxes.clip_boxes: (N, 4) clipped to [0, width] x [0, height]."""
    width = tf.cast(width, tf.float32)
    height = tf.cast(height, tf.float32)
    return tf.clip_by_value(boxes, 0.0, tf.stack([width, height, width, height]))


def iou_matrix(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
    """boxes.iou_matrix for 2D boxes: (N, 4) x (M, 4) -> (N, M) in [0, 1]; an empty union gives 0."""
    low = tf.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    high = tf.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    inter = tf.reduce_prod(tf.maximum(high - low, 0.0), axis=-1)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return tf.math.divide_no_nan(inter, union)


def rpn_to_roi(rpn_cls: tf.Tensor, rpn_regr: tf.Tensor, cfg: Config, width: tf.Tensor, height: tf.Tensor,
               max_proposals: int | None = None, min_score: float = 0.0) -> tuple[tf.Tensor, tf.Tensor]:
    """roi_helpers.rpn_to_roi: one image's RPN outputs (h, w, K) and (h, w, 4K) -> proposals (M, 4)
    and their scores (M,), best first (decode, clip, size and score floor, top ``rpn_pre_nms_top_n``,
    NMS at ``rpn_nms_overlap``, at most ``max_proposals``, default ``rpn_max_proposals``)."""
    shape = tf.shape(rpn_cls)
    anchors = generate_anchors(shape[0], shape[1], cfg)
    scores = tf.reshape(tf.cast(rpn_cls, tf.float32), (-1,))
    boxes = clip_boxes(decode(anchors, tf.reshape(tf.cast(rpn_regr, tf.float32), (-1, 4)), BoxCoder.rpn(cfg)),
                       width, height)
    valid = ((boxes[:, 2] - boxes[:, 0] >= cfg.rpn_min_box_size) & (boxes[:, 3] - boxes[:, 1] >= cfg.rpn_min_box_size)
             & (scores >= min_score))
    boxes, scores = tf.boolean_mask(boxes, valid), tf.boolean_mask(scores, valid)
    top = tf.math.top_k(scores, k=tf.minimum(tf.shape(scores)[0], cfg.rpn_pre_nms_top_n), sorted=True).indices
    boxes, scores = tf.gather(boxes, top), tf.gather(scores, top)
    limit = cfg.rpn_max_proposals if max_proposals is None else max_proposals
    kept = tf.image.non_max_suppression(tf.gather(boxes, [1, 0, 3, 2], axis=1), scores, limit,
                                        iou_threshold=cfg.rpn_nms_overlap)
    return tf.gather(boxes, kept), tf.gather(scores, kept)


def calc_iou(rois: tf.Tensor, gt_boxes: tf.Tensor, gt_labels: tf.Tensor, cfg: Config, num_classes: int
             ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """roi_helpers.calc_iou: RoIs (M, 4), gt boxes (N, 4) and int labels (N,) -> for the R kept RoIs
    (input order) the RoIs (R, 4), one-hot classes (R, C), regression mask and targets
    (R, 8 * (C - 1)) and the IoU with the matched box (R,). C = ``num_classes`` counts bg (last)."""
    num_fg = num_classes - 1
    rois = tf.cast(rois, tf.float32)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_labels = tf.cast(gt_labels, tf.int32)
    has_gt = tf.shape(gt_boxes)[0] > 0
    # a dummy zero box keeps argmax defined with no gt; has_gt masks its effect
    overlaps = iou_matrix(rois, tf.concat([gt_boxes, tf.zeros((1, 4))], axis=0))
    best_gt = tf.argmax(overlaps, axis=1, output_type=tf.int32)
    best_iou = tf.where(has_gt, tf.reduce_max(overlaps, axis=1), 0.0)
    keep = tf.logical_or(tf.logical_not(has_gt), best_iou >= cfg.classifier_min_overlap)
    rois, best_gt, best_iou = tf.boolean_mask(rois, keep), tf.boolean_mask(best_gt, keep), tf.boolean_mask(best_iou, keep)
    positive = tf.logical_and(has_gt, best_iou >= cfg.classifier_max_overlap)
    matched_label = tf.gather(tf.concat([gt_labels, [num_fg]], axis=0), best_gt)
    class_idx = tf.where(positive, matched_label, num_fg)
    y_class = tf.one_hot(class_idx, num_classes, dtype=tf.float32)
    matched = tf.gather(tf.concat([gt_boxes, [[0.0, 0.0, 1.0, 1.0]]], axis=0), best_gt)
    # non-positives are encoded against themselves (zero deltas; a zero-size match would give log(0))
    targets = encode(rois, tf.where(positive[:, None], matched, rois), BoxCoder.head(cfg))
    # one_hot of the bg index (num_fg) at depth num_fg is a zero row: the mask covers positives only
    mask = tf.repeat(tf.one_hot(class_idx, num_fg, dtype=tf.float32), 4, axis=1)             # (R, 4(C - 1))
    values = mask * tf.tile(targets, [1, num_fg])
    return rois, y_class, tf.concat([mask, values], axis=1), best_iou


def _draw(pool: tf.Tensor, count: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """``count`` items of a non-empty ``pool`` (P,): distinct while they last, then uniform repeats."""
    size = tf.shape(pool)[0]
    order = tf.argsort(tf.random.stateless_uniform(tf.shape(pool), seed))
    distinct = tf.gather(pool, order[:tf.minimum(count, size)])
    extra = tf.random.stateless_uniform(tf.reshape(tf.maximum(count - size, 0), (1,)), seed + 1, maxval=size,
                                        dtype=tf.int32)
    return tf.concat([distinct, tf.gather(pool, extra)], axis=0)


def far_negatives(rois: tf.Tensor, gt_boxes: tf.Tensor, cfg: Config) -> tuple[tf.Tensor, tf.Tensor]:
    """roi_helpers.far_negatives: of proposals (M, 4), best first, the first
    ``cfg.hard_negative_count()`` with IoU < ``cfg.classifier_min_overlap`` against every gt box
    (N, 4): boxes (H, 4) and their best IoUs (H,); none without gt boxes."""
    rois = tf.cast(rois, tf.float32)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    best_iou = tf.reduce_max(iou_matrix(rois, tf.concat([gt_boxes, tf.zeros((1, 4))], axis=0)), axis=1)
    far = tf.logical_and(tf.shape(gt_boxes)[0] > 0, best_iou < cfg.classifier_min_overlap)
    idx = tf.cast(tf.where(far)[:cfg.hard_negative_count(), 0], tf.int32)
    return tf.gather(rois, idx), tf.gather(best_iou, idx)


def sample_rois(y_class: tf.Tensor, num_rois: int, positive_fraction: float, seed: tf.Tensor,
                size: tf.Tensor | int | None = None) -> tf.Tensor:
    """roi_helpers.sample_rois with stateless draws: ``size`` (default ``num_rois``) row indices (int32)
    of y_class (R, C), R > 0, positives first. At most ``int(num_rois * positive_fraction)`` (and
    ``size``) distinct positives, the rest negatives (repeats once they run out); with no negatives,
    positives fill the batch."""
    size = tf.constant(num_rois) if size is None else tf.cast(size, tf.int32)
    is_bg = tf.equal(tf.argmax(y_class, axis=1), tf.cast(tf.shape(y_class)[1] - 1, tf.int64))
    pos_idx = tf.cast(tf.where(tf.logical_not(is_bg))[:, 0], tf.int32)
    neg_idx = tf.cast(tf.where(is_bg)[:, 0], tf.int32)
    seed = tf.cast(seed, tf.int32)
    num_pos = tf.minimum(tf.minimum(int(num_rois * positive_fraction), size), tf.shape(pos_idx)[0])

    def mixed():
        chosen_pos = tf.gather(pos_idx, tf.argsort(tf.random.stateless_uniform(tf.shape(pos_idx), seed + 2))[:num_pos])
        return tf.concat([chosen_pos, _draw(neg_idx, size - num_pos, seed)], axis=0)

    return tf.cond(tf.size(neg_idx) > 0, mixed, lambda: _draw(pos_idx, size, seed))


def classifier_batch(rpn_cls: tf.Tensor, rpn_regr: tf.Tensor, gt_boxes: tf.Tensor, gt_labels: tf.Tensor,
                     cfg: Config, width: tf.Tensor, height: tf.Tensor, seed: tf.Tensor
                     ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The head's batch for one image, as trainer.Trainer.classifier_targets builds it in numpy.

    rpn_cls (h, w, K), rpn_regr (h, w, 4K): the RPN outputs; gt_boxes (N, 4) in network-input pixels
    with labels (N,). Proposals (plus the gt boxes with ``cfg.classifier_add_gt_rois``) are labelled,
    ``cfg.num_rois`` - H of them sampled and the H far_negatives appended. Returns RoIs (R, 4) in
    feature-map units, one-hot classes (R, C), regression targets (R, 8(C-1)), IoU with the matched
    box (R, 1), ``used`` (1.0, or 0.0 when no RoI could be labelled: then one dummy bg RoI, R = 1,
    which the caller must weight by 0) and the fraction of positives (nan when unused).
    R = ``cfg.num_rois``.
    """
    num_classes = cfg.num_classes
    proposals, _ = rpn_to_roi(rpn_cls, rpn_regr, cfg, width, height)
    rois = proposals
    if cfg.classifier_add_gt_rois:
        rois = tf.concat([rois, tf.cast(gt_boxes, tf.float32)], axis=0)
    rois, y_class, y_regr, ious = calc_iou(rois, gt_boxes, gt_labels, cfg, num_classes)

    def sampled():
        far, far_iou = far_negatives(proposals, gt_boxes, cfg)
        num_far = tf.shape(far)[0]
        idx = sample_rois(y_class, cfg.num_rois, cfg.classifier_positive_fraction, seed, size=cfg.num_rois - num_far)
        picked_class = tf.concat([tf.gather(y_class, idx), tf.one_hot(tf.fill([num_far], num_classes - 1),
                                                                      num_classes)], axis=0)
        picked_regr = tf.concat([tf.gather(y_regr, idx), tf.zeros((num_far, 8 * (num_classes - 1)))], axis=0)
        picked_iou = tf.concat([tf.gather(ious, idx), far_iou], axis=0)
        return (to_feature_units(tf.concat([tf.gather(rois, idx), far], axis=0), cfg), picked_class, picked_regr,
                picked_iou[:, None], tf.constant(1.0), tf.reduce_mean(1.0 - picked_class[:, -1]))

    return tf.cond(tf.shape(rois)[0] > 0, sampled, lambda: unused_batch(num_classes))


def unused_batch(num_classes: int) -> tuple[tf.Tensor, ...]:
    """classifier_batch's answer when no RoI could be labelled: one dummy bg RoI, used = 0, nan fraction."""
    return (tf.constant([[0.0, 0.0, 1.0, 1.0]]), tf.one_hot([num_classes - 1], num_classes),
            tf.zeros((1, 8 * (num_classes - 1))), tf.zeros((1, 1)), tf.constant(0.0), tf.constant(float("nan")))
