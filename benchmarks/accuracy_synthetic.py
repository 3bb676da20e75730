"""Accuracy on synthetic cryo-ET the model never saw: AP vs IoU on held-out tomograms, with and without preprocessing.

    python benchmarks/accuracy_synthetic.py --out runs/accuracy_synthetic [--budget-min 60] [--ablation [--jobs 2]]
        [--train-mode joint|alternating] [--lr-drop 0.75] [--tilt-step 4]

1. Generates ``--tomograms`` synthetic tomograms (keras_frcnn_cryo.synthetic; SNR spread over
   0.06-0.12, distractors, mitochondria cut by the border), split by tomogram (1/6 held out).
2. Trains from scratch (GroupNorm backbone) on the training tomograms' slices for at most
   ``--budget-min`` minutes of wall time (train_frcnn.py --time-budget), anchors proposed from the
   labelled boxes, flips and rotations on, learning rate x 0.1 for the last quarter of the budget.
3. Evaluates the held-out tomograms' slices with measure_map (VOC AP at IoU 0.5-0.9, F1, mIoU).
4. Evaluates the same model on the held-out tomograms' tilt images (every ``--tilt-step``-th tilt of
   the +-60 deg series; boxes are the projections of the 3D objects, tilt_annotations.csv): a model
   trained on reconstructed slices meets projections it never saw.
5. With ``--ablation`` the same run without preprocessing, and both side by side (measure_map --compare);
   ``--jobs 2`` trains the two at once, each on half the cores for the same budget (equal compute).

Everything runs through the package's own entry points (train.main, predict.predict_images,
evaluation.main), so the numbers are what a user gets.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from keras_frcnn_cryo import evaluation, metrics, predict, splits, synthetic, tomo_io, train  # noqa: E402
from keras_frcnn_cryo.config import Config  # noqa: E402
from parallel_training import limit_threads, run_variants  # noqa: E402

IOUS = (0.5, 0.6, 0.7, 0.8, 0.9)


def evaluate_tilts(detector, data: dict, test_tomograms: list[str], tilt_step: int, label: str) -> None:
    """AP on the test tomograms' tilt images (all sampled tilts, and those within +-20 deg)."""
    gt_rows: dict[str, list[dict]] = {}
    with open(data["tilt_annotations"], newline="") as fh:
        for row in csv.DictReader(fh):
            key = f"{row['tomogram']}:{int(row['tilt_index'])}"
            gt_rows.setdefault(key, []).append({"class": row["class"], "difficult": False,
                                                **{k: float(row[k]) for k in ("x1", "y1", "x2", "y2")}})
    gt, dets, angles = {}, [], {}
    for name in test_tomograms:
        with tomo_io.open_volume(os.path.join(os.path.dirname(data["annotations"]), "tilts", name + ".mrc"),
                                 kind="tilt_series") as volume:
            indices = list(range(0, volume.n_slices, tilt_step))
            images = [volume.slice(i) for i in indices]
            tilt_angles = volume.angles
        for index, found in zip(indices, detector.detect_many(images, min_score=detector.cfg.eval_min_score)):
            key = f"{name}:{index}"
            gt[key] = gt_rows.get(key, [])
            angles[key] = tilt_angles[index] if tilt_angles else float("nan")
            dets += train.detections_to_dicts(key, found)
    for title, keep in (("all sampled tilts", lambda a: True), ("tilts within +-20 deg", lambda a: abs(a) <= 20)):
        keys = {k for k in gt if keep(angles[k])}
        result = metrics.evaluate({k: gt[k] for k in keys}, [d for d in dets if d["image"] in keys], IOUS,
                                  classes=detector.cfg.class_names[:-1])
        aps = "  ".join(f"AP@{t:g} {result['mAP'][t]:.3f}" for t in IOUS)
        n_gt = sum(len(gt[k]) for k in keys)
        print(f"tilt images, {label}, {title} ({len(keys)} images, {n_gt} boxes): {aps}", flush=True)


