"""targets_tf (TensorFlow ops) against its numpy reference (anchors, boxes, roi_helpers)."""
import numpy as np
import pytest
import tensorflow as tf

from keras_frcnn_cryo import anchors, roi_helpers, targets_tf
from keras_frcnn_cryo.boxes import BoxCoder, iou_matrix
from keras_frcnn_cryo.config import Config


def _cfg(**values) -> Config:
    cfg = Config()
    cfg.anchor_box_scales = [32, 64, 128]
    cfg.class_mapping = {"mito": 0, "er": 1, "bg": 2}
    for name, value in values.items():
        setattr(cfg, name, value)
    return cfg


def _random_boxes(rng, n, size=200.0, min_side=4.0):
    xy = rng.uniform(0, size - 40, (n, 2))
    wh = rng.uniform(min_side, 60, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def test_anchors_match_numpy_order_and_positions():
    cfg = _cfg()
    got = targets_tf.generate_anchors(tf.constant(5), tf.constant(7), cfg).numpy()
    np.testing.assert_allclose(got, anchors.generate_anchors(7, 5, cfg).reshape(-1, 4), atol=1e-4)


def test_encode_decode_match_box_coder():
    rng = np.random.default_rng(0)
    ref, tgt = _random_boxes(rng, 50), _random_boxes(rng, 50)
    cfg = _cfg()
    for coder in (BoxCoder.rpn(cfg), BoxCoder.head(cfg)):
        enc = targets_tf.encode(tf.constant(ref, tf.float32), tf.constant(tgt, tf.float32), coder).numpy()
        np.testing.assert_allclose(enc, coder.encode(ref, tgt), rtol=1e-4, atol=1e-4)
        deltas = rng.normal(0, 1, (50, 4))
        dec = targets_tf.decode(tf.constant(ref, tf.float32), tf.constant(deltas, tf.float32), coder).numpy()
        np.testing.assert_allclose(dec, coder.decode(ref, deltas), rtol=1e-4, atol=1e-2)


def test_iou_matrix_matches_numpy_including_empty_boxes():
    rng = np.random.default_rng(1)
    a, b = _random_boxes(rng, 30), _random_boxes(rng, 20)
    a[0] = [5, 5, 5, 5]
    b[0] = [5, 5, 5, 5]
    got = targets_tf.iou_matrix(tf.constant(a, tf.float32), tf.constant(b, tf.float32)).numpy()
    np.testing.assert_allclose(got, iou_matrix(a, b), atol=1e-5)
    assert got[0, 0] == 0.0


def _rpn_outputs(rng, feat_h, feat_w, k):
    rpn_cls = rng.uniform(0, 1, (feat_h, feat_w, k)).astype(np.float32)   # distinct scores: no ties
    rpn_regr = rng.normal(0, 0.3, (feat_h, feat_w, 4 * k)).astype(np.float32)
    return rpn_cls, rpn_regr


@pytest.mark.parametrize("max_proposals, min_score", [(None, 0.0), (40, 0.3)])
def test_rpn_to_roi_matches_numpy(max_proposals, min_score):
    cfg = _cfg(rpn_pre_nms_top_n=500)
    rng = np.random.default_rng(2)
    rpn_cls, rpn_regr = _rpn_outputs(rng, 12, 10, cfg.num_anchors)
    want_boxes, want_scores = roi_helpers.rpn_to_roi(rpn_cls, rpn_regr, cfg, 160, 192, max_proposals, min_score)
    got_boxes, got_scores = targets_tf.rpn_to_roi(tf.constant(rpn_cls), tf.constant(rpn_regr), cfg, 160, 192,
                                                  max_proposals, min_score)
    assert got_boxes.shape == want_boxes.shape and want_boxes.shape[0] > 10
    np.testing.assert_allclose(got_boxes.numpy(), want_boxes, atol=1e-2)
    np.testing.assert_allclose(got_scores.numpy(), want_scores, atol=1e-6)


@pytest.mark.parametrize("n_gt", [0, 1, 4])
def test_calc_iou_matches_numpy(n_gt):
    cfg = _cfg()
    rng = np.random.default_rng(3 + n_gt)
    gts = _random_boxes(rng, n_gt, min_side=20)
    labels = rng.integers(0, 2, n_gt)
    # RoIs near the gt boxes (so there are positives and near-bg RoIs) and far ones (dropped)
    near = np.concatenate([g + rng.normal(0, 4, (12, 4)) for g in gts]) if n_gt else np.zeros((0, 4))
    rois = np.concatenate([near, _random_boxes(rng, 20)])
    rois[:, 2:] = np.maximum(rois[:, 2:], rois[:, :2] + 1)
    want = roi_helpers.calc_iou(rois, gts.reshape(-1, 4), labels, cfg, cfg.num_classes)
    got = targets_tf.calc_iou(tf.constant(rois, tf.float32), tf.constant(gts.reshape(-1, 4), tf.float32),
                              tf.constant(labels, tf.int64), cfg, cfg.num_classes)
    assert got[0].shape[0] == want[0].shape[0]
    if n_gt:
        assert 0 < np.sum(want[1][:, -1] == 0) < want[0].shape[0]    # both positives and bg kept
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-4, atol=1e-4)


