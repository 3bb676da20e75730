"""Config: every tunable of the method, with the value used by Li et al. (2019) where the paper gives one.

Field names follow keras-frcnn's ``Config`` where it has the field, so a keras-frcnn
``config.pickle`` is recognisable and its values carry over. A trained run writes the Config twice:
``config.pickle`` (the design card's format) and ``config.json`` beside it (for people and scripts).

Loading a pickle never runs code: :func:`load_config` uses a restricted unpickler that admits only
this module's ``Config`` class (and keras-frcnn's, mapped onto it) and plain data; anything else is
refused with a :class:`~keras_frcnn_cryo.errors.CryoError`.

Conventions used by every module (see also README.md):

* boxes are float pixels ``[x1, y1, x2, y2]``, 0-based, x right, y down, x2/y2 exclusive edges
  (width = x2 - x1), in the original image unless a name says ``resized``;
* class indices follow ``class_mapping`` (names from the annotations); ``"bg"`` is always last;
* grey images become the 3-channel network input by repeating the channel, then subtracting
  ``img_channel_mean`` and multiplying by ``img_scaling_factor`` (keras.applications' "caffe" means,
  so ImageNet weights see the statistics they were trained with).
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import numbers
import os
import pickle
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .atomic import write_bytes_atomic
from .errors import CryoError

BG_CLASS = "bg"

# Reference image of the paper (Li et al. 2019, Methods): 3708 x 3838 px at 2.6 A/px. The bilateral
# filter's spatial sigma (100 px) was chosen there; we scale it to the working image (see
# ``Config.effective_sigma_d``).
PAPER_IMAGE_SHORT_SIDE = 3708
PAPER_PIXEL_SIZE_A = 2.6
# Li et al. (2019) Table 2 and Fig. 6b report F1, AP and mean IoU at this IoU.
PAPER_TABLE_IOU = 0.7

# The values a choice field accepts (Config.validate checks them; the modules that act on them import these).
CHOICES: dict[str, tuple[str, ...]] = {
    "recipe": ("paper", "scratch"),
    "parser": ("simple", "pascal_voc"),
    "input_channels": ("repeat", "slabs"),
    "bilateral_method": ("grid", "exact"),
    "roi_pool_mode": ("bilinear", "cells"),
    "backbone_norm": ("auto", "frozen_bn", "group", "batch", "ws"),
    "inference_precision": ("float32", "bfloat16"),
    "training_precision": ("float32", "bfloat16"),
    "train_mode": ("alternating", "joint"),
    "distribute": ("none", "mirrored", "multiworker"),
    "detection_views": ("none", "transpose", "dihedral"),
    "classifier_iou_target": ("roi", "box"),
}


def check_choice(name: str, value: Any) -> Any:
    """``value`` when it is one of ``CHOICES[name]``, else CryoError naming the field and the allowed
    values (the one check behind Config.validate and the modules acting on a choice field)."""
    allowed = CHOICES[name]
    if value not in allowed:
        raise CryoError(f"config field {name} = {value!r}: use one of {', '.join(allowed)}")
    return value


def _whole(value: Any, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= low


def _unit(value: Any) -> bool:
    return 0.0 <= float(value) <= 1.0


def _non_negative(value: Any) -> bool:
    return not isinstance(value, bool) and math.isfinite(float(value)) and float(value) >= 0.0


# The range rule of each plain numeric or choice field: (test, what the message says it must be).
# Config.validate and the typed section views (DetectionParams) check through check_field.
_RULES = {
    "whole>=1": (lambda v: _whole(v, 1), "must be a whole number >= 1"),
    "whole>=0": (lambda v: _whole(v, 0), "must be a whole number >= 0"),
    ">0": (lambda v: float(v) > 0, "must be > 0"),
    "[0,1]": (_unit, "must lie in [0, 1]"),
    "[0,1)": (lambda v: 0.0 <= float(v) < 1.0, "must lie in [0, 1)"),
    "[0,0.5)": (lambda v: 0.0 <= float(v) < 0.5, "must lie in [0, 0.5)"),
    ">=0": (_non_negative, "must be a number >= 0"),
    ">=1": (lambda v: _non_negative(v) and float(v) >= 1.0, "must be a number >= 1"),
}
FIELD_RULES: dict[str, str] = {
    **{name: "whole>=1" for name in (
        "im_size", "rpn_stride", "rpn_num_regions", "rpn_pre_nms_top_n", "rpn_max_proposals",
        "rpn_max_proposals_test", "pool_size", "roi_samples_per_bin", "num_rois", "max_detections",
        "num_epochs", "epoch_length", "input_slab", "group_norm_groups", "snr_sample_slices", "batch_size",
        "track_min_length", "weight_ema_interval", "specimen_profile_size", "specimen_min_vacuum_slices")},
    **{name: "whole>=0" for name in (
        "im_max_size", "lr_warmup_steps", "detection_refine_steps", "cpu_replicas", "track_refine_window",
        "prefetch_images", "track_max_gap")},
    **{name: ">=0" for name in (
        "track_max_centre_distance_frac", "aug_noise_max", "aug_blur_max_sigma", "aug_scale_range",
        "rpn_smooth_l1_beta", "classifier_smooth_l1_beta", "specimen_profile_sigma")},
    "track_extent_quantile": "[0,0.5)",
    "weight_ema_decay": "[0,1)",
    "roi_context": ">=1",
    "classifier_hard_negative_fraction": "[0,1)",
    **{name: ">0" for name in (
        "learning_rate", "std_scaling", "bilateral_sigma_r", "bilateral_sigma_d", "loss_epsilon")},
    **{name: "[0,1]" for name in (
        "rpn_min_overlap", "rpn_max_overlap", "classifier_min_overlap", "classifier_max_overlap",
        "rpn_max_positive_fraction", "classifier_positive_fraction", "test_fraction", "val_fraction",
        "lr_drop_fraction", "lr_drop_factor", "lr_warmup_max_fraction", "rpn_nms_overlap", "detection_nms_overlap",
        "detection_threshold", "eval_min_score", "rpn_min_score_test", "detection_iou_weight",
        "detection_rpn_weight", "detection_box_voting_iou", "detection_view_match_iou",
        "detection_view_agreement_weight", "tilt_consistency_min_iou", "track_untracked_weight", "track_min_iou",
        "specimen_vacuum_slope")},
    **{name: "choice" for name in CHOICES},
}
# Residual blocks of ResNet-50 in conv2_x .. conv5_x (He et al. 2016, Table 1): Config.resnet_blocks'
# default, and what ImageNet weights need.
RESNET50_BLOCKS = (3, 4, 6, 3)
# Fields whose 0 turns their feature off: their messages say so.
OFF_AT_ZERO = frozenset({"aug_noise_max", "aug_blur_max_sigma", "aug_scale_range", "classifier_hard_negative_fraction",
                         "detection_refine_steps", "detection_box_voting_iou", "track_refine_window",
                         "lr_warmup_steps", "prefetch_images", "weight_ema_decay"})


def check_field(name: str, value: Any) -> Any:
    """``value`` when it obeys the rule of Config field ``name`` (FIELD_RULES; fields without a rule
    pass), else CryoError ``config field NAME = VALUE: must ...``."""
    rule = FIELD_RULES.get(name)
    if rule == "choice":
        return check_choice(name, value)
    if rule is not None:
        test, must = _RULES[rule]
        try:
            ok = test(value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise CryoError(f"config field {name} = {value!r}: {must}" + (" (0 = off)" if name in OFF_AT_ZERO else ""))
    return value


@dataclass(frozen=True)
class DetectionParams:
    """The test-time rules of model.Detector: a typed view of the Config fields named beside each
    (see Config for their meaning and source), checked on construction by the same rules as
    Config.validate. Built by :meth:`from_config` (``cfg.detection``)."""

    threshold: float = 0.8              # detection_threshold: default minimum score of a detection
    nms_overlap: float = 0.5            # detection_nms_overlap: per-class NMS on the final boxes
    max_detections: int = 100           # max_detections: per image
    max_proposals: int = 300            # rpn_max_proposals_test: proposals through the head (paper: 300)
    min_proposal_score: float = 0.0     # rpn_min_score_test: objectness floor for the head
    refine_steps: int = 0               # detection_refine_steps
    box_voting_iou: float = 0.0         # detection_box_voting_iou (0: off)
    views: str = "none"                 # detection_views
    view_match_iou: float = 0.5         # detection_view_match_iou
    view_agreement_weight: float = 0.0  # detection_view_agreement_weight
    iou_weight: float = 0.5             # detection_iou_weight (with the IoU head)
    rpn_weight: float = 0.0             # detection_rpn_weight

    # view field -> Config field
    CONFIG_FIELDS: ClassVar[dict[str, str]] = {
        "threshold": "detection_threshold", "nms_overlap": "detection_nms_overlap",
        "max_detections": "max_detections", "max_proposals": "rpn_max_proposals_test",
        "min_proposal_score": "rpn_min_score_test", "refine_steps": "detection_refine_steps",
        "box_voting_iou": "detection_box_voting_iou", "views": "detection_views",
        "view_match_iou": "detection_view_match_iou", "view_agreement_weight": "detection_view_agreement_weight",
        "iou_weight": "detection_iou_weight", "rpn_weight": "detection_rpn_weight"}

    def __post_init__(self) -> None:
        for name, field_name in self.CONFIG_FIELDS.items():
            check_field(field_name, getattr(self, name))

    @classmethod
    def from_config(cls, cfg: Any) -> "DetectionParams":
        """The values of ``cfg``'s fields (CONFIG_FIELDS); CryoError naming the Config field if one is bad."""
        return cls(**{name: getattr(cfg, field_name) for name, field_name in cls.CONFIG_FIELDS.items()})


