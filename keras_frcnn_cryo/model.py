"""Model assembly and the one inference path (:class:`Detector`).

Three Keras sub-models share weights by construction:

* ``base``            image (1, H, W, 3) -> conv4 features (1, ceil(H/16), ceil(W/16), 1024)  (nn_base)
* ``rpn_head``        features -> objectness (1, h, w, k) sigmoid, regression (1, h, w, 4k)
* ``classifier_head`` [features, RoIs (1, R, 4) in feature-map units] ->
                      class probabilities (1, R, C) softmax, regression (1, R, 4(C-1)), and with
                      ``Config.classifier_iou_head`` the predicted IoU (1, R, 1)

``model_all`` wraps the three so that one ``.weights.h5`` file holds the whole detector.
keras-frcnn's names are kept: ``model_rpn`` (image -> rpn outputs and features) and
``model_classifier`` (image, RoIs -> classifier outputs).

Precision (``Config.inference_precision``, one of :data:`PRECISIONS`): "float32", or "bfloat16",
which builds the detector under Keras' "mixed_bfloat16" dtype policy: variables stay float32 (the
same weights file loads), convolutions and matrix products run in bfloat16 (the AVX512-BF16/AMX
units of recent x86 CPUs), features are bfloat16, and the four output layers compute in float32
(resnet.OUTPUT_DTYPE), so objectness, deltas and class probabilities are float32 either way.
Training builds its models in ``Config.training_precision`` (float32 unless set).

:class:`Detector` turns a 2D image of any dtype into boxes in that image's own pixel coordinates
(floats, [x1, y1, x2, y2]); test_frcnn.py, measure_map.py, training validation and the benchmarks
all call it.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import preprocessing, roi_helpers
from .anchors import to_feature_units
from .atomic import atomic_path
from .boxes import VIEWS, BoxCoder, apply_regr, box_voting, clip_boxes, fuse_views, nms
from .config import BG_CLASS, CHOICES, Config, check_choice
from .errors import CryoError
from .hardware import import_tensorflow_quietly

import_tensorflow_quietly()  # TensorFlow's start-up notices are noise for users

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from . import resnet  # noqa: E402

WEIGHTS_SUFFIX = ".weights.h5"
BASE_CHANNELS = 1024  # channels of ResNet-50 conv4 (nn_base output)
PRECISIONS = CHOICES["inference_precision"]
# Keras dtype policy under which each precision's models are built
_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


@dataclass
class FrcnnModels:
    """The detector's sub-models (shared layers)."""

    base: keras.Model
    rpn_head: keras.Model
    classifier_head: keras.Model
    model_rpn: keras.Model
    model_classifier: keras.Model
    model_all: keras.Model
    norm: str
    precision: str = "float32"


def check_precision(precision: str) -> str:
    """``precision`` if it is one of PRECISIONS, else CryoError naming the allowed values."""
    return check_choice("inference_precision", precision)


@contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Keras' global dtype policy for ``precision`` inside the block; the previous one is restored
    on leaving it (also on errors), so models built elsewhere are not affected."""
    policy = _POLICIES[check_precision(precision)]
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_models(cfg: Config, precision: str = "float32") -> FrcnnModels:
    """Build every sub-model for ``cfg.class_mapping`` (which must include "bg", last).

    ``precision`` (one of PRECISIONS; training uses the default) picks the dtype policy the layers
    are built under; variables are float32 either way.
    """
    num_classes = cfg.num_classes
    if num_classes < 2 or cfg.class_names[-1] != BG_CLASS:
        raise CryoError("config has no usable class_mapping (need at least one class plus 'bg' last)")
    norm = cfg.resolved_backbone_norm()
    with dtype_policy(precision):
        return _build(cfg, num_classes, norm, precision)


def _build(cfg: Config, num_classes: int, norm: str, precision: str) -> FrcnnModels:
    """build_models' layers, under the dtype policy already set."""
    img_input = keras.Input(shape=(None, None, 3), name="image")
    # the heads take features in the compute dtype (a float32 input would cast bfloat16 features back)
    feat_input = keras.Input(shape=(None, None, BASE_CHANNELS), name="features",
                             dtype=keras.config.dtype_policy().compute_dtype)
    roi_input = keras.Input(shape=(None, 4), name="rois")

    blocks = tuple(cfg.resnet_blocks)
    base = keras.Model(img_input, resnet.nn_base(img_input, norm=norm, groups=cfg.group_norm_groups,
                                                 zero_init_residual=cfg.residual_zero_init, blocks=blocks[:3]),
                       name="nn_base")
    rpn_out = resnet.rpn_layer(feat_input, cfg.num_anchors)
    rpn_head = keras.Model(feat_input, rpn_out, name="rpn")
    cls_out = resnet.classifier(feat_input, roi_input, num_classes, cfg.pool_size, norm=norm,
                                groups=cfg.group_norm_groups, pool_mode=cfg.roi_pool_mode,
                                pool_samples=cfg.roi_samples_per_bin, iou_head=cfg.classifier_iou_head,
                                iou_detach=cfg.classifier_iou_detach,
                                zero_init_residual=cfg.residual_zero_init, blocks=blocks[3],
                                pool_context=cfg.roi_context)
    classifier_head = keras.Model([feat_input, roi_input], cls_out, name="classifier")

    features = base(img_input)
    rpn_cls, rpn_regr = rpn_head(features)
    cls_outputs = list(classifier_head([features, roi_input]))
    model_rpn = keras.Model(img_input, [rpn_cls, rpn_regr, features], name="model_rpn")
    model_classifier = keras.Model([img_input, roi_input], cls_outputs, name="model_classifier")
    model_all = keras.Model([img_input, roi_input], [rpn_cls, rpn_regr, *cls_outputs], name="model_all")
    return FrcnnModels(base, rpn_head, classifier_head, model_rpn, model_classifier, model_all, norm, precision)


