"""Training (train_frcnn.py): alternating RPN and classifier steps, one image per step.

Per image (Li et al. 2019, keras-frcnn; ``train_mode = "alternating"``, the default):

1. RPN step: backbone + RPN on the image, loss on 256 sampled anchors (calc_rpn), Adam update.
2. Proposals: the RPN outputs of that same forward pass go through rpn_to_roi (NMS 0.7, 300 boxes).
3. Classifier step: proposals labelled against the ground truth (calc_iou), ``num_rois`` sampled
   (at most half positive), backbone + RoI pooling + conv5 head, Adam update.

``train_mode = "joint"`` (approximate joint training, Ren et al. 2015) does the same per image in
one compiled step with one backbone pass: the proposals and classifier targets of steps 2-3 are
computed from that pass in TensorFlow ops (targets_tf, checked against the numpy code of roi_helpers),
and one gradient of L_rpn + L_cls updates all weights. The RoIs are constants to the gradient in both
modes. Joint steps may take ``batch_size`` images and run under a tf.distribute strategy
(``distribute``; see distribute.py): the step is then the mean over the global batch.

An epoch is ``epoch_length`` images. After each epoch the summed mean loss is compared with the best
so far; the weights are written (atomically) only when it improves (the paper's rule). With a
validation split the validation loss and AP are reported every epoch and the best model on
validation AP at ``Config.val_selection_iou`` (0.7) is kept as well (``*_bestval.weights.h5``).

Library use (what train_frcnn.py and the demo run)::

    cfg = recipes.config_for(annotation_path="annotations.txt")      # the recipe's defaults
    train_records, val_records = train.prepare(cfg)                   # split, fit to the boxes
    result = train.fit(cfg, train_records, val_records, "config.pickle", time_budget_min=60)
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from . import anchors, data_generators, losses, metrics, recipes, roi_helpers, splits, targets_tf, tomo_io
from .annotations import detections_to_dicts, load_annotations, records_to_ground_truth
from .atomic import atomic_path, check_output_dir, remove_stale_temporaries
from .cli import set_seed
from .config import BG_CLASS, CHOICES, Config, apply_overrides, check_choice, save_config
from .errors import CryoError
from .model import (Detector, build_models, check_weights_path, fetch_imagenet_weights, load_imagenet_weights,
                    save_weights_atomic)
from .optimizer import FusedAdam
from .preprocessing import prepare_image, resize_scale

import keras  # noqa: E402  (after .model, which silences TensorFlow's start-up notices)
import tensorflow as tf  # noqa: E402

IMAGENET = "imagenet"   # --input_weight_path value: keras.applications' ResNet-50 ImageNet file
TRAIN_MODES = CHOICES["train_mode"]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (keras-frcnn's flags plus --recipe, --seed, --val-split, --im-size, ...).

    Options the recipe sets default to None here: given on the command line they override it.
    """
    defaults = Config()
    p = argparse.ArgumentParser(description="Train the Faster R-CNN detector (Li et al. 2019).")
    p.add_argument("-p", "--path", required=True, help="annotations: simple txt file, or LabelImg/VOC folder")
    p.add_argument("-o", "--parser", default="simple", help="annotation format: simple or pascal_voc")
    p.add_argument("--recipe", default="auto", choices=list(recipes.RECIPES),
                   help="auto (default): 'paper' with --input_weight_path, else 'scratch'. paper: Li et al. "
                        "2019 exactly; scratch: settings for training from random weights on a CPU (joint "
                        "steps, lr 1e-4 with warm-up and a final drop, flips and rotations, input size and "
                        "anchors fitted to the boxes). Options below override the recipe")
    p.add_argument("-n", "--num_rois", type=int, default=None,
                   help=f"RoIs per classifier step (paper {defaults.num_rois}; scratch "
                        f"{recipes.ScratchRecipe().num_rois}, {recipes.FEW_OBJECTS_ROIS} when the training "
                        f"images hold few objects each)")
    p.add_argument("--hf", action=argparse.BooleanOptionalAction, default=None,
                   help="augment with horizontal flips (recipe: scratch on, paper off)")
    p.add_argument("--vf", action=argparse.BooleanOptionalAction, default=None, help="augment with vertical flips")
    p.add_argument("--rot", "--rot_90", dest="rot", action=argparse.BooleanOptionalAction, default=None,
                   help="augment with 90-degree rotations")
    p.add_argument("--num_epochs", type=int, default=defaults.num_epochs)
    p.add_argument("--epoch_length", type=int, default=defaults.epoch_length, help="images per epoch")
    p.add_argument("--config_filename", default="config.pickle", help="where to write the run's config")
    p.add_argument("--output_weight_path", default=defaults.model_path, help="model weights (.weights.h5)")
    p.add_argument("--input_weight_path", default=None,
                   help="ImageNet ResNet-50 notop weights (.h5) to start from, or 'imagenet' to use keras.applications' "
                        "file (cached, else downloaded); default: train from scratch")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--apix", type=float, default=None,
                   help="pixel size of the training images (A/px), when their sidecars do not give it; recorded "
                        "so that detection can resize inputs of another pixel size to the training's scale")
    p.add_argument("--val-split", type=float, default=defaults.val_fraction,
                   help="fraction of the training groups (tomograms) held out for validation")
    p.add_argument("--test-split", type=float, default=defaults.test_fraction,
                   help="fraction of groups held out for measure_map (paper: 1/6)")
    p.add_argument("--split-file", default=None, help="split JSON (default: beside the annotations)")
    p.add_argument("--im-size", type=int, default=None,
                   help=f"shorter image side (px); paper {defaults.im_size}, scratch: fitted to the box sizes")
    p.add_argument("--input-channels", default=None, choices=list(tomo_io.INPUT_CHANNEL_MODES),
                   help="repeat (paper): each image on the 3 input channels; slabs (scratch, when every image has a "
                        "sidecar naming its tomogram): three slabs of --input-slab slices around the slice")
    p.add_argument("--input-slab", type=int, default=Config.input_slab,
                   help="slices per slab with --input-channels slabs")
    p.add_argument("--no-preprocess", action="store_true",
                   help="skip bilateral filter and histogram equalisation (ablation)")
    p.add_argument("--anchor-scales", nargs="+", default=None,
                   help="anchor sizes in px of the resized image (paper: 128 256 512), or 'auto' to "
                        "propose them from the labelled box sizes (scratch: auto when the paper's fit poorly)")
    p.add_argument("--backbone-norm", default=None, choices=CHOICES["backbone_norm"],
                   help="auto: frozen_bn with --input_weight_path, GroupNorm from scratch; ws: weight-"
                        "standardised convolutions, no activation normalisation (from scratch)")
    p.add_argument("--learning-rate", type=float, default=None,
                   help=f"Adam learning rate (paper {defaults.learning_rate:g}, scratch {recipes.ScratchRecipe.learning_rate:g})")
    p.add_argument("--lr-warmup", type=int, default=None, metavar="STEPS",
                   help="ramp the learning rate up from 0 over this many images (paper 0, scratch "
                        f"{recipes.ScratchRecipe.lr_warmup_steps}, ending by "
                        f"{100 * recipes.ScratchRecipe.lr_warmup_max_fraction:g} %% of the run at the latest)")
    p.add_argument("--train-mode", default=None, choices=list(TRAIN_MODES),
                   help="alternating (paper: RPN step, then classifier step) or joint (scratch: one backbone "
                        "pass and one update per image, about half the time per image)")
    p.add_argument("--precision", default=None, choices=list(CHOICES["training_precision"]),
                   help="arithmetic of the training steps: float32 (default), or bfloat16 (float32 weights, "
                        "bfloat16 convolutions): about 1.3x the images per hour on CPUs with AMX, but one of two "
                        "hour-long runs stopped with NaN losses (BENCHMARKS.md); the weights load either way")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="stop once this much wall time has passed (the epoch then running ends early and "
                        "is scored on the images it saw); the learning-rate schedule follows this budget")
    p.add_argument("--lr-drop", type=float, default=None, metavar="FRACTION",
                   help="multiply the learning rate by 0.1 once this fraction of the epochs (or of "
                        "--time-budget) has passed; 0 = never (paper); scratch "
                        f"{recipes.ScratchRecipe.lr_drop_fraction:g}")
    p.add_argument("--distribute", default=defaults.distribute, choices=list(CHOICES["distribute"]),
                   help="tf.distribute strategy: none (one device), mirrored (the GPUs of this machine, or "
                        "--cpu-replicas CPU devices) or multiworker (cluster and task from TF_CONFIG; only "
                        "the chief writes files); joint mode")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, metavar="N",
                   help="images per step, global, split evenly across the replicas (joint mode beyond 1)")
    p.add_argument("--cpu-replicas", type=int, default=defaults.cpu_replicas, metavar="N",
                   help="split the CPU into N logical devices for --distribute (runs and tests mirrored "
                        "training without a GPU)")
    p.add_argument("--set", action="append", default=None, metavar="FIELD=VALUE", dest="overrides",
                   help="set any Config field last, e.g. roi_pool_mode=cells (repeatable; see config.py)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last completed epoch (*_state.npz)")
    return p


