"""3D linking of per-slice boxes, 3D IoU, object-level matching and isolated tilt detections."""
import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest

from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.tracking import (
    refine_along_z,
    specimen_z_range,
    Object3D,
    TrackingParams,
    flag_isolated_tilt_detections,
    iou_3d,
    iou_3d_matrix,
    link_boxes,
    match_flags_3d,
    match_objects_3d,
)


def _add(per_slice, z, box, score, label):
    boxes, scores, labels = per_slice.setdefault(z, ([], [], []))
    boxes.append(list(box))
    scores.append(score)
    labels.append(label)


def _as_arrays(per_slice):
    return {z: (np.array(b, float).reshape(-1, 4), np.array(s, float), np.array(l, int))
            for z, (b, s, l) in per_slice.items()}


def _scene(seed=0):
    """Hand-built scene; returns (per_slice, expected) with expected member slices per object key."""
    rng = np.random.default_rng(seed)
    per_slice = {}
    expected = {}

    def noisy(box):
        return np.asarray(box, float) + rng.uniform(-3, 3, 4)

    # A: class 0 on slices 0..9 with a 2-slice gap (4, 5 missing)
    expected["A"] = [z for z in range(10) if z not in (4, 5)]
    for z in expected["A"]:
        _add(per_slice, z, noisy([50, 50, 150, 120]), 0.9 - 0.01 * z, 0)
    # B: class 0 on slices 3..12, drifting right by 2 px per slice
    expected["B"] = list(range(3, 13))
    for z in expected["B"]:
        _add(per_slice, z, noisy([300 + 2 * z, 60, 380 + 2 * z, 200]), 0.8, 0)
    # C: class 1 at exactly A's place on slices 0..9: a different class, never merged with A
    expected["C"] = list(range(10))
    for z in expected["C"]:
        _add(per_slice, z, noisy([50, 50, 150, 120]), 0.7, 1)
    # D, E: two touching class-0 objects side by side on slices 20..25 (centres 42 px apart, size 40)
    expected["D"] = list(range(20, 26))
    expected["E"] = list(range(20, 26))
    for z in range(20, 26):
        _add(per_slice, z, [400, 400, 440, 440], 0.95, 0)
        _add(per_slice, z, [442, 400, 482, 440], 0.6, 0)
    # spurious: 2 slices only (dropped with min_length 3)
    for z in (7, 8):
        _add(per_slice, z, [600, 600, 630, 630], 0.99, 0)
    return _as_arrays(per_slice), expected


def test_link_boxes_scene():
    per_slice, expected = _scene()
    objects = link_boxes(per_slice, TrackingParams(), class_names=["mito", "vesicle"])
    assert len(objects) == 5
    by_slices = {(o.class_index, tuple(o.slices)) for o in objects}
    assert (0, tuple(expected["A"])) in by_slices       # the gap of 2 slices is bridged
    assert (0, tuple(expected["B"])) in by_slices
    assert (1, tuple(expected["C"])) in by_slices       # class 1 kept apart from A
    side_by_side = [o for o in objects if o.slices == expected["D"]]
    assert len(side_by_side) == 2                      # D and E not merged
    assert sorted(round(o.x1) for o in side_by_side) == [400, 442]
    assert all(o.class_name == ("mito" if o.class_index == 0 else "vesicle") for o in objects)
    for obj in objects:
        # each member box is one of that slice's input boxes with the object's class
        for z, box in zip(obj.slices, obj.boxes):
            boxes, _, labels = per_slice[z]
            assert any(np.array_equal(box, b) and l == obj.class_index for b, l in zip(boxes, labels))
        # union extent and z range, computed independently
        assert obj.x1 == pytest.approx(min(b[0] for b in obj.boxes))
        assert obj.y1 == pytest.approx(min(b[1] for b in obj.boxes))
        assert obj.x2 == pytest.approx(max(b[2] for b in obj.boxes))
        assert obj.y2 == pytest.approx(max(b[3] for b in obj.boxes))
        assert (obj.z1, obj.z2) == (obj.slices[0], obj.slices[-1] + 1)
        assert (obj.first_slice, obj.last_slice, obj.n_slices) == (obj.slices[0], obj.slices[-1], len(obj.slices))
        assert obj.score == pytest.approx(sum(obj.scores) / len(obj.scores))
    obj_a = next(o for o in objects if o.slices == expected["A"])
    assert obj_a.score == pytest.approx(np.mean([0.9 - 0.01 * z for z in expected["A"]]))
    # every box used at most once across objects
    used = [(z, tuple(b)) for o in objects for z, b in zip(o.slices, o.boxes)]
    assert len(used) == len(set(used))


