"""Whole tomograms through test_frcnn.py's path, scored as 3D objects and on every labelled slice.

For each arm (a set of ``--set FIELD=VALUE`` test-time overrides; by default the specimen clip off and
on, ``Config.track_clip_to_specimen``; ``--arm NAME FIELD=VALUE ...`` adds others) every tomogram of
a synthetic dataset is detected whole with ``predict.predict_volume`` (what test_frcnn.py runs) into
OUT/ARM, then scored: object-level precision, recall and F1 at 3D IoU 0.5 and 0.7
(``evaluation.evaluate_objects_3d``) over the objects scoring at least each ``--min-scores`` value,
3D AP at 0.5, 0.7, 0.8 and 0.9 over every object (ranked by its score), the mean z-extent IoU of each
true object's best match, and AP on every labelled slice of every tomogram (``evaluation.evaluate``
of the NAME_boxes2d.csv files, split "all"). All arms score the same detector's boxes, so they are paired.

The dataset: ``--data DIR`` (``python -m keras_frcnn_cryo.synthetic``'s layout: tomograms/,
annotations.txt, annotations_3d.csv), else one is written to OUT/data with the options below; the
defaults are the demo's geometry (320 px, 50 A/px, 30 slices of specimen) reconstructed 44 slices
thick, so 7 slices of vacuum lie above and below the lamella, as in a tomogram reconstructed
thicker than its lamella.

    python benchmarks/tomogram_objects.py --config demo_out/model/config.pickle --out runs/objects3d
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from keras_frcnn_cryo import evaluation, predict, synthetic, tracking
from keras_frcnn_cryo.hardware import cpu_description

ARMS = {"clip off": ["track_clip_to_specimen=false"], "clip on": ["track_clip_to_specimen=true"]}


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the model's config.pickle (its model_path: the weights)")
    p.add_argument("--model", default=None, help="weights (default: the config's)")
    p.add_argument("--out", required=True, help="output folder (one subfolder per arm, data/ when generated)")
    p.add_argument("--data", default=None, help="an existing synthetic dataset (default: write one to OUT/data)")
    p.add_argument("--tomograms", type=int, default=8)
    p.add_argument("--seed", type=int, default=7000, help="generator seed (never used for training)")
    p.add_argument("--slices", type=int, default=44, help="reconstructed slices per tomogram")
    p.add_argument("--specimen-slices", type=int, default=30, help="of which the lamella fills the central ones")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--apix", type=float, default=50.0)
    p.add_argument("--slice-step", type=int, default=3, help="label every n-th slice (the 2D AP's slices)")
    p.add_argument("--threshold", type=float, default=0.05, help="test_frcnn.py --threshold of the detections")
    p.add_argument("--min-scores", type=float, nargs="+", default=[0.5, 0.8],
                   help="3D objects scoring below this are left out of the object-level scores")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--arm", nargs="+", action="append", default=[], metavar=("NAME", "FIELD=VALUE"),
                   help="one more arm: its name, then the Config overrides it runs with (repeatable), "
                        "e.g. --arm q0.1 track_clip_to_specimen=true track_extent_quantile=0.1")
    return p


def z_overlap(truth: list[dict], predicted: list[dict]) -> float:
    """Mean over true objects of the best z-extent IoU of a predicted object of its tomogram and class
    that overlaps it in x and y (0 when none does)."""
    values = []
    for gt in truth:
        best = 0.0
        for obj in predicted:
            if obj["tomogram"] != gt["tomogram"] or obj["class"] != gt["class"]:
                continue
            a, b = gt["box"], obj["box"]
            if tracking.iou_3d(a, b) <= 0:
                continue
            inter = max(0.0, min(a[5], b[5]) - max(a[2], b[2]))
            best = max(best, inter / (max(a[5], b[5]) - min(a[2], b[2])))
        values.append(best)
    return float(np.mean(values)) if values else float("nan")


def main() -> int:
    args = build_parser().parse_args()
    print(f"machine: {cpu_description()}; load {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    data = args.data
    if data is None:
        data = os.path.join(args.out, "data")
        if not os.path.isfile(os.path.join(data, "annotations_3d.csv")):
            synthetic.write_dataset(data, args.tomograms, seed=args.seed, shape=(args.slices, args.size, args.size),
                                    slice_step=args.slice_step, pixel_size_a=args.apix,
                                    specimen_slices=args.specimen_slices)
    gt3d = os.path.join(data, "annotations_3d.csv")
    truth = evaluation.read_gt3d_csv(gt3d)
    folder = os.path.join(data, "tomograms")
    volumes = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".mrc"))
    print(f"{len(volumes)} tomograms in {folder}, {len(truth)} true 3D objects", flush=True)
    arms = {name: ARMS[name] for name in args.arms}
    for extra in args.arm:
        if len(extra) < 2 or any("=" not in item for item in extra[1:]):
            raise SystemExit(f"--arm {' '.join(extra)}: give a name, then FIELD=VALUE overrides")
        arms[extra[0]] = extra[1:]
    rows = []
    for arm, overrides in arms.items():
        detector = predict.load_detector(args.config, args.model, overrides=overrides)
        out = os.path.join(args.out, arm.replace(" ", "_"))
        os.makedirs(out, exist_ok=True)
        started = time.time()
        options = predict.VolumeOptions(overlay_slices=2)
        for path in volumes:
            predict.predict_volume(detector, path, out, args.threshold, options)
        seconds = time.time() - started
        result = evaluation.evaluate(os.path.join(data, "annotations.txt"), [(arm, out)], detector.cfg, split="all")
        ap = result.runs[0].results["mAP"]                       # {IoU threshold: AP}
        coco = result.runs[0].results["mean"]["coco_ap"]
        predicted = evaluation.predicted_objects3d(out, [o["tomogram"] for o in truth])
        ranked = evaluation.evaluate_objects_3d(predicted, truth)["all"]   # every object, ranked by score
        ap3d = (ranked[0.5]["ap"], ranked[0.7]["ap"], ranked[0.8]["ap"], ranked[0.9]["ap"])
        for min_score in args.min_scores:
            kept = [o for o in predicted if o["score"] >= min_score]
            scores = evaluation.evaluate_objects_3d(kept, truth)["all"]
            rows.append((arm, min_score, len(kept), scores[0.5], scores[0.7], z_overlap(truth, kept), ap3d, ap, coco,
                         seconds / max(len(volumes), 1)))
    print("\n| arm | 3D objects scoring >= | objects | P / R / F1 at 3D IoU 0.5 | P / R / F1 at 3D IoU 0.7 | "
          "mean z IoU of the best match | 3D AP@0.5 / 0.7 / 0.8 / 0.9 (every object) | "
          "slice AP@0.5 / 0.7 / 0.9 / COCO | s per tomogram |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm, min_score, n, at5, at7, z_iou, ap3d, ap, coco, seconds in rows:
        prf = [" / ".join(f"{s[k]:.2f}" for k in ("precision", "recall", "f1")) for s in (at5, at7)]
        print(f"| {arm} | {min_score:g} | {n} | {prf[0]} | {prf[1]} | {z_iou:.3f} | "
              f"{' / '.join(f'{v:.3f}' for v in ap3d)} | "
              f"{ap[0.5]:.3f} / {ap[0.7]:.3f} / {ap[0.9]:.3f} / {coco:.3f} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
