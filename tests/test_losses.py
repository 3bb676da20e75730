"""The four Faster R-CNN losses against hand computations in numpy (Keras 3 order: y_true, y_pred)."""
from __future__ import annotations

import numpy as np
import pytest

from keras_frcnn_cryo.losses import class_loss_cls, class_loss_regr, rpn_loss_cls, rpn_loss_regr

EPS = 1e-4


def smooth_l1(x: np.ndarray, beta: float = 1.0) -> np.ndarray:
    x = np.abs(x)
    if beta == 0.0:
        return x
    return np.where(x < beta, 0.5 * x ** 2 / beta, x - 0.5 * beta)


def test_rpn_loss_regr_by_hand() -> None:
    # one image, a 1x2 map, K = 2 anchors -> 8 regression slots per cell
    y_pred = np.zeros((1, 1, 2, 8), np.float32)
    y_pred[0, 0, 0, :4] = [0.5, -2.0, 0.0, 3.0]       # anchor 0 of cell 0: positive
    y_pred[0, 0, 1, 4:] = [0.1, 0.2, 0.3, 0.4]        # anchor 1 of cell 1: not masked
    mask = np.zeros((1, 1, 2, 8), np.float32)
    mask[0, 0, 0, :4] = 1.0
    target = np.zeros((1, 1, 2, 8), np.float32)
    target[0, 0, 0, :4] = [0.0, 0.0, 0.2, 1.0]
    target[0, 0, 1, 4:] = 9.0                         # ignored (mask 0)
    y_true = np.concatenate([mask, target], axis=-1)
    # by hand: |d| = 0.5, 2.0, 0.2, 2.0 -> 0.125 + 1.5 + 0.02 + 1.5 = 3.145; mask sum 4
    expected = 3.145 / (EPS + 4.0)
    loss = rpn_loss_regr(2)
    assert float(loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    assert float(rpn_loss_regr(2, lambda_rpn_regr=2.5)(y_true, y_pred)) == pytest.approx(2.5 * expected, rel=1e-5)


def test_rpn_loss_regr_empty_mask_is_zero() -> None:
    y_true = np.zeros((1, 2, 2, 8), np.float32)
    y_pred = np.ones((1, 2, 2, 4), np.float32)
    assert float(rpn_loss_regr(1)(y_true, y_pred)) == 0.0


def test_rpn_loss_cls_by_hand_and_argument_order() -> None:
    # K = 3 anchors at one cell; anchors 0 (object) and 2 (background) sampled, anchor 1 ignored
    y_true = np.array([[[[1.0, 0.0, 1.0, 1.0, 1.0, 0.0]]]], np.float32)
    y_pred = np.array([[[[0.8, 0.01, 0.3]]]], np.float32)
    expected = (-np.log(0.8) - np.log(1.0 - 0.3)) / (EPS + 2.0)
    loss = rpn_loss_cls(3)
    value = float(loss(y_true, y_pred))
    assert value == pytest.approx(expected, rel=1e-5)
    assert float(rpn_loss_cls(3, lambda_rpn_class=0.5)(y_true, y_pred)) == pytest.approx(0.5 * expected, rel=1e-5)
    # keras-frcnn's (pred, true) order is a different function: soft "labels" against hard outputs
    swapped_true = np.concatenate([y_true[..., :3], y_pred], axis=-1)
    swapped = float(loss(swapped_true, y_true[..., 3:]))
    assert abs(swapped - value) > 0.1


def test_rpn_loss_cls_perfect_prediction_is_near_zero() -> None:
    y_true = np.array([[[[1.0, 1.0, 1.0, 0.0]]]], np.float32)
    y_pred = np.array([[[[1.0, 0.0]]]], np.float32)
    assert float(rpn_loss_cls(2)(y_true, y_pred)) < 1e-5


def test_class_loss_regr_by_hand() -> None:
    # two foreground classes, three RoIs; RoI 0 is class 1, RoI 2 is class 0, RoI 1 background
    y_pred = np.array([[[0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.5, 0.0],
                        [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
                        [2.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0]]], np.float32)
    mask = np.array([[[0, 0, 0, 0, 1, 1, 1, 1],
                      [0, 0, 0, 0, 0, 0, 0, 0],
                      [1, 1, 1, 1, 0, 0, 0, 0]]], np.float32)
    target = np.array([[[0, 0, 0, 0, 0.0, 0.0, 0.0, 3.0],
                        [0, 0, 0, 0, 0, 0, 0, 0],
                        [0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0]]], np.float32)
    y_true = np.concatenate([mask, target], axis=-1)
    # RoI 0: |d| = 1, 1, 0.5, 3 -> 0.5 + 0.5 + 0.125 + 2.5 = 3.625
    # RoI 2: |d| = 2, 0, 0, 0.1 -> 1.5 + 0 + 0 + 0.005 = 1.505
    expected = (3.625 + 1.505) / (EPS + 8.0)
    assert float(class_loss_regr(2)(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    hand = float(np.sum(mask * smooth_l1(target - y_pred)) / (EPS + mask.sum()))
    assert hand == pytest.approx(expected, rel=1e-6)


def test_class_loss_cls_by_hand_and_argument_order() -> None:
    y_true = np.array([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], np.float32)
    y_pred = np.array([[[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]], np.float32)
    expected = (-np.log(0.7) - np.log(0.5)) / 2.0
    loss = class_loss_cls()
    value = float(loss(y_true, y_pred))
    assert value == pytest.approx(expected, rel=1e-5)
    assert float(class_loss_cls(lambda_cls_class=3.0)(y_true, y_pred)) == pytest.approx(3 * expected, rel=1e-5)
    assert abs(float(loss(y_pred, y_true)) - value) > 0.1


def test_losses_as_keras_compile_targets() -> None:
    # Keras calls loss(y_true, y_pred) with targets wider than predictions: the shapes must pass
    import keras

    inputs = keras.Input((2, 2, 3))
    regr = keras.layers.Conv2D(4, 1, name="regr")(inputs)
    cls = keras.layers.Conv2D(1, 1, activation="sigmoid", name="cls")(inputs)
    model = keras.Model(inputs, [cls, regr])
    model.compile(optimizer="sgd", loss=[rpn_loss_cls(1), rpn_loss_regr(1)])
    x = np.ones((1, 2, 2, 3), np.float32)
    y_cls = np.concatenate([np.ones((1, 2, 2, 1)), np.zeros((1, 2, 2, 1))], axis=-1).astype(np.float32)
    y_regr = np.concatenate([np.ones((1, 2, 2, 4)), np.zeros((1, 2, 2, 4))], axis=-1).astype(np.float32)
    total, cls_loss, regr_loss = model.train_on_batch(x, [y_cls, y_regr])
    assert np.isfinite(total) and total == pytest.approx(cls_loss + regr_loss, rel=1e-5)


@pytest.mark.parametrize("beta", [1.0, 1.0 / 9.0, 0.0])
def test_box_losses_turn_linear_at_beta(beta: float) -> None:
    # one RoI of one class, 4 slots with errors on both sides of 1/9 and of 1
    y_pred = np.array([[[0.05, -0.3, 0.0, 2.0]]], np.float32)
    y_true = np.concatenate([np.ones((1, 1, 4), np.float32), np.zeros((1, 1, 4), np.float32)], axis=-1)
    by_hand = {1.0: 0.00125 + 0.045 + 0.0 + 1.5,                  # 0.5 x^2, 0.5 x^2, 0, |x| - 0.5
               1.0 / 9.0: 0.01125 + (0.3 - 0.5 / 9) + 0.0 + (2.0 - 0.5 / 9),  # 4.5 x^2, then |x| - 1/18
               0.0: 0.05 + 0.3 + 0.0 + 2.0}[beta]                # L1
    assert float(np.sum(smooth_l1(y_pred[0, 0], beta))) == pytest.approx(by_hand, rel=1e-6)
    assert float(class_loss_regr(1, beta=beta)(y_true, y_pred)) == pytest.approx(by_hand / (EPS + 4.0), rel=1e-5)
    rpn_true = y_true.reshape(1, 1, 1, 8)
    assert float(rpn_loss_regr(1, beta=beta)(rpn_true, y_pred.reshape(1, 1, 1, 4))) == pytest.approx(
        by_hand / (EPS + 4.0), rel=1e-5)


def test_smaller_beta_pulls_harder_on_boxes_that_are_almost_right() -> None:
    # the gradient of a 0.2 error: 0.2 with beta 1 (quadratic part), 1 with beta 1/9 (linear part)
    import tensorflow as tf
    y_true = tf.constant(np.concatenate([np.ones((1, 1, 4)), np.zeros((1, 1, 4))], axis=-1), tf.float32)
    grads = []
    for beta in (1.0, 1.0 / 9.0):
        y_pred = tf.Variable(np.full((1, 1, 4), 0.2, np.float32))
        with tf.GradientTape() as tape:
            loss = class_loss_regr(1, beta=beta)(y_true, y_pred)
        grads.append(float(tape.gradient(loss, y_pred)[0, 0, 0]) * (EPS + 4.0))
    assert grads == pytest.approx([0.2, 1.0], rel=1e-4)