@dataclass
class Config:
    """All tunables. Defaults are the paper's values; comments give the source of each."""

    # --- run bookkeeping -------------------------------------------------------------------
    verbose: bool = True
    recipe: str = "paper"                     # training recipe that set the values below (recipes.py)
    network: str = "resnet50"                 # paper: ResNet-50 backbone
    seed: int = 42                            # one seed for numpy, python and TensorFlow
    model_path: str = "model_frcnn.weights.h5"
    base_net_weights: str | None = None       # --input_weight_path (keras.applications ResNet50 notop .h5)
    class_mapping: dict[str, int] = field(default_factory=dict)  # name -> index, "bg" last
    annotation_path: str | None = None
    split_path: str | None = None     # the train/val/test split file training used (measure_map reads it)
    parser: str = "simple"
    pixel_size_angstrom: float | None = None  # training images' pixel size (A/px): sidecars, MRC headers or --apix
    network_pixel_size_angstrom: float | None = None  # A per network-input pixel in training (after resizing)
    match_pixel_size: bool = True             # detection resizes inputs of known pixel size to that scale

    # --- augmentation (keras-frcnn flags --hf --vf --rot) ----------------------------------
    use_horizontal_flips: bool = False
    use_vertical_flips: bool = False
    rot_90: bool = False
    # Appearance and scale jitter (0 = off, the paper; see data_generators.jitter_appearance): volumes
    # from other samples and microscopes differ in noise, resolution and object size in pixels.
    # Intensity and gamma jitter are not offered: standardisation, percentile stretch and histogram
    # equalisation (preprocessing) undo any monotonic change of the grey values.
    aug_noise_max: float = 0.0                # added Gaussian noise, std uniform in [0, this] x the image's std
    aug_blur_max_sigma: float = 0.0           # Gaussian blur, sigma uniform in [0, this] network-input pixels
    aug_scale_range: float = 0.0              # resize by a factor log-uniform in [1/(1+r), 1+r] (shorter side
                                              # snapped to AUG_SCALE_MULTIPLE px, so few input shapes occur)

    # --- input image ---------------------------------------------------------------------
    im_size: int = 600                        # shorter side after resizing (keras-frcnn / paper)
    im_max_size: int = 1000                   # cap on the longer side after resizing; 0 = no cap
    img_channel_mean: list[float] = field(default_factory=lambda: [103.939, 116.779, 123.68])
    img_scaling_factor: float = 1.0
    dark_objects: bool = True                 # contrast polarity: density (membranes) is dark, as in
                                              # raw cryo-ET. Set False for inverted (white) density.
    # What fills the backbone's 3 input channels: "repeat" (the slice itself on all three: the paper)
    # or "slabs" (the means of input_slab slices just above, at and just below the slice, read from
    # the source tomogram: more signal at low SNR; see tomo_io.ImageSource / Volume.slab_channels).
    input_channels: str = "repeat"
    input_slab: int = 3

    # --- preprocessing (paper: bilateral filter, then histogram equalisation) -------------
    preprocess: bool = True                   # --no-preprocess switches both steps off (ablation)
    norm_percentiles: tuple[float, float] = (0.5, 99.5)   # robust range mapped to 0..255
    bilateral_sigma_r: float = 1.2            # paper sigma_r; unit: robust standard deviations of the
                                              # normalised image (see preprocessing.py)
    bilateral_sigma_d: float = 100.0          # paper sigma_d, in pixels of the paper's 3708-px image
    bilateral_reference_size: int = PAPER_IMAGE_SHORT_SIDE
    bilateral_method: str = "grid"            # "grid" (fast, O(N)) or "exact" (cv2.bilateralFilter)
    histogram_equalization: bool = True

    # --- anchors and RPN ---------------------------------------------------------------
    anchor_box_scales: list[float] = field(default_factory=lambda: [128.0, 256.0, 512.0])
    # w:h aspect ratios; anchors are area-preserving (w * h = scale**2 for every ratio).
    anchor_box_ratios: list[list[float]] = field(default_factory=lambda: [[1.0, 1.0], [1.0, 2.0], [2.0, 1.0]])
    rpn_stride: int = 16                      # ResNet-50 conv4 output stride
    # Where feature cell (0, 0) looks, in network-input pixels (continuous coordinates: pixel p spans
    # [p, p + 1)); cell (i, j) is centred at (feature_centre_px + j * stride, feature_centre_px + i *
    # stride). ResNet-50's padding and strides centre conv4's cell (i, j) on input pixel (16 i, 16 j),
    # i.e. at 16 j + 0.5: anchors sit there and the RoI pooling reads the map there (anchors.py).
    # keras-frcnn put both half a stride further (8 px), 7.5 px from what the features see; configs
    # written before this field load with that value (LEGACY_DEFAULTS).
    feature_centre_px: float = 0.5
    rpn_min_overlap: float = 0.3              # anchor IoU below this: negative
    rpn_max_overlap: float = 0.7              # anchor IoU above this: positive
    rpn_num_regions: int = 256                # anchors sampled per image for the RPN loss
    rpn_max_positive_fraction: float = 0.5    # at most half of them positive
    rpn_ignore_cross_boundary: bool = True    # anchors crossing the image edge are not trained on (paper; the scratch recipe trains on them)
    std_scaling: float = 4.0                  # RPN regression target scaling (keras-frcnn)
    rpn_pre_nms_top_n: int = 6000             # proposals kept by score before NMS
    rpn_nms_overlap: float = 0.7              # paper: NMS at IoU 0.7
    rpn_max_proposals: int = 300              # paper: at most 300 proposals
    rpn_max_proposals_test: int = 300         # proposals through the conv5 head at prediction (paper:
                                              # 300); fewer is faster (the head dominates on a CPU)
    rpn_min_score_test: float = 0.0           # at prediction, proposals whose objectness is below this skip
                                              # the head (0: none do, the paper's); a trained RPN scores
                                              # most of the 300 near 0 in a slice with few organelles
    rpn_min_box_size: float = 4.0             # proposals smaller than this (px, resized image) dropped

    # --- classifier head ---------------------------------------------------------------
    pool_size: int = 7                        # paper: 7x7 RoI max pooling
    # How each window of h/7 x w/7 is read (roi_pooling.py): "bilinear" takes the maximum over
    # roi_samples_per_bin^2 points interpolated at sub-cell positions, so a RoI moved by part of a
    # 16-px cell pools different values; "cells" widens every window to whole cells (Fast R-CNN's
    # RoI pooling; configs written before this field existed load with it).
    roi_pool_mode: str = "bilinear"
    roi_samples_per_bin: int = 2
    # Each proposal is pooled from its box scaled by this factor about its centre (not in the
    # paper, 1.0: the box itself): with 1.2 the 7x7 windows also cover a tenth of the box beyond
    # each side, so the head sees an edge the proposal fell short of (roi_pooling.enlarge_rois).
    roi_context: float = 1.0
    num_rois: int = 32                        # RoIs per classifier step (keras-frcnn -n)
    classifier_min_overlap: float = 0.1       # RoIs with IoU in [0.1, 0.5) are background
    classifier_max_overlap: float = 0.5       # RoIs with IoU >= 0.5 are positive
    classifier_positive_fraction: float = 0.5 # at most half of the sampled RoIs positive
    classifier_regr_std: list[float] = field(default_factory=lambda: [8.0, 8.0, 4.0, 4.0])
    # Ground-truth boxes join the RPN proposals when sampling classifier RoIs (as torchvision does;
    # keras-frcnn does not): the head sees positives even while the RPN is still untrained.
    classifier_add_gt_rois: bool = True
    # Hard background (not in the paper; 0 = off, keras-frcnn's sampling): up to this share of the
    # num_rois RoIs of each step (int(num_rois * share), see hard_negative_count) are the RPN's
    # best-ranked proposals that overlap no labelled box (IoU < classifier_min_overlap, which
    # calc_iou would drop), so the head also learns that isolated look-alikes (lipid droplets,
    # vesicles) are background. The scratch recipe uses 0.25.
    classifier_hard_negative_fraction: float = 0.0
    # A third head output (not in the paper): the IoU of each RoI with its object, learnt on the
    # sampled RoIs (losses.class_loss_iou, weight lambda_cls_iou). At detection the score becomes
    # class probability^(1 - w) * predicted IoU^w, w = detection_iou_weight, so well-placed boxes rank
    # above poorly placed ones (class probabilities alone saturate near 1 for both).
    classifier_iou_head: bool = False
    # What the IoU head learns: "roi", the IoU of the RoI itself with its object; "box", for positive
    # RoIs the IoU of the head's own refined box (the box a detection reports) with it, the RoI's IoU
    # for the others (targets_tf.refined_box_iou).
    classifier_iou_target: str = "roi"
    # True: the IoU head reads the head's features through a stop-gradient, with one hidden layer of
    # its own, so its loss changes nothing else: the detector learns what it would without it, and
    # the same weights scored with detection_iou_weight 0 are that detector (a paired comparison).
    classifier_iou_detach: bool = False

    # --- backbone ------------------------------------------------------------------------
    # "auto": "frozen_bn" when base_net_weights is given (ImageNet statistics kept), else "group"
    # (GroupNorm, trains from scratch with one image per step).
    backbone_norm: str = "auto"
    group_norm_groups: int = 32
    # Each residual block's last normalisation starts with scale 0 instead of 1, so every block starts
    # as the identity of its shortcut (Goyal et al. 2017; Wu & He's GroupNorm trains from scratch so).
    # Only the start of a from-scratch run differs: loaded weights overwrite it. keras-frcnn: false.
    # Off in both recipes: over 50 min from scratch it lost 0.16-0.25 COCO AP on three synthetic sets (BENCHMARKS.md).
    residual_zero_init: bool = False
    # Residual blocks in conv2_x, conv3_x, conv4_x (the shared trunk) and conv5_x (the head): ResNet-50,
    # the paper's. Fewer give a smaller network of the same layout and layer names (the test suite's
    # plumbing tests use one per stage); ImageNet weights need ResNet-50's.
    resnet_blocks: list[int] = field(default_factory=lambda: list(RESNET50_BLOCKS))
    # Arithmetic of the detector at prediction: "float32" (default) or "bfloat16" (Keras
    # mixed_bfloat16 policy: bfloat16 matmuls/convs, float32 weights and outputs; uses the AMX/AVX512
    # bf16 units of recent x86 CPUs). Weights files are the same either way.
    inference_precision: str = "float32"
    # Arithmetic of the training steps: "float32", or "bfloat16", which computes the convolutions in
    # bfloat16 with float32 weights, Adam state and losses (no loss scaling: bfloat16 has float32's
    # range). The weights file is float32 either way and loads for prediction in either precision.
    # bfloat16 saw 1.3x the images per hour on a CPU with AMX, but one of its two 60-min runs
    # (Lucchi++) stopped with NaN losses (BENCHMARKS.md), so float32 stays the default.
    training_precision: str = "float32"

    # --- loss and optimiser (paper) ------------------------------------------------------
    learning_rate: float = 1e-5
    adam_beta_1: float = 0.9
    adam_beta_2: float = 0.999
    lambda_rpn_class: float = 1.0
    lambda_rpn_regr: float = 1.0              # paper: lambda = 1
    lambda_cls_class: float = 1.0
    lambda_cls_regr: float = 1.0              # paper: lambda = 1
    lambda_cls_iou: float = 1.0               # weight of the IoU head's loss (classifier_iou_head)
    loss_epsilon: float = 1e-4                # normaliser guard in the losses (keras-frcnn)
    # Where the box losses turn from quadratic to linear, in units of the scaled deltas (std_scaling,
    # classifier_regr_std): smooth L1 = 0.5 x^2 / beta for |x| < beta, |x| - 0.5 beta beyond; 0 = L1.
    # Paper / keras-frcnn / Fast R-CNN: 1 for both. With the head's scaling of 8, beta 1 keeps every
    # centre error under 1/8 of the box width in the quadratic part, where the gradient fades with
    # the error; a smaller beta keeps pulling boxes that are almost right (torchvision's head: 1/9).
    rpn_smooth_l1_beta: float = 1.0
    classifier_smooth_l1_beta: float = 1.0
    # Step decay of the learning rate (not in the paper, whose rate is constant: 0 = off). Once
    # this fraction of the run has passed (of num_epochs, or of --time-budget when one is given),
    # both Adams continue at learning_rate * lr_drop_factor. A short low-rate phase at the end
    # sharpens the box regression of a model trained from scratch.
    lr_drop_fraction: float = 0.0
    lr_drop_factor: float = 0.1
    lr_warmup_steps: int = 0                  # linear ramp from 0 over this many images (paper: none)
    # ... ending by this fraction of the run at the latest (0 = no cap): a short --time-budget run
    # on a slow CPU would otherwise spend much of its time in the ramp.
    lr_warmup_max_fraction: float = 0.0
    # Exponential moving average of the weights (not in the paper: 0 = off; the scratch recipe: 0.999).
    # Per training step each weight's average moves toward it, avg <- d avg + (1 - d) w, with
    # d = min(weight_ema_decay, (1 + n) / (10 + n)) after n steps (tf.train.ExponentialMovingAverage's
    # ramp, so that the average does not hold on to the random start). The averages are what is saved
    # as the model and what validation scores; the step's own weights are saved beside them
    # (*_raw.weights.h5). One image per step makes the weights noisy; their average is steadier.
    weight_ema_decay: float = 0.0
    # ... applied every this many steps, the per-step decays multiplied (an update reads and writes
    # every weight: 36 ms for ResNet-50's 28 M values on one core, 5 % of a 384-px step; every 4th
    # step makes it about 1.5 %)
    weight_ema_interval: int = 4

    # --- training schedule ---------------------------------------------------------------
    # "alternating" (paper, keras-frcnn): an RPN step, then a classifier step that runs the backbone
    # again, each with its own Adam. "joint" (approximate joint training, Ren et al. 2015): one
    # backbone pass per image, proposals and classifier targets from that pass, one gradient of
    # L_rpn + L_cls; about half the cost of an alternating iteration.
    train_mode: str = "alternating"
    # Scale-out (not in the paper, which trains one image per step on one device; see distribute.py):
    # tf.distribute strategy "none", "mirrored" or "multiworker"; images per step (global, split
    # across the replicas; joint mode only beyond 1); logical CPU devices to mirror over (0: the GPUs).
    distribute: str = "none"
    batch_size: int = 1
    cpu_replicas: int = 0
    num_epochs: int = 2000
    epoch_length: int = 1000
    # Training images read, augmented and preprocessed ahead of the step in a background thread
    # (data_generators.Prefetch; not in keras-frcnn, which prepares each image between two steps:
    # 0). The images and their order are the same either way.
    prefetch_images: int = 2
    test_fraction: float = 1.0 / 6.0          # paper: 5:1 train:test (we split by tomogram)
    val_fraction: float = 0.0                 # --val-split: part of the training groups held out

    # --- detection / evaluation ------------------------------------------------------------
    detection_threshold: float = 0.8          # keras-frcnn's test threshold; --threshold overrides
    detection_nms_overlap: float = 0.5        # per-class NMS on final boxes
    # Test-time box refinement (not in the paper; 0 / 0.0 = off, the paper's single pass):
    # detection_refine_steps: the head is applied again to its own refined boxes this many times
    # (boxes that can reach min_score only); the class scores of the passes are averaged.
    detection_refine_steps: int = 0
    # detection_box_voting_iou: each box kept by the final NMS is replaced by the score-weighted mean
    # of the candidate boxes of its class that overlap it at IoU >= this (box voting).
    detection_box_voting_iou: float = 0.0
    # Test-time augmentation (not in the paper, whose detector sees each image once: "none"): the
    # detector also runs on the image mirrored on its diagonal ("transpose": 2 views) or on all its
    # flips and quarter turns ("dihedral": 8 views; boxes.VIEWS), the orientations the scratch recipe
    # trains with; the views' detections are fused (boxes.fuse_views): NMS at detection_nms_overlap
    # over all views picks each object, its box becomes the score-weighted mean of every view's best
    # box overlapping it at IoU >= detection_view_match_iou that no better object took, its score the
    # mean over the views (a view that missed it adds 0). N views take about N times as long.
    # With detection_view_agreement_weight a > 0 the fused score is also multiplied by the views'
    # agreement (their boxes' score-weighted mean IoU with the fused box) ^ a.
    detection_views: str = "none"
    detection_view_match_iou: float = 0.5
    detection_view_agreement_weight: float = 0.0
    detection_iou_weight: float = 0.5         # with classifier_iou_head: see there
    # Weight r of the RPN's objectness in the final score (not in the paper, whose score is the
    # head's class probability: 0.0): score = head score^(1 - r) * objectness^r. The RPN samples its
    # negatives over the whole image, the head (classifier_min_overlap) only near labelled objects,
    # so objectness is the stage that has learnt that isolated look-alikes are background.
    detection_rpn_weight: float = 0.0
    max_detections: int = 100                 # per image
    eval_min_score: float = 0.05              # measure_map keeps detections above this for AP
    snr_sample_slices: int = 5                # slices per volume or image group whose median SNR estimate is reported
    eval_iou_thresholds: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9])
    val_selection_iou: float = PAPER_TABLE_IOU  # validation AP at this IoU picks *_bestval weights

    # --- whole tomograms (tracking.py): boxes on consecutive slices linked into 3D objects --
    track_min_iou: float = 0.3                # link a track's last box to a new box at IoU >= this
    track_max_centre_distance_frac: float = 0.5  # ... or centre distance <= this x box size (0: off)
    track_max_gap: int = 2                    # slices a mitochondrion may be missed and still continue
    track_min_length: int = 3                 # objects seen on fewer slices are dropped
    track_extent_quantile: float = 0.0        # 0: x/y extent = union of member boxes
    # Per-slice boxes of a tomogram refined by their 3D object (tracking.refine_along_z; not in the
    # paper; 0 / False / 1.0 = off): each member box becomes the score-weighted mean of the object's
    # boxes on the slices within track_refine_window of it; with track_rescore it scores the object's
    # mean; boxes in no object score x track_untracked_weight. Applied to NAME_boxes2d of tomograms.
    track_refine_window: int = 0
    track_rescore: bool = False
    track_untracked_weight: float = 1.0
    # Tomograms: detections on slices outside the specimen are dropped before linking (not in the
    # paper; False = off). A tomogram reconstructed thicker than its lamella holds above and below it
    # only the missing wedge's ghosts of the objects its surfaces cut, and histogram equalisation
    # makes them look like objects. tracking.specimen_z_range finds the lamella's faces where the
    # slices' structure (preprocessing.structure_level: each slice shrunk to at most
    # specimen_profile_size px, blurred by specimen_profile_sigma px, its robust spread) rises
    # steepest from a floor of at least specimen_min_vacuum_slices slices whose mean slope is at most
    # specimen_vacuum_slope x the rise's; a volume filled by its specimen has no such floor, keeps all.
    track_clip_to_specimen: bool = False
    specimen_profile_size: int = 256
    specimen_profile_sigma: float = 2.0
    specimen_min_vacuum_slices: int = 4
    specimen_vacuum_slope: float = 0.75
    tilt_consistency_min_iou: float = 0.3     # tilt series: a box needs a neighbour-tilt box at this IoU

    # ---------------------------------------------------------------------------------------
    @property
    def detection(self) -> DetectionParams:
        """The detection fields as one typed, checked view (read at each use: later edits count)."""
        return DetectionParams.from_config(self)

    @property
    def num_anchors(self) -> int:
        """k: anchors per feature-map cell (paper: 9)."""
        return len(self.anchor_box_scales) * len(self.anchor_box_ratios)

    @property
    def class_names(self) -> list[str]:
        """Class names ordered by index (``"bg"`` last)."""
        return [n for n, _ in sorted(self.class_mapping.items(), key=lambda kv: kv[1])]

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_mapping)

    def effective_sigma_d(self, image_short_side: int) -> float:
        """Bilateral spatial sigma (px) for an image whose shorter side is ``image_short_side`` px."""
        return self.bilateral_sigma_d * image_short_side / float(self.bilateral_reference_size)

    def hard_negative_count(self) -> int:
        """RoIs per classifier step taken from the hard background (classifier_hard_negative_fraction)."""
        return int(self.num_rois * float(self.classifier_hard_negative_fraction))

    def resolved_backbone_norm(self) -> str:
        """"frozen_bn" or "group" after resolving "auto"."""
        if self.backbone_norm == "auto":
            return "frozen_bn" if self.base_net_weights else "group"
        return check_choice("backbone_norm", self.backbone_norm)

    def validate(self) -> Config:
        """Check every field a run depends on; returns self. CryoError naming the first bad field.

        Choice fields must be one of :data:`CHOICES`; sizes and counts positive; overlaps, fractions
        and thresholds inside [0, 1] with each min <= its max; anchors, ratios and box-coder weights
        positive; ``"bg"`` the last class when classes are set.
        """
        def bad(name: str, why: str) -> CryoError:
            return CryoError(f"config field {name} = {getattr(self, name)!r}: {why}")

        for name in FIELD_RULES:
            check_field(name, getattr(self, name))
        for low, high in (("rpn_min_overlap", "rpn_max_overlap"), ("classifier_min_overlap", "classifier_max_overlap")):
            if getattr(self, low) > getattr(self, high):
                raise bad(low, f"must not exceed {high} = {getattr(self, high)}")
        if self.train_mode != "joint" and (self.batch_size > 1 or self.distribute != "none"):
            raise bad("train_mode", "only joint training takes --batch-size > 1 or --distribute")
        blocks = self.resnet_blocks
        if not (isinstance(blocks, (tuple, list)) and len(blocks) == 4 and all(_whole(b, 1) for b in blocks)):
            raise bad("resnet_blocks", "needs 4 whole numbers >= 1 (blocks in conv2_x .. conv5_x; ResNet-50: 3 4 6 3)")
        if self.base_net_weights and tuple(blocks) != RESNET50_BLOCKS:
            raise bad("resnet_blocks", "ImageNet weights (--input_weight_path) need ResNet-50's 3 4 6 3")
        if not self.anchor_box_scales or min(float(s) for s in self.anchor_box_scales) <= 0:
            raise bad("anchor_box_scales", "needs one or more sizes > 0 (px)")
        if not self.anchor_box_ratios or any(len(r) != 2 or min(float(v) for v in r) <= 0
                                             for r in self.anchor_box_ratios):
            raise bad("anchor_box_ratios", "needs one or more [w, h] pairs > 0")
        if len(self.classifier_regr_std) != 4 or min(float(v) for v in self.classifier_regr_std) <= 0:
            raise bad("classifier_regr_std", "needs 4 weights > 0 ([x, y, w, h])")
        if not self.eval_iou_thresholds or not all(0.0 < float(t) <= 1.0 for t in self.eval_iou_thresholds):
            raise bad("eval_iou_thresholds", "needs one or more IoUs in (0, 1]")
        if not 0.0 < float(self.val_selection_iou) <= 1.0:
            raise bad("val_selection_iou", "must lie in (0, 1]")
        if self.class_mapping:
            indices = sorted(self.class_mapping.values())
            if indices != list(range(len(indices))):
                raise bad("class_mapping", "indices must be 0 .. n-1, each once")
            if self.class_mapping.get(BG_CLASS) != len(indices) - 1:
                raise bad("class_mapping", f"{BG_CLASS!r} must be there, with the last index")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-data dict of every field (JSON-serialisable)."""
        out = dataclasses.asdict(self)
        out["norm_percentiles"] = list(self.norm_percentiles)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "Config":
        """Build a Config from a dict; unknown keys are ignored with a warning, missing ones default
        (to :data:`LEGACY_DEFAULTS` where a field changes what an already trained model computes)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"{source}: ignoring fields this version does not know: {', '.join(unknown)}")
        values = {**LEGACY_DEFAULTS, **{k: v for k, v in data.items() if k in known}}
        cfg = cls(**values)
        cfg.norm_percentiles = tuple(cfg.norm_percentiles)  # type: ignore[assignment]
        return cfg


