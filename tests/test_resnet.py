"""ResNet-50 split: keras.applications layout, weight loading by name, heads, GroupNorm training."""
from __future__ import annotations

import math
import os

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_frcnn_cryo import resnet
from keras_frcnn_cryo.errors import CryoError

REF_SIZE = 64
# Keras' own legacy .h5 writer converts variables with np.array(x): noise under numpy 2, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def build_split(norm: str, groups: int = 32) -> keras.Model:
    """nn_base + conv5 on the whole map: outputs [conv4_block6_out, avg_pool]."""
    image = keras.Input((None, None, 3))
    base = resnet.nn_base(image, norm=norm, groups=groups)
    return keras.Model(image, [base, resnet.classifier_layers(base, norm=norm, groups=groups)])


def write_keras2_notop(model: keras.Model, path: str) -> None:
    """A keras.applications-style ``*_notop.h5``: top-level group per layer, Keras 2 weight names.

    BatchNorm weights are listed in a shuffled order (moving statistics first) so that loading
    must go by weight name, not by position.
    """
    with h5py.File(path, "w") as handle:
        layers = [layer for layer in model.layers]
        handle.attrs["layer_names"] = [layer.name.encode() for layer in layers]
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["keras_version"] = b"2.2.4"
        for layer in layers:
            group = handle.create_group(layer.name)
            weights = list(layer.weights)
            if isinstance(layer, keras.layers.BatchNormalization):
                weights = weights[2:] + weights[:2]
            names = [f"{layer.name}/{w.path.split('/')[-1]}:0" for w in weights]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for name, weight in zip(names, weights):
                group.create_dataset(name, data=np.asarray(weight.numpy()))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """keras.applications ResNet50 with random BN statistics, saved in three layouts."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(REF_SIZE, REF_SIZE, 3))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype(np.float32))
            layer.beta.assign(rng.normal(0.0, 0.1, channels).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0.0, 0.2, channels).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype(np.float32))
    folder = tmp_path_factory.mktemp("weights")
    legacy, modern, notop = (str(folder / "full.h5"), str(folder / "model.weights.h5"),
                             str(folder / "resnet50_notop.h5"))
    keras.saving.save_model(model, legacy)
    model.save_weights(modern)
    write_keras2_notop(model, notop)
    image = rng.uniform(-100.0, 100.0, size=(1, REF_SIZE, REF_SIZE, 3)).astype(np.float32)
    probe = keras.Model(model.input, [model.get_layer("conv4_block6_out").output, model.output])
    conv4, conv5 = probe.predict(image, verbose=0)
    return {"model": model, "files": {"legacy": legacy, "modern": modern, "notop": notop},
            "image": image, "conv4": conv4, "avg_pool": conv5.mean(axis=(1, 2))}


@pytest.fixture(scope="module")
def group_model() -> keras.Model:
    keras.utils.set_random_seed(1)
    return build_split("group")


def test_layers_match_keras_applications(reference: dict) -> None:
    ours = {layer.name: layer for layer in build_split("frozen_bn").layers}
    keys = ("strides", "padding", "kernel_size", "use_bias", "epsilon", "filters", "pool_size", "activation")
    for layer in reference["model"].layers[1:]:
        assert layer.name in ours, layer.name
        mine = ours[layer.name]
        assert type(mine) is type(layer), layer.name
        theirs, own = layer.get_config(), mine.get_config()
        for key in keys:
            assert own.get(key) == theirs.get(key), (layer.name, key)
        if isinstance(mine, keras.layers.BatchNormalization):
            assert not mine.trainable
    assert "avg_pool" in ours


@pytest.mark.parametrize("layout", ["legacy", "modern", "notop"])
def test_load_by_name_reproduces_keras_applications(reference: dict, layout: str) -> None:
    model = build_split("frozen_bn")
    loaded = resnet.load_backbone_weights(model, reference["files"][layout])
    with_weights = {layer.name for layer in model.layers if layer.weights}
    assert set(loaded) == with_weights
    assert len(loaded) == 53 + 53       # 53 conv and 53 batch-norm layers in ResNet-50 without top
    conv4, pooled = model.predict(reference["image"], verbose=0)
    assert conv4.shape == reference["conv4"].shape
    scale = float(np.abs(reference["conv4"]).max())
    np.testing.assert_allclose(conv4, reference["conv4"], rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(pooled, reference["avg_pool"], rtol=1e-5,
                               atol=1e-5 * float(np.abs(reference["avg_pool"]).max()))


def test_load_errors_name_the_file(tmp_path, reference: dict) -> None:
    model = build_split("frozen_bn")
    missing = str(tmp_path / "absent.h5")
    with pytest.raises(CryoError, match="not found") as info:
        resnet.load_backbone_weights(model, missing)
    assert missing in str(info.value)
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    with pytest.raises(CryoError, match="empty"):
        resnet.load_backbone_weights(model, str(empty))
    text = tmp_path / "notes.h5"
    text.write_text("these are not weights\n")
    with pytest.raises(CryoError, match="not an HDF5"):
        resnet.load_backbone_weights(model, str(text))

    inputs = keras.Input((4,))
    other = keras.Model(inputs, keras.layers.Dense(2, name="unrelated_dense")(inputs))
    unrelated = str(tmp_path / "other.weights.h5")
    other.save_weights(unrelated)
    with pytest.raises(CryoError, match="no layer of the model"):
        resnet.load_backbone_weights(model, unrelated)

    image = keras.Input((16, 16, 3))
    narrow = keras.Model(image, keras.layers.Conv2D(8, 7, name="conv1_conv")(image))
    wrong_shape = str(tmp_path / "narrow.h5")
    keras.saving.save_model(narrow, wrong_shape)
    before = model.get_layer("conv1_conv").kernel.numpy().copy()
    with pytest.raises(CryoError, match=r"conv1_conv.*\(7, 7, 3, 8\).*\(7, 7, 3, 64\)") as info:
        resnet.load_backbone_weights(model, wrong_shape)
    assert wrong_shape in str(info.value) and "\n" not in str(info.value)
    np.testing.assert_array_equal(model.get_layer("conv1_conv").kernel.numpy(), before)


def test_batchnorm_weights_refused_by_group_norm(tmp_path, group_model: keras.Model, reference: dict) -> None:
    before = group_model.get_layer("conv1_conv").kernel.numpy().copy()
    with pytest.raises(CryoError, match="frozen_bn"):
        resnet.load_backbone_weights(group_model, reference["files"]["modern"])
    with pytest.raises(CryoError, match="conv1_bn|_bn"):
        resnet.load_backbone_weights(group_model, reference["files"]["notop"])
    # nothing was assigned before the refusal
    np.testing.assert_array_equal(group_model.get_layer("conv1_conv").kernel.numpy(), before)


@pytest.mark.parametrize("height, width", [(1, 1), (17, 33), (31, 47), (49, 15)])
def test_feature_map_is_ceil_of_a_sixteenth(group_model: keras.Model, height: int, width: int) -> None:
    base = keras.Model(group_model.input, group_model.outputs[0])
    out = base(np.zeros((1, height, width, 3), np.float32))
    assert tuple(out.shape) == (1, math.ceil(height / 16), math.ceil(width / 16), 1024)


def toy_regression_losses(base: keras.Model, image_std: float, learning_rate: float, steps: int = 6) -> list[float]:
    """Losses of ``steps`` Adam steps of a toy regression on two 32x32 images (std ``image_std``):
    the mean of ``base``'s features through a zero-initialised dense layer (loss 1 at the start)."""
    rng = np.random.default_rng(2)
    images = tf.constant(rng.normal(0.0, image_std, size=(2, 32, 32, 3)).astype(np.float32))
    targets = tf.constant([[1.0], [-1.0]])
    head = keras.layers.Dense(1, kernel_initializer="zeros")
    optimizer = keras.optimizers.Adam(learning_rate)

    def step() -> float:
        with tf.GradientTape() as tape:
            pooled = tf.reduce_mean(base(images, training=True), axis=(1, 2))
            loss = tf.reduce_mean((head(pooled) - targets) ** 2)
        variables = base.trainable_variables + head.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return float(loss)

    return [step() for _ in range(steps)]