def test_refined_box_iou_is_the_iou_of_the_decoded_boxes():
    """The "box" IoU target: each positive RoI's box decoded from the head's deltas of its own class,
    against its matched object, in pixels (the unit-box shortcut must agree); others keep the RoI's IoU."""
    cfg = _cfg()
    rng = np.random.default_rng(5)
    gts = _random_boxes(rng, 3, min_side=20)
    labels = np.array([0, 1, 0])
    rois = np.concatenate([np.concatenate([g + rng.normal(0, 5, (8, 4)) for g in gts]), _random_boxes(rng, 10)])
    rois[:, 2:] = np.maximum(rois[:, 2:], rois[:, :2] + 1)
    kept, y_class, y_regr, roi_iou = roi_helpers.calc_iou(rois, gts, labels, cfg, cfg.num_classes)
    pred = rng.normal(0, 0.5, (kept.shape[0], 4 * (cfg.num_classes - 1)))
    got = targets_tf.refined_box_iou(tf.constant(y_regr, tf.float32), tf.constant(pred, tf.float32),
                                     tf.constant(roi_iou, tf.float32), BoxCoder.head(cfg)).numpy()
    coder = BoxCoder.head(cfg)
    positive = y_class[:, -1] == 0
    assert 0 < positive.sum() < len(positive)
    for r in range(kept.shape[0]):
        if not positive[r]:
            assert got[r] == pytest.approx(roi_iou[r], abs=1e-6)
            continue
        c = int(np.argmax(y_class[r]))
        box = coder.decode(kept[r:r + 1], pred[r:r + 1, 4 * c:4 * c + 4])
        truth = gts[np.argmax(iou_matrix(kept[r:r + 1], gts)[0])][None]
        assert got[r] == pytest.approx(iou_matrix(box, truth)[0, 0], abs=1e-4)


@pytest.mark.parametrize("n_pos, n_neg", [(3, 40), (30, 5), (0, 7), (9, 0)])
def test_sample_rois_contract(n_pos, n_neg):
    y_class = np.zeros((n_pos + n_neg, 3), np.float32)
    y_class[:n_pos, 0] = 1.0
    y_class[n_pos:, 2] = 1.0
    idx = targets_tf.sample_rois(tf.constant(y_class), 16, 0.5, tf.constant([7, 11])).numpy()
    assert idx.shape == (16,)
    assert idx.min() >= 0 and idx.max() < n_pos + n_neg
    picked_pos = idx[idx < n_pos]
    if n_neg:
        assert len(picked_pos) == min(8, n_pos) and len(set(picked_pos)) == len(picked_pos)
        assert np.all(idx[:len(picked_pos)] < n_pos)                    # positives first
        negs = idx[len(picked_pos):]
        assert len(set(negs)) == min(len(negs), n_neg)                  # distinct while they last
    else:
        assert len(set(idx)) == min(16, n_pos)
    again = targets_tf.sample_rois(tf.constant(y_class), 16, 0.5, tf.constant([7, 11])).numpy()
    np.testing.assert_array_equal(idx, again)                           # stateless: the seed decides


