"""boxes.py: the one IoU (2D and 3D), box coding and its weights, NMS, box voting."""
from __future__ import annotations

import math

import numpy as np
import pytest

from keras_frcnn_cryo.boxes import (
    MAX_LOG_SCALE,
    VIEWS,
    BoxCoder,
    apply_regr,
    areas,
    box_voting,
    clip_boxes,
    encode_boxes,
    fuse_views,
    iou_matrix,
    nms,
)
from keras_frcnn_cryo.config import Config


def random_boxes(rng: np.random.Generator, count: int, size: float = 100.0) -> np.ndarray:
    corner = rng.uniform(0, size, (count, 2))
    extent = rng.uniform(1, size / 2, (count, 2))
    return np.concatenate([corner, corner + extent], axis=1)


def iou_reference(box_a: list[float], box_b: list[float]) -> float:
    """Plain-Python IoU of two boxes (width = x2 - x1)."""
    inter_w = max(0.0, min(box_a[2], box_b[2]) - max(box_a[0], box_b[0]))
    inter_h = max(0.0, min(box_a[3], box_b[3]) - max(box_a[1], box_b[1]))
    inter = inter_w * inter_h
    area_a = max(0.0, box_a[2] - box_a[0]) * max(0.0, box_a[3] - box_a[1])
    area_b = max(0.0, box_b[2] - box_b[0]) * max(0.0, box_b[3] - box_b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def nms_reference(boxes: list[list[float]], scores: list[float], thresh: float, max_boxes: int | None) -> list[int]:
    """Textbook greedy NMS: visit boxes by descending score (ties: lower index first)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    suppressed = [False] * len(scores)
    keep: list[int] = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        if max_boxes is not None and len(keep) == max_boxes:
            break
        for j in order[pos + 1:]:
            if not suppressed[j] and iou_reference(boxes[i], boxes[j]) > thresh:
                suppressed[j] = True
    return keep


# --------------------------------------------------------------------------------------------
# iou_matrix
# --------------------------------------------------------------------------------------------
def test_iou_matrix_hand_values():
    boxes_a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], dtype=float)
    boxes_b = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [0, 0, 5, 5]], dtype=float)
    expected = np.array([[1.0, 0.0, 0.25], [25 / 175, 25 / 175, 0.0]])
    np.testing.assert_allclose(iou_matrix(boxes_a, boxes_b), expected)


def test_iou_matrix_matches_brute_force():
    rng = np.random.default_rng(0)
    boxes_a, boxes_b = random_boxes(rng, 17), random_boxes(rng, 11)
    expected = [[iou_reference(list(a), list(b)) for b in boxes_b] for a in boxes_a]
    np.testing.assert_allclose(iou_matrix(boxes_a, boxes_b), expected, rtol=1e-12)


def test_iou_matrix_zero_area_and_empty():
    degenerate = np.array([[3, 3, 3, 3], [0, 0, 0, 10]], dtype=float)
    out = iou_matrix(degenerate, np.vstack([degenerate, [[0, 0, 10, 10]]]))
    assert np.all(np.isfinite(out)) and np.all(out == 0.0)
    assert iou_matrix(np.zeros((0, 4)), degenerate).shape == (0, 2)
    assert iou_matrix(degenerate, []).shape == (2, 0)


# --------------------------------------------------------------------------------------------
# box coding
# --------------------------------------------------------------------------------------------
def test_encode_hand_values():
    deltas = encode_boxes(np.array([[0, 0, 10, 10.0]]), np.array([[5, 0, 15, 20.0]]))
    np.testing.assert_allclose(deltas, [[0.5, 0.5, 0.0, math.log(2.0)]])


def test_encode_apply_round_trip():
    rng = np.random.default_rng(1)
    reference, target = random_boxes(rng, 200), random_boxes(rng, 200)
    np.testing.assert_allclose(apply_regr(reference, encode_boxes(reference, target)), target, atol=1e-5)


def test_apply_regr_clamps_scale():
    box = np.array([[0, 0, 16, 16.0]])
    out = apply_regr(box, np.array([[0, 0, 1e4, 1e4]]))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0, 2] - out[0, 0], 16 * math.exp(MAX_LOG_SCALE))
    np.testing.assert_allclose(out[0, 2] - out[0, 0], 1000.0)


# --------------------------------------------------------------------------------------------
# NMS
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("thresh,max_boxes", [(0.3, None), (0.5, None), (0.7, 5), (0.0, None), (0.9, 40)])
def test_nms_matches_brute_force(thresh, max_boxes):
    rng = np.random.default_rng(int(thresh * 10) + 3)
    boxes = random_boxes(rng, 60, size=60.0)
    scores = np.round(rng.uniform(0, 1, 60), 1)  # many ties
    got = nms(boxes, scores, thresh, max_boxes)
    assert got.dtype.kind == "i"
    assert got.tolist() == nms_reference(boxes.tolist(), scores.tolist(), thresh, max_boxes)
    assert np.all(np.diff(scores[got]) <= 0)


def test_nms_empty_and_identical():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5, 10).shape == (0,)
    same = np.tile([[0, 0, 10, 10.0]], (4, 1))
    assert nms(same, np.array([0.1, 0.9, 0.5, 0.9]), 0.5, None).tolist() == [1]


def test_iou_no_plus_one():
    iou = iou_matrix(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [3, 3, 3, 3]]))
    # 50 / (100 + 100 - 50); identical; disjoint; zero-area box
    np.testing.assert_allclose(iou, [[1.0 / 3.0, 1.0, 0.0, 0.0]])


def test_inverted_box_counts_as_empty():
    # keras-frcnn-style unclipped areas would give this pair a negative union share; here: 0
    inverted = np.array([[10.0, 10.0, 0.0, 0.0]])
    assert areas(inverted).tolist() == [0.0]
    assert iou_matrix(inverted, np.array([[0.0, 0.0, 10.0, 10.0]])).tolist() == [[0.0]]


def test_iou_3d_matches_product_of_extents():
    rng = np.random.default_rng(5)
    lo = rng.uniform(0, 50, (9, 3))
    a = np.concatenate([lo, lo + rng.uniform(1, 30, (9, 3))], axis=1)
    b = a[::-1] + 3.0
    got = iou_matrix(a, b)
    for i in range(len(a)):
        for j in range(len(b)):
            inter = np.prod(np.clip(np.minimum(a[i, 3:], b[j, 3:]) - np.maximum(a[i, :3], b[j, :3]), 0, None))
            union = np.prod(a[i, 3:] - a[i, :3]) + np.prod(b[j, 3:] - b[j, :3]) - inter
            assert got[i, j] == pytest.approx(inter / union)
    # a 2D box pair and its 3D extrusion (same z extent) have the same IoU
    flat = np.array([[0, 0, 10, 10], [5, 0, 15, 10.0]])
    slab = np.array([[0, 0, 0, 10, 10, 4], [5, 0, 0, 15, 10, 4.0]])
    np.testing.assert_allclose(iou_matrix(slab, slab), iou_matrix(flat, flat))


def test_iou_rejects_mixed_widths():
    with pytest.raises(ValueError, match="boxes_b"):
        iou_matrix(np.zeros((2, 4)), np.zeros((2, 6)))


def test_box_coder_weights_and_round_trip():
    cfg = Config()
    rpn, head = BoxCoder.rpn(cfg), BoxCoder.head(cfg)
    assert rpn.weights == (cfg.std_scaling,) * 4
    assert head.weights == tuple(cfg.classifier_regr_std)
    reference = np.array([[0, 0, 10, 10.0], [4, 4, 40, 20.0]])
    target = np.array([[5, 0, 15, 20.0], [0, 2, 36, 30.0]])
    for coder in (rpn, head):
        deltas = coder.encode(reference, target)
        np.testing.assert_allclose(deltas, encode_boxes(reference, target) * np.asarray(coder.weights))
        np.testing.assert_allclose(coder.decode(reference, deltas), target, atol=1e-9)
    with pytest.raises(ValueError, match="4 values"):
        BoxCoder.head(Config(classifier_regr_std=[8.0, 8.0]))


def test_clip_boxes():
    out = clip_boxes(np.array([[-5, -5, 50, 20.0]]), 40, 30)
    assert out.tolist() == [[0.0, 0.0, 40.0, 20.0]]


def test_box_voting_by_hand():
    kept = np.array([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    candidates = np.array([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], [30.0, 30.0, 40.0, 40.0],
                           [50.0, 50.0, 60.0, 60.0]])
    scores = np.array([0.9, 0.3, 0.8, 0.5])
    # IoU of the 2nd candidate with the 1st kept box: 80 / 120 = 0.667
    voted = box_voting(kept, candidates, scores, 0.6)
    np.testing.assert_allclose(voted[0], [0.5, 0.0, 10.5, 10.0])       # (0.9 * 0 + 0.3 * 2) / 1.2
    np.testing.assert_allclose(voted[1], kept[1])                      # only itself
    np.testing.assert_allclose(box_voting(kept, candidates, scores, 0.7), kept)
    assert box_voting(np.zeros((0, 4)), candidates, scores, 0.5).shape == (0, 4)


@pytest.mark.parametrize("view", VIEWS["dihedral"], ids=str)
def test_view_boxes_map_back_to_the_image(view):
    """A rectangle drawn in a 40 x 64 image, found in the view's pixels, maps back onto itself."""
    image = np.zeros((40, 64, 3), np.float32)
    image[5:17, 30:61] = 1.0                                    # x 30-61, y 5-17
    seen = view.apply(image)
    assert seen.shape == ((64, 40, 3) if view.transpose else (40, 64, 3))
    ys, xs = np.nonzero(seen[..., 0])
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float)
    back = view.boxes_back(found, seen.shape[1], seen.shape[0])
    np.testing.assert_array_equal(back, [[30, 5, 61, 17]])


