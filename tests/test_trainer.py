"""The training step (trainer.Trainer): the loss falls on a tiny generated set and the model then finds its
training objects; what one joint step updates; the targets of an alternating step; the seeded generators."""
import dataclasses
import math

import cv2
import numpy as np
import pytest
from conftest import RESNET50, TOY_ANCHORS, toy_config

from keras_frcnn_cryo import annotations, data_generators, metrics, preprocessing, targets_tf, tomo_io
from keras_frcnn_cryo.anchors import from_feature_units
from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.model import Detector
from keras_frcnn_cryo.simple_parser import get_data
from keras_frcnn_cryo.trainer import LOSS_KEYS, Trainer, restore_averages, training_generators

# training steps of the trained fixture per mode (a joint step costs about 2/3 of an alternating one)
STEPS = {"alternating": 90, "joint": 120}
# checks of detection and of one step that do not depend on how the model was trained: on the joint
# model only (the recipe's mode), not once per training mode
JOINT_ONLY = pytest.mark.parametrize("trained", ["joint"], indirect=True)


@pytest.fixture(scope="module", params=["alternating", "joint"])
def trained(toy_dataset, request):
    """Train ResNet-50 from scratch (GroupNorm) on the toy images for STEPS[mode] iterations, in both training modes."""
    from keras_frcnn_cryo.cli import set_seed
    set_seed(0)
    records, _, mapping = get_data(toy_dataset)
    records = records[:8]
    # 192 px: the toy objects (20-50 px at 96 px) become 2.5-6 feature cells, as the scratch recipe keeps
    # real objects several cells wide; RoIs of one or two cells give the bilinear windows little to read.
    # 8 RoIs per step: the conv5 head costs about 0.035 s per RoI and step on a 2-core CPU, most of a
    # step at this size (16 RoIs: 0.93 s, 8: 0.65 s)
    cfg = toy_config(class_mapping=mapping, train_mode=request.param, im_size=192, num_rois=8,
                     anchor_box_scales=[2 * s for s in TOY_ANCHORS], resnet_blocks=RESNET50)
    trainer = Trainer(cfg)
    rng = np.random.default_rng(0)
    gen = data_generators.iter_training_samples(records, cfg, rng, tomo_io.read_image, preprocessing.prepare_image)
    history = [trainer.train_on_sample(next(gen), rng) for _ in range(STEPS[request.param])]
    return cfg, trainer, records, history


def test_loss_falls(trained):
    _, _, _, history = trained
    totals = [sum(0.0 if math.isnan(h[k]) else h[k] for k in LOSS_KEYS) for h in history]
    first, last = np.mean(totals[:15]), np.mean(totals[-15:])
    assert last < 0.6 * first, (first, last)


def test_finds_its_training_objects(trained):
    cfg, trainer, records, _ = trained
    detector = Detector(cfg, models=trainer.models)
    detections = []
    for record in records:
        dets = detector.detect(tomo_io.read_image(record["filepath"]), min_score=cfg.eval_min_score)
        detections += annotations.detections_to_dicts(record["filepath"], dets)
    results = metrics.evaluate(annotations.records_to_ground_truth(records), detections, (0.5,))
    row = results["per_class"]["mitochondrion"]["thresholds"][0.5]
    assert row["n_tp"] >= 0.9 * row["n_gt"], row["n_tp"]        # (nearly) every object found at IoU >= 0.5
    assert results["mAP"][0.5] >= 0.5


