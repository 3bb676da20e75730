"""Tests of keras_frcnn_cryo.roi_helpers against hand computations and brute-force references."""
from __future__ import annotations

import math

import numpy as np
import pytest

from keras_frcnn_cryo.config import Config
from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.data_generators import calc_rpn, generate_anchors
from keras_frcnn_cryo.roi_helpers import (
    calc_iou,
    encode_boxes,
    far_negatives,
    rpn_to_roi,
    sample_rois,
)


def small_cfg(**overrides) -> Config:
    cfg = Config(anchor_box_scales=[32.0], anchor_box_ratios=[[1.0, 1.0]], rpn_stride=16)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


# --------------------------------------------------------------------------------------------
# rpn_to_roi
# --------------------------------------------------------------------------------------------
def test_rpn_to_roi_zero_regression_returns_anchor_centred_on_cell():
    cfg = small_cfg(rpn_max_proposals=1)
    feat_h, feat_w = 4, 5
    rpn_cls = np.zeros((feat_h, feat_w, 1))
    rpn_cls[1, 2, 0] = 0.9  # row 1, column 2 -> centre (2 * 16 + 0.5, 1 * 16 + 0.5) = (32.5, 16.5)
    rpn_regr = np.zeros((feat_h, feat_w, 4))
    rois, scores = rpn_to_roi(rpn_cls, rpn_regr, cfg, img_width=80, img_height=64)
    np.testing.assert_allclose(rois, [[16.5, 0.5, 48.5, 32.5]])
    np.testing.assert_allclose(scores, [0.9])


def test_rpn_to_roi_decodes_scaled_regression_and_clips():
    cfg = small_cfg()
    rpn_cls = np.zeros((1, 2, 2, 1))  # batch axis accepted
    rpn_cls[0, 0, 0, 0] = 0.8
    rpn_cls[0, 1, 1, 0] = 0.6
    rpn_regr = np.zeros((1, 2, 2, 4))
    # anchor (0, 0) centred (0.5, 0.5), 32 x 32: move by +0.25 w in x, widen by e^0.1
    rpn_regr[0, 0, 0] = np.array([0.25, 0.0, 0.1, 0.0]) * cfg.std_scaling
    rois, scores = rpn_to_roi(rpn_cls, rpn_regr, cfg, img_width=32, img_height=32)
    width, centre = 32 * math.exp(0.1), 0.5 + 0.25 * 32
    expected_first = [max(0.0, centre - width / 2), 0.0, min(32.0, centre + width / 2), 16.5]
    np.testing.assert_allclose(rois[0], expected_first)
    assert rois.min() >= 0 and rois[:, [0, 2]].max() <= 32 and rois[:, [1, 3]].max() <= 32
    assert np.all(np.diff(scores) <= 0)


def test_rpn_to_roi_min_size_top_n_and_max_proposals():
    cfg = small_cfg(rpn_min_box_size=10.0, rpn_nms_overlap=1.0, rpn_pre_nms_top_n=6, rpn_max_proposals=4)
    rng = np.random.default_rng(5)
    rpn_cls = rng.uniform(0, 1, (3, 3, 1))
    rpn_regr = np.zeros((3, 3, 4))
    rpn_regr[0, 0, 2:] = math.log(0.25) * cfg.std_scaling  # shrinks to 8 x 8: dropped
    rpn_cls[0, 0, 0] = 2.0
    rois, scores = rpn_to_roi(rpn_cls, rpn_regr, cfg, img_width=48, img_height=48)
    assert len(rois) == 4
    expected_scores = np.sort(np.delete(rpn_cls.reshape(-1), 0))[::-1][:4]
    np.testing.assert_allclose(scores, expected_scores)
    assert np.all(rois[:, 2] - rois[:, 0] >= 10.0)


