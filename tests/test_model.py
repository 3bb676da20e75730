"""Model assembly, checkpoints and the Detector's coordinate mapping."""
import keras
import numpy as np
import pytest
from conftest import toy_config

from keras_frcnn_cryo import model as model_mod
from keras_frcnn_cryo.errors import CryoError


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(0)
    return model_mod.build_models(toy_config())


def test_shapes(models):
    x = np.random.default_rng(0).normal(size=(1, 96, 80, 3)).astype(np.float32)
    rpn_cls, rpn_regr, feats = models.model_rpn(x)
    assert rpn_cls.shape == (1, 6, 5, 6) and rpn_regr.shape == (1, 6, 5, 24) and feats.shape == (1, 6, 5, 1024)
    rois = keras.ops.convert_to_tensor(np.array([[[0, 0, 2, 2], [1, 1, 5, 6], [0.5, 0.5, 1.0, 1.0]]], np.float32))
    out_cls, out_regr = models.classifier_head([feats, rois])
    assert out_cls.shape == (1, 3, 2) and out_regr.shape == (1, 3, 4)
    np.testing.assert_allclose(np.sum(out_cls, axis=-1), 1.0, rtol=1e-5)


def test_checkpoint_round_trip(models, tmp_path):
    path = str(tmp_path / "m.weights.h5")
    model_mod.save_weights_atomic(models.model_all, path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.weights.h5"]   # no temporary file left behind
    other = model_mod.build_models(toy_config())
    model_mod.load_model_weights(other, path)
    x = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype(np.float32)
    rois = keras.ops.convert_to_tensor(np.array([[[0, 0, 3, 3], [1, 0, 4, 2]]], np.float32))
    x = keras.ops.convert_to_tensor(x)
    for a, b in zip(models.model_all([x, rois]), other.model_all([x, rois])):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_checkpoint_for_other_classes_is_refused(models, tmp_path):
    path = str(tmp_path / "m.weights.h5")
    model_mod.save_weights_atomic(models.model_all, path)
    three = model_mod.build_models(toy_config(class_mapping={"a": 0, "b": 1, "bg": 2}))
    with pytest.raises(CryoError, match="do not fit"):
        model_mod.load_model_weights(three, path)


@pytest.mark.parametrize("name, content, message", [
    ("m.hdf5", None, "must end with"), ("missing.weights.h5", None, "not found"), ("empty.weights.h5", b"", "empty")])
def test_bad_checkpoint_files(models, tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CryoError, match=message):
        model_mod.load_model_weights(models, str(path))


def test_group_norm_refuses_imagenet_weights(models, tmp_path):
    with pytest.raises(CryoError, match="frozen_bn"):
        model_mod.load_imagenet_weights(models, str(tmp_path / "x.h5"))


def test_detector_maps_boxes_back_to_original_pixels(models, monkeypatch):
    """A box found in the resized image comes back in the input image's own pixels (floats)."""
    cfg = toy_config(im_size=48)
    detector = model_mod.Detector(cfg, models=models)
    seen = {}

    def fake(x_batch, min_score):
        seen["shape"] = x_batch.shape
        return [model_mod.Detections(np.array([[10.0, 5.0, 30.5, 20.25]]), np.array([0.9]), np.array([0]),
                                     cfg.class_names) for _ in range(x_batch.shape[0])]

    monkeypatch.setattr(detector, "detect_prepared", fake)
    image = np.zeros((96, 200), np.uint8)          # resized to 48 x 100: scale 0.5 on both axes
    dets = detector.detect(image)
    assert seen["shape"] == (1, 48, 100, 3)
    np.testing.assert_allclose(dets.boxes, [[20.0, 10.0, 61.0, 40.5]])
    many = detector.detect_many([image, image, np.zeros((48, 60), np.uint8)])
    assert seen["shape"] == (1, 48, 60, 3)           # the odd-sized image ran in its own batch, last
    np.testing.assert_allclose(many[1].boxes, [[20.0, 10.0, 61.0, 40.5]])
    np.testing.assert_allclose(many[2].boxes, [[10.0, 5.0, 30.5, 20.25]])


@pytest.mark.parametrize("views", ["transpose", "dihedral"])
def test_views_are_detected_and_fused_in_the_image_frame(models, monkeypatch, views):
    """detection_views: every view of the batch is detected, its boxes mapped back and fused. The
    stand-in "detects" the bright rectangle of each image it gets (in that view's pixels), with a
    score that differs per view; all views then agree on the one rectangle, scored by their mean."""
    cfg = toy_config(im_size=48, detection_views=views)
    detector = model_mod.Detector(cfg, models=models)
    shapes, view_scores = [], iter([0.9, 0.8, 0.7, 0.6, 0.9, 0.8, 0.7, 0.6])

    def fake(x_batch, min_score):
        shapes.append(x_batch.shape)
        score = next(view_scores)
        found = []
        for x in x_batch:
            ys, xs = np.nonzero(x[..., 0] > 100)
            found.append(model_mod.Detections(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float),
                                              np.array([score]), np.array([0]), cfg.class_names))
        return found

    monkeypatch.setattr(detector, "detect_view", fake)
    monkeypatch.setattr(model_mod.preprocessing, "prepare_image",
                        lambda image, cfg, scale=None: (np.repeat(image[..., None], 3, -1).astype(np.float32),
                                                        (1.0, 1.0)))
    image = np.zeros((40, 64), np.uint8)
    image[5:17, 30:61] = 255
    dets = detector.detect(image, min_score=0.1)
    n = len(model_mod.VIEWS[views])
    assert len(shapes) == n and (1, 64, 40, 3) in shapes and (1, 40, 64, 3) in shapes
    np.testing.assert_allclose(dets.boxes, [[30, 5, 61, 17]])
    assert dets.scores[0] == pytest.approx(np.mean([0.9, 0.8, 0.7, 0.6, 0.9, 0.8, 0.7, 0.6][:n]))


