"""Anchors, the one home for them: feature-map size, anchor shapes and positions, anchor sizes fitted to boxes.

numpy only. Feature cell (row i, column j) of the stride-16 map looks at network-input pixel
``(c + j * stride, c + i * stride)``, ``c = Config.feature_centre_px`` (continuous coordinates, pixel
p spans ``[p, p + 1)``; boxes ``[x1, y1, x2, y2]``, x right, y down): ResNet-50's paddings and strides
put c at 0.5. :func:`cell_centres` is the only place that says so: anchors are centred there (training
targets in data_generators.calc_rpn and targets_tf, decoding in roi_helpers.rpn_to_roi), and
:func:`to_feature_units` maps pixel boxes to the RoI pooling's units so that it reads each cell at the
same place. keras-frcnn trained its RPN with anchors at ``stride * (i + 0.5)``, 7.5 px from where the
features look, decoded proposals at ``stride * i`` and pooled cells as if centred at
``stride * (i + 0.5)``; configs from before ``feature_centre_px`` existed keep ``stride / 2``. The
paper's k = 9 anchors are 128, 256 and 512 px times the ratios 1:1, 1:2 and 2:1 (Config defaults).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .config import Config
from .errors import CryoError
from .preprocessing import resize_scale


def get_feature_map_size(width: int, height: int, stride: int = Config.rpn_stride) -> tuple[int, int]:
    """(feat_w, feat_h) = (ceil(width / stride), ceil(height / stride)).

    For stride 16 this is the conv4 output size of keras.applications' ResNet-50 for any input size:
    each of its four stride-2 stages maps n to ceil(n / 2).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    return int(math.ceil(width / stride)), int(math.ceil(height / stride))


def cell_centres(count: int, cfg: Config) -> np.ndarray:
    """(count,) float64 pixel positions of the centres of feature cells 0..count-1 along one axis:
    ``cfg.feature_centre_px + k * cfg.rpn_stride`` (same along x and y)."""
    return cfg.feature_centre_px + np.arange(count, dtype=np.float64) * cfg.rpn_stride


def to_feature_units(boxes: Any, cfg: Config) -> Any:
    """Boxes ``[..., 4]`` in network-input pixels -> the RoI pooling's feature-map units.

    In those units cell k spans ``[k, k + 1)`` with its centre at ``k + 0.5``
    (roi_pooling.py); the map is chosen so that pixel position :func:`cell_centres` ``[k]`` lands on
    that centre: ``u = (x + stride / 2 - feature_centre_px) / stride``. Works on numpy arrays and
    TensorFlow tensors alike (float in, float out).
    """
    return (boxes + (0.5 * cfg.rpn_stride - cfg.feature_centre_px)) / float(cfg.rpn_stride)


def from_feature_units(rois: Any, cfg: Config) -> Any:
    """The inverse of :func:`to_feature_units`: RoIs in feature-map units -> network-input pixels."""
    return rois * float(cfg.rpn_stride) - (0.5 * cfg.rpn_stride - cfg.feature_centre_px)


def anchor_shapes(cfg: Config) -> np.ndarray:
    """(K, 2) float64 anchor sizes ``[w, h]``, K = len(scales) * len(ratios).

    Order: ``for scale in cfg.anchor_box_scales: for ratio in cfg.anchor_box_ratios``. Area-preserving:
    ``w * h = scale ** 2`` and ``w / h = ratio[0] / ratio[1]``.
    """
    scales = np.asarray(cfg.anchor_box_scales, dtype=np.float64)
    ratios = np.asarray(cfg.anchor_box_ratios, dtype=np.float64).reshape(-1, 2)
    aspect = np.sqrt(ratios[:, 0] / ratios[:, 1])            # sqrt(w / h) per ratio
    widths = scales[:, None] * aspect[None, :]
    heights = scales[:, None] / aspect[None, :]
    return np.stack([widths.reshape(-1), heights.reshape(-1)], axis=1)


def generate_anchors(feat_w: int, feat_h: int, cfg: Config) -> np.ndarray:
    """(feat_h, feat_w, K, 4) float64 anchor boxes in network-input pixels.

    Anchor k of cell (row i, column j) is centred at ``(cell_centres[j], cell_centres[i])`` with the
    size ``anchor_shapes(cfg)[k]``. Not clipped to the image.
    """
    shapes = anchor_shapes(cfg)
    centre_x = cell_centres(feat_w, cfg)
    centre_y = cell_centres(feat_h, cfg)
    cx = centre_x[None, :, None]
    cy = centre_y[:, None, None]
    half_w = 0.5 * shapes[None, None, :, 0]
    half_h = 0.5 * shapes[None, None, :, 1]
    full = (feat_h, feat_w, shapes.shape[0])
    return np.stack(
        [
            np.broadcast_to(cx - half_w, full),
            np.broadcast_to(cy - half_h, full),
            np.broadcast_to(cx + half_w, full),
            np.broadcast_to(cy + half_h, full),
        ],
        axis=-1,
    )


def propose_anchor_scales(records: list[dict[str, Any]], cfg: Config, n_scales: int | None = None) -> list[float]:
    """Anchor sizes (px of the resized network input) that fit the labelled boxes.

    Each box's size is sqrt(w * h) after the image is resized as in training (shorter side
    ``cfg.im_size``). The scales are the box-size quantiles spaced evenly in log size between the
    10th and 90th percentile (``n_scales`` of them, default ``len(cfg.anchor_box_scales)``), rounded to
    multiples of 4 px and never below ``cfg.rpn_stride``. The paper's 128/256/512 px suit mitochondria
    of 128-512 px; smaller objects (binned data, FIB-SEM) need smaller anchors.
    """
    n_scales = n_scales or len(cfg.anchor_box_scales)
    sizes = []
    for record in records:
        scale = resize_scale(float(record["height"]), float(record["width"]), cfg)
        for box in record["bboxes"]:
            sizes.append(math.sqrt(max(box["x2"] - box["x1"], 1e-6) * max(box["y2"] - box["y1"], 1e-6)) * scale)
    if not sizes:
        raise CryoError("no labelled boxes to propose anchor scales from")
    log_sizes = np.log(np.asarray(sizes))
    lo, hi = np.percentile(log_sizes, [10.0, 90.0])
    centres = np.exp(np.linspace(lo, hi, n_scales)) if n_scales > 1 else np.exp([np.median(log_sizes)])
    scales = sorted({float(max(cfg.rpn_stride, 4.0 * round(c / 4.0))) for c in centres})
    return scales
