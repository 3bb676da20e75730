"""RoI max pooling against a brute-force numpy reference (explicit loops over RoIs and bins)."""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_frcnn_cryo.roi_pooling import RoiPoolingConv, enlarge_rois, roi_bilinear_max_pool, roi_max_pool


def reference_bins(low: float, high: float, size: int, pool_size: int) -> list[tuple[int, int]]:
    """The documented bin definition, one bin at a time (float32 arithmetic like the layer)."""
    low32, high32 = np.float32(low), np.float32(high)
    extent = high32 - low32
    bins = []
    for j in range(pool_size):
        start = math.floor(low32 + np.float32(j) * extent / np.float32(pool_size))
        end = math.ceil(low32 + np.float32(j + 1) * extent / np.float32(pool_size))
        start = min(max(start, 0), size - 1)
        end = min(max(end, start + 1), size)
        bins.append((start, end))
    return bins


def reference_pool(features: np.ndarray, rois: np.ndarray, pool_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(R, P, P, C) maxima and (H, W, C) gradient of sum(out * upstream) for upstream = 1..."""
    height, width, channels = features.shape
    out = np.zeros((len(rois), pool_size, pool_size, channels), features.dtype)
    for r, (x1, y1, x2, y2) in enumerate(rois):
        for i, (ys, ye) in enumerate(reference_bins(y1, y2, height, pool_size)):
            for j, (xs, xe) in enumerate(reference_bins(x1, x2, width, pool_size)):
                for c in range(channels):
                    out[r, i, j, c] = features[ys:ye, xs:xe, c].max()
    return out


def reference_grad(features: np.ndarray, rois: np.ndarray, pool_size: int, upstream: np.ndarray) -> np.ndarray:
    """Gradient of sum(pool * upstream): upstream added at each bin's arg-max cell."""
    height, width, channels = features.shape
    grad = np.zeros_like(features)
    for r, (x1, y1, x2, y2) in enumerate(rois):
        for i, (ys, ye) in enumerate(reference_bins(y1, y2, height, pool_size)):
            for j, (xs, xe) in enumerate(reference_bins(x1, x2, width, pool_size)):
                for c in range(channels):
                    window = features[ys:ye, xs:xe, c]
                    row, col = np.unravel_index(np.argmax(window), window.shape)
                    grad[ys + row, xs + col, c] += upstream[r, i, j, c]
    return grad


def random_rois(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """Random boxes plus the hard cases: 1- and 2-cell boxes, zero width/height, on/over borders."""
    corners = rng.uniform(-3.0, max(height, width) + 3.0, size=(count, 2, 2))
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    special = [
        [2.0, 3.0, 3.0, 4.0],                    # exactly one cell
        [2.5, 3.5, 3.0, 4.0],                    # inside one cell
        [0.0, 0.0, 2.0, 2.0],                    # two by two cells
        [4.0, 1.0, 4.0, 6.0],                    # zero width
        [1.0, 5.0, 7.0, 5.0],                    # zero height
        [3.3, 2.2, 3.3, 2.2],                    # a point
        [0.0, 0.0, width, height],               # the whole map
        [-5.0, -4.0, width + 6.0, height + 2.0], # over every border
        [width - 1.5, height - 0.5, width + 4.0, height + 4.0],  # crossing the bottom-right corner
        [width + 2.0, height + 1.0, width + 5.0, height + 9.0],  # wholly outside
        [-9.0, -9.0, -1.0, -2.0],                # wholly outside, top-left
        [0.0, 1.0, 13.0, 2.0],                   # one row tall, many cells wide
    ]
    return np.concatenate([boxes, np.asarray(special)], axis=0).astype(np.float32)


@pytest.mark.parametrize("pool_size", [1, 2, 3, 7])
def test_matches_bruteforce_reference(pool_size: int) -> None:
    rng = np.random.default_rng(pool_size)
    features = rng.normal(size=(11, 14, 3)).astype(np.float32)
    rois = random_rois(rng, 25, 11, 14)
    got = roi_max_pool(features, rois, pool_size).numpy()
    assert got.shape == (len(rois), pool_size, pool_size, 3)
    np.testing.assert_array_equal(got, reference_pool(features, rois, pool_size))


def test_bins_of_a_known_box() -> None:
    # a 4x4 map holding 0..15 row by row; a 2x2 pooling of the box [1, 0, 4, 3] (w = h = 3):
    # x bins [1, 3) and [2, 4), y bins [0, 2) and [1, 3) -> maxima of overlapping blocks
    features = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    got = roi_max_pool(features, np.array([[1.0, 0.0, 4.0, 3.0]], np.float32), 2).numpy()[0, :, :, 0]
    np.testing.assert_array_equal(got, [[6.0, 7.0], [10.0, 11.0]])


def test_inside_tf_function_and_empty_rois() -> None:
    rng = np.random.default_rng(7)
    features = rng.normal(size=(9, 6, 4)).astype(np.float32)
    rois = random_rois(rng, 10, 9, 6)
    pooled = tf.function(lambda f, r: roi_max_pool(f, r, 3))
    np.testing.assert_array_equal(pooled(features, rois).numpy(), reference_pool(features, rois, 3))
    empty = pooled(features, np.zeros((0, 4), np.float32))
    assert empty.shape == (0, 3, 3, 4)


def test_gradient_only_at_argmax_cells() -> None:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(8, 10, 2)).astype(np.float32)
    rois = random_rois(rng, 6, 8, 10)
    upstream = rng.uniform(0.5, 1.5, size=(len(rois), 3, 3, 2)).astype(np.float32)
    feature_tensor = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(feature_tensor)
        loss = tf.reduce_sum(roi_max_pool(feature_tensor, rois, 3) * upstream)
    grad = tape.gradient(loss, feature_tensor).numpy()
    expected = reference_grad(features, rois, 3, upstream)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
    assert np.array_equal(grad != 0, expected != 0)
    assert 0 < np.count_nonzero(grad) < grad.size


def test_large_maps_work_and_stay_exact() -> None:
    # the sizes of the paper's setting: 300 RoIs on a 38x38x1024 map (600 px image), 7x7 bins
    rng = np.random.default_rng(11)
    features = rng.normal(size=(38, 38, 1024)).astype(np.float32)
    rois = random_rois(rng, 288, 38, 38)
    got = roi_max_pool(features, rois, 7).numpy()
    assert got.shape == (300, 7, 7, 1024)
    some = np.r_[0:5, 288:300]
    sub = features[:, :, :8]
    np.testing.assert_array_equal(got[some][..., :8], reference_pool(sub, rois[some], 7))


def test_layer_with_dynamic_number_of_rois() -> None:
    rng = np.random.default_rng(5)
    features = rng.normal(size=(1, 7, 9, 4)).astype(np.float32)
    feature_input = keras.Input((None, None, 4))
    roi_input = keras.Input((None, 4))
    layer = RoiPoolingConv(2, mode="cells", name="roi_pool")
    model = keras.Model([feature_input, roi_input], layer([feature_input, roi_input]))
    assert model.output_shape == (1, None, 2, 2, 4)
    for count in (1, 5):
        rois = random_rois(rng, count, 7, 9)[None]
        out = model.predict([features, rois], verbose=0)
        assert out.shape == (1, rois.shape[1], 2, 2, 4)
        np.testing.assert_array_equal(out[0], reference_pool(features[0], rois[0], 2))
    clone = RoiPoolingConv.from_config(layer.get_config())
    assert (clone.pool_size, clone.mode, clone.name) == (2, "cells", "roi_pool")
    restored = keras.Model.from_config(model.get_config())
    rois = random_rois(rng, 3, 7, 9)[None]
    np.testing.assert_array_equal(restored.predict([features, rois], verbose=0), model.predict([features, rois], verbose=0))


def test_layer_opts_out_of_xla_and_trains() -> None:
    # data-dependent shapes: a model holding the layer must not be XLA-compiled, and it trains
    rng = np.random.default_rng(8)
    feature_input = keras.Input((None, None, 2))
    roi_input = keras.Input((None, 4))
    scaled = keras.layers.Conv2D(2, 1, name="scale")(feature_input)
    pooled = RoiPoolingConv(2, mode="cells")([scaled, roi_input])
    model = keras.Model([feature_input, roi_input], pooled)
    with pytest.warns(UserWarning, match="jit_compile"):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    assert model.jit_compile is False
    features = rng.normal(size=(1, 6, 6, 2)).astype(np.float32)
    rois = random_rois(rng, 4, 6, 6)[None]
    target = np.zeros((1, len(rois[0]), 2, 2, 2), np.float32)
    kernel_before = model.get_layer("scale").kernel.numpy().copy()
    first = model.train_on_batch([features, rois], target)
    second = model.train_on_batch([features, rois], target)
    assert second < first
    assert not np.array_equal(model.get_layer("scale").kernel.numpy(), kernel_before)


# ------------------------------------------------------------------------------------------
# "bilinear" mode: sub-cell windows, max over interpolated points
# ------------------------------------------------------------------------------------------
def bilinear_at(features: np.ndarray, y: float, x: float) -> np.ndarray:
    """Value at (y, x) in RoI units (cell c's centre at c + 0.5), border cells extended outward."""
    height, width = features.shape[:2]
    u = min(max(y - 0.5, 0.0), height - 1.0)
    v = min(max(x - 0.5, 0.0), width - 1.0)
    y0, x0 = int(math.floor(u)), int(math.floor(v))
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    a, b = u - y0, v - x0
    return ((1 - a) * (1 - b) * features[y0, x0] + (1 - a) * b * features[y0, x1]
            + a * (1 - b) * features[y1, x0] + a * b * features[y1, x1])


def reference_bilinear(features: np.ndarray, rois: np.ndarray, pool_size: int, samples: int) -> np.ndarray:
    """RoIs clipped to the map and half a cell around it, then the max over samples x samples
    interpolated points per window."""
    height, width = features.shape[:2]
    out = np.full((len(rois), pool_size, pool_size, features.shape[2]), -np.inf)
    clipped = np.clip(rois.astype(np.float64), -0.5, [width + 0.5, height + 0.5, width + 0.5, height + 0.5])
    for r, (x1, y1, x2, y2) in enumerate(clipped):
        for i in range(pool_size):
            for j in range(pool_size):
                for a in range(samples):
                    for b in range(samples):
                        y = y1 + (i + (a + 0.5) / samples) * (y2 - y1) / pool_size
                        x = x1 + (j + (b + 0.5) / samples) * (x2 - x1) / pool_size
                        out[r, i, j] = np.maximum(out[r, i, j], bilinear_at(features, y, x))
    return out


@pytest.mark.parametrize("pool_size,samples", [(1, 1), (2, 2), (3, 2), (7, 2), (3, 3)])
def test_bilinear_matches_reference(pool_size: int, samples: int) -> None:
    rng = np.random.default_rng(100 + pool_size * samples)
    features = rng.normal(size=(6, 8, 3)).astype(np.float32)
    rois = random_rois(rng, 10, 6, 8)
    got = roi_bilinear_max_pool(features, rois, pool_size, samples).numpy()
    assert got.shape == (len(rois), pool_size, pool_size, 3)
    np.testing.assert_allclose(got, reference_bilinear(features, rois, pool_size, samples), atol=2e-5)


def test_bilinear_sees_sub_cell_shifts_that_cells_mode_cannot() -> None:
    # a ramp along x (value = column): moving the RoI by a quarter cell moves every bilinear window's
    # maximum by exactly 0.25, while whole-cell windows move by whole cells or not at all
    features = np.tile(np.arange(12, dtype=np.float32)[None, :, None], (8, 1, 1))
    roi = np.array([[2.0, 1.0, 8.0, 7.0]], np.float32)
    moved = roi + np.array([[0.25, 0.0, 0.25, 0.0]], np.float32)
    cells_a, cells_b = (roi_max_pool(features, r, 7).numpy() for r in (roi, moved))
    assert set(np.unique(cells_b - cells_a)) <= {0.0, 1.0}
    bil_a, bil_b = (roi_bilinear_max_pool(features, r, 7, 2).numpy() for r in (roi, moved))
    np.testing.assert_allclose(bil_b - bil_a, 0.25, atol=1e-5)


def test_bilinear_gradient_matches_finite_differences_and_stays_in_the_roi() -> None:
    rng = np.random.default_rng(21)
    features = rng.normal(size=(6, 7, 2))
    rois = np.array([[1.3, 0.7, 4.9, 4.2], [3.0, 2.0, 6.5, 5.5]], np.float32)
    upstream = rng.uniform(0.5, 1.5, size=(2, 3, 3, 2))
    feature_tensor = tf.constant(features, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(feature_tensor)
        loss = tf.reduce_sum(roi_bilinear_max_pool(feature_tensor, rois, 3, 2) * upstream)
    grad = tape.gradient(loss, feature_tensor).numpy()

    def value(f: np.ndarray) -> float:
        return float(np.sum(reference_bilinear(f, rois, 3, 2) * upstream))

    numeric = np.zeros_like(features)
    for index in np.ndindex(features.shape):
        step = np.zeros_like(features)
        step[index] = 1e-4
        numeric[index] = (value(features + step) - value(features - step)) / 2e-4
    np.testing.assert_allclose(grad, numeric, atol=1e-3)
    assert np.all(grad[:, 0] == 0) and np.count_nonzero(grad) > 0   # column 0 lies outside both RoIs


def test_bilinear_gradient_is_reproducible_with_many_overlapping_rois() -> None:
    # TensorFlow's own CropAndResize image gradient adds from several threads on a CPU and changes
    # from call to call; ours sums in a fixed order
    rng = np.random.default_rng(0)
    features = tf.constant(rng.normal(size=(6, 6, 256)).astype(np.float32))
    corners = rng.uniform(0, 6, size=(64, 2, 2))
    rois = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1).astype(np.float32)
    upstream = tf.constant(rng.normal(size=(64, 7, 7, 256)).astype(np.float32))

    def gradient() -> np.ndarray:
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = tf.reduce_sum(roi_bilinear_max_pool(features, rois, 7, 2) * upstream)
        return tape.gradient(loss, features).numpy()

    first = gradient()
    for _ in range(3):
        np.testing.assert_array_equal(gradient(), first)


def test_bilinear_layer_handles_border_and_empty_rois() -> None:
    rng = np.random.default_rng(4)
    features = rng.normal(size=(1, 5, 6, 3)).astype(np.float32)
    feature_input = keras.Input((None, None, 3))
    roi_input = keras.Input((None, 4))
    layer = RoiPoolingConv(3, samples=2)
    assert layer.mode == "bilinear"
    model = keras.Model([feature_input, roi_input], layer([feature_input, roi_input]))
    rois = np.array([[[0.0, 0.0, 6.0, 5.0], [5.5, 4.5, 6.0, 5.0], [2.0, 2.0, 2.0, 2.0]]], np.float32)
    out = model.predict([features, rois], verbose=0)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], reference_bilinear(features[0], rois[0], 3, 2), atol=2e-5)
    empty = model.predict([features, np.zeros((1, 0, 4), np.float32)], verbose=0)
    assert empty.shape == (1, 0, 3, 3, 3)
    in_graph = tf.function(lambda f, r: roi_bilinear_max_pool(f, r, 3, 2))
    np.testing.assert_allclose(in_graph(features[0], rois[0]).numpy(), out[0], atol=1e-5)
    with pytest.raises(ValueError, match="unknown RoI pooling mode"):
        RoiPoolingConv(3, mode="average")