def test_views_are_distinct_symmetries():
    image = np.arange(12.0).reshape(3, 4)
    for name, n in (("none", 1), ("transpose", 2), ("dihedral", 8)):
        assert len(VIEWS[name]) == n and not VIEWS[name][0].transpose     # the identity first
        seen = {view.apply(image).tobytes() + bytes(view.transpose) for view in VIEWS[name]}
        assert len(seen) == n


def test_fuse_views_by_hand():
    """Four views: one object all of them found (boxes shifted by 0-3 px, different scores), one a
    single view found, and a second box of view 0 on the first object that NMS folds in."""
    boxes = np.array([[10, 10, 50, 50], [11, 10, 51, 50], [12, 10, 52, 50], [13, 10, 53, 50],
                      [100, 100, 120, 120], [10, 12, 50, 48]], float)
    scores = np.array([0.9, 0.8, 0.6, 0.5, 0.9, 0.3])
    views = np.array([0, 1, 2, 3, 2, 0])
    fused, fused_scores = fuse_views(boxes, scores, views, 4, overlap_thresh=0.5, match_iou=0.5)
    assert fused.shape == (2, 4)
    # the object: one box per view (view 0's best, 0.9, not its 0.3 one), weighted by score
    weights = np.array([0.9, 0.8, 0.6, 0.5])
    np.testing.assert_allclose(fused[0], weights @ boxes[:4] / weights.sum())
    assert fused_scores[0] == pytest.approx(weights.sum() / 4)
    # the single-view box keeps its place and a quarter of its score
    np.testing.assert_allclose(fused[1], [100, 100, 120, 120])
    assert fused_scores[1] == pytest.approx(0.9 / 4)


