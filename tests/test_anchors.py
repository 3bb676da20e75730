"""anchors.py: feature-map size, anchor shapes and centres, anchor sizes fitted to labelled boxes."""
from __future__ import annotations

import math

import numpy as np
import pytest

from keras_frcnn_cryo import data_generators, roi_helpers
from keras_frcnn_cryo.anchors import (anchor_shapes, cell_centres, from_feature_units, generate_anchors,
                                     get_feature_map_size, propose_anchor_scales, to_feature_units)
from keras_frcnn_cryo.config import Config
from keras_frcnn_cryo.errors import CryoError


# --------------------------------------------------------------------------------------------
# feature map, anchors (keras-frcnn's data_generators re-exports them)
# --------------------------------------------------------------------------------------------
def test_feature_map_size_formula():
    assert get_feature_map_size(600, 800) == (38, 50)
    assert get_feature_map_size(16, 17) == (1, 2)
    assert get_feature_map_size(33, 47, stride=8) == (5, 6)
    for n in range(1, 200):  # four stride-2 stages of ceil(n / 2)
        assert get_feature_map_size(n, n)[0] == math.ceil(math.ceil(math.ceil(math.ceil(n / 2) / 2) / 2) / 2)


def test_feature_map_size_matches_keras_resnet50_conv4():
    keras = pytest.importorskip("keras")
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    conv4 = keras.Model(base.input, base.get_layer("conv4_block6_out").output)
    for height, width in [(33, 47), (100, 129), (17, 1)]:
        out = conv4.predict(np.zeros((1, height, width, 3), np.float32), verbose=0)
        assert out.shape[1:3] == get_feature_map_size(width, height)[::-1]


def test_anchor_shapes_area_preserving_and_ordered():
    cfg = Config(anchor_box_scales=[10.0, 20.0], anchor_box_ratios=[[1, 1], [1, 2], [2, 1]])
    shapes = anchor_shapes(cfg)
    root2 = math.sqrt(2.0)
    expected = [[10, 10], [10 / root2, 10 * root2], [10 * root2, 10 / root2],
                [20, 20], [20 / root2, 20 * root2], [20 * root2, 20 / root2]]
    np.testing.assert_allclose(shapes, expected)
    assert cfg.num_anchors == len(shapes)


def test_generate_anchors_centres():
    cfg = Config(anchor_box_scales=[32.0], anchor_box_ratios=[[1, 1], [2, 1]], rpn_stride=16)
    assert cfg.feature_centre_px == 0.5
    anchors = generate_anchors(5, 3, cfg)
    assert anchors.shape == (3, 5, 2, 4)
    cx, cy = 4 * 16 + 0.5, 2 * 16 + 0.5                       # cell (row 2, column 4)
    np.testing.assert_allclose(anchors[2, 4, 0], [cx - 16, cy - 16, cx + 16, cy + 16])
    w, h = 32 * math.sqrt(2), 32 / math.sqrt(2)
    np.testing.assert_allclose(anchors[1, 0, 1], [0.5 - w / 2, 16.5 - h / 2, 0.5 + w / 2, 16.5 + h / 2])
    # keras-frcnn's grid, which configs written before feature_centre_px load with
    legacy = Config(anchor_box_scales=[32.0], anchor_box_ratios=[[1, 1]], feature_centre_px=8.0)
    np.testing.assert_allclose(generate_anchors(5, 3, legacy)[2, 4, 0], [4.5 * 16 - 16, 2.5 * 16 - 16,
                                                                          4.5 * 16 + 16, 2.5 * 16 + 16])


@pytest.mark.parametrize("centre", [0.5, 8.0])
def test_feature_units_put_each_cell_centre_on_the_pooling_grid(centre: float):
    cfg = Config(feature_centre_px=centre)
    centres = cell_centres(6, cfg)
    np.testing.assert_allclose(to_feature_units(centres, cfg), np.arange(6) + 0.5)
    boxes = np.array([[0.0, 3.0, 40.0, 95.5], [17.25, 0.0, 18.0, 1.0]])
    np.testing.assert_allclose(from_feature_units(to_feature_units(boxes, cfg), cfg), boxes)


def test_anchors_sit_where_the_backbone_looks():
    """The centre of the receptive field of conv4's cell (4, 4), measured on the backbone itself,
    is the pixel position cell_centres gives it (anchors and RoI pooling use that position)."""
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    from keras_frcnn_cryo import resnet
    size = 128
    image_input = keras.Input((size, size, 3))
    model = keras.Model(image_input, resnet.nn_base(image_input, norm="frozen_bn", blocks=(1, 1, 1)))
    # positive kernels, zero biases, identity norms: every ReLU passes its input, and the gradient
    # of a cell with respect to the image is a symmetric hump around the cell's centre
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel = np.ones(layer.kernel.shape, np.float32) / np.prod(layer.kernel.shape[:3])
            layer.set_weights([kernel] + [np.zeros(w.shape, np.float32) for w in layer.get_weights()[1:]])
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([np.ones(w.shape, np.float32) if i in (0, 3) else np.zeros(w.shape, np.float32)
                               for i, w in enumerate(layer.get_weights())])
    image = tf.constant(np.random.default_rng(0).uniform(1.0, 2.0, (4, size, size, 3)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(image)
        value = tf.reduce_sum(model(image)[:, 4, 4, :])
    weight = tape.gradient(value, image).numpy().sum(axis=(0, 3))            # (size, size)
    assert weight.min() >= 0 and weight[0].sum() == 0 and weight[:, -1].sum() == 0   # whole field inside
    pixel_centres = np.arange(size) + 0.5
    centre_y = float((weight.sum(axis=1) * pixel_centres).sum() / weight.sum())
    centre_x = float((weight.sum(axis=0) * pixel_centres).sum() / weight.sum())
    expected = cell_centres(5, Config())[4]
    assert abs(centre_x - expected) < 1.0 and abs(centre_y - expected) < 1.0, (centre_x, centre_y, expected)


def test_propose_anchor_scales_follows_box_sizes():
    cfg = Config(im_size=300)
    rng = np.random.default_rng(0)
    records = [{"width": 600, "height": 600, "bboxes": [
        {"x1": 0.0, "y1": 0.0, "x2": float(s), "y2": float(s)} for s in rng.uniform(60, 200, 40)]}]
    scales = propose_anchor_scales(records, cfg)
    assert len(scales) == 3 and scales == sorted(scales)
    # boxes of 60-200 px at half scale are 30-100 px: the scales must lie inside that range
    assert 30 <= scales[0] < scales[-1] <= 100
    assert all(s % 4 == 0 for s in scales)
    with pytest.raises(CryoError):
        propose_anchor_scales([{"width": 10, "height": 10, "bboxes": []}], cfg)


def test_one_home_for_anchors():
    # training targets and decoding import the very same function
    assert data_generators.generate_anchors is generate_anchors
    assert roi_helpers.generate_anchors is generate_anchors