def test_rpn_to_roi_nms_and_empty():
    cfg = small_cfg(rpn_nms_overlap=0.4)
    rpn_cls = np.full((2, 2, 1), 0.5)
    rpn_regr = np.zeros((2, 2, 4))
    # anchors centred at 0.5 and 16.5, clipped: [0,0,16.5,16.5] [0.5,0,32,16.5] [0,0.5,16.5,32]
    # [0.5,0.5,32,32]; equal scores keep cell order. The first suppresses its edge neighbours
    # (IoU 0.5 > 0.4), not the diagonal one (IoU 0.25).
    rois, _ = rpn_to_roi(rpn_cls, rpn_regr, cfg, img_width=32, img_height=32)
    np.testing.assert_allclose(rois, [[0, 0, 16.5, 16.5], [0.5, 0.5, 32, 32]])
    cfg.rpn_min_box_size = 100.0
    rois, scores = rpn_to_roi(rpn_cls, rpn_regr, cfg, img_width=32, img_height=32)
    assert rois.shape == (0, 4) and scores.shape == (0,)


def test_calc_rpn_targets_decode_back_to_gt():
    """Targets of calc_rpn, fed to rpn_to_roi as if predicted, give back the gt box (same anchor centres)."""
    cfg = Config(anchor_box_scales=[32.0, 64.0], rpn_num_regions=1000, rpn_min_box_size=1.0)
    gt = np.array([[37.3, 21.9, 90.2, 70.4]])
    y_cls, y_regr = calc_rpn(gt, 160, 128, cfg, np.random.default_rng(0))
    num_k = cfg.num_anchors
    assert y_cls[..., num_k:].sum() >= 1
    rois, _ = rpn_to_roi(y_cls[..., num_k:], y_regr[..., 4 * num_k:], cfg, 160, 128)
    np.testing.assert_allclose(rois[0], gt[0], atol=1e-3)


def test_rpn_to_roi_uses_generate_anchors():
    cfg = Config(rpn_min_box_size=0.0, rpn_nms_overlap=1.0, rpn_pre_nms_top_n=10**6, rpn_max_proposals=10**6)
    feat_h, feat_w = 3, 4
    num_k = cfg.num_anchors
    scores = np.arange(feat_h * feat_w * num_k, dtype=float)[::-1].reshape(feat_h, feat_w, num_k)
    rois, _ = rpn_to_roi(scores, np.zeros((feat_h, feat_w, 4 * num_k)), cfg, 10**4, 10**4)
    anchors = generate_anchors(feat_w, feat_h, cfg).reshape(-1, 4)
    np.testing.assert_allclose(rois, np.clip(anchors, 0, None))