# command-line option -> the Config field it sets (options the recipe also sets)
_RECIPE_OPTIONS = {"train_mode": "train_mode", "learning_rate": "learning_rate", "lr_warmup": "lr_warmup_steps",
                   "lr_drop": "lr_drop_fraction", "hf": "use_horizontal_flips", "vf": "use_vertical_flips",
                   "rot": "rot_90", "input_channels": "input_channels", "num_rois": "num_rois",
                   "backbone_norm": "backbone_norm"}


def config_from_args(args: argparse.Namespace) -> Config:
    """A Config with the recipe's values (Config.recipe), then the options given on the command line.

    The choices fitted to the labelled boxes (input size, anchors) are made later, in :func:`main`,
    once the annotations are read.
    """
    check_choice("parser", args.parser)
    for name, value in (("num_rois", args.num_rois), ("num_epochs", args.num_epochs),
                        ("epoch_length", args.epoch_length), ("im_size", args.im_size)):
        if value is not None and value < 1:
            raise CryoError(f"--{name} must be a positive integer, got {value}")
    if not 0.0 <= args.val_split < 1.0 or not 0.0 <= args.test_split < 1.0:
        raise CryoError("--val-split and --test-split must lie in [0, 1)")
    if args.lr_drop is not None and not 0.0 <= args.lr_drop < 1.0:
        raise CryoError(f"--lr-drop must lie in [0, 1) (a fraction of the run; 0 = off), got {args.lr_drop}")
    if args.lr_warmup is not None and args.lr_warmup < 0:
        raise CryoError(f"--lr-warmup must be >= 0 images, got {args.lr_warmup}")
    if args.learning_rate is not None and not args.learning_rate > 0.0:
        raise CryoError(f"--learning-rate must be positive, got {args.learning_rate}")
    cfg = recipes.config_for(args.recipe, bool(args.input_weight_path))
    for option, name in _RECIPE_OPTIONS.items():
        if getattr(args, option) is not None:
            setattr(cfg, name, getattr(args, option))
    cfg.parser = args.parser
    cfg.annotation_path = os.path.abspath(args.path)
    cfg.num_epochs, cfg.epoch_length = args.num_epochs, args.epoch_length
    cfg.model_path = os.path.abspath(args.output_weight_path)
    cfg.base_net_weights = os.path.abspath(args.input_weight_path) if args.input_weight_path else None
    cfg.seed = args.seed
    cfg.val_fraction, cfg.test_fraction = args.val_split, args.test_split
    if args.im_size is not None:
        cfg.im_size = args.im_size
    cfg.preprocess = not args.no_preprocess
    if args.input_slab < 1:
        raise CryoError(f"--input-slab must be a positive number of slices, got {args.input_slab}")
    cfg.input_slab = args.input_slab
    if args.anchor_scales and args.anchor_scales != ["auto"]:
        try:
            cfg.anchor_box_scales = [float(s) for s in args.anchor_scales]
        except ValueError:
            raise CryoError(f"--anchor-scales takes numbers or 'auto', got {' '.join(args.anchor_scales)}") from None
        if min(cfg.anchor_box_scales) <= 0:
            raise CryoError("--anchor-scales must be positive")
    if args.precision is not None:
        cfg.training_precision = args.precision
    cfg.distribute, cfg.batch_size, cfg.cpu_replicas = args.distribute, args.batch_size, args.cpu_replicas
    apply_overrides(cfg, args.overrides)
    return cfg.validate()