def test_gap_longer_than_max_gap_splits_track():
    per_slice = {}
    for z in [0, 1, 2, 6, 7, 8]:  # 3 missing slices: 3, 4, 5
        _add(per_slice, z, [10, 10, 60, 60], 0.9, 0)
    per_slice = _as_arrays(per_slice)
    split = link_boxes(per_slice, TrackingParams(max_gap=2))
    assert [o.slices for o in split] == [[0, 1, 2], [6, 7, 8]]
    joined = link_boxes(per_slice, TrackingParams(max_gap=3))
    assert [o.slices for o in joined] == [[0, 1, 2, 6, 7, 8]]
    assert (joined[0].z1, joined[0].z2) == (0, 9)


def test_min_length_counts_member_slices():
    per_slice = _as_arrays({0: ([[0, 0, 20, 20]], [0.5], [0]), 2: ([[0, 0, 20, 20]], [0.5], [0])})
    assert link_boxes(per_slice, TrackingParams(min_length=3)) == []      # spans 3 slices, 2 boxes
    assert [o.slices for o in link_boxes(per_slice, TrackingParams(min_length=2))] == [[0, 2]]


def test_centre_distance_links_low_iou_boxes_and_can_be_switched_off():
    # a box shrinking strongly: IoU 0.25 < 0.3, centres coincide
    per_slice = _as_arrays({z: ([[0, 0, 100, 100]] if z % 2 == 0 else [[25, 25, 75, 75]], [0.9], [0])
                            for z in range(4)})
    assert [o.slices for o in link_boxes(per_slice, TrackingParams(min_length=1))] == [[0, 1, 2, 3]]
    off = link_boxes(per_slice, TrackingParams(min_length=1, max_centre_distance_frac=0.0))
    assert sorted(o.slices for o in off) == [[0, 2], [1, 3]]   # IoU 1 across the one-slice gap
    no_gap = link_boxes(per_slice, TrackingParams(min_length=1, max_centre_distance_frac=0.0, max_gap=0))
    assert sorted(o.slices for o in no_gap) == [[0], [1], [2], [3]]


def test_greedy_takes_best_overlap_first():
    # track ends at [0,0,40,40]; on slice 1 a high-score box with IoU 0.54 and a low-score box with IoU 1
    per_slice = _as_arrays({0: ([[0, 0, 40, 40]], [0.9], [0]),
                            1: ([[12, 0, 52, 40], [0, 0, 40, 40]], [0.99, 0.5], [0, 0])})
    objects = link_boxes(per_slice, TrackingParams(min_length=1, max_centre_distance_frac=0.0))
    long_track = next(o for o in objects if o.n_slices == 2)
    assert long_track.boxes[1].tolist() == [0, 0, 40, 40]


def test_link_boxes_is_deterministic_under_input_order():
    per_slice, _ = _scene(seed=1)
    reference = [o.to_dict() for o in link_boxes(per_slice)]
    rng = np.random.default_rng(5)
    for _ in range(3):
        keys = list(per_slice)
        rng.shuffle(keys)
        shuffled = {}
        for z in keys:
            boxes, scores, labels = per_slice[z]
            perm = rng.permutation(len(boxes))
            shuffled[z] = (boxes[perm], scores[perm], labels[perm])
        assert [o.to_dict() for o in link_boxes(shuffled)] == reference


