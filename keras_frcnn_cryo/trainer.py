"""The training step: :class:`Trainer` holds the models, the optimisers and the compiled steps of one
run (train.py runs the loop around it), the losses a step reports, and the resumable state written
after every epoch (weights, optimiser slots, both random generators).

Per image, ``train_mode = "alternating"`` (Li et al. 2019, keras-frcnn; the Config default):

1. RPN step: backbone + RPN on the image, loss on 256 sampled anchors (calc_rpn), Adam update.
2. Proposals: the RPN outputs of that same forward pass go through rpn_to_roi (NMS 0.7, 300 boxes).
3. Classifier step: proposals labelled against the ground truth (calc_iou), ``num_rois`` sampled
   (at most half positive), backbone + RoI pooling + conv5 head, Adam update.

``train_mode = "joint"`` (approximate joint training, Ren et al. 2015; the scratch recipe's) does the
same per image in one compiled step with one backbone pass: the proposals and classifier targets of
steps 2-3 are computed from that pass in TensorFlow ops (targets_tf, checked against the numpy code of
roi_helpers), and one gradient of L_rpn + L_cls updates all weights. The RoIs are constants to the
gradient in both modes. Joint steps may take ``batch_size`` images and run under a tf.distribute
strategy (``distribute``; see distribute.py): the step is then the mean over the global batch.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from . import losses, roi_helpers, targets_tf
from .anchors import to_feature_units
from .atomic import atomic_path
from .boxes import BoxCoder
from .config import Config, check_choice
from .errors import CryoError
from .model import build_models, load_imagenet_weights
from .optimizer import FusedAdam

import keras  # noqa: E402  (after .model, which silences TensorFlow's start-up notices)
import tensorflow as tf  # noqa: E402

# Config.weight_ema_decay's ramp: after n steps the decay per step is min(weight_ema_decay, (1 + n) / (EMA_RAMP + n))
EMA_RAMP = 10.0


@dataclass
class EpochStats:
    """Running means of one epoch's losses."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, **kwargs: float) -> None:
        for key, value in kwargs.items():
            self.values.setdefault(key, []).append(float(value))

    def mean(self, key: str) -> float:
        vals = [v for v in self.values.get(key, []) if not math.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")


def _accuracy(probabilities: tf.Tensor, one_hot: tf.Tensor) -> tf.Tensor:
    """Share of RoIs whose most probable class is the labelled one: (1, R, C) x (1, R, C) -> scalar."""
    return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(probabilities, -1), tf.argmax(one_hot, -1)), tf.float32))


