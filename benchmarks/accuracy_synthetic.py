"""Accuracy on synthetic cryo-ET the model never saw: AP vs IoU on held-out tomograms, with and without preprocessing.

    python benchmarks/accuracy_synthetic.py --out runs/accuracy_synthetic [--budget-min 60] [--ablation]

1. Generates ``--tomograms`` synthetic tomograms (keras_frcnn_cryo.synthetic; SNR spread over
   0.06-0.12, distractors, mitochondria cut by the border), split by tomogram (1/6 held out).
2. Trains from scratch (GroupNorm backbone) on the training tomograms' slices for at most
   ``--budget-min`` minutes of wall time (train_frcnn.py --time-budget), anchors proposed from the
   labelled boxes, flips and rotations on.
3. Evaluates the held-out tomograms' slices with measure_map (VOC AP at IoU 0.5-0.9, F1, mIoU).
4. With ``--ablation`` the same run without preprocessing, and both side by side (measure_map --compare).

Everything runs through the package's own entry points (train.main, predict.predict_images,
evaluation.main), so the numbers are what a user gets.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_frcnn_cryo import evaluation, predict, splits, synthetic, train  # noqa: E402
from keras_frcnn_cryo.config import Config  # noqa: E402


def train_and_detect(data: dict, run_dir: str, args: argparse.Namespace, preprocess: bool) -> str:
    """Train one model; write detections of the test tomograms; return the detections CSV path."""
    config_path = os.path.join(run_dir, "config.pickle")
    weights = os.path.join(run_dir, "model_frcnn.weights.h5")
    argv = ["-p", data["annotations"], "--num_epochs", "100000", "--epoch_length", str(args.epoch_length),
            "--im-size", str(args.im_size), "--anchor-scales", "auto", "--hf", "--vf", "--rot",
            "--learning-rate", str(args.learning_rate), "--seed", str(args.seed),
            "--time-budget", str(args.budget_min), "--config_filename", config_path,
            "--output_weight_path", weights]
    if not preprocess:
        argv.append("--no-preprocess")
    started = time.time()
    train.main(train.build_parser().parse_args(argv))
    print(f"training ({'with' if preprocess else 'without'} preprocessing): {(time.time() - started) / 60:.1f} min")
    records, _, _ = train.load_annotations(data["annotations"], "simple")
    splits.assign_splits(records, splits.default_split_path(data["annotations"]), Config().test_fraction, None,
                         args.seed)
    test_paths = [r["filepath"] for r in records if r["imageset"] == "test"]
    detector = predict.load_detector(config_path, weights)
    return predict.predict_images(detector, test_paths, os.path.join(run_dir, "predictions"),
                                  threshold=detector.cfg.eval_min_score, root=os.path.dirname(data["annotations"]),
                                  overlays=True)


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
    parser.add_argument("--budget-min", type=float, default=60.0, help="training wall-time budget per model")
    parser.add_argument("--ablation", action="store_true", help="also train without preprocessing and compare")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores, load {os.getloadavg()}")
    data = synthetic.write_dataset(os.path.join(args.out, "data"), args.tomograms, seed=args.seed,
                                   shape=(args.slices, args.size, args.size), pixel_size_a=args.apix,
                                   slice_step=args.slice_step, snr_range=(0.06, 0.12))
    print(f"data: {data['n_images']} slices, {data['n_boxes']} boxes, split {data['split_counts']}")
    runs = [("with preprocessing", True)] + ([("without preprocessing", False)] if args.ablation else [])
    csvs = [train_and_detect(data, os.path.join(args.out, "pre" if pre else "raw"), args, pre) for _, pre in runs]
    eval_argv = ["--detections", csvs[0], "-p", data["annotations"], "--split", "test",
                 "--output", os.path.join(args.out, "evaluation"), "--pr-iou", "0.5", "0.7", "0.9"]
    if len(csvs) == 2:
        eval_argv += ["--compare", csvs[1], "--labels", runs[0][0], runs[1][0]]
    evaluation.main(evaluation.build_parser().parse_args(eval_argv))


if __name__ == "__main__":
    main()
