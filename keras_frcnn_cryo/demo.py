"""One-command demo: synthetic cryo-ET -> train -> detect on a held-out tomogram -> AP-vs-IoU table and a picture.

``python -m keras_frcnn_cryo.demo --out demo_out`` runs in about four minutes on 2 CPU cores and
leaves, in ``demo_out``: ``data/`` (the generated tomograms, tilt series, slice PNGs with sidecars,
and boxes), ``model/`` (config.pickle, config.json, weights, training log), ``predictions/``
(detections.csv and overlay PNGs of the held-out tomogram's slices), ``evaluation/`` (metrics.json,
metrics.md, PR curve) and ``montage.png``: held-out slices with the true boxes in green and the
predicted ones in magenta, drawn at the score threshold of the best F1.

Training is README's command, ``train_frcnn.py -p annotations.txt --time-budget M``: the default
recipe for training from scratch chooses everything else. Three minutes of CPU (150-200 images)
give a rough model (AP@0.5 0.3-0.5 with the default seed, less with some); ``--minutes 12`` (about
670 images on a slow 2-core CPU) gave AP@0.5 0.96 on the held-out tomogram of the default seed (0.12
with ``--seed 1``, whose held-out tomogram holds one mitochondrion cut by the image edges;
BENCHMARKS.md), and real data needs hours and a few hundred labelled slices (README.md, "Training").
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from . import annotations, evaluation, pictures, predict, recipes, splits, synthetic, tomo_io, train
from .atomic import check_output_dir
from .cli import set_seed
from .config import load_config
from .model import Detector

MONTAGE_SLICES = 6     # held-out slices shown in montage.png
MONTAGE_IOU = "0.5"    # the IoU whose best-F1 score threshold the montage is drawn at


def build_parser() -> argparse.ArgumentParser:
    """Options of the demo (defaults finish in about five minutes on 2 cores)."""
    p = argparse.ArgumentParser(description="Synthetic cryo-ET demo: generate, train, detect, evaluate.")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--tomograms", type=int, default=6, help="synthetic tomograms (one is held out for testing)")
    p.add_argument("--size", type=int, default=320, help="slice width and height (px)")
    p.add_argument("--slices", type=int, default=30, help="slices per tomogram")
    p.add_argument("--slice-step", type=int, default=3, help="label every n-th slice")
    p.add_argument("--apix", type=float, default=50.0, help="pixel size (A/px)")
    p.add_argument("--snr-min", type=float, default=0.06, help="lowest tilt-image SNR of the tomograms")
    p.add_argument("--snr-max", type=float, default=0.12, help="highest tilt-image SNR of the tomograms")
    p.add_argument("--minutes", type=float, default=3.0,
                   help="training wall-time budget (train_frcnn.py --time-budget); 3 gives a rough model, "
                        "12 gave AP@0.5 0.96 with the default seed on a slow 2-core CPU")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(args: argparse.Namespace) -> int:
    """Run the five steps, each through the same functions the command-line scripts use."""
    started = time.time()
    out = check_output_dir(os.path.abspath(args.out))
    data_dir, model_dir = os.path.join(out, "data"), os.path.join(out, "model")
    print(f"[1/5] generating {args.tomograms} synthetic tomograms in {data_dir}")
    summary = synthetic.write_dataset(data_dir, args.tomograms, seed=args.seed,
                                      shape=(args.slices, args.size, args.size), pixel_size_a=args.apix,
                                      slice_step=args.slice_step, snr_range=(args.snr_min, args.snr_max))
    ann_path = summary["annotations"]
    print(f"      {summary['n_images']} labelled slices, {summary['n_boxes']} boxes, split {summary['split_counts']}")

    print(f"[2/5] training from scratch for {args.minutes:g} min (train_frcnn.py -p annotations.txt "
          f"--time-budget {args.minutes:g}: the default recipe)")
    config_path = os.path.join(check_output_dir(model_dir), "config.pickle")
    weights = os.path.join(model_dir, "model_frcnn.weights.h5")
    set_seed(args.seed)
    cfg = recipes.config_for(annotation_path=ann_path, model_path=weights, seed=args.seed)
    train_records, val_records = train.prepare(cfg)
    fitted = train.fit(cfg, train_records, val_records, config_path, time_budget_min=args.minutes)
    print(f"      {fitted.images_seen} training images seen in {fitted.epochs} epoch(s)")

    print("[3/5] detecting on the held-out tomogram's slices")
    cfg = load_config(config_path)
    records, _, _ = annotations.load_annotations(ann_path, "simple")
    splits.assign_splits(records, cfg.split_path or splits.default_split_path(ann_path), cfg.test_fraction,
                         None, cfg.seed)
    test_records = [r for r in records if r["imageset"] == "test"]
    detector = predict.load_detector(config_path, weights)
    predict.predict_images(detector, [r["filepath"] for r in test_records], os.path.join(out, "predictions"),
                           threshold=cfg.eval_min_score, root=os.path.dirname(ann_path))

    print("[4/5] evaluating on the held-out tomogram (AP vs IoU, as in the paper's Fig. 6a)")
    eval_dir = os.path.join(out, "evaluation")
    detections_csv = os.path.join(out, "predictions", "detections.csv")
    result = evaluation.evaluate(ann_path, [("model", detections_csv)], cfg, split="test", out_dir=eval_dir)
    print(result.text())
    evaluation.write_evaluation(result, eval_dir)

    print("[5/5] drawing held-out slices with true and predicted boxes")
    metrics_json = result.payload()
    montage_path = os.path.join(out, "montage.png")
    threshold, ap = write_montage(montage_path, detector, test_records, metrics_json)
    minutes = (time.time() - started) / 60.0
    print(f"\ndone in {minutes:.1f} min. AP@0.5 {ap:.3f} on the held-out tomogram (the paper's AP vs IoU table "
          f"above; {eval_dir}/metrics.md)")
    print(f"  picture: {montage_path} (true boxes green, predicted magenta, score >= {threshold:.2f}: the best F1)")
    print(f"  model:   {config_path} and {weights}")
    print(f"  try it:  python test_frcnn.py -p {os.path.join(data_dir, 'tomograms')} --config_filename {config_path}")
    return 0


def write_montage(path: str, detector: Detector, records: list[dict], metrics_json: dict) -> tuple[float, float]:
    """montage.png of up to MONTAGE_SLICES evenly spaced held-out slices, predictions drawn at the
    best-F1 score threshold at IoU MONTAGE_IOU. Returns (that threshold, AP at that IoU)."""
    row = metrics_json["mAP"]
    named = [c for c, v in metrics_json["classes"].items() if v.get("n_gt")]
    cut = metrics_json["classes"][named[0]]["best_threshold"].get(MONTAGE_IOU) if len(named) == 1 else None
    threshold = float(cut) if cut is not None else detector.cfg.detection_threshold
    picks = tomo_io.evenly_spaced(records, MONTAGE_SLICES)
    source = tomo_io.image_source(detector.cfg)
    panels = []
    for record in picks:
        image = source(record["filepath"])
        found = detector.detect(image, threshold)
        true = np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in record["bboxes"]], float)
        grey = image if image.ndim == 2 else image[:, :, 1]
        panels.append(pictures.render_comparison(grey, true, found.boxes, found.scores,
                                                title=os.path.splitext(os.path.basename(record["filepath"]))[0]))
    source.close()
    caption = f"green: true boxes   magenta: predicted, score >= {threshold:.2f} (best F1 at IoU {MONTAGE_IOU})"
    pictures.write_png(path, pictures.render_montage(panels, columns=3, caption=caption))
    return threshold, float(row["ap"][MONTAGE_IOU] or 0.0)


def console_main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with one ``error:`` line on bad input)."""
    from .cli import run_cli
    return run_cli(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(console_main())