def test_group_norm_backbone_trains(group_model: keras.Model) -> None:
    # a few Adam steps must lower the loss
    base = keras.Model(group_model.input, group_model.outputs[0])
    losses = toy_regression_losses(base, 1.0, 3e-5)
    assert losses[0] == pytest.approx(1.0)
    assert all(later < earlier for earlier, later in zip(losses, losses[1:]))
    assert losses[-1] < 0.95 * losses[0]
    assert any(isinstance(layer, keras.layers.GroupNormalization) for layer in base.layers)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in base.layers)


def test_heads_shapes_names_and_dynamic_rois() -> None:
    keras.utils.set_random_seed(3)
    image = keras.Input((None, None, 3))
    rois = keras.Input((None, 4))
    base = resnet.nn_base(image, norm="group", groups=16)
    x_class, x_regr = resnet.rpn_layer(base, 9)
    out_class, out_regr = resnet.classifier(base, rois, 3, pool_size=7, norm="group", groups=16)
    model = keras.Model([image, rois], [x_class, x_regr, out_class, out_regr])
    names = {layer.name for layer in model.layers}
    assert {"rpn_conv1", "rpn_out_class", "rpn_out_regress", "roi_pooling_conv",
            "dense_class_3", "dense_regress_3", "conv5_block3_out", "avg_pool"} <= names
    picture = np.random.default_rng(3).uniform(0, 1, (1, 40, 56, 3)).astype(np.float32)
    for count in (1, 4):
        boxes = np.tile(np.array([[0.5, 0.0, 3.0, 2.5]], np.float32), (count, 1))[None]
        objectness, deltas, probabilities, regression = model.predict([picture, boxes], verbose=0)
        assert objectness.shape == (1, 3, 4, 9) and deltas.shape == (1, 3, 4, 36)
        assert np.all((objectness > 0) & (objectness < 1))
        assert probabilities.shape == (1, count, 3) and regression.shape == (1, count, 8)
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)