def test_context_pools_the_box_scaled_about_its_centre() -> None:
    rng = np.random.default_rng(5)
    features = rng.normal(size=(1, 12, 14, 4)).astype(np.float32)
    rois = np.array([[[3.0, 2.0, 8.0, 7.0], [1.0, 4.0, 11.0, 6.0]]], np.float32)
    # x 3..8 (centre 5.5, width 5) scaled by 1.2 -> 2.5..8.5; y 2..7 -> 1.5..7.5; likewise the second
    by_hand = np.array([[2.5, 1.5, 8.5, 7.5], [0.0, 3.8, 12.0, 6.2]], np.float32)
    np.testing.assert_allclose(enlarge_rois(rois[0], 1.2).numpy(), by_hand, atol=1e-6)
    for mode in ("bilinear", "cells"):
        layer = RoiPoolingConv(3, mode=mode, context=1.2)
        clone = RoiPoolingConv.from_config(layer.get_config())
        assert clone.context == 1.2
        plain = RoiPoolingConv(3, mode=mode)
        np.testing.assert_allclose(clone([features, rois]).numpy(), plain([features, by_hand[None]]).numpy(),
                                   atol=1e-5)
        # the wider window sees more: it differs from pooling the box itself
        assert not np.allclose(layer([features, rois]).numpy(), plain([features, rois]).numpy())
    np.testing.assert_array_equal(enlarge_rois(rois[0], 1.0).numpy(), rois[0])
    with pytest.raises(ValueError, match="RoI context must be >= 1"):
        RoiPoolingConv(3, context=0.9)