def record_pixel_size(cfg: Config, records: list[dict], apix: float | None = None) -> str:
    """Set ``cfg.pixel_size_angstrom`` (median over the training images) and
    ``cfg.network_pixel_size_angstrom`` (A per network-input pixel after the im_size resize) when every
    training image's pixel size is known: ``apix`` for all of them, else each PNG's sidecar. Detection
    then resizes inputs of known pixel size to that scale (model.Detector.input_scale). Returns the
    line to print."""
    if apix is not None and not (math.isfinite(apix) and apix > 0):
        raise CryoError(f"--apix must be a positive number of Angstrom per pixel, got {apix}")
    sizes, network = [], []
    for record in records:
        size = float(apix) if apix is not None else tomo_io.image_pixel_size(record["filepath"])
        if size is None:
            cfg.pixel_size_angstrom = cfg.network_pixel_size_angstrom = None
            return (f"pixel size: unknown ({record['filepath']} has no sidecar giving it; --apix sets it): "
                    "detection resizes inputs by im_size alone")
        sizes.append(size)
        network.append(size / resize_scale(int(record["height"]), int(record["width"]), cfg))
    cfg.pixel_size_angstrom = float(np.median(sizes))
    cfg.network_pixel_size_angstrom = float(np.median(network))
    spread = f" (from {min(sizes):g} to {max(sizes):g})" if max(sizes) > min(sizes) else ""
    return (f"pixel size: {cfg.pixel_size_angstrom:g} A/px{spread}, {cfg.network_pixel_size_angstrom:.4g} A per "
            "network pixel; detection resizes inputs of known pixel size to that scale")