def test_link_boxes_order_invariant_with_exact_ties():
    # the track's last box lies exactly between two equal-score boxes: equal IoU, distance and score
    rows = {0: ([[40, 0, 80, 40]], [0.5], [0])}
    rows.update({z: ([[30, 0, 70, 40], [50, 0, 90, 40]], [0.5, 0.5], [0, 0]) for z in (1, 2, 3)})
    forward = _as_arrays(rows)
    backward = {z: (b[::-1], s[::-1], l[::-1]) for z, (b, s, l) in forward.items()}
    result = [o.to_dict() for o in link_boxes(forward)]
    assert result == [o.to_dict() for o in link_boxes(backward)]
    assert sorted(len(o["slices"]) for o in result) == [3, 4]


def test_link_boxes_accepts_detections_objects():
    per_slice = {z: SimpleNamespace(boxes=np.array([[0, 0, 10, 10]], float), scores=np.array([0.5]),
                                    labels=np.array([0])) for z in range(3)}
    objects = link_boxes(per_slice)
    assert len(objects) == 1 and objects[0].slices == [0, 1, 2] and objects[0].class_name == "0"


def test_robust_extent_ignores_one_outlier():
    per_slice = {}
    for z in range(10):
        box = [100, 100, 200, 200] if z != 5 else [60, 100, 260, 200]  # one oversized box
        _add(per_slice, z, box, 0.9, 0)
    per_slice = _as_arrays(per_slice)
    union = link_boxes(per_slice)[0]
    assert (union.x1, union.x2) == (60, 260)
    robust = link_boxes(per_slice, TrackingParams(extent_quantile=0.2))[0]
    assert (robust.x1, robust.x2) == (100, 200)


def test_params_from_config_and_validation():
    cfg = SimpleNamespace(track_max_gap=5, track_min_iou=0.5, unrelated=1)
    params = TrackingParams.from_config(cfg)
    assert (params.max_gap, params.min_iou, params.min_length) == (5, 0.5, TrackingParams().min_length)
    assert TrackingParams.from_config(object()).max_gap == 2
    with pytest.raises(CryoError, match="track_min_iou"):
        TrackingParams(min_iou=1.5)
    with pytest.raises(CryoError, match="track_max_gap"):
        TrackingParams(max_gap=-1)
    # the view's rules are Config's: every field has one, under its Config name
    from dataclasses import fields
    from keras_frcnn_cryo.config import FIELD_RULES
    assert all("track_" + param.name in FIELD_RULES for param in fields(TrackingParams))


def test_object_centre_and_dict_roundtrip():
    obj = Object3D(0, "mito", 10.0, 20.0, 3, 30.0, 60.0, 6, 0.5, [3, 4, 5], np.zeros((3, 4)), np.full(3, 0.5))
    assert obj.centre == (19.5, 39.5, 4.0)
    back = Object3D.from_dict(obj.to_dict())
    assert back.to_dict() == obj.to_dict()


# ------------------------------------------------------------------------------------------
def _voxel_iou(a, b):
    grid = np.zeros((2, 12, 12, 12), bool)
    for k, box in enumerate((a, b)):
        x1, y1, z1, x2, y2, z2 = box
        grid[k, z1:z2, y1:y2, x1:x2] = True
    union = np.logical_or(grid[0], grid[1]).sum()
    return np.logical_and(grid[0], grid[1]).sum() / union if union else 0.0