def load_imagenet_weights(models: FrcnnModels, path: str) -> list[str]:
    """Load keras.applications ResNet50 (notop) weights by layer name into nn_base and conv5.

    Raises CryoError if the file is missing or unusable or if any backbone layer got no weights.
    """
    if models.norm in ("group", "ws"):
        raise CryoError(f"pretrained weights need backbone_norm 'frozen_bn' or 'batch', not {models.norm!r}", path)
    loaded = set(resnet.load_backbone_weights(models.base, path))
    loaded |= set(resnet.load_backbone_weights(models.classifier_head, path))
    expected = {layer.name for m in (models.base, models.classifier_head) for layer in m.layers
                if layer.weights and (layer.name.startswith("conv") or layer.name.startswith("pool"))}
    missing = sorted(expected - loaded)
    if missing:
        raise CryoError(f"weights file lacks {len(missing)} backbone layers (first: {missing[0]})", path)
    return sorted(loaded)


# keras.applications' ResNet-50 ImageNet weights without the top, as keras caches them
IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_FILE
IMAGENET_MD5 = "4d473c1dd8becc155b73f8504c6f6626"


def fetch_imagenet_weights() -> str:
    """Path of keras.applications' ResNet-50 ``notop`` ImageNet weights (``--input_weight_path imagenet``).

    Uses the copy in Keras' cache (``~/.keras/models``) when there is one, else downloads it there.
    Offline: CryoError saying how to bring the file from a machine with internet access.
    """
    cached = os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")), "models", IMAGENET_FILE)
    if os.path.isfile(cached):
        return cached
    try:
        return keras.utils.get_file(IMAGENET_FILE, IMAGENET_URL, cache_subdir="models", file_hash=IMAGENET_MD5)
    except Exception as exc:  # no network, proxy, DNS, HTTP errors: keras raises several types
        raise CryoError(
            f"cannot download the ImageNet ResNet-50 weights ({exc.__class__.__name__}): on a machine with internet "
            f"access run python -c \"import keras; keras.applications.ResNet50(include_top=False, "
            f"weights='imagenet').save_weights('resnet50_notop.weights.h5')\" and pass that file to "
            f"--input_weight_path", IMAGENET_URL) from None


def check_weights_path(path: str) -> None:
    """Keras 3 writes weights only to names ending in '.weights.h5'."""
    if not path.endswith(WEIGHTS_SUFFIX):
        raise CryoError(f"model weights file name must end with '{WEIGHTS_SUFFIX}'", path)


def save_weights_atomic(model: keras.Model, path: str) -> None:
    """Write ``model``'s weights to ``path`` via a temporary file and a rename (never half-written)."""
    check_weights_path(path)
    with atomic_path(path) as tmp:
        model.save_weights(tmp, overwrite=True)


def load_model_weights(models: FrcnnModels, path: str) -> None:
    """Load a detector checkpoint written by training; CryoError if missing or for another model."""
    check_weights_path(path)
    if not os.path.isfile(path):
        raise CryoError("model weights file not found", path)
    if os.path.getsize(path) == 0:
        raise CryoError("model weights file is empty", path)
    try:
        models.model_all.load_weights(path)
    except (ValueError, OSError, KeyError) as exc:
        text = " ".join(str(exc).split())
        detail = f" ({text[:160]})" if text and "Example error message" not in text else ""
        raise CryoError(f"weights do not fit this model: trained for other classes ({cfg_classes(models)} expected) "
                        f"or other settings, or not a detector checkpoint{detail}", path) from None