def test_fuse_views_empty_and_one_view():
    boxes, scores = fuse_views(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 4, 0.5, 0.5)
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    one, one_scores = fuse_views(np.array([[0, 0, 10, 10], [1, 0, 11, 10]], float), np.array([0.4, 0.8]),
                                 np.array([0, 0]), 1, 0.5, 0.5)
    np.testing.assert_allclose(one, [[1, 0, 11, 10]])          # one view: plain NMS, scores unchanged
    np.testing.assert_allclose(one_scores, [0.8])


def test_fuse_views_agreement_ranks_boxes_the_views_place_alike_first():
    """Two objects, each found by all four views at score 0.9: views agreeing to a pixel on the
    first, scattered by 6 px on the second. Without the agreement factor both score 0.9 (the
    scattered one first, by input order); with it the first keeps ~0.9 and the second drops."""
    tight = np.array([[200, 200, 260, 260]] * 4, float) + np.array([[0, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1],
                                                                    [1, 1, 1, 1]])
    loose = np.array([[10, 10, 70, 70]] * 4, float) + np.array([[0, 0, 0, 0], [6, 0, 6, 0], [0, 6, 0, 6],
                                                                [-6, -6, 0, 0]])
    boxes = np.concatenate([loose, tight])
    scores, views = np.full(8, 0.9), np.array([0, 1, 2, 3] * 2)
    _, plain = fuse_views(boxes, scores, views, 4, 0.5, 0.5)
    np.testing.assert_allclose(plain, [0.9, 0.9])
    fused, ranked = fuse_views(boxes, scores, views, 4, 0.5, 0.5, agreement_weight=1.0)
    assert fused[0, 0] > 100 and ranked[0] > 0.87 and ranked[1] < 0.85


def test_fuse_views_a_box_joins_one_cluster_only():
    """Two views. View 0 finds the object (0.98) and a weak box beside it (0.15, IoU 0.43 with the
    strong one, so NMS keeps both); view 1 finds the object once (0.97), overlapping both view-0
    boxes at IoU >= 0.5. View 1's box belongs to the object's cluster only: the weak box stays weak
    (0.15 / 2) instead of borrowing it and coming out as a duplicate scoring (0.15 + 0.97) / 2."""
    strong = [20.0, 20.0, 80.0, 80.0]
    weak = [44.0, 20.0, 104.0, 80.0]                # IoU with strong 36 / 84 = 0.43
    other = [32.0, 20.0, 92.0, 80.0]                # IoU 48 / 72 = 0.67 with both
    boxes = np.array([strong, weak, other])
    assert iou_matrix(boxes[:1], boxes[1:2])[0, 0] < 0.5 <= min(iou_matrix(boxes[2:], boxes[:2])[0])
    fused, scores = fuse_views(boxes, np.array([0.98, 0.15, 0.97]), np.array([0, 0, 1]), 2, 0.5, 0.5)
    assert len(fused) == 2
    np.testing.assert_allclose(scores, [(0.98 + 0.97) / 2, 0.15 / 2])
    np.testing.assert_allclose(fused[1], weak)
    # a kept box that a better cluster took as its member forms no cluster of its own
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 15.5]])       # IoU 0.645
    fused, scores = fuse_views(boxes, np.array([0.9, 0.8]), np.array([0, 1]), 2, 0.7, 0.5)
    assert len(fused) == 1 and scores[0] == pytest.approx(0.85)