@JOINT_ONLY
def test_pixel_size_match_finds_objects_in_a_binned_wider_view(trained):
    """Trained on 96-px images at 10 A/px (seen at 5 A per network pixel), the detector gets 96-px
    mosaics of four training images each binned 2x: 20 A/px, twice the field of view. Resizing by
    im_size shows the objects at half the trained size; matching the pixel size restores it."""
    cfg, trainer, records, _ = trained
    cfg = dataclasses.replace(cfg, pixel_size_angstrom=10.0, network_pixel_size_angstrom=10.0 * 96 / 192)
    detector = Detector(cfg, models=trainer.models)
    assert detector.input_scale(20.0) == pytest.approx(4.0) and detector.input_scale(None) is None
    gt, matched, unmatched = {}, [], []
    for mosaic in range(2):
        wide, boxes = np.zeros((96, 96), np.uint8), []
        for k, record in enumerate(records[4 * mosaic:4 * mosaic + 4]):
            oy, ox = 48 * (k // 2), 48 * (k % 2)
            image = tomo_io.read_image(record["filepath"])
            wide[oy:oy + 48, ox:ox + 48] = cv2.resize(image, (48, 48), interpolation=cv2.INTER_AREA)
            boxes += [{**b, "x1": b["x1"] / 2 + ox, "y1": b["y1"] / 2 + oy, "x2": b["x2"] / 2 + ox,
                       "y2": b["y2"] / 2 + oy} for b in annotations.records_to_ground_truth([record])[record["filepath"]]]
        gt[f"mosaic{mosaic}"] = boxes
        found = detector.detect(wide, min_score=cfg.eval_min_score, pixel_size_a=20.0)
        assert np.all(found.boxes <= 96.0)                        # in the mosaic's own pixels
        matched += annotations.detections_to_dicts(f"mosaic{mosaic}", found)
        unmatched += annotations.detections_to_dicts(f"mosaic{mosaic}", detector.detect(wide, min_score=cfg.eval_min_score))
    rows = [metrics.evaluate(gt, dets, (0.5,))["per_class"]["mitochondrion"]["thresholds"][0.5]
            for dets in (matched, unmatched)]
    assert rows[0]["n_tp"] >= 0.8 * rows[0]["n_gt"], rows[0]["n_tp"]
    assert rows[1]["n_tp"] < rows[0]["n_tp"], rows[1]["n_tp"]      # im_size alone misses objects


@JOINT_ONLY
def test_volume_and_its_2x_binned_copy_give_the_same_objects(trained, tmp_path):
    """A tomogram of the training slices at 10 A/px and a copy binned 2x (20 A/px, half the pixels):
    with the pixel size matched, the copy's boxes, written in its own pixels, are the original's halved."""
    from keras_frcnn_cryo import predict, writers
    from keras_frcnn_cryo.boxes import iou_matrix
    cfg, trainer, records, _ = trained
    cfg = dataclasses.replace(cfg, pixel_size_angstrom=10.0, network_pixel_size_angstrom=10.0 * 96 / 192)
    detector = Detector(cfg, models=trainer.models)
    stack = np.stack([tomo_io.read_image(r["filepath"]) for r in records]).astype(np.float32)      # (8, 96, 96)
    binned = stack.reshape(len(records), 48, 2, 48, 2).mean(axis=(2, 4))
    tomo_io.write_volume(str(tmp_path / "full.mrc"), stack, pixel_size_a=10.0)
    tomo_io.write_volume(str(tmp_path / "half.mrc"), binned, pixel_size_a=20.0)
    boxes = {}
    for name in ("full", "half"):
        predict.predict_volume(detector, str(tmp_path / f"{name}.mrc"), str(tmp_path / "out"), 0.5,
                               predict.VolumeOptions(overlays=False))
        rows = writers.read_boxes2d_csv(str(tmp_path / "out" / f"{name}_boxes2d.csv"))
        boxes[name] = {z: np.array([[r["x1"], r["y1"], r["x2"], r["y2"]] for r in rows if r["slice"] == z]).reshape(-1, 4)
                       for z in range(len(records))}
    assert all(np.all(b <= 48.0) for b in boxes["half"].values())           # the copy's own pixels
    found = {"full": {}, "half": {}}                       # (slice, gt index) -> the box that found it
    for z, record in enumerate(records):
        gt = np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in record["bboxes"]]).reshape(-1, 4)
        for name, factor in (("full", 1.0), ("half", 2.0)):
            dets = boxes[name][z] * factor
            if len(dets) and len(gt):
                ious = iou_matrix(gt, dets)
                for g in np.flatnonzero(ious.max(axis=1) >= 0.5):
                    found[name][(z, int(g))] = dets[ious[g].argmax()]
    n_gt = sum(len(r["bboxes"]) for r in records)
    print(f"objects found: full {len(found['full'])}, half {len(found['half'])} of {n_gt}")
    assert len(found["full"]) >= 0.8 * n_gt
    both = set(found["full"]) & set(found["half"])
    assert len(both) >= 0.9 * len(found["full"]), (len(both), len(found["full"]))
    errors = np.abs(np.array([found["full"][k] - found["half"][k] for k in both]))
    print(f"box corner differences (px of the full volume): median {np.median(errors):.2f}, "
          f"90th percentile {np.percentile(errors, 90):.2f}")
    assert np.median(errors) <= 2.0