def fit_config_to_boxes(cfg: Config, records: list[dict], fit_size: bool = True, fit_anchors: bool = True,
                        propose_anchors: bool = False, fit_rois: bool = True) -> None:
    """The data-dependent part of the recipe: input size, anchors, detection cap and RoIs per step
    (printed with reasons).

    Scratch recipe: recipes.fit_to_boxes (the input size only with ``fit_size``, the anchors only with
    ``fit_anchors``, the RoIs per step only with ``fit_rois``: what the command line left open).
    Either recipe: ``propose_anchors`` (``--anchor-scales auto``) proposes anchors from the boxes at
    the chosen input size.
    """
    if cfg.recipe == "scratch":
        notes = recipes.fit_to_boxes(cfg, records, fit_size=fit_size, fit_anchors=fit_anchors, fit_rois=fit_rois)
        notes.append(recipes.fit_input_channels(cfg, records))
        for note in notes:
            print(f"recipe scratch: {note}")
    if propose_anchors:
        cfg.anchor_box_scales = anchors.propose_anchor_scales(records, cfg)
        print(f"anchor scales proposed from the labelled boxes: {cfg.anchor_box_scales}")


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
        self.loss_rpn_regr = losses.rpn_loss_regr(k, cfg.lambda_rpn_regr, cfg.loss_epsilon)
        self.loss_cls_cls = losses.class_loss_cls(cfg.lambda_cls_class)
        self.loss_cls_regr = losses.class_loss_regr(n_fg, cfg.lambda_cls_regr, cfg.loss_epsilon)
        self.loss_cls_iou = losses.class_loss_iou(cfg.lambda_cls_iou)
        self.iou_head = cfg.classifier_iou_head
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
        self.rpn_train_step = tf.function(self._rpn_train, input_signature=rpn_specs, autograph=False)
        self.cls_train_step = tf.function(self._cls_train, input_signature=cls_specs, autograph=False)
        self.rpn_eval_step = tf.function(lambda x, c, r: self._rpn_forward(x, c, r, False),
                                         input_signature=rpn_specs, autograph=False)
        self.cls_eval_step = tf.function(lambda x, r, c, g, u: self._cls_forward(x, r, c, g, u, False),
                                         input_signature=cls_specs, autograph=False)

    def _adam(self) -> keras.optimizers.Optimizer:
        """Adam with the config's rate and betas (paper: 1e-5, 0.9, 0.999), one fused kernel per variable
        (optimizer.FusedAdam: Keras Adam's formula and state, traced in about 2/3 of the time)."""
        cfg = self.cfg
        return FusedAdam(learning_rate=cfg.learning_rate, beta_1=cfg.adam_beta_1, beta_2=cfg.adam_beta_2)

    def _head_losses(self, outputs, y_cls, y_regr, y_iou):
        """(class loss, box loss, IoU loss (0 without the IoU head)) of the head's outputs."""
        l_iou = self.loss_cls_iou(y_iou, outputs[2]) if self.iou_head else tf.constant(0.0)
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
        rois_feat = (rois / float(cfg.rpn_stride)).astype(np.float32)
        return (rois_feat[None], y_class.astype(np.float32)[None], y_regr.astype(np.float32)[None],
                ious.astype(np.float32)[None, :, None], float(np.mean(y_class[:, -1] == 0)))

    def train_on_sample(self, sample: dict, rng: np.random.Generator) -> dict[str, float]:
        """One training iteration on one image (both modes); the losses (nan where the head was skipped,
        and for ``cls_iou`` without the IoU head)."""
        if self.joint:
            return self.train_on_batch([sample], rng)[0]
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
        the replicas in order; the losses of each image, as :meth:`train_on_sample` gives them."""
        if not self.joint:
            return [self.train_on_sample(sample, rng) for sample in samples]
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


def _head_keys(trainer: Trainer) -> tuple[str, ...]:
    """The head's losses a step reports (the IoU loss only with the IoU head)."""
    return ("cls_cls", "cls_regr", "cls_iou") if trainer.iou_head else ("cls_cls", "cls_regr")


