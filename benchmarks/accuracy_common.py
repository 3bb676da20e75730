"""Shared by the accuracy benchmarks: train a variant with train_frcnn.py's options, evaluate a detector.

Each variant is ``train_frcnn.py -p ANNOTATIONS --time-budget B`` plus its own flags; evaluation runs
the package's own Detector, reading each image as the model was trained (predict.detect_images), and
metrics.evaluate (measure_map's arithmetic), so every figure is what a user gets.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Mapping

from keras_frcnn_cryo import annotations, metrics, predict, splits, train
from keras_frcnn_cryo.atomic import write_text_atomic
from keras_frcnn_cryo.config import Config
from keras_frcnn_cryo.hardware import cpu_description
from parallel_training import limit_threads, run_variants

IOUS = (0.5, 0.6, 0.7, 0.8, 0.9)
# variant -> train_frcnn.py flags added to "-p annotations.txt --time-budget B", in both accuracy
# benchmarks (each adds variants of its own, e.g. the input size of its data)
VARIANTS = {
    "default": [],                                                  # README's command
    "paper": ["--recipe", "paper"],                                 # Li et al. 2019 as published
    "near-bg": ["--set", "classifier_hard_negative_fraction=0"],    # keras-frcnn: bg RoIs only near objects
    "all-bg": ["--set", "classifier_min_overlap=0"],                # every RoI below IoU 0.5 is background
    "half-hard-bg": ["--set", "classifier_hard_negative_fraction=0.125"],  # half the default share of far bg
    "jitter": ["--set", "aug_noise_max=0.5", "--set", "aug_blur_max_sigma=1.0",  # noise, blur and scale
               "--set", "aug_scale_range=0.2"],                     # jitter (issue 12 item 6)
    "bf16": ["--set", "training_precision=bfloat16"],               # bfloat16 convolutions (AMX/AVX512-BF16)
    "ws": ["--backbone-norm", "ws"],                                # weight-standardised convs, no GroupNorm
    "rois16": ["-n", "16"],                                         # 16 RoIs per step to the conv5 head
    "rois32": ["-n", "32"],                                         # 32 RoIs per step (the paper's)
    "conv5-1": ["--set", "resnet_blocks=[3,4,6,1]"],                # one residual block in the RoI head, not 3
    "zero-gamma": ["--set", "residual_zero_init=true"],             # residual blocks start as identities
    "old-grid": ["--set", "feature_centre_px=8.0"],                # anchors and pooling at keras-frcnn's grid
    "context": ["--set", "roi_context=1.2"],                       # RoIs pooled from their box x1.2
    "l1-head": ["--set", "classifier_smooth_l1_beta=0.111"],       # head's box loss linear beyond 1/9
    "l1": ["--set", "classifier_smooth_l1_beta=0.111", "--set", "rpn_smooth_l1_beta=0.111"],  # ... and the RPN's
    "inside-anchors": ["--set", "rpn_ignore_cross_boundary=true"],  # RPN trained on anchors inside the image only (default until 2026-12-07)
    "no-average": ["--set", "weight_ema_decay=0"],                  # the last step's weights saved, not their average (default until 2026-12-07)
    "other-seed": ["--seed", "4242"],                               # the default, another training seed: run-to-run spread
    # + an IoU head on the refined boxes behind a stop-gradient: the detector as the default's, its
    # scores weighted by the predicted IoU (test-time "IoU weight 0" scores the same weights without)
    "iou-detached": ["--set", "classifier_iou_head=true", "--set", "classifier_iou_target=box",
                     "--set", "classifier_iou_detach=true"],
}
# test-time options evaluated on the default model with --test-time: name -> measure_map --set values
TEST_TIME = {
    "as trained": [],
    "refine once": ["detection_refine_steps=1"],
    "box voting 0.7": ["detection_box_voting_iou=0.7"],
    "NMS 0.3": ["detection_nms_overlap=0.3"],
    "RPN score 0.3": ["detection_rpn_weight=0.3"],      # score = head^0.7 * RPN objectness^0.3
    "RPN score 0.5": ["detection_rpn_weight=0.5"],
    "proposal floor 0.05": ["rpn_min_score_test=0.05"],  # proposals scored below it skip the head
    "proposal floor 0.2": ["rpn_min_score_test=0.2"],
    "proposal floor 0.5": ["rpn_min_score_test=0.5"],
    "views none": ["detection_views=none"],              # each image once (the paper)
    "views transpose": ["detection_views=transpose"],    # + the diagonal mirror: detections fused (boxes.fuse_views)
    "views dihedral": ["detection_views=dihedral"],      # all 8 flips and quarter turns
    "views dihedral, agreement": ["detection_views=dihedral", "detection_view_agreement_weight=1.0"],
    "IoU weight 0": ["detection_iou_weight=0"],            # a model with an IoU head scored by its class only
    "IoU weight 1": ["detection_iou_weight=1"],            # ... by its predicted IoU only
}


WEIGHTS = "model_frcnn.weights.h5"          # what train_frcnn.py saves (the averages, with weight_ema_decay)
RAW_WEIGHTS = "model_frcnn_raw.weights.h5"  # the step's own weights beside them (weight_ema_decay > 0)


def model_runs(args: argparse.Namespace) -> list[tuple[str, str, list[str] | None, str]]:
    """(label, variant, overrides, weights file) of every evaluation: each ``--variants`` model, its
    raw weights where it averaged them (label "VARIANT, raw weights": the same run without the
    average, a paired comparison; not with --no-raw-weights), then the first model under the
    ``--test-time`` options chosen (None: the flag was not given; []: every option of TEST_TIME)."""
    runs: list[tuple[str, str, list[str] | None, str]] = []
    for variant in args.variants:
        runs.append((variant, variant, None, WEIGHTS))
        if not args.no_raw_weights and os.path.isfile(os.path.join(args.out, variant, RAW_WEIGHTS)):
            runs.append((f"{variant}, raw weights", variant, None, RAW_WEIGHTS))
    if args.test_time is not None:
        runs += [(f"{args.variants[0]}, {name}", args.variants[0], TEST_TIME[name], WEIGHTS)
                 for name in (args.test_time or list(TEST_TIME))]
    return runs


def add_run_options(parser: argparse.ArgumentParser, variants: Mapping[str, list[str]], out: str) -> None:
    """The options both accuracy benchmarks share: output folder, budget, variants, jobs, seed,
    test-time options, --eval-only, threads (and --train-only, how run_variants starts each child)."""
    parser.add_argument("--out", default=out)
    parser.add_argument("--budget-min", type=float, default=60.0, help="training wall-time budget per model")
    parser.add_argument("--variants", nargs="+", default=["default"], choices=sorted(variants),
                        help="models to train (default: README's command only)")
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at once, each on its share of the cores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-time", nargs="*", default=None, choices=sorted(TEST_TIME), metavar="OPTION",
                        help="also evaluate the first --variants model with these test-time options "
                             "(TEST_TIME; none named: all)")
    parser.add_argument("--no-raw-weights", action="store_true",
                        help="skip the evaluation of each model's raw weights beside its averaged ones")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the models an earlier run left in --out (same data arguments) without training")
    parser.add_argument("--train-only", choices=sorted(variants), help=argparse.SUPPRESS)  # run_variants' children
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow threads for this run (0: all cores); to run two benchmarks side by side")


def start(args: argparse.Namespace, annotation_path: str, flags: Mapping[str, list[str]]) -> bool:
    """Limit the threads as asked. In a ``--train-only`` child: train that variant on the data the
    parent wrote and return True (the child is done). Otherwise print the machine and return False."""
    if args.threads or args.train_only:
        limit_threads(args.threads)
    if args.train_only:
        train_variant(annotation_path, os.path.join(args.out, args.train_only), args.budget_min, args.seed,
                      flags[args.train_only], args.train_only)
        return True
    print(f"machine: {cpu_description()}; threads {args.threads or os.cpu_count()}; load {os.getloadavg()}",
          flush=True)
    return False


def train_all(args: argparse.Namespace, script: str, annotation_path: str, flags: Mapping[str, list[str]]) -> None:
    """Train every ``--variants`` model into ``--out/VARIANT`` (``--jobs`` at once, each in a child
    process running ``script``), or nothing with ``--eval-only``."""
    if args.eval_only:
        print("--eval-only: evaluating the models already in " + args.out, flush=True)
    elif args.jobs > 1 and len(args.variants) > 1:
        run_variants(os.path.abspath(script), sys.argv[1:], args.variants, args.jobs)
    else:
        for variant in args.variants:
            train_variant(annotation_path, os.path.join(args.out, variant), args.budget_min, args.seed,
                          flags[variant], variant)


def train_variant(annotation_path: str, run_dir: str, budget_min: float, seed: int, flags: list[str],
                  label: str) -> None:
    """train_frcnn.py -p annotation_path --time-budget budget_min --seed seed + flags, into run_dir; prints
    the minutes, epochs and training images seen."""
    argv = ["-p", annotation_path, "--time-budget", str(budget_min), "--seed", str(seed),
            "--config_filename", os.path.join(run_dir, "config.pickle"),
            "--output_weight_path", os.path.join(run_dir, "model_frcnn.weights.h5"), *flags]
    started = time.time()
    train.main(train.build_parser().parse_args(argv))
    with open(os.path.join(run_dir, "model_frcnn_log.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    print(f"variant {label}: trained {(time.time() - started) / 60:.1f} min, {len(rows)} epochs, "
          f"{sum(int(r['images']) for r in rows)} images seen, final epoch loss {float(rows[-1]['loss']):.3f}",
          flush=True)


def write_results(out_dir: str, results: Mapping[str, dict]) -> None:
    """``out_dir/results.json``: every evaluation's figures by label (written atomically)."""
    path = os.path.join(out_dir, "results.json")
    write_text_atomic(path, json.dumps(results, indent=2) + "\n")
    print(f"results -> {path}")


