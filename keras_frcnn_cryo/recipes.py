"""Training recipes: the paper's settings, or a recipe for training from scratch on a CPU.

``train_frcnn.py --recipe auto`` (the default) picks:

* ``"paper"`` when ImageNet weights are given (``--input_weight_path``): every Config default,
  i.e. Li et al. (2019) as published: alternating RPN / classifier steps, Adam at a constant 1e-5,
  anchors of 128 / 256 / 512 px, shorter side 600 px, no augmentation, a single detection pass;
* ``"scratch"`` otherwise: the settings that, measured in BENCHMARKS.md, give the most accuracy
  per CPU-hour from random weights (:class:`ScratchRecipe`), plus four choices fitted to the
  labelled boxes (:func:`fit_to_boxes`): the input size, the anchor sizes, the cap on detections
  per image and the RoIs per step.

Options given on the command line always win over the recipe. The recipe the run used is recorded
in the config (``Config.recipe``) together with every value it set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from .config import Config
from .anchors import anchor_shapes, propose_anchor_scales
from .errors import CryoError
from .preprocessing import resize_scale

RECIPES = ("auto", "paper", "scratch")


@dataclass(frozen=True)
class ScratchRecipe:
    """Config values of the from-scratch recipe (field names are Config's)."""

    train_mode: str = "joint"                 # one backbone pass per image: about twice the images per hour
    learning_rate: float = 1e-4               # 10x the paper's: random weights need larger steps
    lr_warmup_steps: int = 100                # linear ramp from 0 over the first steps ...
    lr_warmup_max_fraction: float = 0.05      # ... over 5 % of the run at most (3 min of an hour)
    lr_drop_fraction: float = 0.75            # last quarter of the run at a tenth of the rate
    use_horizontal_flips: bool = True
    use_vertical_flips: bool = True
    rot_90: bool = True
    input_channels: str = "slabs"             # when every training image's tomogram is known (fit_input_channels)
    classifier_hard_negative_fraction: float = 0.25  # a quarter of the RoIs: the RPN's best-ranked proposals far from objects
    # RPN targets over every anchor, those crossing the image edge included (keras-frcnn and the paper
    # ignore them): objects cut by the border get anchors that reach the edge. Two hour-long A/Bs on
    # six synthetic test sets: AP@0.7 +0.05, AP@0.9 +0.07, COCO AP +0.04 on average (BENCHMARKS.md)
    rpn_ignore_cross_boundary: bool = False
    # The saved model is the moving average of the weights (Config.weight_ema_decay), the steps' own
    # weights beside it: paired on two hour-long runs (the same run scored both ways), AP@0.7 higher on
    # all six synthetic test sets (mean +0.03), COCO AP mean +0.02 (BENCHMARKS.md)
    weight_ema_decay: float = 0.999
    # Tomograms (test_frcnn.py on MRC files): each slice's box averaged with its 3D object's boxes on
    # the 2 slices either side, and scored by the object's mean score (tracking.refine_along_z)
    track_refine_window: int = 2
    track_rescore: bool = True
    # Tomograms reconstructed thicker than their lamella: no detections on the slices beyond its faces
    # (tracking.specimen_z_range), where the model fired on the missing wedge's ghosts (BENCHMARKS.md)
    track_clip_to_specimen: bool = True
    # Prediction: proposals with RPN objectness below 0.05 skip the conv5 head (half of the 300 on a
    # synthetic slice): 1.5x faster per slice, AP within 0.006 on four test sets (BENCHMARKS.md)
    rpn_min_score_test: float = 0.05
    # Prediction: each image also detected mirrored on its diagonal, the two views' boxes fused
    # (Config.detection_views): AP@0.7 +0.02 to +0.08 and COCO AP +0.02 to +0.06 on four test sets
    # at twice the time per image (BENCHMARKS.md)
    detection_views: str = "transpose"
    # RoIs per step through the conv5 head: keras-frcnn's -n, 32; lowered to FEW_OBJECTS_ROIS by
    # fit_to_boxes when the training images hold few objects each
    num_rois: int = 32


# Input size and anchors fitted to the boxes (scratch recipe; see fit_to_boxes)
TARGET_OBJECT_CELLS = 3.0      # images are scaled to make the median labelled box this many feature cells wide
MAX_DOWNSCALE = 0.75           # ... but shrunk at most to 3/4 (the furthest measured: BENCHMARKS.md)
MAX_UPSCALE = 2.0              # ... and enlarged at most 2x
MAX_OBJECT_CELLS = 8.0         # larger objects are shrunk further, to at most this many cells
SIZE_MULTIPLE = 32             # im_size is rounded up to a multiple of this
ANCHOR_MATCH_IOU = 0.5         # a box is "matched" when some anchor shape, centred on it, reaches this IoU
ANCHOR_MATCH_FRACTION = 0.9    # fit anchors when fewer than this share of the boxes is matched
DETECTIONS_PER_LABEL = 3       # max_detections >= this x the most boxes labelled on one image
# RoIs per step when a median training image's objects fit the positive share of this many RoIs
# (classifier_positive_fraction x 16 = 8). The conv5 head runs on every RoI and is most of a step's
# time on a CPU: on the synthetic set (2-3 objects per image, 288 px) 16 RoIs saw 1.6x the images of
# 32 in an hour, AP@0.7 +0.02 to +0.13 on three test sets; on Lucchi++ (median 20 objects per image, 576 px)
# only 1.2x, and AP@0.7 0.10 against 32's 0.24: too few positive RoIs per object (BENCHMARKS.md)
FEW_OBJECTS_ROIS = 16


def resolve(name: str, has_imagenet_weights: bool) -> str:
    """"paper" or "scratch" for a --recipe value ("auto": paper with ImageNet weights, else scratch)."""
    if name not in RECIPES:
        raise CryoError(f"unknown recipe {name!r} (use one of {', '.join(RECIPES)})")
    if name == "auto":
        return "paper" if has_imagenet_weights else "scratch"
    return name


def recipe_values(name: str) -> dict[str, Any]:
    """Config fields a resolved recipe sets: the Config defaults for "paper", ScratchRecipe's for "scratch"."""
    source = Config() if name == "paper" else ScratchRecipe()
    return {f.name: getattr(source, f.name) for f in fields(ScratchRecipe)}


def config_for(recipe: str = "auto", has_imagenet_weights: bool = False, **values: Any) -> Config:
    """A Config with the resolved ``recipe``'s values, then ``values`` (Config field names): what
    train_frcnn.py starts from before the data-dependent choices (train.prepare).

    ``config_for(annotation_path="annotations.txt")`` is README's ``train_frcnn.py -p annotations.txt``.
    """
    cfg = Config()
    cfg.recipe = resolve(recipe, has_imagenet_weights)
    for name, value in {**recipe_values(cfg.recipe), **values}.items():
        if not hasattr(cfg, name):
            raise CryoError(f"{name!r} is not a Config field")
        setattr(cfg, name, value)
    return cfg


def box_sizes(records: list[dict[str, Any]]) -> np.ndarray:
    """sqrt(w * h) of every labelled box, in pixels of its original image (float64, (N,))."""
    return np.asarray([math.sqrt(max(b["x2"] - b["x1"], 1e-6) * max(b["y2"] - b["y1"], 1e-6))
                       for r in records for b in r["bboxes"]], dtype=np.float64)


def anchor_match_fraction(records: list[dict[str, Any]], cfg: Config) -> float:
    """Share of the labelled boxes that some anchor shape, centred on the box, overlaps at IoU >=
    ANCHOR_MATCH_IOU, after resizing as in training (shorter side ``cfg.im_size``).

    An upper bound on what the anchors on the 16-px grid reach; a box under it gets no positive anchor
    but its single best one, so the RPN learns it slowly and places it poorly.
    """
    shapes = anchor_shapes(cfg)                                            # (K, 2) w, h
    matched = total = 0
    for record in records:
        scale = resize_scale(float(record["height"]), float(record["width"]), cfg)
        for b in record["bboxes"]:
            w, h = (b["x2"] - b["x1"]) * scale, (b["y2"] - b["y1"]) * scale
            inter = np.minimum(w, shapes[:, 0]) * np.minimum(h, shapes[:, 1])
            iou = inter / (w * h + shapes[:, 0] * shapes[:, 1] - inter)
            matched += bool(iou.max() >= ANCHOR_MATCH_IOU)
            total += 1
    return matched / total if total else 1.0


def tomogram_slices(records: list[dict[str, Any]]) -> tuple[int, str]:
    """How many of the records are tomogram slices whose volume can be read (a sidecar beside the image
    naming an existing tomogram), and the reason for the first that is not ("" when all are)."""
    from . import tomo_io

    found, reason = 0, ""
    for record in records:
        _, _, problem = tomo_io.tomogram_of(record["filepath"])
        why = {"": "", "no sidecar": f"{record['filepath']} has no sidecar (.json)",
               "tilt image": f"{record['filepath']} is a tilt image",
               "missing tomogram": f"the tomogram of {record['filepath']} is missing"}[problem]
        found += not why
        reason = reason or why
    return found, reason


def fit_input_channels(cfg: Config, records: list[dict[str, Any]]) -> str:
    """Keep ``cfg.input_channels`` "slabs" only when every training image is a slice of a readable
    tomogram (:func:`tomogram_slices`); otherwise "repeat". Returns the line saying which and why."""
    if cfg.input_channels != "slabs":
        return f"input: each image repeated on the 3 channels (input_channels {cfg.input_channels})"
    found, reason = tomogram_slices(records)
    if found == len(records):
        return (f"input: slabs of {cfg.input_slab} slices above, at and below each slice, from the tomograms "
                f"named by the images' sidecars (all {found} training images)")
    cfg.input_channels = "repeat"
    return f"input: each image repeated on the 3 channels ({found} of {len(records)} images have a tomogram: {reason})"


def fit_to_boxes(cfg: Config, records: list[dict[str, Any]], fit_size: bool = True,
                 fit_anchors: bool = True, fit_rois: bool = True) -> list[str]:
    """Fit the input size, the anchors and the detection cap to the labelled boxes (scratch recipe).

    * ``im_size``: the images' shorter side, scaled towards a median box of TARGET_OBJECT_CELLS feature
      cells, by a factor between MAX_DOWNSCALE and MAX_UPSCALE (further down only while the median
      box stays wider than MAX_OBJECT_CELLS), rounded up to SIZE_MULTIPLE px; ``im_max_size`` keeps
      the images' aspect ratio. Smaller images mean more images per CPU-hour: at 3/4 of the size
      this gave AP@0.7 +0.07 to +0.15 on three of four test sets in 60 min (BENCHMARKS.md).
    * anchors: kept when at least ANCHOR_MATCH_FRACTION of the boxes match them
      (:func:`anchor_match_fraction`), else proposed from the box sizes
      (anchors.propose_anchor_scales).
    * ``max_detections``: raised to DETECTIONS_PER_LABEL x the most boxes on one image if that is more.
    * ``num_rois`` (with ``fit_rois``): lowered to FEW_OBJECTS_ROIS when the median image's boxes fit
      the positive share of that many RoIs (``classifier_positive_fraction``), else left as it is.

    Changes ``cfg`` in place; returns one line per decision, saying why.
    """
    sizes = box_sizes(records)
    if sizes.size == 0:
        raise CryoError("no labelled boxes to fit the recipe to")
    notes = []
    short_sides = np.asarray([min(float(r["width"]), float(r["height"])) for r in records])
    long_sides = np.asarray([max(float(r["width"]), float(r["height"])) for r in records])
    native = float(np.median(short_sides))
    median_box = float(np.median(sizes))
    if fit_size:
        cells = median_box / cfg.rpn_stride
        scale = min(max(TARGET_OBJECT_CELLS / cells, MAX_DOWNSCALE), MAX_UPSCALE)
        scale = min(scale, MAX_OBJECT_CELLS / cells)
        size = int(SIZE_MULTIPLE * math.ceil(native * scale / SIZE_MULTIPLE))
        aspect = float(np.median(long_sides / short_sides))
        cfg.im_size = size
        cfg.im_max_size = int(SIZE_MULTIPLE * math.ceil(size * max(aspect, 1.0) / SIZE_MULTIPLE))
        notes.append(f"input size: shorter side {size} px (images {native:.0f} px, median box {median_box:.0f} px "
                     f"becomes {median_box * size / native / cfg.rpn_stride:.1f} feature cells; "
                     f"{TARGET_OBJECT_CELLS:g} wanted, images scaled by {MAX_DOWNSCALE:g}-{MAX_UPSCALE:g}x, "
                     f"objects kept at most {MAX_OBJECT_CELLS:g} cells)")
    if fit_anchors:
        share = anchor_match_fraction(records, cfg)
        if share < ANCHOR_MATCH_FRACTION:
            old = " / ".join(f"{s:g}" for s in cfg.anchor_box_scales)
            cfg.anchor_box_scales = propose_anchor_scales(records, cfg)
            new = " / ".join(f"{s:g}" for s in cfg.anchor_box_scales)
            notes.append(f"anchors: {new} px fitted to the boxes: the anchors {old} px reach IoU "
                         f">= {ANCHOR_MATCH_IOU:g} for only {100 * share:.0f} % of them")
        else:
            notes.append(f"anchors: kept ({100 * share:.0f} % of the boxes match them at IoU >= {ANCHOR_MATCH_IOU:g})")
    most = max((len(r["bboxes"]) for r in records), default=0)
    if DETECTIONS_PER_LABEL * most > cfg.max_detections:
        cfg.max_detections = DETECTIONS_PER_LABEL * most
        notes.append(f"detections per image capped at {cfg.max_detections} ({most} boxes labelled on one image)")
    if fit_rois and cfg.num_rois > FEW_OBJECTS_ROIS:
        typical = float(np.median([len(r["bboxes"]) for r in records]))
        held = f"{typical:g} {'box' if typical == 1 else 'boxes'}"
        slots = int(FEW_OBJECTS_ROIS * cfg.classifier_positive_fraction)
        if typical <= slots:
            notes.append(f"RoIs per step: {FEW_OBJECTS_ROIS} instead of {cfg.num_rois} (a median image holds "
                         f"{held}, within the {slots} positive RoIs of {FEW_OBJECTS_ROIS}; the conv5 "
                         f"head runs on every RoI and is most of a step's time on a CPU)")
            cfg.num_rois = FEW_OBJECTS_ROIS
        else:
            notes.append(f"RoIs per step: {cfg.num_rois} (a median image holds {held}, more than the "
                         f"{slots} positive RoIs of {FEW_OBJECTS_ROIS})")
    return notes
