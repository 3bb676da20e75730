"""ResNet-50 split for Faster R-CNN (Li et al. 2019): conv1..conv4 shared, conv5 per RoI.

Layer names, paddings, strides, BatchNorm epsilon and biases are exactly those of
``keras.applications.ResNet50`` (Keras 2.2+/Keras 3 "v1" layout: the stride of a stage's first
block sits in its 1x1 ``_1_conv`` and ``_0_conv``), so a keras.applications ResNet-50 ``notop``
weight file loads by layer name (fix 13 in docs/fixes.md). The feature map of ``nn_base`` has
stride 16: an H x W image gives ``ceil(H / 16) x ceil(W / 16)`` cells, cell ``(i, j)`` covering
image pixels ``[16 j, 16 j + 16) x [16 i, 16 i + 16)``.

Normalisation (``norm``):

* ``"frozen_bn"``: BatchNormalization with ``trainable=False`` (always inference statistics); the
  choice for ImageNet weights;
* ``"batch"``: trainable BatchNormalization (batch statistics while training);
* ``"group"``: GroupNormalization under the same layer names (our :class:`GroupNormalization`:
  Keras' weights and values, computed from per-channel statistics, faster on a CPU); for training
  from scratch with one image per step, where BatchNorm statistics cannot be learned;
* ``"ws"``: no normalisation of the activations at all (from scratch, one image per step). Every
  convolution standardises its own kernel (:class:`WSConv2D`: zero mean, unit norm per filter, then
  a learnt gain per filter), each residual branch is scaled by a learnt scalar that starts at 0
  (:class:`SkipGain`), and the input is divided by INPUT_STD. Since the standardisation depends on
  the weights only, a trained model predicts with plain convolutions: none of the per-image mean and
  variance passes that GroupNorm makes over every activation map.

Pretrained weights load with :func:`load_backbone_weights` (errors are :class:`CryoError`; nothing
is loaded unless everything matches).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Iterator

import h5py
import keras
import numpy as np

from .config import RESNET50_BLOCKS
from .errors import CryoError
from .roi_pooling import RoiPoolingConv

NORMS = ("frozen_bn", "batch", "group", "ws")
BN_EPSILON = 1.001e-5          # keras.applications ResNet50
BACKBONE_CHANNELS = 1024       # conv4_x output
HEAD_CHANNELS = 2048           # conv5_x output
# Initial weights of the heads (zero bias everywhere), as torchvision's RPNHead / box predictor.
RPN_INIT_STDDEV = 0.01
CLASS_INIT_STDDEV = 0.01
REGR_INIT_STDDEV = 0.001
# The four output layers (RPN objectness and deltas, class softmax and box deltas) compute in
# float32 even under a mixed policy (Detector with inference_precision "bfloat16"): they are tiny,
# and bfloat16's 8-bit mantissa would round scores near 1 to steps of 2**-8, tying detections that
# the ranking behind AP and the score threshold must tell apart. Same variables either way.
OUTPUT_DTYPE = "float32"
# Hidden units of the detached IoU head (Config.classifier_iou_detach): its own features, since the
# head's are not trained for it
IOU_HIDDEN_UNITS = 256
# norm "ws": the preprocessed input (histogram-equalised grey values, roughly uniform on 0..255,
# minus the channel means) has a standard deviation near 255 / sqrt(12) = 73.6; the network divides by
# it so that activations start near unit scale, as they would after a normalisation layer.
INPUT_STD = 73.6
# Scaled weight standardisation (Brock et al. 2021, "Characterizing signal propagation to close the
# performance gap in unnormalized ResNets"): a standardised kernel times this gain keeps the variance of
# a ReLU network's activations from layer to layer: sqrt(2 / (1 - 1 / pi)).
RELU_GAIN = 1.7139
WS_EPSILON = 1e-4              # floor of fan_in x the kernel variance (a filter of equal weights)


# ------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------
def _check_norm(norm: str, groups: int) -> None:
    if norm not in NORMS:
        raise CryoError(f"unknown backbone norm {norm!r} (use one of {', '.join(NORMS)})")
    if norm == "group" and (groups < 1 or 64 % groups):
        raise CryoError(f"group_norm_groups={groups} must divide 64 (the narrowest ResNet-50 layer)")


@keras.saving.register_keras_serializable(package="keras_frcnn_cryo")
class WSConv2D(keras.layers.Conv2D):
    """Conv2D with a standardised kernel (backbone norm "ws").

    Each filter's kernel (kh, kw, c_in) is shifted to zero mean and scaled to unit L2 norm
    (``(w - mean) / sqrt(fan_in * var)``), then multiplied by RELU_GAIN and a learnt per-filter
    ``gain`` (starts at 1). The kernel used is a function of the weights only, so it is the same for
    every image: at prediction the layer costs a plain Conv2D plus one pass over its own weights per
    call (not folded into a stored kernel).
    """

    def build(self, input_shape: Any) -> None:  # noqa: D102
        super().build(input_shape)
        self.gain = self.add_weight(name="gain", shape=(self.filters,), initializer="ones",
                                    trainable=self.trainable)

    def standardized_kernel(self) -> Any:
        """The kernel the convolution uses, (kh, kw, c_in, filters)."""
        kernel = self.kernel
        fan_in = int(np.prod(kernel.shape[:-1]))
        mean = keras.ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        var = keras.ops.var(kernel, axis=(0, 1, 2), keepdims=True)
        scale = keras.ops.rsqrt(keras.ops.maximum(var * fan_in, WS_EPSILON)) * (self.gain * RELU_GAIN)
        return (kernel - mean) * keras.ops.cast(scale, kernel.dtype)

    def convolution_op(self, inputs: Any, kernel: Any) -> Any:  # noqa: D102
        return super().convolution_op(inputs, keras.ops.cast(self.standardized_kernel(), inputs.dtype))

    # Keras' convolutions write only their kernel and bias to a weights file: the gain follows them
    def save_own_variables(self, store: Any) -> None:  # noqa: D102
        super().save_own_variables(store)
        if self.built:
            store[str(1 + int(self.use_bias))] = self.gain

    def load_own_variables(self, store: Any) -> None:  # noqa: D102
        super().load_own_variables(store)
        if self.built:
            self.gain.assign(store[str(1 + int(self.use_bias))])


@keras.saving.register_keras_serializable(package="keras_frcnn_cryo")
class GroupNormalization(keras.layers.GroupNormalization):
    """keras.layers.GroupNormalization (same weights, config and result) computed from per-channel
    statistics, for (N, H, W, C) inputs normalised over channel groups (axis -1).

    It keeps Keras' class name because Keras 3 weight files address each layer by its class name
    (snake-cased, numbered): so models saved with Keras' layer load into this one and back.

    Keras reshapes the activations to (N, H, W, G, C/G) and reduces over H, W and C/G at once,
    which TensorFlow's CPU kernels do slowly. Here each channel's mean and variance come from one
    reduction over H and W, the group's from those (mean of the means; mean of the variances plus
    the spread of the means about the group mean, which is exact), and the output is one multiply
    and one add per value with a per-(image, channel) scale and shift folded from gamma and beta.
    benchmarks/groupnorm_speed.py measures it against Keras' layer. Statistics in float32
    whatever the input dtype, as Keras does. Other input ranks or axes use Keras' own arithmetic.
    """

    def call(self, inputs: Any) -> Any:  # noqa: D102
        if len(inputs.shape) != 4 or self.axis not in (-1, 3) or inputs.shape[-1] is None:
            return super().call(inputs)
        x = keras.ops.cast(inputs, "float32")
        channels = int(inputs.shape[-1])
        per_group = channels // self.groups
        mean_c, var_c = keras.ops.moments(x, axes=[1, 2])                               # (N, C)
        mean_c = keras.ops.reshape(mean_c, (-1, self.groups, per_group))
        var_c = keras.ops.reshape(var_c, (-1, self.groups, per_group))
        mean_g = keras.ops.mean(mean_c, axis=-1, keepdims=True)                          # (N, G, 1)
        var_g = keras.ops.mean(var_c + keras.ops.square(mean_c - mean_g), axis=-1, keepdims=True)
        scale = keras.ops.rsqrt(var_g + self.epsilon)                                    # (N, G, 1)
        if self.scale:
            scale = scale * keras.ops.reshape(keras.ops.cast(self.gamma, "float32"), (1, self.groups, per_group))
        else:
            scale = keras.ops.broadcast_to(scale, keras.ops.shape(mean_c))
        shift = -mean_g * scale
        if self.center:
            shift = shift + keras.ops.reshape(keras.ops.cast(self.beta, "float32"), (1, self.groups, per_group))
        out = x * keras.ops.reshape(scale, (-1, 1, 1, channels)) + keras.ops.reshape(shift, (-1, 1, 1, channels))
        return keras.ops.cast(out, self.compute_dtype)


@keras.saving.register_keras_serializable(package="keras_frcnn_cryo")
class SkipGain(keras.layers.Layer):
    """x -> alpha * x with one learnt scalar alpha that starts at 0 (backbone norm "ws").

    Applied to the residual branch of every bottleneck block, so each block starts as its shortcut
    (De & Smith 2020, "SkipInit"): without normalisation layers, the sum of many residual branches
    would otherwise blow up the activations of a deep network at initialisation.
    """

    def build(self, input_shape: Any) -> None:  # noqa: D102
        self.alpha = self.add_weight(name="alpha", shape=(), initializer="zeros", trainable=self.trainable)

    def call(self, inputs: Any) -> Any:  # noqa: D102
        return inputs * keras.ops.cast(self.alpha, inputs.dtype)


def _conv(filters: int, size: int, name: str, norm: str, trainable: bool, **kwargs: Any) -> keras.layers.Layer:
    """The backbone's convolution called ``name``: WSConv2D for norm "ws", else Conv2D."""
    layer = WSConv2D if norm == "ws" else keras.layers.Conv2D
    return layer(filters, size, name=name, trainable=trainable, **kwargs)