def apply_overrides(cfg: Config, assignments: list[str] | None) -> list[str]:
    """Set fields from ``FIELD=VALUE`` strings (the commands' ``--set``); returns the fields set.

    VALUE is read as JSON when it parses (``0.3``, ``true``, ``[64, 128]``, ``"cells"``), else as a
    plain string; it must fit the field's current type (an int where a float is expected is fine).
    CryoError for an unknown field or a value of the wrong type.
    """
    known = {f.name: f for f in dataclasses.fields(Config)}
    changed = []
    for assignment in assignments or []:
        name, sep, text = assignment.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise CryoError(f"--set {assignment!r}: expected FIELD=VALUE with a Config field "
                            f"(e.g. detection_nms_overlap=0.3)")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        current = getattr(cfg, name)
        if isinstance(current, bool) or isinstance(value, bool):
            ok = isinstance(current, bool) and isinstance(value, bool)
        elif isinstance(current, float) and isinstance(value, int):
            value, ok = float(value), True
        elif isinstance(current, (tuple, list)) and isinstance(value, list):
            value, ok = (tuple(value) if isinstance(current, tuple) else value), True
        else:
            ok = current is None or value is None or isinstance(value, type(current))
        if not ok:
            raise CryoError(f"--set {assignment!r}: {name} takes a {type(current).__name__}, got {text!r}")
        setattr(cfg, name, value)
        changed.append(name)
    return changed