def load_run(run_dir: str, overrides: list[str] | None = None, weights: str = WEIGHTS):
    """The Detector of a trained variant (config.pickle + the ``weights`` file in run_dir)."""
    return predict.load_detector(os.path.join(run_dir, "config.pickle"), os.path.join(run_dir, weights),
                                 overrides=overrides)


def records_of(annotation_path: str, split: str, seed: int, test_fraction: float = Config().test_fraction) -> list[dict]:
    """The records of one split ("test", ...) of an annotation file, or all of them ("all")."""
    records, _, _ = annotations.load_annotations(annotation_path, "simple")
    if split == "all":
        return records
    splits.assign_splits(records, splits.default_split_path(annotation_path), test_fraction, None, seed)
    return [r for r in records if r["imageset"] == split]


def evaluate(detector, records: list[dict], label: str,
             group_note: Callable[[str], str] | None = None) -> dict:
    """AP at IOUS, COCO AP, F1@0.7 and mIoU of ``detector`` on ``records`` (printed with a per-group
    table at IoU 0.7; ``group_note(group)`` adds text to a group's line). Returns the summary dict."""
    dets = []
    for path, found in predict.detect_images(detector, [r["filepath"] for r in records],
                                             detector.cfg.eval_min_score, desc=label).items():
        dets += annotations.detections_to_dicts(path, found)
    return score(dets, records, detector.cfg.class_names[:-1], label, group_note)