def test_unknown_norm_is_refused() -> None:
    with pytest.raises(CryoError, match="unknown backbone norm"):
        resnet.nn_base(keras.Input((None, None, 3)), norm="layer")
    with pytest.raises(CryoError, match="must divide 64"):
        resnet.nn_base(keras.Input((None, None, 3)), norm="group", groups=48)


def test_directory_instead_of_file_is_refused(tmp_path) -> None:
    with pytest.raises(CryoError, match="not found"):
        resnet.load_backbone_weights(keras.Sequential([keras.layers.Dense(1)]), str(tmp_path))
    assert os.path.isdir(tmp_path)


def test_standardised_kernel_has_zero_mean_and_the_gain_as_norm() -> None:
    keras.utils.set_random_seed(4)
    layer = resnet.WSConv2D(6, 3, name="ws_probe")
    layer.build((None, 8, 8, 5))
    layer.kernel.assign(np.random.default_rng(4).normal(0.3, 2.0, (3, 3, 5, 6)).astype(np.float32))
    layer.gain.assign(np.arange(1, 7, dtype=np.float32))
    kernel = np.asarray(layer.standardized_kernel())
    np.testing.assert_allclose(kernel.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.sqrt((kernel ** 2).sum(axis=(0, 1, 2))), resnet.RELU_GAIN * np.arange(1, 7),
                               rtol=1e-5)
    # the convolution uses that kernel: equal to a plain Conv2D holding it (what prediction computes)
    plain = keras.layers.Conv2D(6, 3)
    plain.build((None, 8, 8, 5))
    plain.set_weights([kernel, np.asarray(layer.bias)])
    image = np.random.default_rng(5).normal(size=(1, 8, 8, 5)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(layer(image)), np.asarray(plain(image)), rtol=1e-4, atol=1e-5)


