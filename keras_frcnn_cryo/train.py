"""Training (train_frcnn.py): read and split the annotations, fit the recipe to the boxes, and the
loop that feeds images to the training step (trainer.Trainer: alternating RPN and classifier steps as
in Li et al. 2019, or joint steps, optionally batched under a tf.distribute strategy).

An epoch is ``epoch_length`` images. After each epoch the summed mean loss is compared with the best
so far; the weights are written (atomically) only when it improves (the paper's rule). With a
validation split the validation loss and AP are reported every epoch and the best model on
validation AP at ``Config.val_selection_iou`` (0.7) is kept as well (``*_bestval.weights.h5``).
With ``Config.weight_ema_decay`` > 0 both files hold the weights' moving averages (validation
scores those too) and ``*_raw.weights.h5`` the step's own weights, saved with them.

Library use (what train_frcnn.py and the demo run)::

    cfg = recipes.config_for(annotation_path="annotations.txt")      # the recipe's defaults
    train_records, val_records = train.prepare(cfg)                   # split, fit to the boxes
    result = train.fit(cfg, train_records, val_records, "config.pickle", time_budget_min=60)
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from . import anchors, data_generators, metrics, recipes, splits, tomo_io
from .annotations import detections_to_dicts, load_annotations, records_to_ground_truth
from .atomic import atomic_path, check_output_dir, remove_stale_temporaries
from .cli import set_seed
from .config import BG_CLASS, CHOICES, Config, apply_overrides, check_choice, save_config
from .errors import CryoError
from .model import Detector, check_weights_path, fetch_imagenet_weights, save_weights_atomic
from .preprocessing import prepare_image, resize_scale
from .trainer import (LOSS_KEYS, EpochStats, Trainer, head_loss_keys, load_training_state, save_training_state,
                      state_path, total_loss, training_generators)

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


def raw_path(model_path: str) -> str:
    """Where the step's own weights go beside their moving averages (Config.weight_ema_decay > 0)."""
    return model_path[: -len(".weights.h5")] + "_raw.weights.h5"


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
    for target in (cfg.model_path, bestval_path(cfg.model_path), raw_path(cfg.model_path), state_path(cfg.model_path),
                   config_path):
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
                            (classifier_ran and not all(math.isfinite(step[k]) for k in head_loss_keys(trainer))):
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
                    with trainer.averaged_weights():
                        save_weights_atomic(trainer.models.model_all, cfg.model_path)
                    if trainer.averages:
                        save_weights_atomic(trainer.models.model_all, raw_path(cfg.model_path))
                    if not config_saved:
                        save_config(cfg, config_path)
                        config_saved = True
                        print(f"config written to {config_path}")
                best_loss = curr
            if val_records:
                with trainer.averaged_weights():     # the weights that would be saved
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