def cfg_classes(models: FrcnnModels) -> str:
    """'2 classes incl. bg' for messages, from the classifier head's output size."""
    return f"{int(models.classifier_head.outputs[0].shape[-1])} classes incl. bg"


@dataclass
class Detections:
    """Boxes (N, 4) float in original-image pixels, scores (N,), class indices (N,), names (N,)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


class Detector:
    """Image -> detections; the single inference path of the project.

    ``detect(image)`` takes a 2D array of any dtype (a slice, a tilt image, a PNG), applies the
    preprocessing recorded in the Config (exactly as in training), runs backbone and RPN once,
    pools every proposal in one batched call through conv5, decodes per-class boxes, applies
    per-class NMS and returns boxes scaled back to the input image's pixels (floats). With
    ``cfg.detection_views`` beyond "none" this runs once per view (flips and transposes of the image,
    boxes.VIEWS) and the views' boxes are fused (boxes.fuse_views).

    The test-time rules (score threshold, NMS, proposal cap and floor, refinement, voting, views,
    score weights) are read as ``cfg.detection`` (config.DetectionParams, checked) at each call.
    Built models follow ``cfg.inference_precision`` (validated here, CryoError if unknown);
    ``models`` passed in (training's validation passes the training models) are used as they are.
    """

    def __init__(self, cfg: Config, weights_path: str | None = None, models: FrcnnModels | None = None):
        self.cfg = cfg
        precision = check_precision(cfg.inference_precision)
        self.models = models if models is not None else build_models(cfg, precision)
        if weights_path is not None:
            load_model_weights(self.models, weights_path)
        self.class_names = cfg.class_names
        # features go from the RPN call to the head call in the models' own compute dtype
        self.feature_dtype = tf.as_dtype(self.models.base.outputs[0].dtype)
        self._rpn_fn = tf.function(
            self._rpn_call, input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)],
            reduce_retracing=True, autograph=False)
        self._cls_fn = tf.function(
            self._cls_call, input_signature=[tf.TensorSpec((1, None, None, BASE_CHANNELS), self.feature_dtype),
                                             tf.TensorSpec((1, None, 4), tf.float32)],
            reduce_retracing=True, autograph=False)

    @property
    def precision(self) -> str:
        """The precision of the models in use ("float32" or "bfloat16")."""
        return self.models.precision

    def _rpn_call(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Images (B, H, W, 3) float32 -> objectness (B, h, w, k) and deltas (B, h, w, 4k), float32,
        and features (B, h, w, 1024) in ``feature_dtype``."""
        rpn_cls, rpn_regr, features = self.models.model_rpn(x, training=False)
        return tf.cast(rpn_cls, tf.float32), tf.cast(rpn_regr, tf.float32), features

    def _cls_call(self, features: tf.Tensor, rois: tf.Tensor) -> tuple[tf.Tensor, ...]:
        """Features (1, h, w, 1024) in ``feature_dtype``, RoIs (1, R, 4) float32 feature units ->
        class probabilities (1, R, C), deltas (1, R, 4(C-1)) and, with the IoU head, the predicted
        IoU (1, R, 1); float32."""
        outputs = self.models.classifier_head([features, rois], training=False)
        return tuple(tf.cast(out, tf.float32) for out in outputs)

    def _head(self, features, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """conv5 head on boxes (M, 4) in network-input pixels (one batched call).

        Returns class probabilities (M, C), unscaled deltas (M, C - 1, 4) (classifier_regr_std
        undone) and the predicted IoU (M,) of each box with its object (None without the IoU head)."""
        cfg = self.cfg
        rois_feat = to_feature_units(boxes, cfg).astype(np.float32)[None]
        outputs = self._cls_fn(features, tf.convert_to_tensor(rois_feat))
        iou = outputs[2][0, :, 0].numpy().astype(np.float64) if len(outputs) > 2 else None
        deltas = BoxCoder.head(cfg).unweight(outputs[1][0].numpy().reshape(boxes.shape[0], -1, 4))
        return outputs[0][0].numpy(), deltas, iou

    def _classify(self, features, rois: np.ndarray, objectness: np.ndarray, width: int, height: int,
                  min_score: float) -> Detections:
        """conv5 head on all proposals of one image, per-class decoding, refinement, NMS and voting.

        features: (1, h, w, 1024) in ``feature_dtype``; rois: (M, 4) in network-input pixels and
        objectness (M,) their RPN scores. Per
        class: proposals that can reach ``min_score`` are decoded; with ``cfg.detection_refine_steps``
        the head runs again on the decoded boxes (each pass decodes from the previous boxes, and the
        class probability is the mean over passes); with the IoU head the score is that probability
        ``^ (1 - w)`` times the IoU the last pass predicts for its input box ``^ w`` (w =
        ``cfg.detection_iou_weight``), else the probability; that score ``^ (1 - r)`` times the RPN
        objectness of the proposal ``^ r`` (r = ``cfg.detection_rpn_weight``); per-class NMS at
        ``cfg.detection_nms_overlap``; with ``cfg.detection_box_voting_iou`` each kept box becomes the
        score-weighted mean of the boxes it suppressed or kept (IoU >= that value). Boxes returned in
        network-input pixels, scores float64 (all >= ``min_score``).
        """
        cfg, rules = self.cfg, self.cfg.detection
        if rois.shape[0] == 0:
            return _empty(self.class_names)
        probs, deltas, iou = self._head(features, rois)
        iou_weight = rules.iou_weight if iou is not None else 0.0
        rpn_weight = float(rules.rpn_weight)
        all_boxes, all_scores, all_labels = [], [], []
        for cls in range(cfg.num_classes - 1):
            # the IoU and objectness factors are at most 1: this bounds the final score from above
            keep = probs[:, cls] ** ((1.0 - iou_weight) * (1.0 - rpn_weight)) >= min_score
            if not np.any(keep):
                continue
            boxes = clip_boxes(apply_regr(rois[keep], deltas[keep, cls]), width, height)
            prob_sum = probs[keep, cls].astype(np.float64)
            quality = iou[keep] if iou is not None else None
            for _ in range(rules.refine_steps):
                step_probs, step_deltas, quality = self._head(features, boxes)
                boxes = clip_boxes(apply_regr(boxes, step_deltas[:, cls]), width, height)
                prob_sum += step_probs[:, cls]
            scores = prob_sum / (rules.refine_steps + 1)
            if quality is not None:
                scores = scores ** (1.0 - iou_weight) * np.clip(quality, 0.0, 1.0) ** iou_weight
            if rpn_weight > 0.0:
                scores = scores ** (1.0 - rpn_weight) * np.clip(objectness[keep], 0.0, 1.0) ** rpn_weight
            valid = (boxes[:, 2] - boxes[:, 0] > 1e-3) & (boxes[:, 3] - boxes[:, 1] > 1e-3) & (scores >= min_score)
            boxes, scores = boxes[valid], scores[valid]
            order = nms(boxes, scores, rules.nms_overlap, rules.max_detections)
            kept = boxes[order]
            if rules.box_voting_iou > 0.0:
                kept = box_voting(kept, boxes, scores, rules.box_voting_iou)
            all_boxes.append(kept)
            all_scores.append(scores[order])
            all_labels.append(np.full(len(order), cls, np.int64))
        return self._ranked(all_boxes, all_scores, all_labels)

    def _ranked(self, boxes: list[np.ndarray], scores: list[np.ndarray], labels: list[np.ndarray]) -> Detections:
        """Per-class results (lists of (n_c, 4) boxes, (n_c,) scores and labels) as one Detections,
        best score first, at most ``cfg.max_detections``."""
        if not boxes:
            return _empty(self.class_names)
        all_boxes, all_scores, all_labels = np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)
        top = np.argsort(-all_scores, kind="stable")[: self.cfg.detection.max_detections]
        return Detections(all_boxes[top].astype(np.float64), all_scores[top].astype(np.float64), all_labels[top],
                          self.class_names)

    def detect_prepared(self, x_batch: np.ndarray, min_score: float) -> list[Detections]:
        """Detections on prepared images (B, H, W, 3), boxes in network-input pixels: each of the
        ``cfg.detection_views`` views of the batch (boxes.VIEWS; "none": the images as they are) is
        detected (:meth:`detect_view`) and, with more than one view, the views' boxes are mapped back
        and fused per class (boxes.fuse_views)."""
        views = VIEWS[self.cfg.detection.views]
        if len(views) == 1:
            return self.detect_view(x_batch, min_score)
        per_view = []
        for view in views:
            batch = np.stack([view.apply(x) for x in x_batch])
            found = self.detect_view(batch, min_score)
            for dets in found:
                dets.boxes = view.boxes_back(dets.boxes, batch.shape[2], batch.shape[1])
            per_view.append(found)
        return [self._fuse([found[i] for found in per_view], min_score) for i in range(x_batch.shape[0])]

    def _fuse(self, views: list[Detections], min_score: float) -> Detections:
        """One image's detections from several views (boxes in one frame) fused per class."""
        rules = self.cfg.detection
        all_boxes, all_scores, all_labels = [], [], []
        labels = np.concatenate([d.labels for d in views])
        boxes = np.concatenate([d.boxes for d in views]).reshape(-1, 4)
        scores = np.concatenate([d.scores for d in views])
        view_ids = np.concatenate([np.full(len(d), v, np.int64) for v, d in enumerate(views)])
        for cls in np.unique(labels):
            mine = labels == cls
            fused, fused_scores = fuse_views(boxes[mine], scores[mine], view_ids[mine], len(views),
                                             rules.nms_overlap, rules.view_match_iou,
                                             rules.max_detections, rules.view_agreement_weight)
            keep = fused_scores >= min_score
            all_boxes.append(fused[keep])
            all_scores.append(fused_scores[keep])
            all_labels.append(np.full(int(keep.sum()), cls, np.int64))
        return self._ranked(all_boxes, all_scores, all_labels)

    def detect_view(self, x_batch: np.ndarray, min_score: float) -> list[Detections]:
        """Detections on prepared images (B, H, W, 3) as they are: backbone and RPN run once on the
        whole batch, then each image's proposals go through the head. Boxes in network-input pixels."""
        rpn_cls, rpn_regr, features = self._rpn_fn(tf.convert_to_tensor(x_batch, tf.float32))
        height, width = x_batch.shape[1:3]
        rpn_cls, rpn_regr = rpn_cls.numpy(), rpn_regr.numpy()
        return [self._classify(features[i:i + 1], *self.proposals(rpn_cls[i], rpn_regr[i], width, height),
                               width, height, min_score) for i in range(x_batch.shape[0])]

    def proposals(self, rpn_cls: np.ndarray, rpn_regr: np.ndarray, width: int, height: int
                  ) -> tuple[np.ndarray, np.ndarray]:
        """The RoIs (M, 4), network-input pixels, that reach the head for one image's RPN outputs
        (h, w, k) and (h, w, 4k), with their objectness (M,): rpn_to_roi with the test-time cap and
        score floor of the config."""
        rules = self.cfg.detection
        return roi_helpers.rpn_to_roi(rpn_cls, rpn_regr, self.cfg, width, height,
                                      max_proposals=rules.max_proposals, min_score=rules.min_proposal_score)

    def input_scale(self, pixel_size_a: float | None) -> float | None:
        """Resize factor that brings an input of ``pixel_size_a`` (A/px) to the training's network pixel
        size (``cfg.network_pixel_size_angstrom``); None (the im_size rule) when either is unknown or
        ``cfg.match_pixel_size`` is off."""
        network = self.cfg.network_pixel_size_angstrom
        if not self.cfg.match_pixel_size or not network or not pixel_size_a:
            return None
        if not (math.isfinite(float(pixel_size_a)) and float(pixel_size_a) > 0):
            return None
        return float(pixel_size_a) / float(network)

    def detect_many(self, images: list[np.ndarray], min_score: float | None = None,
                    pixel_size_a: float | None = None) -> list[Detections]:
        """Detections on several 2D images (e.g. consecutive slices); same-sized ones share one batch.

        Each image is preprocessed as in training, resized to the training's scale when
        ``pixel_size_a`` (A/px of these images) is known (:meth:`input_scale`); boxes come back in
        each image's own pixels.
        """
        if min_score is None:
            min_score = self.cfg.detection.threshold
        scale = self.input_scale(pixel_size_a)
        prepared = [preprocessing.prepare_image(image, self.cfg, scale) for image in images]
        results: list[Detections | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, (x_img, _) in enumerate(prepared):
            by_shape.setdefault(x_img.shape, []).append(index)
        for indices in by_shape.values():
            batch = np.stack([prepared[i][0] for i in indices]).astype(np.float32)
            for index, dets in zip(indices, self.detect_prepared(batch, min_score)):
                sx, sy = prepared[index][1]
                if len(dets):
                    height, width = images[index].shape[:2]
                    dets.boxes = np.clip(dets.boxes / np.array([sx, sy, sx, sy], np.float64), 0.0,
                                         [width, height, width, height])
                results[index] = dets
        return results  # type: ignore[return-value]

    def detect(self, image: np.ndarray, min_score: float | None = None,
               pixel_size_a: float | None = None) -> Detections:
        """Detections on one 2D image of any dtype; boxes in the image's own pixels (floats)."""
        return self.detect_many([image], min_score, pixel_size_a)[0]


def _empty(class_names: list[str]) -> Detections:
    return Detections(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,), np.int64), class_names)