def test_ws_backbone_has_no_normalisation_and_starts_at_unit_scale() -> None:
    keras.utils.set_random_seed(5)
    image = keras.Input((None, None, 3))
    model = keras.Model(image, resnet.nn_base(image, norm="ws"))
    kinds = {type(layer) for layer in model.layers}
    assert not kinds & {keras.layers.GroupNormalization, keras.layers.BatchNormalization}
    assert resnet.WSConv2D in kinds and resnet.SkipGain in kinds
    # every residual branch starts switched off (SkipInit): scale stays near 1 through 16 blocks
    assert all(float(layer.alpha) == 0.0 for layer in model.layers if isinstance(layer, resnet.SkipGain))
    picture = (np.random.default_rng(6).uniform(0, 255, (1, 64, 64, 1)).repeat(3, axis=-1) - 115.0).astype(np.float32)
    features = np.asarray(model(picture))
    assert features.shape == (1, 4, 4, 1024)
    assert 0.3 < features.std() < 3.0


def test_ws_backbone_trains() -> None:
    # the same toy regression as the GroupNorm backbone: a few Adam steps lower the loss, and the
    # skip gains leave 0 (the residual branches switch on)
    keras.utils.set_random_seed(6)
    image = keras.Input((None, None, 3))
    base = keras.Model(image, resnet.nn_base(image, norm="ws"))
    losses = toy_regression_losses(base, 70.0, 1e-4)       # grey values as the preprocessed input's
    assert losses[0] == pytest.approx(1.0)
    assert losses[-1] < 0.95 * losses[0]
    assert any(float(layer.alpha) != 0.0 for layer in base.layers if isinstance(layer, resnet.SkipGain))


def test_ws_weights_file_round_trip(tmp_path) -> None:
    # Keras' convolutions write only kernel and bias: WSConv2D must add its gain, or a trained ws
    # detector cannot be loaded for prediction
    keras.utils.set_random_seed(7)
    image = keras.Input((None, None, 3))
    model = keras.Model(image, resnet.nn_base(image, norm="ws"))
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(1.0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])
    path = str(tmp_path / "ws.weights.h5")
    model.save_weights(path)
    keras.utils.set_random_seed(8)
    image = keras.Input((None, None, 3))
    fresh = keras.Model(image, resnet.nn_base(image, norm="ws"))
    fresh.load_weights(path)
    gains = [w for w in fresh.weights if w.path.endswith("gain")]
    assert gains and all(np.abs(np.asarray(g) - 1.0).max() > 1e-3 for g in gains)   # not the initial ones
    for saved, loaded in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(saved, loaded)


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_zero_init_residual_starts_every_block_as_its_shortcut(norm: str) -> None:
    """With zero_init_residual each block's last norm has scale 0 (others 1), so at the start an
    identity block's output is relu(its input): conv2_block2 passes conv2_block1's output through."""
    keras.utils.set_random_seed(4)
    image = keras.Input((None, None, 3))
    base = resnet.nn_base(image, norm=norm, groups=16, zero_init_residual=True)
    features = resnet.classifier_layers(base, norm=norm, groups=16, zero_init_residual=True)
    model = keras.Model(image, [base, features])
    norms = [layer for layer in model.layers if layer.name.endswith("_bn")]
    last = [layer for layer in norms if layer.name.endswith("_3_bn")]
    assert len(last) == 16                                    # 3 + 4 + 6 blocks in the trunk, 3 in conv5
    for layer in norms:
        expected = 0.0 if layer in last else 1.0
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.gamma), expected, err_msg=layer.name)
    probe = keras.Model(image, [model.get_layer("conv2_block1_out").output, model.get_layer("conv2_block2_out").output])
    picture = np.random.default_rng(4).normal(size=(1, 32, 32, 3)).astype(np.float32)
    block1, block2 = probe.predict(picture, verbose=0)
    np.testing.assert_allclose(block2, np.maximum(block1, 0.0), atol=1e-6)
    # the default keeps keras-frcnn's scale 1 everywhere
    plain = keras.Model(image, resnet.nn_base(image, norm=norm, groups=16))
    assert all(np.all(keras.ops.convert_to_numpy(layer.gamma) == 1.0)
               for layer in plain.layers if layer.name.endswith("_3_bn"))