def scheduled_learning_rate(cfg: Config, progress: float, step: int | None = None) -> float:
    """Learning rate for training image ``step`` (0-based; None: after the warm-up) once ``progress``
    (0..1) of the run has passed: a linear warm-up over the first ``cfg.lr_warmup_steps`` images
    (cut short once ``cfg.lr_warmup_max_fraction`` of the run has passed, when that is > 0), then the
    step decay of ``cfg.lr_drop_fraction`` / ``lr_drop_factor`` (constant when both are 0)."""
    rate = cfg.learning_rate
    if cfg.lr_drop_fraction > 0.0 and progress >= cfg.lr_drop_fraction:
        rate *= cfg.lr_drop_factor
    if step is not None and step < cfg.lr_warmup_steps:
        ramp = (step + 1) / cfg.lr_warmup_steps
        if cfg.lr_warmup_max_fraction > 0.0:
            ramp = max(ramp, progress / cfg.lr_warmup_max_fraction)
        rate *= min(ramp, 1.0)
    return rate


def total_loss(stats: EpochStats) -> float:
    """Sum of the four mean losses (a skipped classifier contributes nothing)."""
    return float(sum(0.0 if math.isnan(stats.mean(k)) else stats.mean(k) for k in LOSS_KEYS))


def validate(trainer: Trainer, records: list[dict], seed: int) -> dict[str, float]:
    """Validation loss (mean over images) and AP at the configured IoU thresholds and at
    ``cfg.val_selection_iou`` (``val_ap@<IoU>`` keys)."""
    cfg = trainer.cfg
    rng = np.random.default_rng(seed)
    stats = EpochStats()
    source = tomo_io.image_source(cfg)
    gen = data_generators.iter_training_samples(records, cfg, rng, source, prepare_image, augment_images=False)
    for _ in range(len(records)):
        stats.add(**trainer.eval_on_sample(next(gen), rng))
    detector = Detector(cfg, models=trainer.models)
    detections = []
    for record in records:
        dets = detector.detect(source(record["filepath"]), min_score=cfg.eval_min_score,
                               pixel_size_a=tomo_io.image_pixel_size(record["filepath"]))
        detections.extend(detections_to_dicts(record["filepath"], dets))
    source.close()
    thresholds = sorted({float(t) for t in cfg.eval_iou_thresholds} | {float(cfg.val_selection_iou)})
    results = metrics.evaluate(records_to_ground_truth(records), detections, thresholds,
                               classes=cfg.class_names[:-1])
    out = {"val_loss": total_loss(stats)}
    for thr in thresholds:
        out[f"val_ap@{thr:g}"] = float(results["mAP"][thr])
    return out


def _log_path(model_path: str) -> str:
    return model_path[: -len(".weights.h5")] + "_log.csv"


def bestval_path(model_path: str) -> str:
    """Where the best-on-validation weights go."""
    return model_path[: -len(".weights.h5")] + "_bestval.weights.h5"


