"""RoI max pooling (Li et al. 2019: each proposal max-pooled into P x P windows of size h/P x w/P).

keras-frcnn cropped every RoI and resized it bilinearly in a Python loop (the paper says max
pooling); this module computes max pooling for all RoIs at once, in one of two modes
(``Config.roi_pool_mode``):

* ``"bilinear"`` (default): the windows are exactly h/P x w/P, at sub-cell positions. Each window's
  maximum is taken over ``s x s`` points (``Config.roi_samples_per_bin``, default 2) read from the
  feature map by bilinear interpolation at the centres of an even s x s split of the window (the
  sampling of Mask R-CNN's RoIAlign, with max instead of mean). Moving a RoI by a fraction of a
  cell changes what it pools, so the head can place boxes to a few pixels: with whole cells
  (16 px) a shift of up to half a cell is invisible to it, which caps the IoU it can reach. See
  :func:`roi_bilinear_max_pool`.
* ``"cells"``: each window is widened outward to whole feature cells and max-pooled exactly (Fast
  R-CNN's RoI pooling), described below; the mode of models trained before version 0.2.

Coordinates: RoIs are float ``[x1, y1, x2, y2]`` in FEATURE-MAP units (image pixels mapped by
anchors.to_feature_units, so that each cell's centre is where the backbone centres it), x right, y
down; feature cell ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``.

Bin definition of ``"cells"`` (for pool size P, along x; y is the same with H):

* ``w = x2 - x1``; bin ``j`` (0 <= j < P) spans cells ``[start, end)`` with
  ``start = floor(x1 + j * w / P)`` and ``end = ceil(x1 + (j + 1) * w / P)`` (exclusive);
* ``start`` is clipped to ``[0, W - 1]`` and ``end`` to ``[start + 1, W]``, so every bin covers at
  least one cell: RoIs of one or two cells, zero-width RoIs and RoIs on or beyond the border all
  give finite values (a bin wholly outside the map takes the nearest border cell).

Method (exact, memory O(H * W * C + R * P * P * C)): a two-dimensional sparse table. For levels
``a, b`` the table ``T_ab[y, x]`` is the maximum over rows ``[y, y + 2**a)`` and columns
``[x, x + 2**b)`` (clipped at the border), built by doubling one level at a time, together with
the position of that maximum. A bin of height ``ly`` and width ``lx`` uses ``a = floor(log2 ly)``,
``b = floor(log2 lx)``: its maximum is the largest of ``T_ab`` at its four corners (four
overlapping power-of-two blocks that cover it exactly). Tables are built one level pair at a time
(two (H, W, C) tables alive at once), only up to the levels the given RoIs need, and each bin is
answered from the table of its own pair. The tables are not differentiated: a custom gradient
adds the upstream gradient at each bin's arg-max cell, as in the paper's RoI max pooling.
"""
from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

# floor(log2(n)) for n >= 1 is computed by counting powers of two <= n; 2**30 cells is far beyond
# any feature map.
_MAX_LOG2 = 30
# how far beyond the map (in cells) a bilinear RoI may reach before it is clipped: the edge padding
# of one cell keeps every sample point of such a RoI on the padded map
ROI_MARGIN_CELLS = 0.5