def score(dets: list[dict], records: list[dict], classes: list[str], label: str,
          group_note: Callable[[str], str] | None = None) -> dict:
    """:func:`evaluate`'s figures (printed, and returned) for detection dicts already made."""
    gt = annotations.records_to_ground_truth(records)
    result = metrics.evaluate(gt, dets, IOUS, classes=classes)
    per_group = metrics.evaluate_by_group(gt, dets, {r["filepath"]: splits.image_group(r["filepath"])
                                                     for r in records}, 0.7, classes=classes)
    aps = "  ".join(f"AP@{t:g} {result['mAP'][t]:.3f}" for t in IOUS)
    print(f"[{label}] {len(records)} images, {sum(len(v) for v in gt.values())} objects: {aps}  "
          f"COCO AP {result['mean']['coco_ap']:.3f}  F1@0.7 {result['mean']['f1'][0.7]:.3f}  "
          f"mIoU {result['mean']['miou']:.3f}", flush=True)
    lost = {}
    for name in classes:
        err = result["per_class"][name]["errors"][0.7]
        lost[name] = {**err["dap"], "missed": err["missed"]}
        print(f"[{label}]   {name}: AP@0.7 gained by fixing localisation {err['dap']['localisation']:+.3f}, "
              f"duplicates {err['dap']['duplicate']:+.3f}, background {err['dap']['background']:+.3f}, "
              f"ranking by true IoU {err['dap']['ranking']:+.3f}; "
              f"{err['missed']} objects with no box near", flush=True)
    for group in sorted(per_group):
        row = per_group[group]
        note = group_note(group) if group_note else ""
        print(f"[{label}]   {group}: {note}AP@0.7 {row['ap']:.3f}  F1@0.7 {row['f1']:.3f}  mIoU {row['miou']:.3f}",
              flush=True)
    return {"ap": {str(t): result["mAP"][t] for t in IOUS}, "coco_ap": result["mean"]["coco_ap"],
            "f1@0.7": result["mean"]["f1"][0.7], "miou": result["mean"]["miou"],
            "per_group": {g: per_group[g]["ap"] for g in per_group}, "lost@0.7": lost}
