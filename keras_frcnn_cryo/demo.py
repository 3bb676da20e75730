"""One-command demo: synthetic cryo-ET -> train -> detect on held-out tomograms -> AP-vs-IoU table and a picture.

``python -m keras_frcnn_cryo.demo --out demo_out`` runs in at most about 5 minutes on 2 CPU cores
and leaves, in ``demo_out``: ``data/`` (the generated tomograms, tilt series, slice PNGs with
sidecars, and boxes), ``model/`` (config.pickle, config.json, weights, training log),
``predictions/`` (detections.csv and overlay PNGs of the held-out tomograms' slices),
``evaluation/`` (metrics.json, metrics.md, PR curve) and ``montage.png``: held-out slices with the
true boxes in green and the predicted ones in magenta, drawn at the score threshold of the best F1.

Eight tomograms are generated and two, drawn with the seed, are held out whole for the test (the
split file beside the annotations records which): one tomogram of one or two mitochondria is too
few objects for an AP that says much. Training is README's command, ``train_frcnn.py -p
annotations.txt --time-budget M``: the default recipe for training from scratch chooses everything
else. M is what is left of the five minutes once the data are generated and the time detection and
evaluation take on this machine is reserved (:func:`time_detection`; ``--minutes`` sets M instead).
From scratch the detector needs several hundred images: the 4.3 minutes a fast 2-core CPU trains
see about 680 and gave AP@0.5 0.48-0.80 (median 0.76) on the held-out tomograms of seeds 0-4; a slow
CPU sees fewer (the slowest we have seen, an AVX2-only EPYC, trains 0.7 images per second: 141 images
in its five minutes, AP@0.5 0.36), so a run that saw fewer than WANTED_IMAGES ends by naming the
``--minutes`` that reach them on this machine (:func:`slow_machine_advice`; 18 there: 773 images,
AP@0.5 0.80). Real data needs hours and a few hundred labelled slices (README.md, "Training").
BENCHMARKS.md, "The demo's learning curve" and "On an AVX2-only EPYC", has the measured figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from . import annotations, evaluation, pictures, predict, recipes, splits, synthetic, tomo_io, train
from .atomic import check_output_dir
from .cli import set_seed
from .config import Config, load_config
from .detections_csv import ImageIndex, read_detections_csv
from .errors import CryoError

MONTAGE_SLICES = 6     # held-out slices shown in montage.png
MONTAGE_IOU = "0.5"    # the IoU whose best-F1 score threshold the montage is drawn at
# Without --minutes, training gets what is left of DEMO_MINUTES (issue 14: the whole first run in at
# most 5 minutes on 2 cores) after the data are generated and the rest is reserved: steps 3-5 take
# RESERVE_FACTOR times their time measured on this machine (time_detection), and training at least
# MIN_TRAIN_MINUTES whatever the CPU.
DEMO_MINUTES = 5.0
RESERVE_FACTOR = 1.25
MIN_TRAIN_MINUTES = 1.0
# Training images the detector needs from scratch before the demo's AP says much: the five minutes of
# fast 2-core CPUs saw 650-850 and gave AP@0.5 0.48-0.97 over seeds 0-4, 330 images gave 0.43 and 150
# about 0.3 (BENCHMARKS.md). A run that sees fewer says how many minutes this machine would need.
WANTED_IMAGES = 700


def build_parser() -> argparse.ArgumentParser:
    """Options of the demo (defaults finish in about five minutes on 2 cores)."""
    p = argparse.ArgumentParser(description="Synthetic cryo-ET demo: generate, train, detect, evaluate.")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--tomograms", type=int, default=8, help="synthetic tomograms to generate")
    p.add_argument("--test-tomograms", type=int, default=2,
                   help="of those, how many are held out whole for the test (drawn with --seed)")
    p.add_argument("--size", type=int, default=320, help="slice width and height (px)")
    p.add_argument("--slices", type=int, default=30, help="slices per tomogram")
    p.add_argument("--slice-step", type=int, default=3, help="label every n-th slice")
    p.add_argument("--apix", type=float, default=50.0, help="pixel size (A/px)")
    p.add_argument("--snr-min", type=float, default=0.06, help="lowest tilt-image SNR of the tomograms")
    p.add_argument("--snr-max", type=float, default=0.12, help="highest tilt-image SNR of the tomograms")
    p.add_argument("--minutes", type=float, default=None,
                   help=f"training wall-time budget (train_frcnn.py --time-budget); default: what is left of "
                        f"{DEMO_MINUTES:g} min for the whole demo after the data are generated and the time that "
                        f"detection and evaluation are measured to need is reserved; a run that saw fewer than "
                        f"{WANTED_IMAGES} images ends by naming the minutes that reach them on this machine")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(args: argparse.Namespace) -> int:
    """Run the five steps, each through the same functions the command-line scripts use."""
    started = time.time()
    if not 1 <= args.test_tomograms < args.tomograms:
        raise CryoError(f"--test-tomograms must be at least 1 and below --tomograms ({args.tomograms}), "
                        f"got {args.test_tomograms}")
    test_fraction = args.test_tomograms / args.tomograms
    out = check_output_dir(os.path.abspath(args.out))
    data_dir, model_dir = os.path.join(out, "data"), os.path.join(out, "model")
    print(f"[1/5] generating {args.tomograms} synthetic tomograms in {data_dir}")
    summary = synthetic.write_dataset(data_dir, args.tomograms, seed=args.seed,
                                      shape=(args.slices, args.size, args.size), pixel_size_a=args.apix,
                                      slice_step=args.slice_step, snr_range=(args.snr_min, args.snr_max),
                                      test_fraction=test_fraction)
    ann_path = summary["annotations"]
    records, _, _ = annotations.load_annotations(ann_path, "simple")
    print(f"      {summary['n_images']} labelled slices, {summary['n_boxes']} boxes, split {summary['split_counts']}")
    print(f"      held out for the test: {held_out_summary(summary, records)}")

    print("[2/5] training from scratch (train_frcnn.py -p annotations.txt --time-budget M: the default recipe)")
    config_path = os.path.join(check_output_dir(model_dir), "config.pickle")
    weights = os.path.join(model_dir, "model_frcnn.weights.h5")
    set_seed(args.seed)
    cfg = recipes.config_for(annotation_path=ann_path, model_path=weights, seed=args.seed)
    cfg.test_fraction = test_fraction     # the split written with the data; recorded in config.pickle
    train_records, val_records = train.prepare(cfg)
    splits.assign_splits(records, cfg.split_path, cfg.test_fraction, None, cfg.seed)   # the split prepare used
    test_records = [r for r in records if r["imageset"] == "test"]
    minutes = args.minutes
    if minutes is None:
        reserve = RESERVE_FACTOR * time_detection(cfg, [r["filepath"] for r in test_records])
        set_seed(args.seed)     # the timing's throw-away model drew weights: training starts as with --minutes
        elapsed = time.time() - started
        minutes = training_minutes(DEMO_MINUTES, elapsed, reserve)
        print(f"      training budget {minutes:.2f} min: what is left of {DEMO_MINUTES:g} min after "
              f"{elapsed / 60:.2f} min so far and {reserve / 60:.2f} min reserved for detection on "
              f"the {len(test_records)} held-out slices and the evaluation (--minutes sets it)")
    else:
        print(f"      training budget {minutes:g} min (--minutes)")
    fitted = train.fit(cfg, train_records, val_records, config_path, time_budget_min=minutes)
    print(f"      {fitted.images_seen} training images seen in {fitted.epochs} epoch(s)")
    advice = slow_machine_advice(fitted.images_seen, minutes)
    if advice:
        print(f"      {advice}")

    print("[3/5] detecting on the held-out tomograms' slices")
    cfg = load_config(config_path)
    detector = predict.load_detector(config_path, weights)
    predict.predict_images(detector, [r["filepath"] for r in test_records], os.path.join(out, "predictions"),
                           threshold=cfg.eval_min_score, root=os.path.dirname(ann_path))

    print("[4/5] evaluating on the held-out tomograms (AP vs IoU, as in the paper's Fig. 6a)")
    eval_dir = os.path.join(out, "evaluation")
    detections_csv = os.path.join(out, "predictions", "detections.csv")
    result = evaluation.evaluate(ann_path, [("model", detections_csv)], cfg, split="test", out_dir=eval_dir)
    print(result.text())
    evaluation.write_evaluation(result, eval_dir)

    print("[5/5] drawing held-out slices with true and predicted boxes")
    metrics_json = result.payload()
    montage_path = os.path.join(out, "montage.png")
    threshold, ap = write_montage(montage_path, cfg, test_records, detections_csv, metrics_json)
    minutes = (time.time() - started) / 60.0
    print(f"\ndone in {minutes:.1f} min. AP@0.5 {ap:.3f} on the {len(summary['test_tomograms'])} held-out "
          f"tomograms (the paper's AP vs IoU table above; {eval_dir}/metrics.md)")
    print(f"  picture: {montage_path} (true boxes green, predicted magenta, score >= {threshold:.2f}: the best F1)")
    print(f"  model:   {config_path} and {weights}")
    print(f"  try it:  python test_frcnn.py -p {os.path.join(data_dir, 'tomograms')} --config_filename {config_path}")
    if advice:
        print(f"  note:    {advice}")
    return 0


def time_detection(cfg: Config, paths: list[str]) -> float:
    """Seconds that steps 3-5 are expected to take on this machine: a detector of ``cfg`` with
    untrained weights is built and run twice on the first of ``paths`` (the first call traces the
    graphs, as the trained detector's first call will); the estimate is the time to build and trace
    plus the second call's time for every path. Untrained, the RPN scores every proposal above the
    floor, so the head sees all of them: an estimate from above."""
    if not paths:
        return 0.0
    from .model import Detector
    started = time.time()
    detector = Detector(cfg)
    predict.detect_images(detector, paths[:1], cfg.eval_min_score, desc="timing detection")
    first = time.time()
    predict.detect_images(detector, paths[:1], cfg.eval_min_score, desc="timing detection")
    per_image = time.time() - first
    return (first - started) + per_image * len(paths)


def training_minutes(total_minutes: float, elapsed_s: float, reserve_s: float) -> float:
    """Training budget (min) that fills what is left of ``total_minutes`` after ``elapsed_s`` seconds
    spent and ``reserve_s`` seconds kept for the steps after training; at least MIN_TRAIN_MINUTES."""
    return max(MIN_TRAIN_MINUTES, total_minutes - (elapsed_s + reserve_s) / 60.0)


def minutes_for_images(images_seen: int, train_minutes: float, wanted: int = WANTED_IMAGES) -> int:
    """Whole minutes of training (``--minutes``) that would show ``wanted`` images on this machine,
    at the rate of a run that saw ``images_seen`` in ``train_minutes`` (its first, tracing step
    included, so the estimate errs long)."""
    return int(np.ceil(wanted * train_minutes / max(images_seen, 1)))


def slow_machine_advice(images_seen: int, train_minutes: float) -> str:
    """One line for a run that saw fewer than WANTED_IMAGES training images (empty otherwise): its
    rate on this CPU and the ``--minutes`` that would reach WANTED_IMAGES."""
    if images_seen >= WANTED_IMAGES:
        return ""
    rate = images_seen / max(train_minutes * 60.0, 1e-9)
    return (f"this CPU trained {rate:.2f} images/s, {images_seen} in {train_minutes:.1f} min: from scratch the "
            f"detector needs about {WANTED_IMAGES} before its AP says much; `--minutes "
            f"{minutes_for_images(images_seen, train_minutes)}` gives that many here")


def held_out_summary(summary: dict, records: list[dict]) -> str:
    """One line naming the held-out tomograms with their labelled slices, boxes, objects and SNR (the
    generator's, of the tilt images), from synthetic.write_dataset's summary, metadata.json and the
    records of its annotations."""
    with open(summary["metadata"]) as fh:
        tomograms = json.load(fh)["tomograms"]
    slices: dict[str, int] = {}
    boxes: dict[str, int] = {}
    for record, name in zip(records, splits.record_groups(records)):
        slices[name] = slices.get(name, 0) + 1
        boxes[name] = boxes.get(name, 0) + len(record["bboxes"])

    def objects(name: str) -> str:
        n = len(tomograms[name]["objects"])
        return f"{n} {'object' if n == 1 else 'objects'}"
    return ", ".join(f"{name} ({slices.get(name, 0)} slices, {boxes.get(name, 0)} boxes, {objects(name)}, "
                     f"SNR {tomograms[name]['snr']:.3f})" for name in summary["test_tomograms"])


def write_montage(path: str, cfg: Config, records: list[dict], detections_csv: str,
                  metrics_json: dict) -> tuple[float, float]:
    """montage.png of up to MONTAGE_SLICES evenly spaced held-out slices with the detections of
    ``detections_csv`` (no second pass of the detector) drawn at the best-F1 score threshold at IoU
    MONTAGE_IOU. Returns (that threshold, AP at that IoU)."""
    row = metrics_json["mAP"]
    named = [c for c, v in metrics_json["classes"].items() if v.get("n_gt")]
    cut = metrics_json["classes"][named[0]]["best_threshold"].get(MONTAGE_IOU) if len(named) == 1 else None
    threshold = float(cut) if cut is not None else cfg.detection_threshold
    picks = tomo_io.evenly_spaced(records, MONTAGE_SLICES)
    shown = [r["filepath"] for r in picks]
    found: dict[str, list[dict]] = {p: [] for p in shown}
    index = ImageIndex([r["filepath"] for r in records], shown)    # rows of the other held-out slices dropped
    for det in read_detections_csv(detections_csv, index).detections:
        if det["score"] >= threshold:
            found[det["image"]].append(det)
    source = tomo_io.image_source(cfg)
    panels = []
    try:
        for record in picks:
            image = source(record["filepath"])
            true = np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in record["bboxes"]], float)
            dets = found[record["filepath"]]
            boxes = np.array([[d["x1"], d["y1"], d["x2"], d["y2"]] for d in dets], float).reshape(-1, 4)
            scores = np.array([d["score"] for d in dets], float)
            grey = image if image.ndim == 2 else image[:, :, 1]
            panels.append(pictures.render_comparison(grey, true, boxes, scores,
                                                    title=os.path.splitext(os.path.basename(record["filepath"]))[0]))
    finally:
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