def _bin_edges(low: tf.Tensor, high: tf.Tensor, size: tf.Tensor, pool_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Integer bin edges along one axis.

    low, high: (R,) float32 RoI edges in cells; size: scalar int32 map extent.
    Returns (start, end): (R, P) int32, ``0 <= start < end <= size``.
    """
    steps = tf.range(pool_size + 1, dtype=tf.float32)                       # (P + 1,)
    extent = high - low
    edges = low[:, None] + steps[None, :] * extent[:, None] / float(pool_size)  # (R, P + 1)
    start = tf.cast(tf.math.floor(edges[:, :-1]), tf.int32)
    end = tf.cast(tf.math.ceil(edges[:, 1:]), tf.int32)
    start = tf.clip_by_value(start, 0, size - 1)
    end = tf.minimum(tf.maximum(end, start + 1), size)
    return start, end


def _floor_log2(length: tf.Tensor) -> tf.Tensor:
    """floor(log2(length)) for int32 ``length >= 1`` (any shape), exact."""
    powers = tf.bitwise.left_shift(tf.ones([_MAX_LOG2], tf.int32), tf.range(1, _MAX_LOG2 + 1))
    return tf.reduce_sum(tf.cast(length[..., None] >= powers, tf.int32), axis=-1)


def _double(values: tf.Tensor, where: tf.Tensor, shift: tf.Tensor, axis: int) -> tuple[tf.Tensor, tf.Tensor]:
    """One doubling step of the sparse table along ``axis`` (0 = rows, 1 = columns).

    values: (H, W, C) block maxima of extent ``shift`` along ``axis``; where: (H, W, C) int32 flat
    spatial index ``row * W + col`` of each maximum. Returns the same for extent ``2 * shift``
    (blocks clipped at the border; ties keep the first cell).
    """
    size = tf.shape(values)[axis]
    neighbour = tf.minimum(tf.range(size) + shift, size - 1)
    other_values = tf.gather(values, neighbour, axis=axis)
    other_where = tf.gather(where, neighbour, axis=axis)
    take = other_values > values
    return tf.where(take, other_values, values), tf.where(take, other_where, where)


def _bin_maxima(features: tf.Tensor, rois: tf.Tensor, pool_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Maximum of every bin and channel, and where it is.

    features: (H, W, C); rois: (R, 4) float32 feature units. Returns (maxima, where), both
    (R * P * P, C): maxima in the dtype of ``features``, where int32 flat spatial indices
    ``row * W + col``; bins are ordered (roi, bin row, bin col). Not differentiable.
    """
    shape = tf.shape(features)
    height, width, channels = shape[0], shape[1], shape[2]
    y_start, y_end = _bin_edges(rois[:, 1], rois[:, 3], height, pool_size)   # (R, P)
    x_start, x_end = _bin_edges(rois[:, 0], rois[:, 2], width, pool_size)
    y_level = _floor_log2(y_end - y_start)
    x_level = _floor_log2(x_end - x_start)
    y_last = y_end - tf.bitwise.left_shift(1, y_level)                       # start of the 2nd block
    x_last = x_end - tf.bitwise.left_shift(1, x_level)

    # every bin as (roi, i, j) flattened: corners and level pair
    def per_bin(row_part: tf.Tensor, col_part: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        rows = tf.broadcast_to(row_part[:, :, None], [tf.shape(rois)[0], pool_size, pool_size])
        cols = tf.broadcast_to(col_part[:, None, :], [tf.shape(rois)[0], pool_size, pool_size])
        return tf.reshape(rows, [-1]), tf.reshape(cols, [-1])

    bin_y_level, bin_x_level = per_bin(y_level, x_level)
    top, left = per_bin(y_start, x_start)
    bottom, right = per_bin(y_last, x_last)
    corners = tf.stack([top * width + left, top * width + right,
                        bottom * width + left, bottom * width + right], axis=1)  # (N, 4)
    num_bins = tf.shape(corners)[0]
    # levels needed (0 when there are no RoIs: reduce_max of an empty tensor is the int minimum)
    num_y_levels = tf.where(num_bins > 0, tf.reduce_max(bin_y_level) + 1, 0)
    num_x_levels = tf.where(num_bins > 0, tf.reduce_max(bin_x_level) + 1, 0)

    positions = tf.reshape(tf.range(height * width), [height, width, 1])
    base_where = tf.broadcast_to(positions, shape)

    def fill(level_a: tf.Tensor, level_b: tf.Tensor, values: tf.Tensor, where: tf.Tensor,
             maxima: tf.TensorArray, answers: tf.TensorArray, order: tf.TensorArray, slot: tf.Tensor
             ) -> tuple[tf.TensorArray, tf.TensorArray, tf.TensorArray]:
        """Answer the bins of level pair (a, b) from that pair's table (values, where)."""
        chosen = tf.where(tf.logical_and(tf.equal(bin_y_level, level_a), tf.equal(bin_x_level, level_b)))
        chosen = tf.cast(chosen[:, 0], tf.int32)                               # (k,)
        spots = tf.gather(corners, chosen)                                     # (k, 4)
        corner_values = tf.gather(tf.reshape(values, [-1, channels]), spots)   # (k, 4, C)
        corner_where = tf.gather(tf.reshape(where, [-1, channels]), spots)
        best_values, best_where = corner_values[:, 0], corner_where[:, 0]      # (k, C)
        for corner in range(1, 4):
            take = corner_values[:, corner] > best_values
            best_values = tf.where(take, corner_values[:, corner], best_values)
            best_where = tf.where(take, corner_where[:, corner], best_where)
        return maxima.write(slot, best_values), answers.write(slot, best_where), order.write(slot, chosen)

    def outer_body(level_a, y_values, y_where, maxima, answers, order):
        # the table of level a along y arrives at level a - 1 (no doubling is wasted after the last)
        y_values, y_where = _double_if(level_a, y_values, y_where, axis=0)

        def inner_body(level_b, values, where, maxima, answers, order):
            values, where = _double_if(level_b, values, where, axis=1)
            maxima, answers, order = fill(level_a, level_b, values, where, maxima, answers, order,
                                          level_a * num_x_levels + level_b)
            return level_b + 1, values, where, maxima, answers, order

        _, _, _, maxima, answers, order = tf.while_loop(
            lambda level_b, *_: level_b < num_x_levels, inner_body,
            (tf.constant(0), y_values, y_where, maxima, answers, order))
        return level_a + 1, y_values, y_where, maxima, answers, order

    # every bin has exactly one level pair, so the bins answered pair by pair form a permutation
    maxima = tf.TensorArray(features.dtype, size=0, dynamic_size=True, infer_shape=False,
                            element_shape=tf.TensorShape([None, None]))
    answers = tf.TensorArray(tf.int32, size=0, dynamic_size=True, infer_shape=False,
                             element_shape=tf.TensorShape([None, None]))
    order = tf.TensorArray(tf.int32, size=0, dynamic_size=True, infer_shape=False,
                           element_shape=tf.TensorShape([None]))
    _, _, _, maxima, answers, order = tf.while_loop(
        lambda level_a, *_: level_a < num_y_levels, outer_body,
        (tf.constant(0), features, base_where, maxima, answers, order))

    def collect() -> tuple[tf.Tensor, tf.Tensor]:
        inverse = tf.math.invert_permutation(order.concat())
        return tf.gather(maxima.concat(), inverse), tf.gather(answers.concat(), inverse)

    return tf.cond(num_bins > 0, collect,
                   lambda: (tf.zeros([0, channels], features.dtype), tf.zeros([0, channels], tf.int32)))


def _double_if(level: tf.Tensor, values: tf.Tensor, where: tf.Tensor, axis: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Tables of block extent ``2**(level - 1)`` -> ``2**level`` (unchanged at level 0)."""
    return tf.cond(
        level > 0,
        lambda: _double(values, where, tf.bitwise.left_shift(1, tf.maximum(level - 1, 0)), axis),
        lambda: (values, where))


def roi_max_pool(features: Any, rois: Any, pool_size: int) -> tf.Tensor:
    """Max-pool every RoI of one feature map into a ``pool_size`` x ``pool_size`` grid.

    features: (H, W, C) float tensor; rois: (R, 4) float ``[x1, y1, x2, y2]`` in feature-map
    units (see the module docstring for the bin definition). Returns (R, P, P, C) in the dtype of
    ``features``. The gradient with respect to ``features`` is the upstream gradient added at each
    bin's arg-max cell (zero elsewhere); RoIs get no gradient.
    """
    features = tf.convert_to_tensor(features)
    rois = tf.stop_gradient(tf.cast(tf.convert_to_tensor(rois), tf.float32))
    static_shape = [rois.shape[0], pool_size, pool_size, features.shape[-1]]

    @tf.custom_gradient
    def pool(feature_map: tf.Tensor) -> tuple[tf.Tensor, Any]:
        shape = tf.shape(feature_map)
        channels = shape[2]
        maxima, where = _bin_maxima(feature_map, rois, pool_size)           # (N, C) each
        pooled = tf.reshape(maxima, tf.stack([tf.shape(rois)[0], pool_size, pool_size, channels]))

        def grad(upstream: tf.Tensor) -> tf.Tensor:
            flat_index = where * channels + tf.range(channels)[None, :]
            summed = tf.math.unsorted_segment_sum(
                tf.reshape(upstream, [-1]), tf.reshape(flat_index, [-1]), tf.reduce_prod(shape))
            return tf.reshape(summed, shape)

        return pooled, grad

    pooled = pool(features)
    pooled.set_shape(static_shape)
    return pooled


def roi_bilinear_max_pool(features: Any, rois: Any, pool_size: int, samples: int = 2) -> tf.Tensor:
    """Max-pool every RoI into ``pool_size`` x ``pool_size`` windows sampled at sub-cell positions.

    features: (H, W, C) float tensor; rois: (R, 4) float ``[x1, y1, x2, y2]`` in feature-map units
    (cell ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``, so its centre is at
    ``col + 0.5``). Window ``(i, j)`` spans ``x1 + j w / P .. x1 + (j + 1) w / P`` (likewise in y);
    its value is the maximum over ``samples x samples`` points at the centres of an even split of the
    window, each read by bilinear interpolation between the four nearest cell centres. The RoI is
    first clipped to ``[-0.5, W + 0.5] x [-0.5, H + 0.5]``, the map and half a cell around it (a box
    on the image's edge maps up to half a cell beyond the map, see anchors.to_feature_units; one
    wholly outside shrinks onto that border), and points within a cell's half of the border read the
    border cells (the map is edge-padded by one cell). Returns (R, P, P, C) in the dtype of
    ``features``.

    Differentiable with respect to ``features``: the upstream gradient of each window and channel
    goes to the four cells around its arg-max point, with the interpolation weights (summed in a
    fixed order, so training is reproducible; TensorFlow's own CropAndResize gradient on the CPU adds
    from several threads at once and is not). RoIs get no gradient. The values come from
    tf.image.crop_and_resize.
    """
    features = tf.convert_to_tensor(features)
    dtype = features.dtype
    rois = tf.stop_gradient(tf.cast(tf.convert_to_tensor(rois), tf.float32))
    map_size = tf.cast(tf.shape(features)[:2], tf.float32)                   # (H, W)
    limits = tf.stack([map_size[1], map_size[0], map_size[1], map_size[0]])
    rois = tf.clip_by_value(rois, -ROI_MARGIN_CELLS, limits + ROI_MARGIN_CELLS)
    grid = pool_size * samples

    def sample_positions(low: tf.Tensor, high: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(first, step): sample k of a RoI sits at ``first + k * step`` in padded-map cell indices
        (cell c's centre is c + 0.5 in RoI units and index c + 1 in the padded map)."""
        step = (high - low) / float(grid)
        return low + 0.5 * step + 0.5, step

    y_first, y_step = sample_positions(rois[:, 1], rois[:, 3])
    x_first, x_step = sample_positions(rois[:, 0], rois[:, 2])
    padded = tf.pad(tf.cast(features, tf.float32), [[1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    pad_h, pad_w, channels = tf.shape(padded)[0], tf.shape(padded)[1], tf.shape(padded)[2]
    # crop_and_resize's unit: 0 = centre of the first cell, 1 = of the last
    scale_y = tf.cast(pad_h - 1, tf.float32)
    scale_x = tf.cast(pad_w - 1, tf.float32)
    boxes = tf.stack([y_first / scale_y, x_first / scale_x, (y_first + (grid - 1) * y_step) / scale_y,
                      (x_first + (grid - 1) * x_step) / scale_x], axis=1)
    num_rois = tf.shape(rois)[0]

    @tf.custom_gradient
    def pool(padded_map: tf.Tensor) -> tuple[tf.Tensor, Any]:
        crops = tf.image.crop_and_resize(padded_map[None], boxes, tf.zeros([num_rois], tf.int32),
                                         [grid, grid], method="bilinear")         # (R, grid, grid, C)
        windows = tf.reshape(crops, tf.stack([num_rois, pool_size, samples, pool_size, samples, channels]))
        windows = tf.reshape(tf.transpose(windows, [0, 1, 3, 2, 4, 5]),
                             tf.stack([num_rois, pool_size, pool_size, samples * samples, channels]))
        pooled = tf.reduce_max(windows, axis=3)                                   # (R, P, P, C)
        best = tf.argmax(windows, axis=3, output_type=tf.int32)                   # which sample

        def grad(upstream: tf.Tensor) -> tf.Tensor:
            window_index = tf.range(pool_size) * samples
            row = window_index[None, :, None, None] + best // samples             # (R, P, P, C)
            col = window_index[None, None, :, None] + best % samples
            y = y_first[:, None, None, None] + tf.cast(row, tf.float32) * y_step[:, None, None, None]
            x = x_first[:, None, None, None] + tf.cast(col, tf.float32) * x_step[:, None, None, None]
            top, left = tf.floor(y), tf.floor(x)
            wy, wx = y - top, x - left
            top_i, left_i = tf.cast(top, tf.int32), tf.cast(left, tf.int32)
            bottom_i, right_i = tf.minimum(top_i + 1, pad_h - 1), tf.minimum(left_i + 1, pad_w - 1)
            channel = tf.range(channels)[None, None, None, :]
            index = tf.stack([(top_i * pad_w + left_i) * channels + channel,
                              (top_i * pad_w + right_i) * channels + channel,
                              (bottom_i * pad_w + left_i) * channels + channel,
                              (bottom_i * pad_w + right_i) * channels + channel])
            weight = tf.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx])
            summed = tf.math.unsorted_segment_sum(tf.reshape(weight * upstream[None], [-1]),
                                                  tf.reshape(index, [-1]), pad_h * pad_w * channels)
            return tf.reshape(summed, tf.shape(padded_map))

        return pooled, grad

    pooled = tf.cast(pool(padded), dtype)
    pooled.set_shape([rois.shape[0], pool_size, pool_size, features.shape[-1]])
    return pooled


POOL_MODES = ("bilinear", "cells")


def enlarge_rois(rois: Any, context: float) -> tf.Tensor:
    """RoIs (R, 4) float ``[x1, y1, x2, y2]`` scaled by ``context`` about their centres (same units).

    ``context`` 1 returns them unchanged; 1.2 widens each side by a tenth of the RoI's width or
    height, so the pooled windows also cover what lies just outside the proposal (Config.roi_context).
    """
    rois = tf.convert_to_tensor(rois)
    if context == 1.0:
        return rois
    centre = 0.5 * (rois[..., :2] + rois[..., 2:])
    half = (0.5 * float(context)) * (rois[..., 2:] - rois[..., :2])
    return tf.concat([centre - half, centre + half], axis=-1)


@keras.saving.register_keras_serializable(package="keras_frcnn_cryo")
class RoiPoolingConv(keras.layers.Layer):
    """RoI max pooling layer (name kept from keras-frcnn).

    Called on ``[features, rois]``: features (1, H, W, C), rois (1, R, 4) float
    ``[x1, y1, x2, y2]`` in feature-map units (R may be dynamic). Returns (1, R, P, P, C) in the
    layer's compute dtype (float32, or bfloat16 under "mixed_bfloat16"; the RoIs stay float32).
    ``mode`` is one of :data:`POOL_MODES` ("bilinear": :func:`roi_bilinear_max_pool` with
    ``samples`` x ``samples`` points per window; "cells": :func:`roi_max_pool`). Only batch size 1 is
    supported (one image per step, as in keras-frcnn). With ``context`` c > 1 each RoI is first
    scaled by c about its centre (:func:`enlarge_rois`): the head then sees the proposal's
    surroundings too, where an edge the proposal missed lies (regression targets stay relative to the
    RoI as given). Neither mode compiles with XLA on a CPU
    ("cells" has data-dependent shapes, "bilinear" uses CropAndResize, which XLA's CPU backend
    lacks), so the layer opts out of it (``supports_jit`` False).
    """

    def __init__(self, pool_size: int, mode: str = "bilinear", samples: int = 2, context: float = 1.0,
                 **kwargs: Any) -> None:
        # no autocast: under a mixed-precision policy the RoI coordinates stay float32
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if mode not in POOL_MODES:
            raise ValueError(f"unknown RoI pooling mode {mode!r} (use one of {', '.join(POOL_MODES)})")
        if int(samples) < 1:
            raise ValueError(f"samples per window must be >= 1, got {samples}")
        if not float(context) >= 1.0:
            raise ValueError(f"RoI context must be >= 1, got {context}")
        self.pool_size = int(pool_size)
        self.mode = mode
        self.samples = int(samples)
        self.context = float(context)
        self.supports_jit = False

    def call(self, inputs: list[Any]) -> tf.Tensor:  # noqa: D102
        features, rois = inputs
        features = tf.cast(features, self.compute_dtype)
        rois = enlarge_rois(tf.cast(rois, tf.float32), self.context)
        if self.mode == "cells":
            return roi_max_pool(features[0], rois[0], self.pool_size)[None]
        return roi_bilinear_max_pool(features[0], rois[0], self.pool_size, self.samples)[None]

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:  # noqa: D102
        feature_shape, roi_shape = input_shape
        return (1, roi_shape[1], self.pool_size, self.pool_size, feature_shape[3])

    def get_config(self) -> dict[str, Any]:  # noqa: D102
        config = super().get_config()
        config.update({"pool_size": self.pool_size, "mode": self.mode, "samples": self.samples, "context": self.context})
        return config