def main(args: argparse.Namespace) -> int:
    """train_frcnn.py: parse annotations, split by tomogram, fit the recipe to the boxes, train, save."""
    cfg = config_from_args(args)
    check_weights_path(cfg.model_path)
    check_output_dir(os.path.dirname(cfg.model_path))
    check_output_dir(os.path.dirname(os.path.abspath(args.config_filename)))
    if args.input_weight_path == IMAGENET:
        cfg.base_net_weights = fetch_imagenet_weights()
        print(f"ImageNet weights: {cfg.base_net_weights}")
    if cfg.base_net_weights and not os.path.isfile(cfg.base_net_weights):
        raise CryoError("--input_weight_path file not found", cfg.base_net_weights)
    set_seed(cfg.seed)
    overridden = {a.partition("=")[0].strip() for a in args.overrides or []}
    train_records, val_records = prepare(
        cfg, split_file=args.split_file, apix=args.apix,
        fit_size=args.im_size is None and "im_size" not in overridden,
        fit_anchors=args.anchor_scales is None and "anchor_box_scales" not in overridden,
        fit_rois=args.num_rois is None and "num_rois" not in overridden,
        propose_anchors=args.anchor_scales == ["auto"])
    fit(cfg, train_records, val_records, args.config_filename, time_budget_min=args.time_budget,
        resume=args.resume)
    return 0


@dataclass
class FitResult:
    """What :func:`fit` did: epochs completed (this run and any resumed ones), training images seen,
    the best epoch loss (its weights are in ``cfg.model_path``), the best validation AP at
    ``cfg.val_selection_iou`` (-inf without validation images) and the per-epoch log rows."""

    epochs: int
    images_seen: int
    best_loss: float
    best_val: float
    log_rows: list[dict]


def prepare(cfg: Config, split_file: str | None = None, apix: float | None = None, fit_size: bool = True,
            fit_anchors: bool = True, propose_anchors: bool = False, fit_rois: bool = True
            ) -> tuple[list[dict], list[dict]]:
    """Read ``cfg.annotation_path``, split it by tomogram and fit ``cfg`` to its training boxes.

    Sets ``cfg.class_mapping`` ("bg" last), ``cfg.split_path`` (``split_file``, default beside the
    annotations; written there when new), the recipe's data-dependent fields (recipes.fit_to_boxes,
    when ``cfg.recipe`` is "scratch": input size if ``fit_size``, anchors if ``fit_anchors``, RoIs per
    step if ``fit_rois``; ``propose_anchors``: anchors from the boxes whatever the recipe) and the
    pixel sizes (``apix`` when the sidecars give none); validates ``cfg``. Prints what it chose.
    Returns (training records, validation records). CryoError for annotations without images or
    boxes, or a split leaving no training image.
    """
    records, classes_count, class_mapping = load_annotations(cfg.annotation_path, cfg.parser)
    if not records:
        raise CryoError("no annotated images found", cfg.annotation_path)
    if not any(r["bboxes"] for r in records):
        raise CryoError("no boxes in any image: nothing to train on", cfg.annotation_path)
    if BG_CLASS not in class_mapping:
        class_mapping[BG_CLASS] = len(class_mapping)
    cfg.class_mapping = dict(class_mapping)
    split_path = split_file or splits.default_split_path(cfg.annotation_path)
    splits.assign_splits(records, split_path, cfg.test_fraction, cfg.val_fraction, cfg.seed)
    cfg.split_path = os.path.abspath(split_path)
    train_records = [r for r in records if r.get("imageset") == "train"]
    val_records = [r for r in records if r.get("imageset") == "val"]
    if not train_records:
        raise CryoError("the split left no training images", split_path)
    fit_config_to_boxes(cfg, train_records, fit_size, fit_anchors, propose_anchors, fit_rois)
    cfg.validate()
    print(record_pixel_size(cfg, train_records, apix))
    print(f"classes: {', '.join(f'{k} ({v})' for k, v in classes_count.items() if k != BG_CLASS)}")
    print(f"images: {len(train_records)} train, {len(val_records)} val, "
          f"{sum(r.get('imageset') == 'test' for r in records)} test (split: {split_path})")
    return train_records, val_records


def _images_seen(log_rows: list[dict], cfg: Config) -> int:
    """Training images of the logged epochs (rows of logs written before the column: a full epoch)."""
    return sum(int(r.get("images", cfg.epoch_length)) for r in log_rows)