def test_classifier_batch_labels_every_sampled_roi_as_numpy_does():
    cfg = _cfg(num_rois=8, rpn_pre_nms_top_n=500)
    rng = np.random.default_rng(5)
    rpn_cls, rpn_regr = _rpn_outputs(rng, 10, 10, cfg.num_anchors)
    gts = np.array([[20.0, 30.0, 70.0, 90.0], [100.0, 100.0, 150.0, 140.0]])
    labels = np.array([0, 1])
    fn = tf.function(lambda c, r, b, l, s: targets_tf.classifier_batch(c, r, b, l, cfg, 160, 160, s))
    rois, y_class, y_regr, y_iou, used, pos_fraction = (t.numpy() for t in fn(
        rpn_cls, rpn_regr, tf.constant(gts, tf.float32), tf.constant(labels), tf.constant([1, 2])))
    assert used == 1.0 and rois.shape == (8, 4)
    # each sampled RoI carries exactly the labels numpy's calc_iou gives it
    ref = roi_helpers.calc_iou(anchors.from_feature_units(rois, cfg), gts, labels, cfg, cfg.num_classes)
    assert ref[0].shape[0] == 8
    np.testing.assert_allclose(y_class, ref[1], atol=1e-6)
    np.testing.assert_allclose(y_regr, ref[2], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(y_iou[:, 0], ref[3], atol=1e-5)
    assert pos_fraction == pytest.approx(np.mean(ref[1][:, -1] == 0))
    assert 0 < pos_fraction <= 0.5                    # the gt boxes themselves join as positives


def test_far_negatives_match_numpy():
    cfg = _cfg(num_rois=20, classifier_hard_negative_fraction=0.25)
    rng = np.random.default_rng(8)
    rois, gts = _random_boxes(rng, 60), _random_boxes(rng, 3)
    for gt in (gts, np.zeros((0, 4))):
        got = targets_tf.far_negatives(tf.constant(rois, tf.float32), tf.constant(gt, tf.float32), cfg)
        want = roi_helpers.far_negatives(rois, gt, cfg)
        assert got[0].shape[0] == want[0].shape[0] == (5 if len(gt) else 0)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.numpy(), w, rtol=1e-4, atol=1e-4)


def test_classifier_batch_appends_the_hard_negatives():
    cfg = _cfg(num_rois=8, rpn_pre_nms_top_n=500, classifier_hard_negative_fraction=0.375)
    rng = np.random.default_rng(5)
    rpn_cls, rpn_regr = _rpn_outputs(rng, 10, 10, cfg.num_anchors)
    gts = np.array([[20.0, 30.0, 70.0, 90.0]])
    out = [t.numpy() for t in targets_tf.classifier_batch(tf.constant(rpn_cls), tf.constant(rpn_regr),
                                                          tf.constant(gts, tf.float32), tf.constant([0]),
                                                          cfg, 160, 160, tf.constant([1, 2]))]
    rois, y_class, y_regr, y_iou = out[:4]
    assert rois.shape == (8, 4) and out[4] == 1.0
    proposals, _ = targets_tf.rpn_to_roi(tf.constant(rpn_cls), tf.constant(rpn_regr), cfg, 160, 160)
    want, _ = roi_helpers.far_negatives(proposals.numpy(), gts, cfg)
    np.testing.assert_allclose(anchors.from_feature_units(rois[-3:], cfg), want, atol=1e-3)     # the last rows, best first
    assert np.all(y_class[-3:, -1] == 1.0) and not y_regr[-3:].any()
    assert np.all(y_iou[-3:, 0] < cfg.classifier_min_overlap)
    assert np.all(iou_matrix(anchors.from_feature_units(rois[:5], cfg), gts).max(axis=1) >= cfg.classifier_min_overlap - 1e-6)


def test_classifier_batch_without_labelled_rois_is_unused():
    cfg = _cfg(num_rois=8, classifier_add_gt_rois=False, rpn_max_proposals=5)
    rng = np.random.default_rng(6)
    rpn_cls, rpn_regr = _rpn_outputs(rng, 4, 4, cfg.num_anchors)
    far = tf.constant([[1000.0, 1000.0, 1010.0, 1010.0]])
    out = targets_tf.classifier_batch(tf.constant(rpn_cls), tf.constant(rpn_regr), far, tf.constant([0]),
                                      cfg, 64, 64, tf.constant([0, 0]))
    assert float(out[4]) == 0.0 and out[0].shape[0] == 1 and np.isnan(float(out[5]))
