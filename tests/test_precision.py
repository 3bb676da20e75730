"""bfloat16 inference (Config.inference_precision): same weights file as float32, outputs close to
float32's, the global dtype policy untouched, unknown values refused, --precision reaches the config.

Tolerances (toy config, GroupNorm backbone, untrained seeded weights, 96-px image): bfloat16 keeps 8
significant bits (relative rounding 2**-9 per operation), which over ~40 convolutions gave, when
measured, a relative feature error of 0.034, objectness within 0.0066, RPN deltas 0.034 relative and
class probabilities within 0.0024 of float32. The bounds below are 3-8x those figures; a bfloat16
model with other weights (e.g. the file not loaded) misses them widely (measured: features 1.0
relative, objectness 0.20, deltas 1.6, probabilities 0.58).
"""
import os

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import toy_config

from keras_frcnn_cryo import evaluation, predict, preprocessing
from keras_frcnn_cryo import model as model_mod
from keras_frcnn_cryo.config import save_config
from keras_frcnn_cryo.errors import CryoError

FEATURE_REL_TOL = 0.1
OBJECTNESS_TOL = 0.03
DELTA_REL_TOL = 0.1
PROBABILITY_TOL = 0.02


class Stop(Exception):
    """Raised by stand-ins to end a command once the Detector's arguments are known."""


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(float32 Detector, bfloat16 Detector loaded from the float32 one's weights file, that file)."""
    keras.utils.set_random_seed(0)
    f32 = model_mod.Detector(toy_config())
    path = str(tmp_path_factory.mktemp("precision") / "m.weights.h5")
    model_mod.save_weights_atomic(f32.models.model_all, path)
    bf16 = model_mod.Detector(toy_config(inference_precision="bfloat16"), weights_path=path)
    return f32, bf16, path


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return float(w * h / (area - w * h))


def test_bfloat16_models_are_mixed_and_the_policy_is_restored(pair):
    f32, bf16, _ = pair
    assert keras.config.dtype_policy().name == "float32"
    assert (f32.precision, bf16.precision) == ("float32", "bfloat16")
    assert bf16.models.base.get_layer("conv1_conv").dtype_policy.name == "mixed_bfloat16"
    assert f32.models.base.get_layer("conv1_conv").dtype_policy.name == "float32"
    assert {v.dtype for v in bf16.models.model_all.weights} == {"float32"}
    assert (f32.feature_dtype, bf16.feature_dtype) == (tf.float32, tf.bfloat16)
    with pytest.raises(RuntimeError), model_mod.dtype_policy("bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        raise RuntimeError("a failed build")
    assert keras.config.dtype_policy().name == "float32"
    assert model_mod.build_models(toy_config()).base.get_layer("conv1_conv").dtype_policy.name == "float32"


def test_bfloat16_outputs_match_float32(pair):
    """The Detector's own tf.functions (backbone + RPN, then the head on the same RoIs)."""
    f32, bf16, _ = pair
    image = np.random.default_rng(0).integers(0, 255, (96, 96)).astype(np.uint8)
    x_img, _ = preprocessing.prepare_image(image, f32.cfg)
    x = tf.constant(x_img[None], tf.float32)
    rois = tf.constant([[[0, 0, 3, 3], [1, 0, 4, 2], [0.5, 1, 5.5, 6], [2, 2, 6, 6]]], tf.float32)
    outputs = {}
    for name, detector in (("f32", f32), ("bf16", bf16)):
        objectness, deltas, features = detector._rpn_fn(x)
        probabilities, head_deltas = detector._cls_fn(features, rois)
        assert features.dtype == detector.feature_dtype
        outputs[name] = [t.numpy() for t in (objectness, deltas, probabilities, head_deltas)]
        outputs[name].append(tf.cast(features, tf.float32).numpy())
        assert all(a.dtype == np.float32 for a in outputs[name])
    (obj, regr, probs, head, feats), (obj0, regr0, probs0, head0, feats0) = outputs["bf16"], outputs["f32"]
    assert relative(feats, feats0) < FEATURE_REL_TOL
    assert np.abs(obj - obj0).max() < OBJECTNESS_TOL
    assert relative(regr, regr0) < DELTA_REL_TOL
    assert np.abs(probs - probs0).max() < PROBABILITY_TOL
    assert relative(head, head0) < DELTA_REL_TOL
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)   # float32 softmax


def test_bfloat16_detections_match_float32(pair):
    f32, bf16, _ = pair
    image = np.random.default_rng(1).integers(0, 255, (90, 120)).astype(np.uint8)
    ref, got = f32.detect(image, min_score=0.0), bf16.detect(image, min_score=0.0)
    assert len(ref) and len(got)
    assert got.scores.dtype == np.float64 and got.boxes.dtype == np.float64
    assert np.all(np.diff(got.scores) <= 0)
    # the best detection: same class, nearly the same score and box
    assert got.labels[0] == ref.labels[0]
    assert abs(got.scores[0] - ref.scores[0]) < PROBABILITY_TOL
    assert iou(got.boxes[0], ref.boxes[0]) > 0.9


def test_unknown_precision_is_refused():
    with pytest.raises(CryoError, match=r"float16.*float32, bfloat16") as info:
        model_mod.Detector(toy_config(inference_precision="float16"))
    assert "\n" not in str(info.value)
    with pytest.raises(CryoError, match="inference_precision"):
        model_mod.build_models(toy_config(), precision="half")
    assert keras.config.dtype_policy().name == "float32"


def test_precision_option_builds_a_bfloat16_detector(pair, tmp_path):
    _, _, weights = pair
    config_path = str(tmp_path / "config.pickle")
    save_config(toy_config(), config_path)
    parser = predict.build_parser()
    args = parser.parse_args(["-p", str(tmp_path), "--config_filename", config_path, "--model", weights,
                              "--precision", "bfloat16"])
    detector = predict.load_detector(args.config_filename, args.model, args.max_proposals, args.precision)
    assert detector.cfg.inference_precision == "bfloat16" and detector.precision == "bfloat16"
    assert parser.parse_args(["-p", "x"]).precision is None    # default: the config's value
    with pytest.raises(SystemExit):
        parser.parse_args(["-p", "x", "--precision", "float16"])


@pytest.mark.parametrize("precision", [None, "bfloat16", "float32"])
def test_precision_flag_reaches_the_config_in_both_commands(tmp_path, monkeypatch, toy_dataset, precision):
    """test_frcnn.py and measure_map.py pass --precision to load_detector, which sets the config."""
    config_path = str(tmp_path / "config.pickle")
    save_config(toy_config(inference_precision="bfloat16", model_path=str(tmp_path / "m.weights.h5")),
                config_path)
    seen = []

    def fake_detector(cfg, weights_path=None):
        seen.append(cfg.inference_precision)
        raise Stop

    monkeypatch.setattr(model_mod, "Detector", fake_detector)          # load_detector imports it when called
    flag = [] if precision is None else ["--precision", precision]
    expected = precision or "bfloat16"                          # None: the config's value
    os.makedirs(tmp_path / "images")
    cv2.imwrite(str(tmp_path / "images" / "slice.png"), np.zeros((16, 16), np.uint8))
    args = predict.build_parser().parse_args(["-p", str(tmp_path / "images"), "--config_filename", config_path,
                                              "--output", str(tmp_path / "out"), *flag])
    with pytest.raises(Stop):
        predict.main(args)
    args = evaluation.build_parser().parse_args(["-p", toy_dataset, "--config_filename", config_path,
                                                 "--split", "all", "--output", str(tmp_path / "ev"), *flag])
    with pytest.raises(Stop):
        evaluation.main(args)
    assert seen == [expected, expected]


def test_bfloat16_training_keeps_float32_weights_that_load_in_float32(toy_dataset, tmp_path):
    """Config.training_precision "bfloat16": the convolutions compute in bfloat16, the variables (and so
    Adam's state and the weights file) stay float32, the losses are finite float32 values, the steps
    move the weights, and the file loads into a float32 Detector; the global policy is untouched."""
    from keras_frcnn_cryo import data_generators, tomo_io
    from keras_frcnn_cryo.simple_parser import get_data
    from keras_frcnn_cryo.trainer import Trainer

    records, _, mapping = get_data(toy_dataset)
    keras.utils.set_random_seed(0)
    cfg = toy_config(class_mapping=mapping, train_mode="joint", training_precision="bfloat16")
    trainer = Trainer(cfg)
    assert keras.config.dtype_policy().name == "float32"
    convs = [layer for layer in trainer.models.base.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.compute_dtype == "bfloat16" for layer in convs)
    weights = trainer.models.model_all.weights
    assert {str(w.dtype) for w in weights} == {"float32"}
    before = [np.array(w) for w in weights]
    rng = np.random.default_rng(0)
    gen = data_generators.iter_training_samples(records[:4], cfg, rng, tomo_io.read_image,
                                                preprocessing.prepare_image)
    for _ in range(4):
        losses = trainer.train_on_sample(next(gen), rng)
        assert all(np.isfinite(losses[k]) for k in ("rpn_cls", "rpn_regr")), losses
    moved = [not np.array_equal(b, np.array(w)) for b, w in zip(before, weights) if w.trainable]
    assert sum(moved) > 0.9 * len(moved)
    path = str(tmp_path / "bf16.weights.h5")
    model_mod.save_weights_atomic(trainer.models.model_all, path)
    f32 = model_mod.Detector(toy_config(class_mapping=mapping), weights_path=path)
    assert f32.precision == "float32"
    image = tomo_io.read_image(records[0]["filepath"])
    assert np.all(np.isfinite(f32.detect(image, 0.0).scores))


def test_unknown_training_precision_is_refused():
    with pytest.raises(CryoError, match="training_precision"):
        toy_config(training_precision="float16").validate()


def test_train_precision_option_reaches_the_config(tmp_path):
    from keras_frcnn_cryo import train
    ann = tmp_path / "a.txt"
    ann.write_text("")
    for value in ("bfloat16", "float32"):
        args = train.build_parser().parse_args(["-p", str(ann), "--precision", value])
        assert train.config_from_args(args).training_precision == value
    assert train.config_from_args(train.build_parser().parse_args(["-p", str(ann)])).training_precision == "float32"
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["-p", str(ann), "--precision", "auto"])
