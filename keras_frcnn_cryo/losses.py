"""Faster R-CNN losses (keras-frcnn's four, Keras 3 argument order ``loss(y_true, y_pred)``).

keras-frcnn called binary cross-entropy as ``bce(y_pred, y_true)`` (fix 5 in docs/fixes.md); on
current Keras that is a different function of the prediction. Here every cross-entropy takes the
label first and the probability second.

Target layouts (written by data_generators.calc_rpn and roi_helpers.calc_iou):

* RPN class target (B, h, w, 2K): ``[..., :K]`` 1 where the anchor counts (sampled positive or
  negative), ``[..., K:]`` 1 for object, 0 for background;
* RPN regression target (B, h, w, 8K): ``[..., :4K]`` 1 on the 4 slots of each positive anchor,
  ``[..., 4K:]`` the (scaled) box deltas; anchor k owns channels 4k..4k+3 of each half;
* classifier class target (1, R, C) one-hot with background last;
* classifier regression target (1, R, 8C_fg): ``[..., :4C_fg]`` 1 on the slots of the RoI's own
  (non-background) class, ``[..., 4C_fg:]`` the deltas.

Masked losses are ``lambda * sum(mask * loss) / (epsilon + sum(mask))``: regression sums over the
4 masked slots of a box, so the normaliser counts each positive box 4 times (as keras-frcnn).
"""
from __future__ import annotations

from typing import Any, Callable

import keras
from keras import ops

LossFn = Callable[[Any, Any], Any]


def _smooth_l1(difference: Any, beta: float = 1.0) -> Any:
    """Smooth L1 (elementwise): 0.5 x^2 / beta for |x| < beta, |x| - 0.5 beta otherwise; beta 0 is L1.
    beta 1 (Fast R-CNN, keras-frcnn) is the Huber loss with delta 1."""
    magnitude = ops.abs(difference)
    if beta <= 0.0:
        return magnitude
    return ops.where(magnitude < beta, (0.5 / beta) * magnitude * magnitude, magnitude - 0.5 * beta)


def _masked_smooth_l1(width: int, weight: float, epsilon: float, name: str, beta: float) -> LossFn:
    def loss(y_true: Any, y_pred: Any) -> Any:
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        mask = y_true[..., :width]
        target = y_true[..., width:]
        total = ops.sum(mask * _smooth_l1(target - y_pred, beta))
        return weight * total / (epsilon + ops.sum(mask))

    loss.__name__ = name
    return loss


def rpn_loss_regr(num_anchors: int, lambda_rpn_regr: float = 1.0, epsilon: float = 1e-4,
                  beta: float = 1.0) -> LossFn:
    """RPN box regression loss: fn(y_true (B, h, w, 8K), y_pred (B, h, w, 4K)) -> scalar.

    Smooth L1 (turning linear at ``beta``, Config.rpn_smooth_l1_beta) over the slots masked by
    ``y_true[..., :4K]`` against ``y_true[..., 4K:]``, divided by ``epsilon + sum(mask)``, times
    ``lambda_rpn_regr``.
    """
    return _masked_smooth_l1(4 * num_anchors, lambda_rpn_regr, epsilon, "rpn_loss_regr", beta)


def rpn_loss_cls(num_anchors: int, lambda_rpn_class: float = 1.0, epsilon: float = 1e-4) -> LossFn:
    """RPN objectness loss: fn(y_true (B, h, w, 2K), y_pred (B, h, w, K) probabilities) -> scalar.

    Binary cross-entropy of labels ``y_true[..., K:]`` against ``y_pred`` (probabilities clipped to
    [1e-7, 1 - 1e-7] by Keras), masked by ``y_true[..., :K]``, divided by ``epsilon + sum(mask)``,
    times ``lambda_rpn_class``.
    """
    def loss(y_true: Any, y_pred: Any) -> Any:
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        mask = y_true[..., :num_anchors]
        labels = y_true[..., num_anchors:]
        cross_entropy = ops.binary_crossentropy(labels, y_pred)      # (target, output) order
        return lambda_rpn_class * ops.sum(mask * cross_entropy) / (epsilon + ops.sum(mask))

    loss.__name__ = "rpn_loss_cls"
    return loss


def class_loss_regr(num_classes_fg: int, lambda_cls_regr: float = 1.0, epsilon: float = 1e-4,
                    beta: float = 1.0) -> LossFn:
    """Classifier box regression loss: fn(y_true (1, R, 8C), y_pred (1, R, 4C)) -> scalar.

    C = number of foreground classes. Same masked smooth-L1 form as :func:`rpn_loss_regr` (``beta``:
    Config.classifier_smooth_l1_beta).
    """
    return _masked_smooth_l1(4 * num_classes_fg, lambda_cls_regr, epsilon, "class_loss_regr", beta)


def class_loss_cls(lambda_cls_class: float = 1.0) -> LossFn:
    """Classifier loss: fn(y_true (1, R, C) one-hot, y_pred (1, R, C) softmax) -> scalar.

    Mean over RoIs of the categorical cross-entropy, times ``lambda_cls_class``.
    """
    def loss(y_true: Any, y_pred: Any) -> Any:
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        return lambda_cls_class * ops.mean(keras.losses.categorical_crossentropy(y_true, y_pred))

    loss.__name__ = "class_loss_cls"
    return loss


def class_loss_iou(lambda_cls_iou: float = 1.0) -> LossFn:
    """IoU head loss: fn(y_true (1, R, 1) IoU of each RoI with its object in [0, 1], y_pred (1, R, 1)
    sigmoid) -> scalar: mean binary cross-entropy with the IoU as a soft label, times ``lambda_cls_iou``.
    """
    def loss(y_true: Any, y_pred: Any) -> Any:
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        return lambda_cls_iou * ops.mean(ops.binary_crossentropy(y_true, y_pred))

    loss.__name__ = "class_loss_iou"
    return loss