def _norm(x: Any, name: str, norm: str, groups: int, trainable: bool, zero_gamma: bool = False) -> Any:
    """x through the normalisation layer called ``name`` (channels last); x itself for norm "ws".

    ``zero_gamma`` starts the layer's scale at 0 instead of 1 (used on a residual branch's last norm).
    """
    if norm == "ws":
        return x
    gamma = "zeros" if zero_gamma else "ones"
    if norm == "group":
        return GroupNormalization(groups=groups, axis=-1, epsilon=BN_EPSILON, gamma_initializer=gamma, name=name,
                         trainable=trainable)(x)
    return keras.layers.BatchNormalization(axis=3, epsilon=BN_EPSILON, name=name, gamma_initializer=gamma,
                                           trainable=trainable and norm == "batch")(x)


def _block(x: Any, filters: int, name: str, norm: str, groups: int, trainable: bool,
           stride: int = 1, conv_shortcut: bool = False, zero_init: bool = False) -> Any:
    """Bottleneck residual block (keras.applications ``residual_block_v1``): 1x1, 3x3, 1x1 x4.

    ``zero_init``: the branch's last norm starts with scale 0, so the block starts as relu(shortcut)
    (Goyal et al. 2017; the GroupNorm paper trains from scratch this way).
    """
    if conv_shortcut:
        shortcut = _conv(4 * filters, 1, f"{name}_0_conv", norm, trainable, strides=stride)(x)
        shortcut = _norm(shortcut, f"{name}_0_bn", norm, groups, trainable)
    else:
        shortcut = x
    x = _conv(filters, 1, f"{name}_1_conv", norm, trainable, strides=stride)(x)
    x = _norm(x, f"{name}_1_bn", norm, groups, trainable)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _conv(filters, 3, f"{name}_2_conv", norm, trainable, padding="same")(x)
    x = _norm(x, f"{name}_2_bn", norm, groups, trainable)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = _conv(4 * filters, 1, f"{name}_3_conv", norm, trainable)(x)
    x = _norm(x, f"{name}_3_bn", norm, groups, trainable, zero_gamma=zero_init)
    if norm == "ws":
        x = SkipGain(name=f"{name}_skip_gain", trainable=trainable)(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def _stage(x: Any, filters: int, blocks: int, name: str, norm: str, groups: int, trainable: bool,
           stride: int, zero_init: bool = False) -> Any:
    x = _block(x, filters, f"{name}_block1", norm, groups, trainable, stride=stride, conv_shortcut=True,
               zero_init=zero_init)
    for index in range(2, blocks + 1):
        x = _block(x, filters, f"{name}_block{index}", norm, groups, trainable, zero_init=zero_init)
    return x


def nn_base(input_tensor: Any, norm: str = "group", groups: int = 32, trainable: bool = True,
            zero_init_residual: bool = False, blocks: Sequence[int] = RESNET50_BLOCKS[:3]) -> Any:
    """Shared trunk conv1..conv4_x.

    input_tensor: (B, H, W, 3) float (H, W may be None). Returns (B, ceil(H/16), ceil(W/16), 1024),
    the output of layer ``conv4_block6_out`` (``conv4_block{blocks[2]}_out``). ``zero_init_residual``:
    see _block's ``zero_init``; ``blocks``: residual blocks in conv2_x, conv3_x, conv4_x.
    """
    _check_norm(norm, groups)
    x = input_tensor
    if norm == "ws":
        x = keras.layers.Rescaling(1.0 / INPUT_STD, name="input_scale")(x)
    x = keras.layers.ZeroPadding2D(padding=3, name="conv1_pad")(x)
    x = _conv(64, 7, "conv1_conv", norm, trainable, strides=2)(x)
    x = _norm(x, "conv1_bn", norm, groups, trainable)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(padding=1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    x = _stage(x, 64, blocks[0], "conv2", norm, groups, trainable, stride=1, zero_init=zero_init_residual)
    x = _stage(x, 128, blocks[1], "conv3", norm, groups, trainable, stride=2, zero_init=zero_init_residual)
    return _stage(x, 256, blocks[2], "conv4", norm, groups, trainable, stride=2, zero_init=zero_init_residual)


def classifier_layers(x: Any, norm: str = "group", groups: int = 32, trainable: bool = True,
                      zero_init_residual: bool = False, blocks: int = RESNET50_BLOCKS[3]) -> Any:
    """conv5_x (``blocks`` residual blocks) then global average pooling ("avg_pool").

    x: (N, h, w, 1024) (RoI-pooled crops, N = number of RoIs, h = w = pool size). Returns (N, 2048).
    The first block has stride 2 (7x7 -> 4x4). ``zero_init_residual``: see _block's ``zero_init``.
    """
    _check_norm(norm, groups)
    x = _stage(x, 512, blocks, "conv5", norm, groups, trainable, stride=2, zero_init=zero_init_residual)
    return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)


def rpn_layer(base: Any, num_anchors: int) -> list[Any]:
    """Region proposal head on the shared feature map.

    base: (B, h, w, 1024). Returns [x_class (B, h, w, K) sigmoid objectness, x_regr (B, h, w, 4K)
    linear box deltas, anchor-major: channels 4k..4k+3 belong to anchor k]. Weights start as
    N(0, 0.01) with zero bias (torchvision's RPNHead); keras-frcnn used zero / uniform kernels.
    The two output convolutions compute in float32 whatever the dtype policy (see OUTPUT_DTYPE).
    """
    def init() -> keras.initializers.Initializer:
        return keras.initializers.RandomNormal(stddev=RPN_INIT_STDDEV)

    x = keras.layers.Conv2D(512, 3, padding="same", activation="relu", kernel_initializer=init(),
                            name="rpn_conv1")(base)
    x_class = keras.layers.Conv2D(num_anchors, 1, activation="sigmoid", kernel_initializer=init(),
                                  name="rpn_out_class", dtype=OUTPUT_DTYPE)(x)
    x_regr = keras.layers.Conv2D(4 * num_anchors, 1, activation="linear", kernel_initializer=init(),
                                 name="rpn_out_regress", dtype=OUTPUT_DTYPE)(x)
    return [x_class, x_regr]


@keras.saving.register_keras_serializable(package="keras_frcnn_cryo")
class StopGradient(keras.layers.Layer):
    """Identity forward, no gradient backward: what reads through it cannot train what is below."""

    def call(self, inputs: Any) -> Any:  # noqa: D102
        return keras.ops.stop_gradient(inputs)

    def compute_output_shape(self, input_shape: tuple) -> tuple:  # noqa: D102
        return tuple(input_shape)


@keras.saving.register_keras_serializable(package="keras_frcnn_cryo")
class FoldRois(keras.layers.Layer):
    """(1, R, ...) -> (R, ...): the RoIs of the single image become the batch (batch size 1 only)."""

    def call(self, inputs: Any) -> Any:  # noqa: D102
        return keras.ops.reshape(inputs, (-1,) + tuple(inputs.shape[2:]))

    def compute_output_shape(self, input_shape: tuple) -> tuple:  # noqa: D102
        return (input_shape[1],) + tuple(input_shape[2:])


@keras.saving.register_keras_serializable(package="keras_frcnn_cryo")
class UnfoldRois(keras.layers.Layer):
    """(R, ...) -> (1, R, ...)."""

    def call(self, inputs: Any) -> Any:  # noqa: D102
        return keras.ops.expand_dims(inputs, 0)

    def compute_output_shape(self, input_shape: tuple) -> tuple:  # noqa: D102
        return (1,) + tuple(input_shape)


def classifier(base: Any, input_rois: Any, nb_classes: int, pool_size: int = 7, norm: str = "group",
               groups: int = 32, trainable: bool = True, pool_mode: str = "bilinear",
               pool_samples: int = 2, iou_head: bool = False, iou_detach: bool = False,
               zero_init_residual: bool = False, blocks: int = RESNET50_BLOCKS[3],
               pool_context: float = 1.0) -> list[Any]:
    """Detection head: RoI max pooling, conv5_x on all RoIs as one batch, two dense outputs.

    base: (1, h, w, 1024) feature map; input_rois: (1, R, 4) float ``[x1, y1, x2, y2]`` in
    feature-map units (R may be None); nb_classes includes the background (last); pool_mode and
    pool_samples and pool_context: see roi_pooling.RoiPoolingConv; blocks: residual blocks in conv5_x.
    Returns [out_class (1, R, nb_classes) softmax, out_regr (1, R, 4 * (nb_classes - 1)) linear],
    layers "dense_class_{nb_classes}" and "dense_regress_{nb_classes}", both computing in float32
    whatever the dtype policy (see OUTPUT_DTYPE); with ``iou_head`` a third output out_iou (1, R, 1),
    sigmoid, layer "dense_iou": the predicted IoU of each RoI with the object it lies on (0 on
    background), which ranks detections by how well they are placed (Config.classifier_iou_head);
    with ``iou_detach`` it reads the features through StopGradient and a hidden layer of
    IOU_HIDDEN_UNITS ("dense_iou_hidden"), so its loss trains nothing else (Config.classifier_iou_detach).
    """
    pooled = RoiPoolingConv(pool_size, mode=pool_mode, samples=pool_samples, context=pool_context,
                            name="roi_pooling_conv")([base, input_rois])                # (1, R, P, P, C)
    crops = FoldRois(name="fold_rois")(pooled)                                         # (R, P, P, C)
    features = classifier_layers(crops, norm=norm, groups=groups, trainable=trainable,
                                 zero_init_residual=zero_init_residual, blocks=blocks)  # (R, 2048)
    out_class = keras.layers.Dense(
        nb_classes, activation="softmax",
        kernel_initializer=keras.initializers.RandomNormal(stddev=CLASS_INIT_STDDEV),
        name=f"dense_class_{nb_classes}", dtype=OUTPUT_DTYPE)(features)
    out_regr = keras.layers.Dense(
        4 * (nb_classes - 1), activation="linear",
        kernel_initializer=keras.initializers.RandomNormal(stddev=REGR_INIT_STDDEV),
        name=f"dense_regress_{nb_classes}", dtype=OUTPUT_DTYPE)(features)
    out_class = UnfoldRois(name="unfold_class", dtype=OUTPUT_DTYPE)(out_class)
    out_regr = UnfoldRois(name="unfold_regress", dtype=OUTPUT_DTYPE)(out_regr)
    if not iou_head:
        return [out_class, out_regr]
    iou_features = features
    if iou_detach:
        iou_features = keras.layers.Dense(
            IOU_HIDDEN_UNITS, activation="relu", name="dense_iou_hidden")(StopGradient(name="iou_detach")(features))
    out_iou = keras.layers.Dense(
        1, activation="sigmoid", kernel_initializer=keras.initializers.RandomNormal(stddev=CLASS_INIT_STDDEV),
        name="dense_iou", dtype=OUTPUT_DTYPE)(iou_features)
    return [out_class, out_regr, UnfoldRois(name="unfold_iou", dtype=OUTPUT_DTYPE)(out_iou)]


# ------------------------------------------------------------------------------------------
# pretrained weights by layer name
# ------------------------------------------------------------------------------------------
def _walk_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model``, descending into nested models."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _walk_layers(layer)


def _decode(name: Any) -> str:
    return name.decode("utf8") if isinstance(name, bytes) else str(name)


def _short_name(weight_name: str) -> str:
    """'conv1_bn/moving_mean:0' -> 'moving_mean'."""
    return weight_name.split("/")[-1].split(":")[0]


def _read_legacy(root: h5py.Group) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Legacy Keras layout: one group per layer with attribute ``weight_names``.

    A group whose weights belong to several layers (a nested model) is split by the layer part of
    each weight name ('conv1_conv/kernel:0' -> 'conv1_conv').
    """
    found: dict[str, list[tuple[str, np.ndarray]]] = {}
    for group_name, group in root.items():
        if not isinstance(group, h5py.Group) or "weight_names" not in group.attrs:
            continue
        weight_names = [_decode(n) for n in group.attrs["weight_names"]]
        owners = {n.split("/")[-2] if "/" in n else group_name for n in weight_names}
        for weight_name in weight_names:
            owner = group_name if len(owners) <= 1 else weight_name.split("/")[-2]
            found.setdefault(owner, []).append((_short_name(weight_name), group[weight_name][()]))
    return found


def _read_keras3(root: h5py.File) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Keras 3 ``.weights.h5`` layout: ``.../<key>/vars/<i>`` with the layer name in ``vars.attrs['name']``."""
    found: dict[str, list[tuple[str, np.ndarray]]] = {}

    def visit(path: str, node: Any) -> None:
        if isinstance(node, h5py.Group) and path.split("/")[-1] == "vars" and len(node) and "name" in node.attrs:
            indices = sorted(int(key) for key in node.keys())
            found[_decode(node.attrs["name"])] = [(str(i), node[str(i)][()]) for i in indices]

    root.visititems(visit)
    return found


def _read_weight_file(path: str) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Layer name -> [(weight name or index, array)] for any supported HDF5 layout."""
    if not os.path.isfile(path):
        raise CryoError("weights file not found", path)
    if os.path.getsize(path) == 0:
        raise CryoError("weights file is empty (0 bytes)", path)
    if not h5py.is_hdf5(path):
        raise CryoError("not an HDF5 weights file (.h5 / .weights.h5)", path)
    with h5py.File(path, "r") as handle:
        if isinstance(handle.get("model_weights"), h5py.Group):
            return _read_legacy(handle["model_weights"])          # keras.saving.save_model(m, "x.h5")
        if "layer_names" in handle.attrs or any(
                isinstance(g, h5py.Group) and "weight_names" in g.attrs for g in handle.values()):
            return _read_legacy(handle)                            # keras.applications *_notop.h5
        if isinstance(handle.get("layers"), h5py.Group) or isinstance(handle.get("vars"), h5py.Group):
            found = _read_keras3(handle)
            if not found and "layers" in handle and len(handle["layers"]):
                raise CryoError("Keras 3 weights file without layer names (written by an older "
                                "Keras); it can only be loaded into the identical model", path)
            return found
    raise CryoError("HDF5 file holds no Keras weights", path)


def _is_batchnorm_entry(entries: list[tuple[str, np.ndarray]]) -> bool:
    names = {name for name, _ in entries}
    return "moving_mean" in names or "moving_variance" in names or len(entries) == 4


def load_backbone_weights(model: keras.Model, path: str) -> list[str]:
    """Copy weights from an HDF5 file into every layer of ``model`` whose name is in the file.

    Supports legacy Keras files (keras.applications ``resnet50_..._notop.h5``, top-level group per
    layer; and ``keras.saving.save_model(m, "x.h5")``, group ``model_weights``) and Keras 3
    ``.weights.h5`` files. Layers of the file missing from the model are ignored; layers of the
    model missing from the file keep their weights. Everything is checked before anything is
    assigned. Returns the names of the layers that received weights, in model order.
    Raises CryoError: file missing / empty / not HDF5, no layer of the model in it, a weight count
    or shape mismatch, or BatchNorm weights for a GroupNormalization layer.
    """
    entries = _read_weight_file(path)
    layers: dict[str, keras.layers.Layer] = {}
    for layer in _walk_layers(model):
        if layer.weights and layer.name not in layers:
            layers[layer.name] = layer
    matched = [name for name in layers if name in entries]
    if not matched:
        sample = ", ".join(sorted(entries)[:4]) or "none"
        hint = ""
        if "res2a_branch2a" in entries or "bn_conv1" in entries:
            hint = "; it uses the old Keras-1 ResNet50 names (res2a_branch2a): use keras.applications' file"
        raise CryoError(f"no layer of the model found in the weights file (it holds: {sample}){hint}", path)

    assignments: list[tuple[Any, np.ndarray]] = []
    for name in matched:
        layer, stored = layers[name], entries[name]
        if isinstance(layer, keras.layers.GroupNormalization) and _is_batchnorm_entry(stored):
            raise CryoError(
                f"layer {name}: the file holds BatchNorm weights but the model uses GroupNorm; "
                "build the backbone with norm 'frozen_bn' (backbone_norm) to use pretrained weights", path)
        targets = list(layer.weights)
        if len(stored) != len(targets):
            raise CryoError(f"layer {name}: the model has {len(targets)} weights, the file "
                            f"{len(stored)} (built with another normalisation?)", path)
        by_name = {_short_name(w.path): w for w in targets}
        if set(by_name) == {weight_name for weight_name, _ in stored}:
            pairs = [(by_name[weight_name], array) for weight_name, array in stored]
        else:
            pairs = list(zip(targets, (array for _, array in stored)))
        for variable, array in pairs:
            if tuple(variable.shape) != tuple(array.shape):
                raise CryoError(f"layer {name}: weight {_short_name(variable.path)} has shape "
                                f"{tuple(array.shape)} in the file but {tuple(variable.shape)} in the model",
                                path)
            assignments.append((variable, array))
    for variable, array in assignments:
        variable.assign(array.astype(variable.dtype))
    return matched