def fit(cfg: Config, train_records: list[dict], val_records: list[dict], config_path: str,
        time_budget_min: float | None = None, resume: bool = False) -> FitResult:
    """The training loop (train_frcnn.py's, for a prepared ``cfg``; see :func:`prepare`).

    Up to ``cfg.num_epochs`` epochs of ``cfg.epoch_length`` images, or until ``time_budget_min``
    minutes of wall time have passed (mid-epoch too; the learning-rate schedule then follows the
    time). Weights go to ``cfg.model_path`` whenever the epoch loss beats the best so far (the paper's
    rule), the config to ``config_path`` with the first save; with validation records the best
    validation AP at ``cfg.val_selection_iou`` also saves ``*_bestval.weights.h5``. After every
    epoch: the CSV log and the resumable state (``resume=True`` continues from it). CryoError when
    a loss becomes NaN/Inf (the last good weights stay).
    """
    started = time.time()
    trainer = Trainer(cfg)
    for target in (cfg.model_path, bestval_path(cfg.model_path), state_path(cfg.model_path), config_path):
        for name in (remove_stale_temporaries(target) if trainer.chief else []):
            print(f"removed {name}, a partial file left by an interrupted run")
    # two random streams: the images (order, augmentation, RPN anchor sampling; owned by the sample
    # stream, which may run ahead in its own thread) and the steps (classifier RoI sampling)
    rng, data_rng = training_generators(cfg.seed)
    source = tomo_io.image_source(cfg)
    gen = None
    try:
        best_loss, best_val, first_epoch = math.inf, -math.inf, 0
        # The config is written right after this run's first weights save, so that a run failing or
        # killed before it leaves an earlier run's config and weights as they were (a matching pair).
        config_saved = False
        log_rows: list[dict] = []
        if resume:
            state = load_training_state(state_path(cfg.model_path), trainer, rng, data_rng)
            first_epoch, best_loss, best_val, log_rows = (state["epoch"], state["best_loss"], state["best_val"],
                                                          state["log_rows"])
            print(f"resuming after epoch {first_epoch} (best loss so far {best_loss:.4f})")
        gen = data_generators.Prefetch(
            data_generators.iter_training_samples(train_records, cfg, data_rng, source, prepare_image,
                                                  augment_images=True), data_rng, cfg.prefetch_images)
        def progress(epoch: int, index: int) -> float:
            """Share of the run passed: of --time-budget when one is given, else of the images."""
            if time_budget_min:
                return (time.time() - started) / (60.0 * time_budget_min)
            return (epoch * cfg.epoch_length + index) / (cfg.num_epochs * cfg.epoch_length)

        announced_rate = cfg.learning_rate
        for epoch in range(first_epoch, cfg.num_epochs):
            stats = EpochStats()
            start = time.time()
            bar = tqdm(total=cfg.epoch_length, desc=f"epoch {epoch + 1}/{cfg.num_epochs}", unit="img")
            index = 0          # images of this epoch so far; a step takes cfg.batch_size of them
            while index < cfg.epoch_length:
                passed = trainer.agree(progress(epoch, index))       # the same on every worker
                if time_budget_min is not None and passed >= 1.0 and index > 0:
                    tqdm.write(f"time budget of {time_budget_min:g} min used: epoch {epoch + 1} ends after "
                               f"{index} of {cfg.epoch_length} images")
                    break
                base_rate = scheduled_learning_rate(cfg, passed)          # without the warm-up
                if base_rate < announced_rate:
                    tqdm.write(f"learning rate {announced_rate:g} -> {base_rate:g} from epoch {epoch + 1}, "
                               f"image {index + 1} ({100 * passed:.0f} % of the run passed)")
                    announced_rate = base_rate
                rate = scheduled_learning_rate(cfg, passed, epoch * cfg.epoch_length + index)
                if not math.isclose(rate, trainer.learning_rate):
                    trainer.set_learning_rate(rate)
                for step in trainer.train_on_batch([next(gen) for _ in range(cfg.batch_size)], rng):
                    classifier_ran = not math.isnan(step["pos_fraction"])  # nan classifier losses: step skipped
                    if not all(math.isfinite(step[k]) for k in ("rpn_cls", "rpn_regr")) or \
                            (classifier_ran and not all(math.isfinite(step[k]) for k in _head_keys(trainer))):
                        kept = (f"the last good weights are kept in {cfg.model_path}" if math.isfinite(best_loss)
                                else "no weights were saved yet")
                        raise CryoError(f"loss became NaN/Inf in epoch {epoch + 1} ({step}); {kept} (try a lower "
                                        "--learning-rate; --resume restarts after the last completed epoch)")
                    stats.add(**step)
                index += cfg.batch_size
                bar.update(cfg.batch_size)
                bar.set_postfix(rpn_cls=f"{stats.mean('rpn_cls'):.3f}", rpn_regr=f"{stats.mean('rpn_regr'):.3f}",
                                cls=f"{stats.mean('cls_cls'):.3f}", regr=f"{stats.mean('cls_regr'):.3f}",
                                acc=f"{stats.mean('cls_acc'):.2f}")
            bar.close()
            curr = total_loss(stats)
            row = {"epoch": epoch + 1, "loss": curr, **{k: stats.mean(k) for k in LOSS_KEYS},
                   "cls_acc": stats.mean("cls_acc"), "seconds": time.time() - start,
                   "images": len(stats.values.get("rpn_cls", []))}
            iou_text = f", iou {row['cls_iou']:.4f}" if trainer.iou_head else ""
            print(f"epoch {epoch + 1}: loss {curr:.4f} (rpn cls {row['rpn_cls']:.4f}, rpn regr {row['rpn_regr']:.4f}, "
                  f"cls {row['cls_cls']:.4f}, regr {row['cls_regr']:.4f}{iou_text}), classifier accuracy "
                  f"{row['cls_acc']:.3f}, {row['seconds']:.1f} s")
            if curr < best_loss:
                if trainer.chief:
                    print(f"total loss decreased from {best_loss:.4f} to {curr:.4f}, saving weights to "
                          f"{cfg.model_path}")
                    save_weights_atomic(trainer.models.model_all, cfg.model_path)
                    if not config_saved:
                        save_config(cfg, config_path)
                        config_saved = True
                        print(f"config written to {config_path}")
                best_loss = curr
            if val_records:
                val = validate(trainer, val_records, cfg.seed)
                row.update(val)
                ap_text = ", ".join(f"AP@{t:g} {val[f'val_ap@{t:g}']:.3f}" for t in cfg.eval_iou_thresholds)
                print(f"  validation: loss {val['val_loss']:.4f}, {ap_text}")
                score = val[f"val_ap@{cfg.val_selection_iou:g}"]
                if score > best_val:
                    best_val = score
                    if trainer.chief:
                        save_weights_atomic(trainer.models.model_all, bestval_path(cfg.model_path))
                        print(f"  best validation AP@{cfg.val_selection_iou:g} so far ({score:.3f}): "
                              f"saved {bestval_path(cfg.model_path)}")
            log_rows.append(row)
            if trainer.chief:
                _write_log(_log_path(cfg.model_path), log_rows)
                save_training_state(state_path(cfg.model_path), trainer, epoch + 1, best_loss, best_val, rng,
                                    log_rows, gen.rng_state)
            if time_budget_min is not None and trainer.agree(time.time() - started > 60.0 * time_budget_min):
                print(f"time budget of {time_budget_min:g} min used after epoch {epoch + 1}: stopping "
                      f"({_images_seen(log_rows, cfg)} training images seen)")
                break
        return FitResult(epochs=len(log_rows), images_seen=_images_seen(log_rows, cfg), best_loss=best_loss,
                         best_val=best_val, log_rows=log_rows)
    finally:
        if gen is not None:
            gen.close()     # stop reading before the files close
        source.close()  # the tomograms the slabs were read from


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
    meta = {"epoch": epoch, "best_loss": best_loss, "best_val": best_val, "rng": rng.bit_generator.state,
            "data_rng": data_rng_state,
            "log_rows": log_rows, "class_mapping": trainer.cfg.class_mapping, "train_mode": trainer.cfg.train_mode,
            "n_weights": len(trainer.models.model_all.get_weights())}
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
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise CryoError(f"training state is unreadable ({exc.__class__.__name__})", path) from None
    try:
        trainer.models.model_all.set_weights(weights)
        for name, opt in (("rpn", trainer.opt_rpn), ("cls", trainer.opt_cls)):
            for var, value in zip(opt.variables, slots[name]):
                var.assign(value)
        trainer.set_learning_rate(trainer.cfg.learning_rate)  # this run's --learning-rate, not the saved one
    except ValueError as exc:
        raise CryoError(f"training state does not fit this model ({str(exc).splitlines()[0][:150]})", path) from None
    rng.bit_generator.state = meta["rng"]
    if data_rng is not None:
        data_rng.bit_generator.state = meta.get("data_rng") or meta["rng"]
    return meta


def _write_log(path: str, rows: list[dict]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def console_main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the script and the setup.py command); returns the exit status (2 with
    one ``error:`` line on bad input)."""
    from .cli import run_cli
    return run_cli(main, build_parser(), argv)