class Trainer:
    """Holds the tf.distribute strategy, the models and optimisers (built in its scope) and the compiled
    train steps. ``chief``: whether this process writes files (False on multiworker workers but one)."""

    def __init__(self, cfg: Config):
        from . import distribute

        self.cfg = cfg
        self.strategy = distribute.make_strategy(cfg)
        self.replicas = int(self.strategy.num_replicas_in_sync)
        self.per_replica = distribute.per_replica(cfg, self.replicas)
        # only the chief writes into the output folder (multiworker); every other run is its own chief
        self.chief = cfg.distribute != "multiworker" or distribute.is_chief()
        if cfg.distribute != "none":
            print(f"tf.distribute: {cfg.distribute}, {self.replicas} replicas in sync, {cfg.batch_size} images "
                  f"per step ({self.per_replica} per replica)")
        with self.strategy.scope():
            self._build(cfg)

    def _build(self, cfg: Config) -> None:
        """Models, losses, optimisers and the compiled steps (inside the strategy's scope)."""
        self.models = build_models(cfg, check_choice("training_precision", cfg.training_precision))
        if cfg.base_net_weights:
            loaded = load_imagenet_weights(self.models, cfg.base_net_weights)
            print(f"loaded ImageNet weights into {len(loaded)} layers from {cfg.base_net_weights}")
        k = cfg.num_anchors
        n_fg = cfg.num_classes - 1
        self.loss_rpn_cls = losses.rpn_loss_cls(k, cfg.lambda_rpn_class, cfg.loss_epsilon)
        self.loss_rpn_regr = losses.rpn_loss_regr(k, cfg.lambda_rpn_regr, cfg.loss_epsilon,
                                                   cfg.rpn_smooth_l1_beta)
        self.loss_cls_cls = losses.class_loss_cls(cfg.lambda_cls_class)
        self.loss_cls_regr = losses.class_loss_regr(n_fg, cfg.lambda_cls_regr, cfg.loss_epsilon,
                                                     cfg.classifier_smooth_l1_beta)
        self.loss_cls_iou = losses.class_loss_iou(cfg.lambda_cls_iou)
        self.iou_head = cfg.classifier_iou_head
        self.iou_target = check_choice("classifier_iou_target", cfg.classifier_iou_target)
        self.head_coder = BoxCoder.head(cfg)
        m = self.models
        self.joint = check_choice("train_mode", cfg.train_mode) == "joint"
        self.rpn_vars = m.base.trainable_variables + m.rpn_head.trainable_variables
        # Joint mode: one gradient for everything, so the backbone needs one Adam only. Adam is
        # element-wise, so rpn_vars under opt_rpn plus the head under opt_cls is one Adam over all.
        self.cls_vars = (m.classifier_head.trainable_variables if self.joint
                         else m.base.trainable_variables + m.classifier_head.trainable_variables)
        self.opt_rpn, self.opt_cls = self._adam(), self._adam()
        self.learning_rate = cfg.learning_rate  # the rate both Adams use now (see set_learning_rate)
        self.opt_rpn.build(self.rpn_vars)
        self.opt_cls.build(self.cls_vars)
        # One device: a joint step whose images had no labelled RoI gets no Adam step for the head, as
        # in the alternating mode (under a strategy the update is a synchronisation point that cannot
        # sit in a branch; its head gradient is then zero, which only happens without
        # classifier_add_gt_rois).
        self.skip_unused_head = cfg.distribute == "none"

        # autograph=False: the steps branch on tensors only through explicit tf.cond (targets_tf, the
        # head skip), so autograph's source conversion is not needed; without it a new Trainer's first
        # step traces about 15 % faster (24 s against 28 s for a toy joint step on an AVX2-only CPU)
        img_spec = tf.TensorSpec((1, None, None, 3), tf.float32)
        rpn_specs = [img_spec, tf.TensorSpec((1, None, None, 2 * k), tf.float32),
                     tf.TensorSpec((1, None, None, 8 * k), tf.float32)]
        cls_specs = [img_spec, tf.TensorSpec((1, None, 4), tf.float32),
                     tf.TensorSpec((1, None, n_fg + 1), tf.float32),
                     tf.TensorSpec((1, None, 8 * n_fg), tf.float32), tf.TensorSpec((1, None, 1), tf.float32)]
        if cfg.distribute == "none":   # plain tensors: one trace for any image size and box count
            image_spec = (img_spec, rpn_specs[1], rpn_specs[2], tf.TensorSpec((None, 4), tf.float32),
                          tf.TensorSpec((None,), tf.int64), tf.TensorSpec((2,), tf.int32))
            self.joint_step = tf.function(self._joint_step, input_signature=[(image_spec,) * self.per_replica],
                                          autograph=False)
        else:                          # per-replica values: shapes are relaxed after the second trace
            self.joint_step = tf.function(self._joint_step, reduce_retracing=True, autograph=False)
        # Config.weight_ema_decay: one average per weight of model_all (same order as get_weights)
        self.averages: list[tf.Variable] = []
        if cfg.weight_ema_decay > 0:
            self.averages = [tf.Variable(tf.identity(w.value), trainable=False, name=f"average_{i}")
                             for i, w in enumerate(self.models.model_all.weights)]
            self.average_updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="average_updates")
            self._average_step = tf.function(self._update_averages, autograph=False)
            self._steps_unaveraged = 0
        self.rpn_train_step = tf.function(self._rpn_train, input_signature=rpn_specs, autograph=False)
        self.cls_train_step = tf.function(self._cls_train, input_signature=cls_specs, autograph=False)
        self.rpn_eval_step = tf.function(lambda x, c, r: self._rpn_forward(x, c, r, False),
                                         input_signature=rpn_specs, autograph=False)
        self.cls_eval_step = tf.function(lambda x, r, c, g, u: self._cls_forward(x, r, c, g, u, False),
                                         input_signature=cls_specs, autograph=False)

    def _update_averages(self) -> None:
        """avg <- D avg + (1 - D) w for every weight, once per ``k = weight_ema_interval`` steps:
        D = d^k, d = min(weight_ema_decay, (1 + n) / (EMA_RAMP + n)) after n = k x (earlier updates)
        steps (tf.train.ExponentialMovingAverage's ramp, per step)."""
        k = float(self.cfg.weight_ema_interval)
        n = tf.cast(self.average_updates, tf.float32) * k
        decay = tf.minimum(tf.constant(self.cfg.weight_ema_decay, tf.float32), (1.0 + n) / (EMA_RAMP + n)) ** k
        for average, weight in zip(self.averages, self.models.model_all.weights):
            d = tf.cast(decay, average.dtype)
            average.assign(d * average + (1.0 - d) * tf.cast(weight.value, average.dtype))
        self.average_updates.assign_add(1)

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Inside the block the models hold the weights' moving averages (Config.weight_ema_decay),
        the step's own weights again after it; without averaging, the weights as they are."""
        if not self.averages:
            yield
            return
        model = self.models.model_all
        own = model.get_weights()
        model.set_weights([np.asarray(average) for average in self.averages])
        try:
            yield
        finally:
            model.set_weights(own)

    def _adam(self) -> keras.optimizers.Optimizer:
        """Adam with the config's rate and betas (paper: 1e-5, 0.9, 0.999), one fused kernel per variable
        (optimizer.FusedAdam: Keras Adam's formula and state, traced in about 2/3 of the time)."""
        cfg = self.cfg
        return FusedAdam(learning_rate=cfg.learning_rate, beta_1=cfg.adam_beta_1, beta_2=cfg.adam_beta_2)

    def _head_losses(self, outputs, y_cls, y_regr, y_iou):
        """(class loss, box loss, IoU loss (0 without the IoU head)) of the head's outputs. y_iou
        (1, R, 1) holds the RoIs' IoUs; with classifier_iou_target "box" the positives' become their
        refined boxes' (targets_tf.refined_box_iou, no gradient into the deltas)."""
        l_iou = tf.constant(0.0)
        if self.iou_head:
            if self.iou_target == "box":
                y_iou = targets_tf.refined_box_iou(tf.cast(y_regr[0], tf.float32), tf.stop_gradient(outputs[1][0]),
                                                   tf.cast(y_iou[0, :, 0], tf.float32), self.head_coder)[None, :, None]
            l_iou = self.loss_cls_iou(y_iou, outputs[2])
        return self.loss_cls_cls(y_cls, outputs[0]), self.loss_cls_regr(y_regr, outputs[1]), l_iou

    def _rpn_forward(self, x, y_cls, y_regr, training):
        """RPN losses and outputs of image x (1, H, W, 3) against its anchor targets."""
        m = self.models
        features = m.base(x, training=training)
        p_cls, p_regr = m.rpn_head(features, training=training)
        return self.loss_rpn_cls(y_cls, p_cls), self.loss_rpn_regr(y_regr, p_regr), p_cls, p_regr

    def _cls_forward(self, x, rois, y_cls, y_regr, y_iou, training):
        """Head losses and accuracy on the RoIs (1, R, 4; feature-map units) of image x."""
        m = self.models
        features = m.base(x, training=training)
        outputs = m.classifier_head([features, rois], training=training)
        return (*self._head_losses(outputs, y_cls, y_regr, y_iou), _accuracy(outputs[0], y_cls))

    def _rpn_train(self, x, y_cls, y_regr):
        """Alternating mode, step 1: one Adam step of backbone + RPN."""
        with tf.GradientTape() as tape:
            l_cls, l_regr, p_cls, p_regr = self._rpn_forward(x, y_cls, y_regr, True)
            total = l_cls + l_regr
        grads = tape.gradient(total, self.rpn_vars)
        self.opt_rpn.apply_gradients(zip(grads, self.rpn_vars))
        return l_cls, l_regr, p_cls, p_regr

    def _cls_train(self, x, rois, y_cls, y_regr, y_iou):
        """Alternating mode, step 3: one Adam step of backbone + head on the sampled RoIs."""
        with tf.GradientTape() as tape:
            l_cls, l_regr, l_iou, acc = self._cls_forward(x, rois, y_cls, y_regr, y_iou, True)
            total = l_cls + l_regr + l_iou
        grads = tape.gradient(total, self.cls_vars)
        self.opt_cls.apply_gradients(zip(grads, self.cls_vars))
        return l_cls, l_regr, l_iou, acc

    def _image_losses(self, x, y_cls, y_regr, boxes, labels, seed):
        """Joint-mode losses of one image (1, H, W, 3): one backbone pass; classifier targets from
        this pass's proposals in TensorFlow ops (targets_tf). Returns the 8 per-image statistics."""
        m = self.models
        features = m.base(x, training=True)
        p_cls, p_regr = m.rpn_head(features, training=True)
        l_rpn_cls, l_rpn_regr = self.loss_rpn_cls(y_cls, p_cls), self.loss_rpn_regr(y_regr, p_regr)
        batch = targets_tf.classifier_batch(
            tf.stop_gradient(p_cls[0]), tf.stop_gradient(p_regr[0]), boxes, labels, self.cfg,
            tf.shape(x)[2], tf.shape(x)[1], seed)
        rois, c_true, r_true, iou_true = (t[None] for t in batch[:4])
        outputs = m.classifier_head([features, rois], training=True)
        l_cls, l_regr, l_iou = self._head_losses(outputs, c_true, r_true, iou_true)
        return l_rpn_cls, l_rpn_regr, l_cls, l_regr, l_iou, _accuracy(outputs[0], c_true), batch[4], batch[5]

    def _replica_joint(self, images):
        """One replica's share of a joint step: ``images`` is a tuple of per-image tuples (x, y_cls,
        y_regr, boxes, labels, seed). Its loss is the images' summed losses / the global batch; the
        optimisers sum the replicas' gradients. Returns (images, 8) statistics."""
        with tf.GradientTape() as tape:
            stats = [self._image_losses(*image) for image in images]
            total = tf.add_n([st[0] + st[1] + st[6] * (st[2] + st[3] + st[4]) for st in stats])
            total = total / float(self.cfg.batch_size)
        grads = tape.gradient(total, self.rpn_vars + self.cls_vars)
        self.opt_rpn.apply_gradients(zip(grads[:len(self.rpn_vars)], self.rpn_vars))
        head_grads = grads[len(self.rpn_vars):]
        if self.skip_unused_head:
            used = tf.add_n([st[6] for st in stats])

            def apply_head():
                self.opt_cls.apply_gradients(zip(head_grads, self.cls_vars))
                return tf.constant(True)
            tf.cond(used > 0, apply_head, lambda: tf.constant(False))
        else:
            self.opt_cls.apply_gradients(zip(head_grads, self.cls_vars))
        return tf.stack([tf.stack([tf.cast(v, tf.float32) for v in st]) for st in stats])

    def _joint_step(self, inputs):
        """The joint step: every replica's share under the strategy."""
        return self.strategy.run(self._replica_joint, args=(inputs,))

    def agree(self, value: float) -> float:
        """``value`` made the same on every worker (under multiworker, the value of replica 0, the chief's
        first; itself otherwise), so that time-based decisions (the budget, the learning-rate drop)
        cannot split the workers."""
        if self.cfg.distribute != "multiworker":
            return value

        def replica_value():
            first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
            return tf.where(first, float(value), 0.0)
        return float(self.strategy.reduce(tf.distribute.ReduceOp.SUM, self.strategy.run(replica_value), axis=None))

    def set_learning_rate(self, rate: float) -> None:
        """Set both Adams' learning rate (the compiled steps read it at every call)."""
        self.opt_rpn.learning_rate = rate
        self.opt_cls.learning_rate = rate
        self.learning_rate = rate

    def classifier_targets(self, shape: tuple[int, int], boxes: np.ndarray, labels: np.ndarray, p_cls: np.ndarray,
                           p_regr: np.ndarray, rng: np.random.Generator
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
        """Classifier batch from one image's RPN outputs, or None if no RoI overlaps enough to be labelled.

        shape: (height, width) of the network input; boxes (N, 4) in its pixels, labels (N,);
        p_cls (1, h, w, k), p_regr (1, h, w, 4k): the RPN outputs.

        Returns (RoIs (1, R, 4) in feature-map units, one-hot classes (1, R, C), regression targets
        (1, R, 8(C-1)), IoU of each RoI with its matched box (1, R, 1), fraction of positives),
        R = ``cfg.num_rois``.
        """
        cfg = self.cfg
        height, width = shape
        proposals, _ = roi_helpers.rpn_to_roi(p_cls[0], p_regr[0], cfg, width, height)
        rois = proposals
        if cfg.classifier_add_gt_rois and len(boxes):
            rois = np.concatenate([rois, boxes.astype(rois.dtype)], axis=0)
        rois, y_class, y_regr, ious = roi_helpers.calc_iou(rois, boxes, labels, cfg, cfg.num_classes)
        if rois.shape[0] == 0:
            return None
        far, far_iou = roi_helpers.far_negatives(proposals, boxes, cfg)
        idx = roi_helpers.sample_rois(y_class, cfg.num_rois, cfg.classifier_positive_fraction, rng,
                                      size=cfg.num_rois - far.shape[0])
        far_class, far_regr = roi_helpers.background_rows(far.shape[0], cfg.num_classes)
        rois = np.concatenate([rois[idx], far])
        y_class = np.concatenate([y_class[idx], far_class])
        y_regr = np.concatenate([y_regr[idx], far_regr])
        ious = np.concatenate([ious[idx], far_iou])
        rois_feat = to_feature_units(rois, cfg).astype(np.float32)
        return (rois_feat[None], y_class.astype(np.float32)[None], y_regr.astype(np.float32)[None],
                ious.astype(np.float32)[None, :, None], float(np.mean(y_class[:, -1] == 0)))

    def train_on_sample(self, sample: dict, rng: np.random.Generator) -> dict[str, float]:
        """One training iteration on one image (both modes); the losses (nan where the head was skipped,
        and for ``cls_iou`` without the IoU head)."""
        return self.train_on_batch([sample], rng)[0]

    def _train_on_sample(self, sample: dict, rng: np.random.Generator) -> dict[str, float]:
        """One alternating iteration: an RPN step, then a classifier step on its proposals."""
        l_rpn_cls, l_rpn_regr, p_cls, p_regr = self.rpn_train_step(
            sample["x_img"], sample["y_rpn_cls"], sample["y_rpn_regr"])
        out = {"rpn_cls": float(l_rpn_cls), "rpn_regr": float(l_rpn_regr), **_HEAD_SKIPPED}
        targets = self.classifier_targets(sample["x_img"].shape[1:3], sample["boxes"], sample["labels"],
                                          p_cls.numpy(), p_regr.numpy(), rng)
        if targets is not None:
            rois, y_cls, y_regr, y_iou, pos_fraction = targets
            l_cls, l_regr, l_iou, acc = self.cls_train_step(sample["x_img"], rois, y_cls, y_regr, y_iou)
            out.update(self._head_result(l_cls, l_regr, l_iou, acc, pos_fraction))
        return out

    def train_on_batch(self, samples: list[dict], rng: np.random.Generator) -> list[dict[str, float]]:
        """One training step on ``cfg.batch_size`` images (one, in the alternating mode), split across
        the replicas in order (then, every ``weight_ema_interval``-th step, the weights' moving averages:
        Config.weight_ema_decay); the losses of each image, as :meth:`train_on_sample` gives them."""
        results = self._train_on_batch(samples, rng)
        if self.averages:
            self._steps_unaveraged += 1
            if self._steps_unaveraged == self.cfg.weight_ema_interval:
                self._average_step()
                self._steps_unaveraged = 0
        return results

    def _train_on_batch(self, samples: list[dict], rng: np.random.Generator) -> list[dict[str, float]]:
        if not self.joint:
            return [self._train_on_sample(sample, rng) for sample in samples]
        if len(samples) != self.cfg.batch_size:
            raise ValueError(f"a step takes {self.cfg.batch_size} images, got {len(samples)}")
        images = [(sample["x_img"], sample["y_rpn_cls"], sample["y_rpn_regr"],
                   np.asarray(sample["boxes"], np.float32).reshape(-1, 4),
                   np.asarray(sample["labels"], np.int64).reshape(-1),
                   rng.integers(0, 2**31 - 1, size=2, dtype=np.int32)) for sample in samples]
        k = self.per_replica

        def replica_values(context):
            first = context.replica_id_in_sync_group * k
            return tuple(tuple(tf.constant(v) for v in image) for image in images[first:first + k])

        inputs = self.strategy.experimental_distribute_values_from_function(replica_values)
        # every replica's rows, in global image order, on every worker
        rows = np.asarray(self.strategy.gather(self.joint_step(inputs), axis=0))
        results = []
        for l_rpn_cls, l_rpn_regr, l_cls, l_regr, l_iou, acc, used, pos_fraction in rows.tolist():
            result = {"rpn_cls": l_rpn_cls, "rpn_regr": l_rpn_regr, **_HEAD_SKIPPED}
            if used > 0:
                result.update(self._head_result(l_cls, l_regr, l_iou, acc, pos_fraction))
            results.append(result)
        return results

    def _head_result(self, l_cls, l_regr, l_iou, acc, pos_fraction) -> dict[str, float]:
        return {"cls_cls": float(l_cls), "cls_regr": float(l_regr),
                "cls_iou": float(l_iou) if self.iou_head else math.nan, "cls_acc": float(acc),
                "pos_fraction": float(pos_fraction)}

    def eval_on_sample(self, sample: dict, rng: np.random.Generator) -> dict[str, float]:
        """The same losses without updating anything (validation)."""
        l_rpn_cls, l_rpn_regr, p_cls, p_regr = self.rpn_eval_step(
            sample["x_img"], sample["y_rpn_cls"], sample["y_rpn_regr"])
        out = {"rpn_cls": float(l_rpn_cls), "rpn_regr": float(l_rpn_regr), "cls_cls": math.nan,
               "cls_regr": math.nan, "cls_iou": math.nan}
        targets = self.classifier_targets(sample["x_img"].shape[1:3], sample["boxes"], sample["labels"],
                                          p_cls.numpy(), p_regr.numpy(), rng)
        if targets is not None:
            rois, y_cls, y_regr, y_iou, _ = targets
            l_cls, l_regr, l_iou, _ = self.cls_eval_step(sample["x_img"], rois, y_cls, y_regr, y_iou)
            out.update(cls_cls=float(l_cls), cls_regr=float(l_regr),
                       cls_iou=float(l_iou) if self.iou_head else math.nan)
        return out


# the head's entries of a step whose classifier did not run
_HEAD_SKIPPED = {"cls_cls": math.nan, "cls_regr": math.nan, "cls_iou": math.nan, "cls_acc": math.nan,
                 "pos_fraction": math.nan}
LOSS_KEYS = ("rpn_cls", "rpn_regr", "cls_cls", "cls_regr", "cls_iou")


def head_loss_keys(trainer: Trainer) -> tuple[str, ...]:
    """The head's losses a step reports (the IoU loss only with the IoU head)."""
    return ("cls_cls", "cls_regr", "cls_iou") if trainer.iou_head else ("cls_cls", "cls_regr")


def total_loss(stats: EpochStats) -> float:
    """Sum of the four mean losses (a skipped classifier contributes nothing)."""
    return float(sum(0.0 if math.isnan(stats.mean(k)) else stats.mean(k) for k in LOSS_KEYS))


def training_generators(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(steps, data): independent numpy generators from one seed. The data generator belongs to the
    sample stream (image order, augmentation, RPN anchor sampling), the other to the training steps
    (classifier RoI sampling), so a stream running ahead in a thread changes no random draw."""
    steps, data = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(steps), np.random.default_rng(data)


def state_path(model_path: str) -> str:
    """Where the resumable training state goes (weights, optimiser, epoch, best loss, random state)."""
    return model_path[: -len(".weights.h5")] + "_state.npz"


def save_training_state(path: str, trainer: Trainer, epoch: int, best_loss: float, best_val: float,
                        rng: np.random.Generator, log_rows: list[dict],
                        data_rng_state: dict | None = None) -> None:
    """Checkpoint everything needed to resume after ``epoch`` completed epochs, atomically: weights,
    optimiser slots, the steps' generator ``rng`` and the sample stream's generator state
    (``data_rng_state``: after the last image trained on; see training_generators)."""
    arrays = {f"w{i}": w for i, w in enumerate(trainer.models.model_all.get_weights())}
    for name, opt in (("rpn", trainer.opt_rpn), ("cls", trainer.opt_cls)):
        arrays.update({f"{name}{i}": np.asarray(v) for i, v in enumerate(opt.variables)})
    arrays.update({f"a{i}": np.asarray(v) for i, v in enumerate(trainer.averages)})
    meta = {"epoch": epoch, "best_loss": best_loss, "best_val": best_val, "rng": rng.bit_generator.state,
            "data_rng": data_rng_state,
            "log_rows": log_rows, "class_mapping": trainer.cfg.class_mapping, "train_mode": trainer.cfg.train_mode,
            "n_weights": len(trainer.models.model_all.get_weights()), "n_averages": len(trainer.averages),
            "average_updates": int(trainer.average_updates.numpy()) if trainer.averages else 0}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load_training_state(path: str, trainer: Trainer, rng: np.random.Generator,
                        data_rng: np.random.Generator | None = None) -> dict:
    """Restore weights, optimiser slots and the random states (``rng``: the steps'; ``data_rng``: the
    sample stream's, which states written before it was saved set like ``rng``); return epoch, best
    losses and the log."""
    if not os.path.isfile(path):
        raise CryoError("no training state to resume from (was the run started with this --output_weight_path?)",
                        path)
    try:
        with np.load(path) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta["class_mapping"] != trainer.cfg.class_mapping:
                raise CryoError("training state was made for other classes than these annotations", path)
            saved_mode = meta.get("train_mode", "alternating")
            if saved_mode != trainer.cfg.train_mode:  # checked before the optimiser slots, whose count differs
                raise CryoError(f"training state was made with --train-mode {saved_mode}; resume with the same mode",
                                path)
            weights = [data[f"w{i}"] for i in range(meta["n_weights"])]
            slots = {name: [data[f"{name}{i}"] for i in range(len(opt.variables))]
                     for name, opt in (("rpn", trainer.opt_rpn), ("cls", trainer.opt_cls))}
            averages = [data[f"a{i}"] for i in range(meta.get("n_averages", 0))]
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise CryoError(f"training state is unreadable ({exc.__class__.__name__})", path) from None
    try:
        trainer.models.model_all.set_weights(weights)
        for name, opt in (("rpn", trainer.opt_rpn), ("cls", trainer.opt_cls)):
            for var, value in zip(opt.variables, slots[name]):
                var.assign(value)
        trainer.set_learning_rate(trainer.cfg.learning_rate)  # this run's --learning-rate, not the saved one
        if trainer.averages:
            restore_averages(trainer, averages, meta.get("average_updates", 0), path)
    except ValueError as exc:
        raise CryoError(f"training state does not fit this model ({str(exc).splitlines()[0][:150]})", path) from None
    rng.bit_generator.state = meta["rng"]
    if data_rng is not None:
        data_rng.bit_generator.state = meta.get("data_rng") or meta["rng"]
    return meta


def restore_averages(trainer: Trainer, averages: list[np.ndarray], updates: int, path: str) -> None:
    """Put a training state's weight averages back (Config.weight_ema_decay); a state saved without
    them (averaging newly switched on) starts them from the weights just restored, ramp included."""
    if len(averages) != len(trainer.averages):
        if averages:
            raise CryoError(f"training state holds {len(averages)} weight averages, this model "
                            f"{len(trainer.averages)}", path)
        print(f"{path}: no weight averages in this training state: they start from its weights")
        averages, updates = trainer.models.model_all.get_weights(), 0
    for variable, value in zip(trainer.averages, averages):
        variable.assign(value)
    trainer.average_updates.assign(int(updates))