def test_refine_along_z_averages_neighbours_and_rescores_by_the_track():
    """A track of 5 slices whose middle box is off by 4 px: with window 1 each member box becomes the
    score-weighted mean of its neighbours (by hand below); with rescore every member scores the track's
    mean; a lone box (no track of min_length) keeps its box, its score times orphan_weight."""
    base = np.array([10.0, 10.0, 30.0, 30.0])
    per_slice = {}
    for z in range(5):
        box = base + (4.0 if z == 2 else 0.0)
        boxes, scores, labels = [box], [0.9 if z != 2 else 0.5], [0]
        if z == 4:
            boxes.append([60.0, 60.0, 70.0, 70.0]); scores.append(0.8); labels.append(0)   # isolated
        per_slice[z] = (np.array(boxes), np.array(scores), np.array(labels))
    objects = link_boxes(per_slice, TrackingParams(min_iou=0.3, min_length=3))
    assert len(objects) == 1 and objects[0].n_slices == 5
    out = refine_along_z(per_slice, objects, window=1, rescore=True, orphan_weight=0.5)
    mean = (0.9 * 4 + 0.5) / 5
    for z in range(5):
        boxes, scores, labels = out[z]
        assert scores[0] == pytest.approx(mean) and labels[0] == 0
    # slice 1: slices 0, 1, 2 with weights 0.9, 0.9, 0.5 -> shift 4 * 0.5 / 2.3; slice 0: slices 0, 1 -> none
    np.testing.assert_allclose(out[1][0][0], base + 4 * 0.5 / 2.3)
    np.testing.assert_allclose(out[0][0][0], base)
    np.testing.assert_allclose(out[2][0][0], base + 4 * 0.5 / 2.3)           # the outlier pulled back
    np.testing.assert_allclose(out[4][0][1], [60, 60, 70, 70])
    assert out[4][1][1] == pytest.approx(0.4)                                    # orphan: 0.8 x 0.5
    same = refine_along_z(per_slice, objects, window=0, rescore=False)
    for z in range(5):                                                           # nothing asked: unchanged
        np.testing.assert_array_equal(same[z][0], per_slice[z][0])
        np.testing.assert_array_equal(same[z][1], per_slice[z][1])
    with pytest.raises(CryoError):
        refine_along_z(per_slice, objects, window=-1)


def test_refine_along_z_duplicate_boxes_follow_their_own_object():
    """Two tracks share an identical box on slice 2 (two detections of one place): link_boxes records
    which detection each object took, so each copy is refined by its own object, as it is when the
    objects come back from a file (no indices) and are matched by box."""
    a, b = np.array([10.0, 10.0, 30.0, 30.0]), np.array([14.0, 14.0, 34.0, 34.0])
    per_slice = {}
    for z in range(5):
        boxes = [a, b] if z != 2 else [b, b]
        per_slice[z] = (np.array(boxes), np.array([0.9, 0.6]), np.array([0, 0]))
    objects = link_boxes(per_slice, TrackingParams(min_iou=0.5, min_length=3))
    assert len(objects) == 2
    for obj in objects:
        assert len(obj.members) == obj.n_slices
        for z, index, box in zip(obj.slices, obj.members, obj.boxes):
            np.testing.assert_array_equal(per_slice[z][0][index], box)
    on_two = sorted(int(obj.members[obj.slices.index(2)]) for obj in objects)
    assert on_two == [0, 1]                                         # each copy in exactly one object
    refined = refine_along_z(per_slice, objects, window=0, rescore=True)
    assert sorted(refined[2][1]) == pytest.approx(sorted(obj.score for obj in objects))
    read_back = [Object3D.from_dict(obj.to_dict()) for obj in objects]
    assert all(len(obj.members) == 0 for obj in read_back)
    again = refine_along_z(per_slice, read_back, window=0, rescore=True)
    assert sorted(again[2][1]) == pytest.approx(sorted(obj.score for obj in objects))