@JOINT_ONLY
def test_image_without_objects_trains(trained):
    """An image with no boxes gives all-negative RPN targets and an all-background classifier batch."""
    cfg, trainer, _, _ = trained
    x_img, _ = preprocessing.prepare_image(np.full((96, 96), 128, np.uint8), cfg)
    height, width = x_img.shape[:2]                                       # resized to cfg.im_size
    y_cls, y_regr = data_generators.calc_rpn(np.zeros((0, 4)), width, height, cfg, np.random.default_rng(0))
    sample = {"x_img": x_img[None], "y_rpn_cls": y_cls[None], "y_rpn_regr": y_regr[None],
              "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros((0,), np.int64)}
    out = trainer.train_on_sample(sample, np.random.default_rng(0))
    assert math.isfinite(out["rpn_cls"]) and out["rpn_regr"] == 0.0
    assert math.isnan(out["cls_cls"]) or math.isfinite(out["cls_cls"])


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


@pytest.fixture(scope="module")
def joint_trainer(toy_dataset):
    """A joint-mode Trainer on the toy images (untrained), shared by the step checks below."""
    records, _, mapping = get_data(toy_dataset)
    return Trainer(toy_config(class_mapping=mapping, train_mode="joint")), records


@pytest.mark.parametrize("case", ["objects", "empty image", "head skipped"])
def test_joint_step_updates_what_it_should(joint_trainer, monkeypatch, case):
    """One joint step moves backbone and RPN; the head moves unless it had no labelled RoI at all.

    An image without boxes still trains the head (its RoIs are background); "head skipped" forces
    the no-labelled-RoI case that the alternating mode answers by skipping the classifier step.
    """
    trainer, records = joint_trainer
    cfg = trainer.cfg
    rng = np.random.default_rng(0)
    record = next(r for r in records if r["bboxes"])
    if case == "empty image":
        record = dict(record, bboxes=[])
    if case == "head skipped":  # before its own Trainer's step is traced: targets_tf finds no labelled RoI
        monkeypatch.setattr(targets_tf, "classifier_batch", lambda *args: targets_tf.unused_batch(cfg.num_classes))
        trainer = Trainer(cfg)
    sample = next(data_generators.iter_training_samples([record], cfg, rng, tomo_io.read_image,
                                                        preprocessing.prepare_image, augment_images=False))
    m = trainer.models
    before = {name: _weights(getattr(m, name)) for name in ("base", "rpn_head", "classifier_head")}
    out = trainer.train_on_sample(sample, rng)
    moved = {name: any(not np.array_equal(a, b) for a, b in zip(before[name], _weights(getattr(m, name))))
             for name in before}
    assert moved["base"] and moved["rpn_head"] and math.isfinite(out["rpn_cls"])
    assert moved["classifier_head"] == (case != "head skipped")
    assert math.isfinite(out["cls_cls"]) == (case != "head skipped")
    if case == "objects":
        assert 0.0 < out["pos_fraction"] <= cfg.classifier_positive_fraction
    if case == "empty image":
        assert out["pos_fraction"] == 0.0


def test_detached_iou_head_trains_only_itself(toy_dataset):
    """classifier_iou_detach: one joint step with the IoU loss moves every other weight exactly as the
    same step without it (lambda_cls_iou 0) does, and moves the IoU head's own layers."""
    records, _, mapping = get_data(toy_dataset)
    record = next(r for r in records if r["bboxes"])
    start, moved = None, []
    for weight in (1.0, 0.0):
        cfg = toy_config(class_mapping=mapping, train_mode="joint", classifier_iou_head=True,
                         classifier_iou_detach=True, classifier_iou_target="box", lambda_cls_iou=weight)
        trainer = Trainer(cfg)
        if start is None:
            start = trainer.models.model_all.get_weights()
        else:
            trainer.models.model_all.set_weights(start)       # both steps start from the same weights
        rng = np.random.default_rng(0)
        sample = next(data_generators.iter_training_samples([record], cfg, rng, tomo_io.read_image,
                                                            preprocessing.prepare_image, augment_images=False))
        out = trainer.train_on_sample(sample, rng)
        assert math.isfinite(out["cls_iou"]) and (out["cls_iou"] > 0.0) == (weight > 0.0)
        moved.append(trainer.models.model_all.weights)
    iou_layers = 0
    for with_loss, without, first in zip(moved[0], moved[1], start):
        if "iou" in with_loss.path:
            iou_layers += 1
            assert not np.array_equal(np.asarray(with_loss), first), with_loss.path
        else:
            np.testing.assert_allclose(np.asarray(with_loss), np.asarray(without), rtol=0, atol=1e-7,
                                       err_msg=with_loss.path)
    assert iou_layers == 4        # dense_iou_hidden and dense_iou, kernel and bias each


def test_alternating_targets_end_with_the_hard_negatives():
    """Trainer.classifier_targets (numpy, alternating mode): num_rois RoIs, the last
    hard_negative_count() of them the best-ranked proposals away from every object, as bg."""
    import types

    from keras_frcnn_cryo import roi_helpers
    cfg = toy_config(class_mapping={"mitochondrion": 0, "bg": 1}, num_rois=8, classifier_hard_negative_fraction=0.375)
    rng = np.random.default_rng(4)
    feat = 6
    p_cls = rng.uniform(0, 1, (1, feat, feat, cfg.num_anchors)).astype(np.float32)
    p_regr = rng.normal(0, 0.3, (1, feat, feat, 4 * cfg.num_anchors)).astype(np.float32)
    shape = (feat * cfg.rpn_stride, feat * cfg.rpn_stride)
    boxes, labels = np.array([[10.0, 12.0, 40.0, 44.0]]), np.array([0])
    rois, y_class, y_regr, y_iou, _ = Trainer.classifier_targets(
        types.SimpleNamespace(cfg=cfg), shape, boxes, labels, p_cls, p_regr, rng)
    assert rois.shape == (1, 8, 4) and y_class.shape == (1, 8, 2)
    proposals, _ = roi_helpers.rpn_to_roi(p_cls[0], p_regr[0], cfg, shape[1], shape[0])
    far, far_iou = roi_helpers.far_negatives(proposals, boxes, cfg)
    assert far.shape[0] == 3
    np.testing.assert_allclose(from_feature_units(rois[0, -3:], cfg), far, rtol=1e-5)
    np.testing.assert_allclose(y_iou[0, -3:, 0], far_iou, atol=1e-6)
    assert np.all(y_class[0, -3:, -1] == 1.0) and not y_regr[0, -3:].any()


def test_unknown_train_mode_is_refused():
    with pytest.raises(CryoError, match="train_mode = .sometimes.: use one of alternating, joint"):
        Trainer(toy_config(class_mapping={"mitochondrion": 0, "bg": 1}, train_mode="sometimes"))


def test_box_loss_transitions_reach_the_trainer():
    """Config.rpn_smooth_l1_beta / classifier_smooth_l1_beta set the trainer's two box losses."""
    cfg = toy_config(class_mapping={"mitochondrion": 0, "bg": 1}, classifier_smooth_l1_beta=0.0, rpn_smooth_l1_beta=0.5)
    trainer = Trainer(cfg)
    error = np.array([0.2, -0.1, 0.0, 0.4], np.float32)        # all below both betas: L1 vs 0.5 x^2 / 0.5
    head_true = np.concatenate([np.ones(4), np.zeros(4)]).astype(np.float32)[None, None]
    assert float(trainer.loss_cls_regr(head_true, error[None, None])) == pytest.approx(0.7 / (1e-4 + 4), rel=1e-5)
    k = cfg.num_anchors
    rpn_true = np.zeros((1, 1, 1, 8 * k), np.float32)
    rpn_true[..., :4] = 1.0
    rpn_pred = np.zeros((1, 1, 1, 4 * k), np.float32)
    rpn_pred[..., :4] = error
    assert float(trainer.loss_rpn_regr(rpn_true, rpn_pred)) == pytest.approx(
        float(np.sum(error ** 2)) / (1e-4 + 4), rel=1e-5)


def test_training_generators_are_seeded_and_independent():
    steps, data = training_generators(7)
    again_steps, again_data = training_generators(7)
    draws = steps.random(4), data.random(4)
    np.testing.assert_array_equal(draws[0], again_steps.random(4))
    np.testing.assert_array_equal(draws[1], again_data.random(4))
    assert not np.allclose(draws[0], draws[1])
    assert not np.allclose(training_generators(8)[1].random(4), draws[1])


def test_weight_averages_follow_the_ramp_and_swap_in(toy_dataset):
    """Config.weight_ema_decay: after each step avg <- d avg + (1 - d) w with d = min(decay, (1 + n) / (10 + n));
    averaged_weights() holds the averages inside its block and the step's own weights after it."""
    records, _, mapping = get_data(toy_dataset)
    cfg = toy_config(class_mapping=mapping, train_mode="joint", weight_ema_decay=0.15, weight_ema_interval=1)
    trainer = Trainer(cfg)
    assert not Trainer(toy_config(class_mapping=mapping)).averages           # off by default (the paper)
    rng = np.random.default_rng(0)
    gen = data_generators.iter_training_samples(records, cfg, rng, tomo_io.read_image, preprocessing.prepare_image)
    model = trainer.models.model_all
    expected = _weights(model)
    for n in range(3):                          # d = 0.1, then 2/11 = 0.18 capped at 0.15, then 0.15
        trainer.train_on_sample(next(gen), rng)
        d = min(0.15, (1 + n) / (10 + n))
        expected = [d * a + (1 - d) * w for a, w in zip(expected, _weights(model))]
    own = _weights(model)
    assert any(not np.allclose(a, w) for a, w in zip(expected, own))
    for average, value in zip(trainer.averages, expected):
        np.testing.assert_allclose(np.asarray(average), value, rtol=1e-5, atol=1e-6)
    with trainer.averaged_weights():
        for inside, value in zip(_weights(model), expected):
            np.testing.assert_allclose(inside, value, rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(_weights(model), own))
    assert int(trainer.average_updates.numpy()) == 3
    # a training state saved without averages (averaging newly switched on): they start from its weights
    restore_averages(trainer, [], 7, "state.npz")
    assert int(trainer.average_updates.numpy()) == 0
    assert all(np.array_equal(np.asarray(a), w) for a, w in zip(trainer.averages, own))
    with pytest.raises(CryoError, match="state.npz: training state holds 2 weight averages"):
        restore_averages(trainer, own[:2], 0, "state.npz")
    # every second step: the two steps' decays at once, d = min(0.15, (1 + 2 u) / (10 + 2 u))^2 at update u
    trainer = Trainer(dataclasses.replace(cfg, weight_ema_interval=2))
    model = trainer.models.model_all
    expected = _weights(model)
    for u in range(2):
        trainer.train_on_sample(next(gen), rng)
        assert int(trainer.average_updates.numpy()) == u
        trainer.train_on_sample(next(gen), rng)
        d = min(0.15, (1 + 2 * u) / (10 + 2 * u)) ** 2
        expected = [d * a + (1 - d) * w for a, w in zip(expected, _weights(model))]
    for average, value in zip(trainer.averages, expected):
        np.testing.assert_allclose(np.asarray(average), value, rtol=1e-5, atol=1e-6)