def test_fewer_blocks_keep_the_layout_and_names() -> None:
    """resnet_blocks (1, 1, 1, 1): one block per stage, same layer names, same output shapes."""
    image = keras.Input((None, None, 3))
    base = resnet.nn_base(image, norm="group", groups=16, blocks=(1, 1, 1))
    model = keras.Model(image, [base, resnet.classifier_layers(base, norm="group", groups=16, blocks=1)])
    names = {layer.name for layer in model.layers}
    assert {"conv2_block1_out", "conv3_block1_out", "conv4_block1_out", "conv5_block1_out"} <= names
    assert not {name for name in names if "block2" in name}
    trunk, head = model.predict(np.zeros((1, 64, 48, 3), np.float32), verbose=0)
    assert trunk.shape == (1, 4, 3, resnet.BACKBONE_CHANNELS) and head.shape == (1, resnet.HEAD_CHANNELS)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_group_norm_is_keras_group_normalization(policy: str) -> None:
    """resnet.GroupNormalization computes what keras.layers.GroupNormalization computes (values and gradients
    for the input, gamma and beta), from the same weights, with the same config."""
    rng = np.random.default_rng(0)
    x = tf.constant((rng.normal(size=(3, 9, 7, 64)) * 3.0 + 5.0).astype(np.float32))   # far from zero mean
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        ours = resnet.GroupNormalization(groups=32, epsilon=resnet.BN_EPSILON)
        theirs = keras.layers.GroupNormalization(groups=32, epsilon=resnet.BN_EPSILON)
        for layer in (ours, theirs):
            layer.build(x.shape)
        ours.set_weights([rng.normal(size=64).astype(np.float32) for _ in range(2)])
        theirs.set_weights(ours.get_weights())
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            out = [tf.cast(layer(x), tf.float32) for layer in (ours, theirs)]
            losses = [tf.reduce_sum(tf.sin(y)) for y in out]
        tol = 1e-5 if policy == "float32" else 2e-2
        assert out[0].dtype == out[1].dtype
        np.testing.assert_allclose(out[0].numpy(), out[1].numpy(), atol=tol * 4, rtol=tol)
        grads = [tape.gradient(loss, [x, *layer.trainable_weights]) for loss, layer in zip(losses, (ours, theirs))]
        for mine, ref in zip(*grads):
            np.testing.assert_allclose(mine.numpy(), ref.numpy(), atol=tol * 10, rtol=tol * 10)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert resnet.GroupNormalization.from_config(ours.get_config()).groups == 32


def test_group_norm_checkpoints_load_both_ways(tmp_path) -> None:
    """A backbone saved with keras' GroupNormalization layers loads into one built with ours (models
    trained before it existed) and predicts the same, and the other way round."""
    keras.utils.set_random_seed(5)
    image = keras.Input((None, None, 3))
    ours = keras.Model(image, resnet.nn_base(image, norm="group", groups=32, blocks=(1, 1, 1)))
    original = resnet.GroupNormalization
    try:
        resnet.GroupNormalization = keras.layers.GroupNormalization        # the layer of earlier versions
        image2 = keras.Input((None, None, 3))
        theirs = keras.Model(image2, resnet.nn_base(image2, norm="group", groups=32, blocks=(1, 1, 1)))
    finally:
        resnet.GroupNormalization = original
    assert not any(isinstance(layer, resnet.GroupNormalization) for layer in theirs.layers)
    assert any(isinstance(layer, resnet.GroupNormalization) for layer in ours.layers)
    rng = np.random.default_rng(6)
    theirs.set_weights([w + rng.normal(scale=0.1, size=w.shape).astype(w.dtype) for w in theirs.get_weights()])
    theirs.save_weights(str(tmp_path / "old.weights.h5"))
    ours.load_weights(str(tmp_path / "old.weights.h5"))
    x = rng.normal(size=(1, 48, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), atol=1e-4, rtol=1e-4)
    ours.set_weights([w * 0.5 for w in ours.get_weights()])
    ours.save_weights(str(tmp_path / "new.weights.h5"))
    theirs.load_weights(str(tmp_path / "new.weights.h5"))
    np.testing.assert_allclose(theirs(x).numpy(), ours(x).numpy(), atol=1e-4, rtol=1e-4)