def test_iou_3d_hand_and_brute_force():
    assert iou_3d([0, 0, 0, 10, 10, 10], [5, 5, 5, 15, 15, 15]) == pytest.approx(125 / 1875)
    assert iou_3d([0, 0, 0, 10, 10, 10], [0, 0, 0, 10, 10, 10]) == 1.0
    assert iou_3d([0, 0, 0, 10, 10, 10], [0, 0, 10, 10, 10, 20]) == 0.0  # touching faces in z
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(30):
        low = rng.integers(0, 8, 3)
        high = low + rng.integers(1, 5, 3)
        boxes.append([*low, *high])
    matrix = iou_3d_matrix(np.array(boxes), np.array(boxes[:10]))
    assert matrix.shape == (30, 10)
    for i, j in itertools.product(range(30), range(10)):
        assert matrix[i, j] == pytest.approx(_voxel_iou(boxes[i], boxes[j]))


def _obj(box, score=0.9, name="mito"):
    x1, y1, z1, x2, y2, z2 = box
    return Object3D(0, name, x1, y1, z1, x2, y2, z2, score, list(range(z1, z2)))


def test_match_objects_3d_at_05_and_07():
    gt = [_obj([0, 0, 0, 10, 10, 10]), _obj([50, 50, 0, 60, 60, 10]), _obj([100, 100, 0, 110, 110, 10])]
    pred = [
        _obj([0, 0, 0, 10, 10, 10], 0.9),          # exact: IoU 1
        _obj([0, 0, 0, 10, 10, 10], 0.8),          # duplicate of the same gt: FP
        _obj([50, 50, 0, 60, 60, 6], 0.7),         # IoU 0.6 with gt 2
        _obj([200, 200, 0, 210, 210, 10], 0.6),    # nothing there: FP
        _obj([100, 100, 0, 110, 110, 10], 0.95, name="vesicle"),  # right place, wrong class: FP
    ]
    assert iou_3d(pred[2], gt[1]) == pytest.approx(0.6)
    p, r, f1, tp, fp, fn = match_objects_3d(pred, gt, 0.5)
    assert (tp, fp, fn) == (2, 3, 1)
    assert (p, r) == (pytest.approx(2 / 5), pytest.approx(2 / 3))
    assert f1 == pytest.approx(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3))
    result = match_objects_3d(pred, gt, 0.7)
    assert (result.tp, result.fp, result.fn) == (1, 4, 2)
    assert result.precision == pytest.approx(1 / 5) and result.recall == pytest.approx(1 / 3)
    # class-agnostic: the vesicle prediction now finds gt 3
    assert match_objects_3d(pred, gt, 0.5, class_aware=False).tp == 3


def test_match_objects_3d_greedy_by_score_and_empty_cases():
    gt = [_obj([0, 0, 0, 10, 10, 10])]
    weak_exact = _obj([0, 0, 0, 10, 10, 10], 0.3)
    strong_shifted = _obj([0, 0, 0, 10, 10, 7], 0.9)   # IoU 0.7 with gt
    result = match_objects_3d([weak_exact, strong_shifted], gt, 0.5)
    assert (result.tp, result.fp) == (1, 1)              # the strong one took the only gt
    assert match_objects_3d([weak_exact, strong_shifted], gt, 0.75).tp == 1  # only the exact one qualifies
    none = match_objects_3d([], gt, 0.5)
    assert (none.precision, none.recall, none.f1, none.fn) == (0.0, 0.0, 0.0, 1)
    no_gt = match_objects_3d([weak_exact], [], 0.5)
    assert no_gt.fp == 1 and math.isnan(no_gt.recall) and math.isnan(no_gt.f1)
    # gt as plain 6-value boxes
    assert match_objects_3d([weak_exact], [[0, 0, 0, 10, 10, 10]], 0.5).tp == 1