# --------------------------------------------------------------------------------------------
# calc_iou
# --------------------------------------------------------------------------------------------
def test_calc_iou_labels_and_targets():
    cfg = Config()
    gt = np.array([[0, 0, 10, 10], [100, 100, 140, 120]], dtype=float)
    labels = np.array([0, 1])
    rois = np.array(
        [
            [100, 100, 140, 120],  # exact match of gt 1 -> class 1, IoU 1
            [1, 0, 11, 10],        # IoU 90/110 with gt 0 -> class 0
            [5, 0, 15, 10],        # IoU 1/3 -> bg
            [50, 50, 60, 60],      # IoU 0 -> dropped
            [8, 8, 18, 18],        # IoU 4/196 < 0.1 -> dropped
        ],
        dtype=float,
    )
    kept, y_class, y_regr, ious = calc_iou(rois, gt, labels, cfg, num_classes=3)
    np.testing.assert_allclose(kept, rois[:3])
    np.testing.assert_allclose(ious, [1.0, 90 / 110, 1 / 3])
    np.testing.assert_array_equal(y_class, [[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    assert y_regr.shape == (3, 16)
    np.testing.assert_array_equal(y_regr[:, :8], [[0, 0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0], [0] * 8])
    # row 1: roi [1,0,11,10] -> gt [0,0,10,10]: tx = -1/10, ty = tw = th = 0, times std 8
    np.testing.assert_allclose(y_regr[1, 8:], [-0.8, 0, 0, 0, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(y_regr[0, 8:], 0.0)
    np.testing.assert_allclose(y_regr[2, 8:], 0.0)


def test_calc_iou_scaled_targets_match_encode():
    cfg = Config()
    gt = np.array([[10, 20, 50, 80.0]])
    roi = np.array([[12, 18, 55, 75.0]])
    _, _, y_regr, _ = calc_iou(roi, gt, np.array([0]), cfg, num_classes=2)
    expected = encode_boxes(roi, gt)[0] * np.array(cfg.classifier_regr_std)
    np.testing.assert_allclose(y_regr[0], np.concatenate([[1, 1, 1, 1], expected]), rtol=1e-6)


def test_calc_iou_without_gt_keeps_all_as_bg():
    rois = np.array([[0, 0, 10, 10], [5, 5, 30, 30.0]])
    kept, y_class, y_regr, ious = calc_iou(rois, np.zeros((0, 4)), np.zeros(0, int), Config(), num_classes=3)
    np.testing.assert_allclose(kept, rois)
    np.testing.assert_array_equal(y_class, [[0, 0, 1], [0, 0, 1]])
    assert np.all(y_regr == 0) and y_regr.shape == (2, 16)
    np.testing.assert_array_equal(ious, [0.0, 0.0])


def test_calc_iou_rejects_bg_label():
    with pytest.raises(ValueError):
        calc_iou(np.array([[0, 0, 1, 1.0]]), np.array([[0, 0, 1, 1.0]]), np.array([2]), Config(), num_classes=3)


# --------------------------------------------------------------------------------------------
# sample_rois
# --------------------------------------------------------------------------------------------
def one_hot(classes: list[int], num_classes: int) -> np.ndarray:
    return np.eye(num_classes)[classes]


@pytest.mark.parametrize(
    "num_pos,num_neg,num_rois,fraction,expect_pos",
    [
        (20, 40, 32, 0.5, 16),   # plenty of both
        (3, 40, 32, 0.5, 3),     # few positives: rest negatives
        (20, 5, 32, 0.5, 16),    # few negatives: negatives repeated
        (0, 10, 8, 0.5, 0),      # no positives
        (20, 40, 7, 0.5, 3),     # 3.5 -> 3 (integer arithmetic)
        (2, 1, 8, 0.25, 2),      # too few in total
    ],
)
def test_sample_rois_counts(num_pos, num_neg, num_rois, fraction, expect_pos):
    y_class = one_hot([0] * num_pos + [2] * num_neg, 3)
    rng = np.random.default_rng(7)
    for _ in range(5):
        idx = sample_rois(y_class, num_rois, fraction, rng)
        assert idx.shape == (num_rois,) and idx.dtype.kind == "i"
        assert idx.min() >= 0 and idx.max() < len(y_class)
        is_pos = idx < num_pos
        assert is_pos.sum() == expect_pos
        assert len(set(idx[is_pos].tolist())) == expect_pos  # positives distinct
        distinct_neg = len(set(idx[~is_pos].tolist()))
        assert distinct_neg == min(num_neg, num_rois - expect_pos)


def test_sample_rois_no_negatives_and_empty():
    rng = np.random.default_rng(0)
    y_class = one_hot([0, 1, 0, 1, 1], 3)
    idx = sample_rois(y_class, 4, 0.25, rng)
    assert len(idx) == 4 and len(set(idx.tolist())) == 4
    idx = sample_rois(y_class, 12, 0.5, rng)
    assert len(idx) == 12 and set(idx.tolist()) == set(range(5))
    assert sample_rois(np.zeros((0, 3)), 8, 0.5, rng).shape == (0,)


def test_sample_rois_size_leaves_room_without_lowering_the_positive_cap():
    rng = np.random.default_rng(3)
    y_class = one_hot([0] * 20 + [2] * 40, 3)
    idx = sample_rois(y_class, 32, 0.5, rng, size=24)
    assert idx.shape == (24,) and np.sum(idx < 20) == 16           # the cap of 32 * 0.5, not of 24
    idx = sample_rois(y_class, 32, 0.5, rng, size=10)
    assert idx.shape == (10,) and np.sum(idx < 20) == 10           # never more rows than asked
    with pytest.raises(ValueError):
        sample_rois(y_class, 32, 0.5, rng, size=33)


def test_far_negatives_are_the_best_ranked_proposals_away_from_every_object():
    cfg = Config()
    cfg.num_rois, cfg.classifier_hard_negative_fraction = 8, 0.25
    gts = np.array([[0.0, 0.0, 50.0, 50.0]])
    rois = np.array([[0.0, 0.0, 50.0, 48.0],       # on the object
                     [200.0, 200.0, 250.0, 250.0],   # far, ranked first
                     [40.0, 40.0, 90.0, 90.0],       # IoU 0.02: far too (below classifier_min_overlap 0.1)
                     [300.0, 300.0, 350.0, 350.0],   # far, beyond the count
                     [10.0, 10.0, 60.0, 60.0]])      # near (IoU 0.47): calc_iou's bg, not far
    far, ious = far_negatives(rois, gts, cfg)
    np.testing.assert_array_equal(far, rois[[1, 2]])
    np.testing.assert_allclose(ious, [0.0, 100.0 / 4900.0])
    kept = calc_iou(rois, gts, np.array([0]), cfg, 2)[0]
    assert not any((kept == box).all(axis=1).any() for box in far)   # exactly the RoIs calc_iou drops
    assert far_negatives(rois, np.zeros((0, 4)), cfg)[0].shape == (0, 4)   # no gt: none
    cfg.classifier_hard_negative_fraction = 0.0
    assert far_negatives(rois, gts, cfg)[0].shape == (0, 4)


def test_rpn_to_roi_test_time_cap():
    from keras_frcnn_cryo.config import Config as _Config
    from keras_frcnn_cryo.roi_helpers import rpn_to_roi as _rpn_to_roi
    cfg = _Config(anchor_box_scales=[16.0, 32.0])
    rng = np.random.default_rng(5)
    k = cfg.num_anchors
    cls_map = rng.uniform(size=(8, 8, k))
    regr_map = rng.normal(scale=0.1, size=(8, 8, 4 * k))
    full, _ = _rpn_to_roi(cls_map, regr_map, cfg, 128, 128)
    capped, _ = _rpn_to_roi(cls_map, regr_map, cfg, 128, 128, max_proposals=5)
    assert len(full) > 5 and len(capped) == 5
    np.testing.assert_array_equal(capped, full[:5])        # the cap keeps the best proposals, in order


def test_rpn_to_roi_min_score_drops_weak_proposals():
    from keras_frcnn_cryo.config import Config as _Config
    from keras_frcnn_cryo.roi_helpers import rpn_to_roi as _rpn_to_roi
    cfg = _Config(anchor_box_scales=[16.0, 32.0])
    rng = np.random.default_rng(7)
    k = cfg.num_anchors
    cls_map = rng.uniform(size=(8, 8, k)) ** 4                 # most scores near 0, as from a trained RPN
    regr_map = rng.normal(scale=0.1, size=(8, 8, 4 * k))
    full, full_scores = _rpn_to_roi(cls_map, regr_map, cfg, 128, 128)
    kept, kept_scores = _rpn_to_roi(cls_map, regr_map, cfg, 128, 128, min_score=0.5)
    assert 0 < len(kept) < len(full) and kept_scores.min() >= 0.5
    # weak boxes never suppress stronger ones, so the floor keeps exactly the strong part of the full list
    np.testing.assert_array_equal(kept, full[full_scores >= 0.5])
    nothing, _ = _rpn_to_roi(cls_map, regr_map, cfg, 128, 128, min_score=1.0 + 1e-9)
    assert nothing.shape == (0, 4)


def test_detector_min_proposal_score_option(tmp_path):
    """--min-proposal-score reaches the Detector's config; values outside [0, 1) are refused."""
    from conftest import toy_config

    from keras_frcnn_cryo import predict
    from keras_frcnn_cryo.config import save_config
    config_path = str(tmp_path / "config.pickle")
    cfg = toy_config(model_path=str(tmp_path / "absent.weights.h5"))
    save_config(cfg, config_path)
    args = predict.build_parser().parse_args(["-p", str(tmp_path), "--min-proposal-score", "0.3"])
    assert args.min_proposal_score == 0.3
    assert predict.build_parser().parse_args(["-p", "x"]).min_proposal_score is None
    with pytest.raises(CryoError, match="--min-proposal-score must lie in"):
        predict.load_detector(config_path, None, min_proposal_score=1.5)
    with pytest.raises(CryoError, match="weights file not found"):    # the score was accepted first
        predict.load_detector(config_path, None, min_proposal_score=0.3)