def train_model(annotations: str, run_dir: str, args: argparse.Namespace, preprocess: bool) -> None:
    """Train one model from scratch on the training tomograms (train_frcnn.py with the benchmark's options)."""
    argv = ["-p", annotations, "--num_epochs", "100000", "--epoch_length", str(args.epoch_length),
            "--im-size", str(args.im_size), "--anchor-scales", "auto", "--hf", "--vf", "--rot",
            "--learning-rate", str(args.learning_rate), "--lr-drop", str(args.lr_drop), "--seed", str(args.seed),
            "--time-budget", str(args.budget_min), "--config_filename", os.path.join(run_dir, "config.pickle"),
            "--train-mode", args.train_mode, "--output_weight_path", os.path.join(run_dir, "model_frcnn.weights.h5")]
    if not preprocess:
        argv.append("--no-preprocess")
    started = time.time()
    train.main(train.build_parser().parse_args(argv))
    print(f"training ({'with' if preprocess else 'without'} preprocessing): {(time.time() - started) / 60:.1f} min")


def detect(data: dict, run_dir: str, args: argparse.Namespace, label: str) -> str:
    """Detections of a trained model on the test tomograms' slices (CSV path returned) and tilts (printed)."""
    records, _, _ = train.load_annotations(data["annotations"], "simple")
    splits.assign_splits(records, splits.default_split_path(data["annotations"]), Config().test_fraction, None,
                         args.seed)
    test_paths = [r["filepath"] for r in records if r["imageset"] == "test"]
    detector = predict.load_detector(os.path.join(run_dir, "config.pickle"),
                                     os.path.join(run_dir, "model_frcnn.weights.h5"))
    test_tomograms = sorted({splits.image_group(p) for p in test_paths})
    evaluate_tilts(detector, data, test_tomograms, args.tilt_step, label)
    return predict.predict_images(detector, test_paths, os.path.join(run_dir, "predictions"),
                                  threshold=detector.cfg.eval_min_score, root=os.path.dirname(data["annotations"]),
                                  overlays=True)


VARIANTS = {"pre": ("with preprocessing", True), "raw": ("without preprocessing", False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/accuracy_synthetic")
    parser.add_argument("--tomograms", type=int, default=12)
    parser.add_argument("--size", type=int, default=384, help="slice size (px)")
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--slice-step", type=int, default=2)
    parser.add_argument("--apix", type=float, default=40.0)
    parser.add_argument("--im-size", type=int, default=384)
    parser.add_argument("--epoch-length", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--lr-drop", type=float, default=0.75,
                        help="learning rate x 0.1 after this fraction of the budget (0: constant, the paper's)")
    parser.add_argument("--budget-min", type=float, default=60.0, help="training wall-time budget per model")
    parser.add_argument("--ablation", action="store_true", help="also train without preprocessing and compare")
    parser.add_argument("--jobs", type=int, default=1, choices=[1, 2],
                        help="with --ablation: 2 trains both models at once, each on half the cores")
    parser.add_argument("--train-mode", default="joint", choices=["joint", "alternating"],
                        help="joint: about twice the images per budget; alternating: the paper's schedule")
    parser.add_argument("--tilt-step", type=int, default=4, help="evaluate every n-th tilt image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-only", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # --jobs 2 children
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_only:
        limit_threads(args.threads)
        train_model(os.path.join(args.out, "data", "annotations.txt"), os.path.join(args.out, args.train_only),
                    args, VARIANTS[args.train_only][1])
        return
    print(f"machine: {os.cpu_count()} CPU cores, load {os.getloadavg()}")
    data = synthetic.write_dataset(os.path.join(args.out, "data"), args.tomograms, seed=args.seed,
                                   shape=(args.slices, args.size, args.size), pixel_size_a=args.apix,
                                   slice_step=args.slice_step, snr_range=(0.06, 0.12))
    print(f"data: {data['n_images']} slices, {data['n_boxes']} boxes, split {data['split_counts']}")
    variants = ["pre", "raw"] if args.ablation else ["pre"]
    if args.jobs > 1 and len(variants) > 1:
        run_variants(os.path.abspath(__file__), sys.argv[1:], variants, args.jobs)
    else:
        for variant in variants:
            train_model(data["annotations"], os.path.join(args.out, variant), args, VARIANTS[variant][1])
    csvs = [detect(data, os.path.join(args.out, v), args, VARIANTS[v][0]) for v in variants]
    eval_argv = ["--detections", csvs[0], "-p", data["annotations"], "--split", "test",
                 "--output", os.path.join(args.out, "evaluation"), "--pr-iou", "0.5", "0.7", "0.9"]
    if len(csvs) == 2:
        eval_argv += ["--compare", csvs[1], "--labels", VARIANTS["pre"][0], VARIANTS["raw"][0]]
    evaluation.main(evaluation.build_parser().parse_args(eval_argv))


if __name__ == "__main__":
    main()
