"""Accuracy on real EM data nobody in this project made: Lucchi++ mitochondria (FIB-SEM), paper anchors vs fitted ones.

    python benchmarks/accuracy_real_em.py --out runs/accuracy_real_em [--budget-min 30] [--jobs 2] [--train-mode joint]

Data: ../shared/data/lucchi_pp_train (55 slices, 1024x768, every third slice of the training volume;
see its README). Boxes are the 8-connected components of the expert masks
(keras_frcnn_cryo.masks_to_boxes). The split is by contiguous slice ranges, as that README asks:
the first two thirds of the slices train, the last third is evaluated (split file beside the
annotations, method "contiguous").

These mitochondria are 40-220 px, far below the paper's 128/256/512 px anchors, so two models are
trained, each from scratch for at most ``--budget-min`` minutes: one with the paper's anchors and one
with anchors proposed from the labelled box sizes (data_generators.propose_anchor_scales, i.e.
``train_frcnn.py --anchor-scales auto``); ``--jobs 2`` trains both at once, each on half the cores.
measure_map then puts both side by side.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from keras_frcnn_cryo import evaluation, masks_to_boxes, predict, splits, train  # noqa: E402
from parallel_training import limit_threads, run_variants  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "shared", "data", "lucchi_pp_train")
TEST_FRACTION = 1.0 / 3.0


VARIANTS = {"paper": ("paper anchors", ["128", "256", "512"]), "fitted": ("fitted anchors", ["auto"])}


def train_model(annotations: str, run_dir: str, args: argparse.Namespace, anchors: list[str]) -> None:
    """Train one model from scratch with the given --anchor-scales values."""
    argv = ["-p", annotations, "--num_epochs", "100000", "--epoch_length", str(args.epoch_length),
            "--im-size", str(args.im_size), "--anchor-scales", *anchors, "--hf", "--vf", "--rot",
            "--learning-rate", str(args.learning_rate), "--lr-drop", str(args.lr_drop), "--seed", str(args.seed),
            "--test-split", str(TEST_FRACTION), "--time-budget", str(args.budget_min),
            "--config_filename", os.path.join(run_dir, "config.pickle"),
            "--output_weight_path", os.path.join(run_dir, "model_frcnn.weights.h5"), "--train-mode", args.train_mode]
    started = time.time()
    train.main(train.build_parser().parse_args(argv))
    print(f"training with anchors {' '.join(anchors)}: {(time.time() - started) / 60:.1f} min")


def detect(annotations: str, run_dir: str, args: argparse.Namespace) -> str:
    """Detections of a trained model on the test slices; the CSV path."""
    records, _, _ = train.load_annotations(annotations, "simple")
    splits.assign_splits(records, splits.default_split_path(annotations), TEST_FRACTION, None, args.seed)
    test_paths = [r["filepath"] for r in records if r["imageset"] == "test"]
    detector = predict.load_detector(os.path.join(run_dir, "config.pickle"),
                                     os.path.join(run_dir, "model_frcnn.weights.h5"))
    return predict.predict_images(detector, test_paths, os.path.join(run_dir, "predictions"),
                                  threshold=detector.cfg.eval_min_score, root=os.path.join(args.data, "images"),
                                  overlays=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA, help="the lucchi_pp_train folder (images/, masks/)")
    parser.add_argument("--out", default="runs/accuracy_real_em")
    parser.add_argument("--im-size", type=int, default=600)
    parser.add_argument("--epoch-length", type=int, default=37, help="images per epoch (the training slices)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--lr-drop", type=float, default=0.75,
                        help="learning rate x 0.1 after this fraction of the budget (0: constant, the paper's)")
    parser.add_argument("--budget-min", type=float, default=30.0, help="training wall-time budget per model")
    parser.add_argument("--jobs", type=int, default=1, choices=[1, 2],
                        help="2: train both models at once, each on half the cores")
    parser.add_argument("--train-mode", default="joint", choices=["joint", "alternating"],
                        help="joint: about twice the images per budget; alternating: the paper's schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-only", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # --jobs 2 children
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    box_dir = os.path.join(args.out, "boxes")
    annotations = os.path.join(box_dir, "annotations.txt")
    if args.train_only:
        limit_threads(args.threads)
        train_model(annotations, os.path.join(args.out, args.train_only), args, VARIANTS[args.train_only][1])
        return
    print(f"machine: {os.cpu_count()} CPU cores, load {os.getloadavg()}")
    if not os.path.isdir(args.data):
        sys.exit(f"error: {args.data}: Lucchi++ data folder not found")
    records = masks_to_boxes.masks_to_records(os.path.join(args.data, "masks"), os.path.join(args.data, "images"),
                                              box_dir)
    annotations = masks_to_boxes.write_annotations(records, box_dir, source=args.data)
    sizes = sorted(((b["x2"] - b["x1"]) * (b["y2"] - b["y1"])) ** 0.5 for r in records for b in r["bboxes"])
    print(f"{len(records)} slices, {len(sizes)} boxes, sqrt(area) {sizes[0]:.0f}-{sizes[-1]:.0f} px "
          f"(median {sizes[len(sizes) // 2]:.0f})")
    variants = ["fitted", "paper"]
    if args.jobs > 1:
        run_variants(os.path.abspath(__file__), sys.argv[1:], variants, args.jobs)
    else:
        for variant in variants:
            train_model(annotations, os.path.join(args.out, variant), args, VARIANTS[variant][1])
    fitted, paper = (detect(annotations, os.path.join(args.out, v), args) for v in variants)
    evaluation.main(evaluation.build_parser().parse_args([
        "--detections", fitted, "--compare", paper, "--labels", VARIANTS["fitted"][0], VARIANTS["paper"][0],
        "-p", annotations, "--split", "test", "--output", os.path.join(args.out, "evaluation"),
        "--pr-iou", "0.5", "0.7"]))


if __name__ == "__main__":
    main()
