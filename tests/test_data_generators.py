"""Tests of keras_frcnn_cryo.data_generators: calc_rpn (against a plain-loop reference), augmentation, stream."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from keras_frcnn_cryo.config import Config
from keras_frcnn_cryo.data_generators import (
    Prefetch,
    augment,
    calc_rpn,
    generate_anchors,
    get_feature_map_size,
    iter_training_samples,
    jitter_appearance,
    jittered_scale,
)
from keras_frcnn_cryo.errors import CryoError


def iou_reference(box_a, box_b) -> float:
    inter_w = max(0.0, min(box_a[2], box_b[2]) - max(box_a[0], box_b[0]))
    inter_h = max(0.0, min(box_a[3], box_b[3]) - max(box_a[1], box_b[1]))
    inter = inter_w * inter_h
    union = (box_a[2] - box_a[0]) * (box_a[3] - box_a[1]) + (box_b[2] - box_b[0]) * (box_b[3] - box_b[1]) - inter
    return inter / union if union > 0 else 0.0


def calc_rpn_reference(gt, img_width, img_height, cfg):
    """Slow, loop-based labelling: {(i, j, k): 'pos' | 'neg' | None} and {(i, j, k): (tx, ty, tw, th)} for positives."""
    stride = cfg.rpn_stride
    feat_w, feat_h = math.ceil(img_width / stride), math.ceil(img_height / stride)
    shapes = []
    for scale in cfg.anchor_box_scales:
        for ratio_w, ratio_h in cfg.anchor_box_ratios:
            shapes.append((scale * math.sqrt(ratio_w / ratio_h), scale * math.sqrt(ratio_h / ratio_w)))
    anchors = {}
    for i in range(feat_h):
        for j in range(feat_w):
            for k, (width, height) in enumerate(shapes):
                cx, cy = cfg.feature_centre_px + j * stride, cfg.feature_centre_px + i * stride
                anchors[(i, j, k)] = (cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2)

    def inside(box):
        if not cfg.rpn_ignore_cross_boundary:
            return True
        return box[0] >= 0 and box[1] >= 0 and box[2] <= img_width and box[3] <= img_height

    ious = {key: [iou_reference(box, g) for g in gt] for key, box in anchors.items()}
    forced = set()
    for g in range(len(gt)):
        best = -1.0
        for key, box in anchors.items():
            if inside(box) and ious[key][g] > best:
                best = ious[key][g]
        use_all = best <= 0
        if use_all:
            best = max(ious[key][g] for key in anchors)
        if best > 0:
            for key, box in anchors.items():
                if (use_all or inside(box)) and ious[key][g] == best:
                    forced.add(key)
    labels, targets = {}, {}
    for key, box in anchors.items():
        max_iou, best_g = 0.0, 0
        for g in range(len(gt)):
            if ious[key][g] > max_iou:
                max_iou, best_g = ious[key][g], g
        label = None
        if key in forced or (inside(box) and max_iou > cfg.rpn_max_overlap):
            label = "pos"
        elif inside(box) and max_iou < cfg.rpn_min_overlap:
            label = "neg"
        labels[key] = label
        if label == "pos":
            a, t = box, gt[best_g]
            aw, ah, tw, th = a[2] - a[0], a[3] - a[1], t[2] - t[0], t[3] - t[1]
            targets[key] = (
                ((t[0] + tw / 2) - (a[0] + aw / 2)) / aw,
                ((t[1] + th / 2) - (a[1] + ah / 2)) / ah,
                math.log(tw / aw),
                math.log(th / ah),
            )
    return labels, targets


def small_cfg(**overrides) -> Config:
    cfg = Config(anchor_box_scales=[16.0, 32.0], rpn_stride=8, rpn_num_regions=10**6)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def labels_from_output(y_cls, cfg):
    num_k = cfg.num_anchors
    return y_cls[..., :num_k].astype(bool), y_cls[..., num_k:].astype(bool)


# --------------------------------------------------------------------------------------------
# calc_rpn
# --------------------------------------------------------------------------------------------
CASES = [
    # (gt boxes, width, height, ignore_cross_boundary)
    ([[10.0, 12.0, 40.0, 30.0], [45.0, 5.0, 60.0, 45.0]], 70, 50, True),
    ([[10.0, 12.0, 40.0, 30.0], [45.0, 5.0, 60.0, 45.0]], 70, 50, False),
    ([[0.0, 0.0, 69.0, 49.0]], 70, 50, True),                       # one large object
    ([[3.3, 4.1, 9.7, 8.2], [50.5, 30.2, 52.0, 31.0]], 66, 41, True),  # tiny objects: forced positives only
    ([[1.0, 1.0, 12.0, 12.0]], 14, 13, True),                       # image smaller than big anchors
    ([[20.0, 20.0, 36.0, 36.0], [20.0, 20.0, 36.0, 36.0]], 56, 56, True),  # duplicate gt
]


@pytest.mark.parametrize("gt,width,height,ignore", CASES)
def test_calc_rpn_matches_loop_reference(gt, width, height, ignore):
    cfg = small_cfg(rpn_ignore_cross_boundary=ignore)
    y_cls, y_regr = calc_rpn(np.array(gt), width, height, cfg, np.random.default_rng(0))
    labels, targets = calc_rpn_reference(gt, width, height, cfg)
    num_k = cfg.num_anchors
    feat_w, feat_h = get_feature_map_size(width, height, cfg.rpn_stride)
    assert y_cls.shape == (feat_h, feat_w, 2 * num_k) and y_cls.dtype == np.float32
    assert y_regr.shape == (feat_h, feat_w, 8 * num_k) and y_regr.dtype == np.float32
    sampled, positive = labels_from_output(y_cls, cfg)
    assert positive.any()
    for (i, j, k), label in labels.items():
        assert sampled[i, j, k] == (label is not None), (i, j, k)
        assert positive[i, j, k] == (label == "pos"), (i, j, k)
        mask = y_regr[i, j, 4 * k:4 * k + 4]
        target = y_regr[i, j, 4 * num_k + 4 * k:4 * num_k + 4 * k + 4]
        if label == "pos":
            np.testing.assert_array_equal(mask, 1.0)
            np.testing.assert_allclose(target, np.array(targets[(i, j, k)]) * cfg.std_scaling, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(mask, 0.0)
            np.testing.assert_array_equal(target, 0.0)


def test_calc_rpn_forced_positive_ties():
    # one 32-px anchor shape, stride 8 (cell centres at 0.5 + 8 k): a 20x20 gt centred at (28.5, 24.5)
    # lies inside exactly the two anchors centred at (24.5, 24.5) and (32.5, 24.5) -> they tie on best
    # IoU (400/1024, no threshold reached) and both become positive; no other anchor does
    cfg = small_cfg(anchor_box_scales=[32.0], anchor_box_ratios=[[1, 1]])
    assert cfg.feature_centre_px == 0.5
    gt = np.array([[18.5, 14.5, 38.5, 34.5]])
    y_cls, _ = calc_rpn(gt, 64, 64, cfg, np.random.default_rng(0))
    _, positive = labels_from_output(y_cls, cfg)
    assert np.argwhere(positive).tolist() == [[3, 3, 0], [3, 4, 0]]


def test_calc_rpn_no_gt_all_negative():
    cfg = small_cfg(rpn_num_regions=50)
    y_cls, y_regr = calc_rpn(np.zeros((0, 4)), 120, 80, cfg, np.random.default_rng(1))
    sampled, positive = labels_from_output(y_cls, cfg)
    assert sampled.sum() == 50 and not positive.any() and not y_regr.any()
    # every sampled anchor is inside the image
    anchors = generate_anchors(*get_feature_map_size(120, 80, cfg.rpn_stride), cfg)[sampled]
    assert anchors[:, :2].min() >= 0 and anchors[:, 2].max() <= 120 and anchors[:, 3].max() <= 80


@pytest.mark.parametrize("num_regions,fraction", [(7, 0.5), (256, 0.5), (10, 0.25), (5, 1.0)])
def test_calc_rpn_sampling_many_positives(num_regions, fraction):
    """An image nearly filled by one object (keras-frcnn's float num_regions/2 crashed on these)."""
    full_cfg = small_cfg(anchor_box_scales=[16.0, 24.0, 32.0], rpn_max_overlap=0.5)
    gt = np.array([[2.0, 2.0, 118.0, 94.0]] + [[x, y, x + 20.0, y + 20.0] for x in range(0, 100, 12)
                                                for y in range(0, 76, 12)])
    y_full, _ = calc_rpn(gt, 120, 96, full_cfg, np.random.default_rng(0))
    all_valid, all_pos = labels_from_output(y_full, full_cfg)
    all_neg = all_valid & ~all_pos
    max_pos = int(num_regions * fraction)
    assert all_pos.sum() > max_pos and all_neg.sum() > 0

    cfg = small_cfg(anchor_box_scales=[16.0, 24.0, 32.0], rpn_max_overlap=0.5,
                    rpn_num_regions=num_regions, rpn_max_positive_fraction=fraction)
    for seed in range(3):
        y_cls, y_regr = calc_rpn(gt, 120, 96, cfg, np.random.default_rng(seed))
        sampled, positive = labels_from_output(y_cls, cfg)
        np.testing.assert_array_equal(positive, all_pos)          # labels do not depend on sampling
        sampled_pos = sampled & positive
        assert sampled_pos.sum() == max_pos
        assert sampled.sum() == min(num_regions, max_pos + all_neg.sum())
        assert not (sampled & ~all_valid).any()
        num_k = cfg.num_anchors
        mask = y_regr[..., :4 * num_k].reshape(*positive.shape, 4)
        np.testing.assert_array_equal(mask, np.repeat(sampled_pos[..., None], 4, axis=-1))


def test_calc_rpn_few_negatives_fills_with_what_exists():
    cfg = small_cfg(anchor_box_scales=[32.0], anchor_box_ratios=[[1, 1]], rpn_num_regions=100)
    y_cls, _ = calc_rpn(np.array([[0.0, 0.0, 40.0, 40.0]]), 40, 40, cfg, np.random.default_rng(0))
    sampled, positive = labels_from_output(y_cls, cfg)
    assert 0 < sampled.sum() < 100 and positive.any()


def test_calc_rpn_orphan_gt_uses_crossing_anchor():
    # a 20x20 image: every 32-px anchor crosses the border, so none is inside
    cfg = small_cfg(anchor_box_scales=[32.0], anchor_box_ratios=[[1, 1]])
    y_cls, y_regr = calc_rpn(np.array([[2.0, 2.0, 18.0, 18.0]]), 20, 20, cfg, np.random.default_rng(0))
    sampled, positive = labels_from_output(y_cls, cfg)
    assert positive.sum() >= 1 and np.array_equal(sampled, positive)
    assert y_regr[..., :4].sum() == 4 * positive.sum()


# --------------------------------------------------------------------------------------------
# augment
# --------------------------------------------------------------------------------------------
def box_from_mask(image: np.ndarray) -> list[float]:
    rows = np.flatnonzero(image.any(axis=1))
    cols = np.flatnonzero(image.any(axis=0))
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def drawn_image(height: int, width: int, box: list[int]) -> np.ndarray:
    image = np.zeros((height, width), dtype=np.float32)
    image[box[1]:box[3], box[0]:box[2]] = 1.0
    image[0, 0] = 0.5  # marks the original top-left corner (distinguishes rotations of symmetric cases)
    return image


@pytest.mark.parametrize("flags", [(True, False, False), (False, True, False), (False, False, True), (True, True, True)])
def test_augment_boxes_follow_image(flags):
    hflip, vflip, rot = flags
    cfg = Config(use_horizontal_flips=hflip, use_vertical_flips=vflip, rot_90=rot)
    box = [3, 5, 11, 9]
    image = drawn_image(20, 31, box)
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(80):
        out_img, out_boxes = augment(image, np.array([box], dtype=float), cfg, rng)
        assert out_img.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(out_boxes[0], box_from_mask(out_img == 1.0))
        outcomes.add((out_img.shape, tuple(out_boxes[0])))
    expected = {(True, False, False): 2, (False, True, False): 2, (False, False, True): 4, (True, True, True): 8}
    assert len(outcomes) == expected[flags]  # every reachable transform shows up
    np.testing.assert_array_equal(image, drawn_image(20, 31, box))  # input untouched


def test_augment_disabled_is_identity_and_draws_nothing():
    rng = np.random.default_rng(3)
    image = drawn_image(8, 9, [1, 2, 5, 6])
    out_img, out_boxes = augment(image, np.array([[1.0, 2.0, 5.0, 6.0]]), Config(), rng)
    np.testing.assert_array_equal(out_img, image)
    np.testing.assert_array_equal(out_boxes, [[1, 2, 5, 6]])
    assert rng.random() == np.random.default_rng(3).random()


def test_augment_continuous_coordinates():
    cfg = Config(use_horizontal_flips=True)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        _, out = augment(np.zeros((10, 50)), np.array([[2.5, 1.0, 7.25, 3.0]]), cfg, rng)
        seen.add(tuple(out[0]))
    assert seen == {(2.5, 1.0, 7.25, 3.0), (50 - 7.25, 1.0, 50 - 2.5, 3.0)}


def test_augment_no_boxes():
    cfg = Config(use_horizontal_flips=True, use_vertical_flips=True, rot_90=True)
    _, boxes = augment(np.zeros((6, 7)), np.zeros((0, 4)), cfg, np.random.default_rng(0))
    assert boxes.shape == (0, 4)


# --------------------------------------------------------------------------------------------
# scale and appearance jitter
# --------------------------------------------------------------------------------------------
def test_jittered_scale_off_draws_nothing():
    rng = np.random.default_rng(0)
    assert jittered_scale(300, 400, Config(im_size=600), rng) is None
    assert rng.random() == np.random.default_rng(0).random()


def test_jittered_scale_range_and_snapping():
    cfg = Config(im_size=384, im_max_size=0, aug_scale_range=0.2)
    rng = np.random.default_rng(1)
    sides = [jittered_scale(300, 500, cfg, rng) * 300 for _ in range(2000)]
    rounded = np.round(sides, 6)
    assert set(rounded) == {320.0, 352.0, 384.0, 416.0, 448.0}   # 384/1.2 = 320 .. 384*1.2 = 461 -> 448
    # log-uniform around the im_size rule: as many sides below 384 as above, up to sampling noise
    below, above = sum(s < 384 for s in sides), sum(s > 384 for s in sides)
    assert abs(below - above) < 0.15 * len(sides)


def test_jittered_scale_tiny_images_keep_one_multiple():
    cfg = Config(im_size=16, im_max_size=0, aug_scale_range=0.5)
    rng = np.random.default_rng(2)
    assert all(jittered_scale(10, 10, cfg, rng) * 10 >= 32 - 1e-9 for _ in range(50))


def test_jitter_appearance_off_is_identity_and_draws_nothing():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rng = np.random.default_rng(0)
    assert jitter_appearance(image, Config(), rng, 1.0) is image
    assert rng.random() == np.random.default_rng(0).random()


def test_jitter_appearance_noise_level_and_shape():
    rng = np.random.default_rng(3)
    image = np.zeros((200, 200), np.float32)
    image[50:150, 50:150] = 10.0                          # std 4.33
    cfg = Config(aug_noise_max=0.5)
    stds = [float((jitter_appearance(image, cfg, rng, 1.0) - image).std()) for _ in range(200)]
    assert max(stds) <= 0.5 * image.std() * 1.05
    assert np.mean(stds) == pytest.approx(0.25 * image.std(), rel=0.1)     # uniform in [0, 0.5] x std
    slabs = np.stack([image] * 3, axis=2)
    noisy = jitter_appearance(slabs, Config(aug_noise_max=1.0), np.random.default_rng(0), 1.0)
    assert noisy.shape == slabs.shape and noisy.dtype == np.float32
    assert not np.allclose(noisy[..., 0], noisy[..., 1])  # every channel its own noise


def test_jitter_appearance_blur_in_network_pixels():
    image = np.zeros((101, 101), np.float32)
    image[50, 50] = 1.0
    cfg = Config(aug_blur_max_sigma=2.0)
    # the same draw at half the network scale blurs twice as wide in image pixels
    wide = jitter_appearance(image, cfg, np.random.default_rng(5), 0.5)
    narrow = jitter_appearance(image, cfg, np.random.default_rng(5), 1.0)
    assert wide.sum() == pytest.approx(1.0, rel=1e-3) and narrow.sum() == pytest.approx(1.0, rel=1e-3)

    def spread(img):
        ys, xs = np.mgrid[:101, :101]
        return float(np.sqrt((img * ((xs - 50) ** 2)).sum() / img.sum()))

    assert spread(wide) == pytest.approx(2 * spread(narrow), rel=0.05)
    slabs = np.zeros((20, 20, 3), np.float32)
    assert jitter_appearance(slabs, cfg, np.random.default_rng(0), 1.0).shape == (20, 20, 3)


@pytest.mark.parametrize("name", ["aug_noise_max", "aug_blur_max_sigma", "aug_scale_range"])
def test_jitter_fields_validated(name):
    with pytest.raises(CryoError, match=name):
        Config(**{name: -0.1}).validate()
    with pytest.raises(CryoError, match=name):
        Config(**{name: float("nan")}).validate()


def test_iter_training_samples_scale_jitter_boxes_follow():
    """With scale jitter the stream resizes by the jittered factor and scales the boxes with it."""
    from keras_frcnn_cryo.preprocessing import prepare_image as real_prepare

    cfg = stream_cfg(im_size=64, im_max_size=0, aug_scale_range=0.5, aug_noise_max=0.2, aug_blur_max_sigma=0.5)
    records = make_records()
    sizes = set()
    for sample in itertools.islice(iter_training_samples(records, cfg, np.random.default_rng(7), load_image,
                                                         real_prepare), 30):
        path = sample["record"]["filepath"]
        height, width = sample["x_img"].shape[1:3]
        scale = min(height, width) / min(SIZES[path])
        assert min(height, width) % 32 == 0
        sx, sy = width / SIZES[path][1], height / SIZES[path][0]
        np.testing.assert_allclose(sample["boxes"][0], np.array(BOXES[path]) * [sx, sy, sx, sy], rtol=1e-6)
        sizes.add((path, round(scale, 3)))
    assert len(sizes) > len(records)       # more than one scale per image


# --------------------------------------------------------------------------------------------
# iter_training_samples
# --------------------------------------------------------------------------------------------
BOXES = {"a.png": [2, 3, 10, 12], "b.png": [5, 1, 9, 4], "c.png": [0, 0, 6, 6]}
SIZES = {"a.png": (20, 30), "b.png": (16, 16), "c.png": (24, 12)}


def make_records():
    records = []
    for path, box in BOXES.items():
        height, width = SIZES[path]
        records.append({
            "filepath": path, "width": width, "height": height, "imageset": "trainval",
            "bboxes": [{"class": "mito", "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3], "difficult": False}],
        })
    return records


def load_image(path: str) -> np.ndarray:
    return drawn_image(*SIZES[path], BOXES[path])


def prepare_image(image: np.ndarray, cfg: Config, scale=None):
    """Doubles the image (nearest neighbour) and repeats the channel (no scale jitter in these tests)."""
    assert scale is None
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    return np.repeat(big[..., None], 3, axis=-1).astype(np.float32), (2.0, 2.0)


def stream_cfg(**overrides) -> Config:
    cfg = small_cfg(rpn_num_regions=64, class_mapping={"mito": 0, "bg": 1}, **overrides)
    return cfg


def test_iter_training_samples_passes_and_shapes():
    cfg = stream_cfg()
    records = make_records()
    stream = iter_training_samples(records, cfg, np.random.default_rng(0), load_image, prepare_image,
                                   augment_images=False)
    orders = set()
    for _ in range(8):
        batch = list(itertools.islice(stream, 3))
        paths = tuple(sample["record"]["filepath"] for sample in batch)
        assert sorted(paths) == sorted(BOXES)  # each pass visits every record once
        orders.add(paths)
        for sample in batch:
            path = sample["record"]["filepath"]
            height, width = SIZES[path]
            assert sample["x_img"].shape == (1, 2 * height, 2 * width, 3)
            np.testing.assert_array_equal(sample["boxes"], [np.array(BOXES[path]) * 2.0])
            np.testing.assert_array_equal(sample["labels"], [0])
            feat_w, feat_h = get_feature_map_size(2 * width, 2 * height, cfg.rpn_stride)
            assert sample["y_rpn_cls"].shape == (1, feat_h, feat_w, 2 * cfg.num_anchors)
            assert sample["y_rpn_regr"].shape == (1, feat_h, feat_w, 8 * cfg.num_anchors)
            assert sample["y_rpn_cls"][..., cfg.num_anchors:].sum() >= 1
    assert len(orders) > 1  # reshuffled between passes


def test_iter_training_samples_augmented_boxes_match_pixels():
    cfg = stream_cfg(use_horizontal_flips=True, use_vertical_flips=True, rot_90=True)
    stream = iter_training_samples(make_records(), cfg, np.random.default_rng(4), load_image, prepare_image)
    shapes = set()
    for sample in itertools.islice(stream, 24):
        image = sample["x_img"][0, ..., 0]
        np.testing.assert_array_equal(sample["boxes"][0], box_from_mask(image == 1.0))
        shapes.add((sample["record"]["filepath"], image.shape))
    assert len(shapes) > 3  # some images were rotated


def test_iter_training_samples_bad_input():
    cfg = stream_cfg()
    records = make_records()
    records[1]["bboxes"][0]["class"] = "golgi"
    stream = iter_training_samples(records, cfg, np.random.default_rng(0), load_image, prepare_image)
    with pytest.raises(CryoError, match="b.png.*golgi"):
        list(itertools.islice(stream, 3))
    with pytest.raises(CryoError):
        next(iter_training_samples([], cfg, np.random.default_rng(0), load_image, prepare_image))


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetch_gives_the_streams_samples_and_random_states(depth):
    cfg = stream_cfg(use_horizontal_flips=True, rot_90=True)
    direct_rng = np.random.default_rng(5)
    direct = iter_training_samples(make_records(), cfg, direct_rng, load_image, prepare_image)
    rng = np.random.default_rng(5)
    ahead = Prefetch(iter_training_samples(make_records(), cfg, rng, load_image, prepare_image), rng, depth)
    try:
        assert (ahead._thread is not None) == (depth > 0)
        for _ in range(10):
            want, got = next(direct), next(ahead)
            assert got["record"]["filepath"] == want["record"]["filepath"]
            for key in ("x_img", "y_rpn_cls", "y_rpn_regr", "boxes", "labels"):
                np.testing.assert_array_equal(got[key], want[key])
            # the state right after this sample was made: a stream restarted from it goes on alike
            assert ahead.rng_state == direct_rng.bit_generator.state
    finally:
        ahead.close()
    assert ahead._thread is None or not ahead._thread.is_alive()


def test_prefetch_raises_the_streams_error_in_order_and_stops():
    def stream():
        yield {"n": 0}
        yield {"n": 1}
        raise CryoError("cannot read image", "c.png")

    ahead = Prefetch(stream(), np.random.default_rng(0), depth=4)
    assert [next(ahead)["n"], next(ahead)["n"]] == [0, 1]
    with pytest.raises(CryoError, match="c.png.*cannot read image"):
        next(ahead)
    with pytest.raises(StopIteration):
        next(ahead)
    assert not ahead._thread.is_alive()


def test_prefetch_close_stops_a_thread_waiting_on_a_full_queue():
    ahead = Prefetch(itertools.count(), np.random.default_rng(0), depth=2)
    assert next(ahead) == 0
    ahead.close()
    assert not ahead._thread.is_alive()
