"""One-command demo: synthetic cryo-ET -> train -> detect on a held-out tomogram -> AP-vs-IoU table.

``python -m keras_frcnn_cryo.demo --out demo_out`` runs in minutes on 2 CPU cores and leaves, in
``demo_out``: ``data/`` (the generated tomograms, tilt series, slice PNGs and boxes), ``model/``
(config.pickle, config.json, weights, training log), ``predictions/`` (detections.csv and overlay
PNGs of the held-out tomogram's slices) and ``evaluation/`` (metrics.json, metrics.md, PR curve).

Minutes of CPU training from scratch give a rough model; the printed AP says how rough. For a real
model train for hours (``--num_epochs`` in the hundreds, ``--epoch_length`` ~ the number of training
images) on real labelled slices, ideally from ImageNet weights (README.md, "Training").
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import evaluation, predict, splits, synthetic, train
from .cli import check_output_dir, run_cli
from .config import Config


def build_parser() -> argparse.ArgumentParser:
    """Options of the demo (defaults finish in a few minutes on 2 cores)."""
    p = argparse.ArgumentParser(description="Synthetic cryo-ET demo: generate, train, detect, evaluate.")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--tomograms", type=int, default=6, help="synthetic tomograms (one is held out for testing)")
    p.add_argument("--size", type=int, default=320, help="slice width and height (px)")
    p.add_argument("--slices", type=int, default=30, help="slices per tomogram")
    p.add_argument("--slice-step", type=int, default=3, help="label every n-th slice")
    p.add_argument("--apix", type=float, default=50.0, help="pixel size (A/px)")
    p.add_argument("--num_epochs", type=int, default=4)
    p.add_argument("--epoch_length", type=int, default=50, help="training images per epoch")
    p.add_argument("--im-size", type=int, default=320, help="network input size (shorter side)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(args: argparse.Namespace) -> int:
    """Run the four steps, each through the same functions the command-line scripts use."""
    started = time.time()
    out = check_output_dir(os.path.abspath(args.out))
    data_dir, model_dir = os.path.join(out, "data"), os.path.join(out, "model")
    print(f"[1/4] generating {args.tomograms} synthetic tomograms in {data_dir}")
    summary = synthetic.write_dataset(data_dir, args.tomograms, seed=args.seed,
                                      shape=(args.slices, args.size, args.size), pixel_size_a=args.apix,
                                      slice_step=args.slice_step)
    annotations = summary["annotations"]
    print(f"      {summary['n_images']} labelled slices, {summary['n_boxes']} boxes, split {summary['split_counts']}")

    print("[2/4] training from scratch (a rough model: minutes of CPU, not hours)")
    config_path = os.path.join(model_dir, "config.pickle")
    weights = os.path.join(model_dir, "model_frcnn.weights.h5")
    train_args = train.build_parser().parse_args([
        "-p", annotations, "--num_epochs", str(args.num_epochs), "--epoch_length", str(args.epoch_length),
        "--im-size", str(args.im_size), "--anchor-scales", "auto", "--hf", "--vf", "--rot",
        "--learning-rate", "1e-4", "--seed", str(args.seed),
        "--config_filename", config_path, "--output_weight_path", weights])
    train.main(train_args)

    print("[3/4] detecting on the held-out tomogram's slices")
    records, _, _ = train.load_annotations(annotations, "simple")
    splits.assign_splits(records, splits.default_split_path(annotations), Config().test_fraction, None, args.seed)
    test_paths = [r["filepath"] for r in records if r["imageset"] == "test"]
    detector = predict.load_detector(config_path, weights)
    predict.predict_images(detector, test_paths, os.path.join(out, "predictions"), threshold=0.5,
                           root=os.path.dirname(annotations))

    print("[4/4] evaluating on the held-out tomogram (AP vs IoU, as in the paper's Fig. 6a)")
    eval_args = evaluation.build_parser().parse_args([
        "--config_filename", config_path, "--model", weights, "--split", "test",
        "--output", os.path.join(out, "evaluation")])
    evaluation.main(eval_args)
    minutes = (time.time() - started) / 60.0
    print(f"\ndone in {minutes:.1f} min; everything is in {out}")
    print("This model trained for minutes from scratch on synthetic data: expect a rough detector. For a real "
          "one, label a few hundred slices of your tomograms and train for hours (README.md, 'Training').")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, build_parser()))