def test_batched_detection_equals_one_by_one(models):
    cfg = toy_config()
    detector = model_mod.Detector(cfg, models=models)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (96, 96)).astype(np.uint8) for _ in range(3)]
    batched = detector.detect_many(images, min_score=0.0)
    for image, dets in zip(images, batched):
        single = detector.detect(image, min_score=0.0)
        np.testing.assert_allclose(dets.scores, single.scores, atol=1e-4)
        np.testing.assert_allclose(dets.boxes, single.boxes, atol=1e-2)


def test_detector_output_is_well_formed(models):
    cfg = toy_config()
    detector = model_mod.Detector(cfg, models=models)
    image = np.random.default_rng(0).integers(0, 255, (90, 120)).astype(np.uint8)
    dets = detector.detect(image, min_score=0.0)
    assert dets.boxes.shape[1] == 4 and len(dets) <= cfg.max_detections
    assert np.all(dets.boxes[:, 2] > dets.boxes[:, 0]) and np.all(dets.boxes[:, 3] > dets.boxes[:, 1])
    assert np.all(dets.boxes >= 0) and np.all(dets.boxes[:, [0, 2]] <= 120) and np.all(dets.boxes[:, [1, 3]] <= 90)
    assert np.all(np.diff(dets.scores) <= 0)


def test_refinement_and_voting_keep_detections_well_formed(models):
    image = np.random.default_rng(1).integers(0, 255, (90, 120)).astype(np.uint8)
    plain = model_mod.Detector(toy_config(), models=models).detect(image, min_score=0.0)
    tuned = model_mod.Detector(toy_config(detection_refine_steps=1, detection_box_voting_iou=0.6),
                               models=models).detect(image, min_score=0.0)
    assert len(tuned) > 0 and tuned.boxes.shape[1] == 4
    assert np.all(tuned.boxes[:, 2] > tuned.boxes[:, 0]) and np.all(tuned.boxes[:, 3] > tuned.boxes[:, 1])
    assert np.all(tuned.boxes >= 0) and np.all(tuned.boxes[:, [0, 2]] <= 120) and np.all(tuned.boxes[:, [1, 3]] <= 90)
    moved = [not np.any(np.all(np.isclose(box, plain.boxes), axis=1)) for box in tuned.boxes]
    assert any(moved)                                                   # the second pass moved boxes


def test_rpn_weight_mixes_objectness_into_the_score(models, monkeypatch):
    """score = head probability^(1 - r) x RPN objectness^r; r = 0 is the head's probability alone."""
    rois = np.array([[0.0, 0.0, 20.0, 20.0], [40.0, 40.0, 70.0, 60.0]])
    objectness = np.array([0.25, 0.9])
    probs = np.array([[0.9, 0.1], [0.6, 0.4]])                  # (RoIs, classes + bg)

    def head(features, boxes):
        return probs, np.zeros((len(boxes), 1, 4)), None        # no deltas: boxes stay the RoIs
    for weight in (0.0, 0.5):
        detector = model_mod.Detector(toy_config(detection_rpn_weight=weight), models=models)
        monkeypatch.setattr(detector, "_head", head)
        dets = detector._classify(None, rois, objectness, 96, 96, min_score=0.0)
        want = probs[:, 0] ** (1 - weight) * objectness ** weight
        order = np.argsort(-want)
        np.testing.assert_allclose(dets.scores, want[order])
        np.testing.assert_allclose(dets.boxes, rois[order])
    assert want[1] > want[0]                                     # objectness reversed the ranking


def test_three_channel_input_is_detected_like_a_grey_image(models):
    detector = model_mod.Detector(toy_config(), models=models)
    image = np.random.default_rng(2).integers(0, 255, (96, 96)).astype(np.uint8)
    grey = detector.detect(image, min_score=0.0)
    stacked = detector.detect(np.repeat(image[:, :, None], 3, axis=2), min_score=0.0)
    np.testing.assert_allclose(stacked.boxes, grey.boxes, atol=1e-3)
    np.testing.assert_allclose(stacked.scores, grey.scores, atol=1e-5)


def test_imagenet_weights_come_from_the_cache_or_stop_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")
    monkeypatch.setattr(model_mod.keras.utils, "get_file", offline)
    with pytest.raises(CryoError, match="cannot download the ImageNet ResNet-50 weights .*--input_weight_path"):
        model_mod.fetch_imagenet_weights()
    cached = tmp_path / "models" / model_mod.IMAGENET_FILE
    cached.parent.mkdir()
    cached.write_bytes(b"h5")
    assert model_mod.fetch_imagenet_weights() == str(cached)


def test_roi_context_reaches_the_head(models):
    """Config.roi_context: the head of a model built with 1.2 scores each RoI as the plain head (same
    weights) scores that RoI scaled by 1.2 about its centre."""
    cfg = toy_config()
    cfg.roi_context = 1.2
    wide = model_mod.build_models(cfg)
    wide.model_all.set_weights(models.model_all.get_weights())
    feats = np.random.default_rng(1).normal(size=(1, 6, 5, 1024)).astype(np.float32)
    rois = np.array([[[1, 1, 3, 4], [0.5, 2, 4.5, 3]]], np.float32)
    scaled = np.array([[[0.8, 0.7, 3.2, 4.3], [0.1, 1.9, 4.9, 3.1]]], np.float32)
    for got, want in zip(wide.classifier_head([feats, rois]), models.classifier_head([feats, scaled])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
    plain = models.classifier_head([feats, rois])[1]
    assert not np.allclose(np.asarray(wide.classifier_head([feats, rois])[1]), np.asarray(plain))
