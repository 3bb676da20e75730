"""Accuracy on synthetic cryo-ET the model never saw: AP vs IoU on held-out tomograms, with README's defaults.

    python benchmarks/accuracy_synthetic.py --out runs/accuracy_synthetic [--budget-min 60]
        [--variants default paper no-slabs ...] [--jobs 2] [--test-time [OPTION ...]] [--eval-only] [--threads N]

1. Generates ``--tomograms`` synthetic tomograms for training (keras_frcnn_cryo.synthetic, seed
   ``--seed``; SNR 0.06-0.12, distractors, mitochondria cut by the border; PNG slices with sidecars
   naming their tomogram), split by tomogram (1/6 held out), and a separate test set of
   ``--test-tomograms`` tomograms from generator seed ``--test-seed`` (never used while tuning the
   recipe; half of them at SNR 0.06-0.08, the paper's failing range). ``--train-slice-step N`` labels
   every N-th slice of the training tomograms only (default: ``--slice-step``, as the test sets), so
   that ``--tomograms 24 --train-slice-step 4`` spreads the same number of labelled slices over twice
   the tomograms, with the same test sets.
2. Trains each variant from scratch for ``--budget-min`` minutes of wall time with
   ``train_frcnn.py -p annotations.txt --time-budget B`` plus the variant's flags (VARIANTS below, which
   adds this data's own to accuracy_common.VARIANTS;
   "default" adds none: what README tells a new user to run). ``--jobs 2`` trains two variants at
   once, each on half the cores (equal compute; a single variant gets every core).
3. Evaluates every model on the held-out slices of both sets through measure_map's code (VOC AP at
   IoU 0.5-0.9, COCO AP, F1, mIoU), per tomogram with its SNR (the generator's, and the single-image
   estimate of preprocessing.estimate_snr), and on the test set's tilt images (every
   ``--tilt-step``-th tilt; boxes projected from the 3D objects).
4. ``--test-time [OPTION ...]`` also evaluates the first ``--variants`` model with those test-time options
   (accuracy_common.TEST_TIME; all of them when none is named) switched on; ``--eval-only``
   re-evaluates the models of an earlier run in ``--out`` without training.
5. ``--z-refine`` also detects each test tomogram whole, through its volume, links the boxes into 3D
   objects and scores the labelled slices raw and refined along z (Z_REFINE, tracking.refine_along_z).

Everything runs through the package's entry points (accuracy_common.py), so the numbers are what a
user gets. The log prints the images each model saw and the CPU it ran on.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tqdm import tqdm  # noqa: E402

import accuracy_common as common  # noqa: E402
from accuracy_common import IOUS, evaluate, load_run, model_runs, records_of, score  # noqa: E402
from keras_frcnn_cryo import annotations, metrics, predict, preprocessing, splits, synthetic, tomo_io, tracking  # noqa: E402

# the shared variants (accuracy_common.VARIANTS) and those of this data
VARIANTS = {
    **common.VARIANTS,
    "no-slabs": ["--input-channels", "repeat"],                     # one slice on the 3 channels
    "slab5": ["--input-slab", "5"],                                 # 5 slices per channel, not 3 (z-7..z+7)
    "no-flips": ["--no-hf", "--no-vf", "--no-rot"],                 # no flips or quarter turns in training
    "iou-head": ["--set", "classifier_iou_head=true"],              # + IoU branch, scores weighted by it
    "cells": ["--set", "roi_pool_mode=cells"],                      # RoI windows rounded to 16-px cells
    "no-warmup": ["--lr-warmup", "0"],
    "alternating": ["--train-mode", "alternating"],                 # the paper's two-step schedule
    "no-preprocess": ["--no-preprocess"],                           # the paper's ablation
    "paper-anchors": ["--anchor-scales", "128", "256", "512"],
    "small-input": ["--im-size", "288"],                            # 3/4 of the fitted 384: more images per hour
}


# Tomogram path (--z-refine): every slice of each test tomogram detected through its volume, boxes
# linked into 3D objects (tracking.link_boxes, the config's track_* values), then the labelled slices
# scored as detected (raw) or refined along z: name -> (window, rescore, orphan_weight) of
# tracking.refine_along_z.
Z_REFINE = {
    "tomogram path, raw": (0, False, 1.0),
    "z window 1": (1, False, 1.0),
    "z window 2": (2, False, 1.0),
    "track rescore": (0, True, 1.0),
    "z window 1 + rescore": (1, True, 1.0),
    "z window 2 + rescore": (2, True, 1.0),
    "z window 1 + rescore, untracked x0.5": (1, True, 0.5),
}


def evaluate_tomogram_path(detector, records: list[dict], label: str) -> dict[str, dict]:
    """Per-slice figures of the labelled slices ``records`` (PNGs with sidecars) when their tomograms
    are detected whole and the boxes refined along z (Z_REFINE); returns name -> accuracy_common.score."""
    cfg = detector.cfg
    wanted: dict[str, dict[int, str]] = {}
    for record in records:
        tomogram, sidecar, problem = tomo_io.tomogram_of(record["filepath"])
        if problem:
            raise SystemExit(f"{record['filepath']}: {problem}")
        wanted.setdefault(tomogram, {})[int(sidecar["z"])] = record["filepath"]
    per_tomogram = {}
    for tomogram in tqdm(sorted(wanted), desc=f"{label}: tomograms", unit="tomogram"):
        with tomo_io.open_volume(tomogram) as volume:
            per_slice = {z: dets for z, _, dets in predict.detect_volume(detector, volume, range(volume.n_slices),
                                                                         cfg.eval_min_score)}
        objects = tracking.link_boxes(per_slice, tracking.TrackingParams.from_config(cfg), cfg.class_names)
        per_tomogram[tomogram] = (per_slice, objects)
    out = {}
    classes = cfg.class_names[:-1]
    for name, (window, rescore, orphan) in Z_REFINE.items():
        dets = []
        for tomogram, (per_slice, objects) in per_tomogram.items():
            refined = tracking.refine_along_z(per_slice, objects, window, rescore, orphan)
            for z, path in wanted[tomogram].items():
                boxes, scores, labels = refined[z]
                dets += [{"image": path, "class": classes[int(c)], "x1": float(b[0]), "y1": float(b[1]),
                          "x2": float(b[2]), "y2": float(b[3]), "score": float(s)}
                         for b, s, c in zip(boxes, scores, labels)]
        out[name] = score(dets, records, classes, f"{label} | {name}")
    return out


def make_data(args: argparse.Namespace) -> tuple[dict, dict]:
    """The training set (its split holds out 1/6 of the tomograms) and the separate test set."""
    shape = (args.slices, args.size, args.size)
    train_step = args.train_slice_step or args.slice_step
    train_data = synthetic.write_dataset(os.path.join(args.out, "data"), args.tomograms, seed=args.seed, shape=shape,
                                         pixel_size_a=args.apix, slice_step=train_step, snr_range=(0.06, 0.12))
    half = args.test_tomograms // 2
    low = synthetic.write_dataset(os.path.join(args.out, "test_low"), half, seed=args.test_seed, shape=shape,
                                  pixel_size_a=args.apix, slice_step=args.slice_step, snr_range=(0.06, 0.08))
    high = synthetic.write_dataset(os.path.join(args.out, "test_high"), args.test_tomograms - half,
                                   seed=args.test_seed + 1, shape=shape, pixel_size_a=args.apix,
                                   slice_step=args.slice_step, snr_range=(0.08, 0.12))
    return train_data, {"low": low, "high": high}


def snr_notes(data: dict, records: list[dict]) -> Callable[[str], str]:
    """group -> "SNR 0.071 (estimated 0.065)  ": the generator's SNR of each tomogram and the median
    single-image estimate (preprocessing.estimate_snr) of its labelled slices."""
    with open(data["metadata"]) as fh:
        truth = {name: float(t["snr"]) for name, t in json.load(fh)["tomograms"].items()}
    estimates: dict[str, list[float]] = {}
    for record in records:
        group = splits.image_group(record["filepath"])
        estimates.setdefault(group, []).append(preprocessing.estimate_snr(tomo_io.read_image(record["filepath"])))
    return lambda g: f"SNR {truth.get(g, float('nan')):.3f} (estimated {float(np.median(estimates[g])):.3f})  "


def evaluate_tilts(detector, data: dict, tilt_step: int, label: str) -> None:
    """AP on the test set's tilt images (all sampled tilts, and those within +-20 deg)."""
    gt_rows: dict[str, list[dict]] = {}
    with open(data["tilt_annotations"], newline="") as fh:
        for row in csv.DictReader(fh):
            key = f"{row['tomogram']}:{int(row['tilt_index'])}"
            gt_rows.setdefault(key, []).append({"class": row["class"], "difficult": False,
                                                **{k: float(row[k]) for k in ("x1", "y1", "x2", "y2")}})
    gt, dets, angles = {}, [], {}
    for path in data["tilt_series"]:
        name = os.path.splitext(os.path.basename(path))[0]
        with tomo_io.open_volume(path, kind="tilt_series") as volume:
            indices = list(range(0, volume.n_slices, tilt_step))
            images = [volume.slice(i) for i in indices]
            tilt_angles = volume.angles
        for index, found in zip(indices, detector.detect_many(images, min_score=detector.cfg.eval_min_score)):
            key = f"{name}:{index}"
            gt[key] = gt_rows.get(key, [])
            angles[key] = tilt_angles[index] if tilt_angles else float("nan")
            dets += annotations.detections_to_dicts(key, found)
    for title, keep in (("all sampled tilts", lambda a: True), ("tilts within +-20 deg", lambda a: abs(a) <= 20)):
        keys = {k for k in gt if keep(angles[k])}
        result = metrics.evaluate({k: gt[k] for k in keys}, [d for d in dets if d["image"] in keys], IOUS,
                                  classes=detector.cfg.class_names[:-1])
        aps = "  ".join(f"AP@{t:g} {result['mAP'][t]:.3f}" for t in IOUS)
        n_gt = sum(len(gt[k]) for k in keys)
        print(f"[{label}] tilt images, {title} ({len(keys)} images, {n_gt} boxes): {aps}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_run_options(parser, VARIANTS, "runs/accuracy_synthetic")
    parser.add_argument("--tomograms", type=int, default=12, help="training set tomograms (1/6 held out)")
    parser.add_argument("--test-tomograms", type=int, default=8, help="tomograms of the separate test set")
    parser.add_argument("--test-seed", type=int, default=303, help="generator seed of the separate test set")
    parser.add_argument("--size", type=int, default=384, help="slice size (px)")
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--slice-step", type=int, default=2, help="label every n-th slice")
    parser.add_argument("--train-slice-step", type=int, default=None,
                        help="label every n-th slice of the training tomograms (default: --slice-step)")
    parser.add_argument("--apix", type=float, default=40.0)
    parser.add_argument("--tilt-step", type=int, default=4, help="evaluate every n-th tilt image")
    parser.add_argument("--z-refine", action="store_true",
                        help="also detect the test tomograms whole and score their labelled slices refined "
                             "along z (Z_REFINE)")
    args = parser.parse_args()
    ann_path = os.path.join(args.out, "data", "annotations.txt")
    if common.start(args, ann_path, VARIANTS):
        return
    train_data, test_sets = make_data(args)
    print(f"training data: {train_data['n_images']} slices, {train_data['n_boxes']} boxes, split "
          f"{train_data['split_counts']}; test set (seeds {args.test_seed}, {args.test_seed + 1}): "
          f"{sum(d['n_images'] for d in test_sets.values())} slices", flush=True)
    common.train_all(args, __file__, ann_path, VARIANTS)
    sets = {"held-out split": (train_data, records_of(ann_path, "test", args.seed))}
    for name, data in test_sets.items():
        sets[f"test set, {name} SNR"] = (data, records_of(data["annotations"], "all", args.seed))
    notes = {name: snr_notes(data, records) for name, (data, records) in sets.items()}
    results = {}
    for label, variant, overrides, weights in model_runs(args):
        detector = load_run(os.path.join(args.out, variant), overrides, weights)
        results[label] = {name: evaluate(detector, records, f"{label} | {name}", notes[name])
                          for name, (_, records) in sets.items()}
        if overrides is None:
            for name, data in test_sets.items():
                evaluate_tilts(detector, data, args.tilt_step, f"{label} | test set, {name} SNR")
        if overrides is None and args.z_refine:
            for name, (_, records) in sets.items():
                for option, figures in evaluate_tomogram_path(detector, records, f"{label} | {name}").items():
                    results[label][f"{name} | {option}"] = figures
    common.write_results(args.out, results)


if __name__ == "__main__":
    main()