# Fields whose default changed the computation of a trained model: a stored config without the
# field was trained (and must predict) with the value given here, not with today's default.
LEGACY_DEFAULTS: dict[str, Any] = {"roi_pool_mode": "cells", "feature_centre_px": 8.0}


# ------------------------------------------------------------------------------------------
# save / load
# ------------------------------------------------------------------------------------------
def json_path_for(pickle_path: str) -> str:
    """``run/config.pickle`` -> ``run/config.json``."""
    root, _ = os.path.splitext(pickle_path)
    return root + ".json"


def save_config(cfg: Config, path: str) -> None:
    """Write ``path`` (pickle, protocol 4) and the JSON twin beside it, each atomically."""
    write_bytes_atomic(path, pickle.dumps(cfg, protocol=4))
    write_bytes_atomic(json_path_for(path), json.dumps(cfg.to_dict(), indent=2, sort_keys=True).encode())


class _LegacyConfig:
    """Stand-in for keras-frcnn's ``keras_frcnn.config.Config`` while unpickling (plain attributes)."""


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only Config classes; every other global (os.system, eval, ...) is refused."""

    ALLOWED = {
        ("keras_frcnn_cryo.config", "Config"): Config,
        ("keras_frcnn.config", "Config"): _LegacyConfig,
        ("config", "Config"): _LegacyConfig,
    }

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def load_config(path: str) -> Config:
    """Load a Config from ``config.pickle`` (restricted) or a ``.json`` file.

    Older layouts (fields missing, keras-frcnn's own Config) load with defaults for what is missing.
    Raises CryoError naming the file on anything else.
    """
    if not os.path.isfile(path):
        raise CryoError("config file not found", path)
    with open(path, "rb") as fh:
        raw = fh.read()
    if not raw:
        raise CryoError("config file is empty", path)
    if path.endswith(".json"):
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CryoError(f"not a valid JSON config ({exc.__class__.__name__})", path) from None
        if not isinstance(data, dict):
            raise CryoError("JSON config is not an object", path)
        return Config.from_dict(data, source=path)
    try:
        obj = RestrictedUnpickler(io.BytesIO(raw)).load()
    except pickle.UnpicklingError as exc:
        raise CryoError(f"invalid or unsafe config pickle ({exc})", path) from None
    except Exception as exc:  # truncated / garbage pickles raise many types (EOFError, ValueError, ...)
        raise CryoError(f"cannot read config pickle ({exc.__class__.__name__}: {exc})", path) from None
    if isinstance(obj, Config):
        # a pickle from an older layout lacks newer fields: rebuild through from_dict
        return Config.from_dict(dict(obj.__dict__), source=path)
    if isinstance(obj, _LegacyConfig):
        return Config.from_dict(dict(obj.__dict__), source=path)
    if isinstance(obj, dict):
        return Config.from_dict(obj, source=path)
    raise CryoError(f"config pickle holds a {type(obj).__name__}, not a Config", path)