def test_match_flags_3d_in_the_order_given():
    """The flags follow the predictions as given, whatever order the greedy matching took them in."""
    gt = [_obj([0, 0, 0, 10, 10, 10])]
    weak_exact = _obj([0, 0, 0, 10, 10, 10], 0.3)
    strong_shifted = _obj([0, 0, 0, 10, 10, 7], 0.9)
    assert match_flags_3d([weak_exact, strong_shifted], gt, 0.5).tolist() == [False, True]
    assert match_flags_3d([weak_exact, strong_shifted], gt, 0.75).tolist() == [True, False]
    assert match_flags_3d([], gt, 0.5).shape == (0,)


# ------------------------------------------------------------------------------------------
def test_flag_isolated_tilt_detections():
    box = [10, 10, 50, 50]
    per_tilt = {
        0: ([box], [0.9], [0]),
        1: ([box, [200, 200, 240, 240]], [0.9, 0.9], [0, 0]),   # second box: nowhere else
        2: ([box, [300, 300, 340, 340]], [0.9, 0.9], [0, 1]),   # second: class 1, supported by tilt 3 only
        3: ([[305, 300, 345, 340], [200, 200, 240, 240]], [0.9, 0.9], [1, 1]),  # second: class 1 vs class-0 on tilt 1
        4: ([[600, 600, 640, 640]], [0.9], [0]),                  # last tilt, neighbour 3 has nothing there
    }
    per_tilt = _as_arrays(per_tilt)
    flagged = flag_isolated_tilt_detections(per_tilt, min_iou=0.3)
    assert flagged == [(1, 1), (3, 1), (4, 0)]
    # a list is accepted too (tilt = position)
    assert flag_isolated_tilt_detections([per_tilt[k] for k in range(5)], min_iou=0.3) == flagged
    # a strict IoU flags the slightly shifted class-1 pair as well
    assert (2, 1) in flag_isolated_tilt_detections(per_tilt, min_iou=0.95)


def _lamella_profile(n=44, first=7, stop=37, floor=0.6, width=2.0):
    """Structure along z of a lamella on slices first..stop-1 with vacuum around it: a smooth step
    up at each face from a slowly falling floor (the missing wedge's fading ghosts)."""
    z = np.arange(n, dtype=float)
    inside = 1.0 / (1.0 + np.exp(-(z - first + 0.5) / width)) * 1.0 / (1.0 + np.exp((z - stop + 0.5) / width))
    ghosts = 0.01 * np.minimum(np.abs(z - first), np.abs(z - stop))
    return floor - ghosts * (z < first) - ghosts * (z >= stop) + (1.0 - floor) * inside


def test_specimen_z_range_finds_the_lamella_faces():
    found = specimen_z_range(range(44), _lamella_profile())
    assert found is not None and abs(found[0] - 7) <= 1 and abs(found[1] - 37) <= 1
    # sparse slices (test_frcnn.py --step 2) and an offset z range
    zs = np.arange(10, 54, 2)                                   # faces at positions 5 and 17 of 22
    found = specimen_z_range(zs, _lamella_profile(n=22, first=5, stop=17))
    assert found is not None and abs(found[0] - 20) <= 2 and abs(found[1] - 44) <= 2
    # vacuum on one side only: the other side keeps the volume's own end
    one_sided = _lamella_profile(n=30, first=8, stop=40)
    found = specimen_z_range(range(30), one_sided)
    assert found is not None and abs(found[0] - 8) <= 1 and found[1] == 30


def test_specimen_z_range_keeps_a_volume_its_specimen_fills():
    z = np.arange(30, dtype=float)
    filled = 1.0 - 0.3 * ((z - 14.5) / 14.5) ** 2              # falls towards both ends, steepest at them
    assert specimen_z_range(range(30), filled) is None
    assert specimen_z_range(range(30), np.ones(30)) is None
    assert specimen_z_range(range(8), _lamella_profile(n=8, first=3, stop=5)) is None     # too short to tell
    profile = _lamella_profile()
    profile[5] = np.nan
    assert specimen_z_range(range(44), profile) is None
    with pytest.raises(ValueError, match="levels"):
        specimen_z_range(range(5), [1.0, 2.0])
