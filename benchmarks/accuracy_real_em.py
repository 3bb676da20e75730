"""Accuracy on real EM data nobody in this project made: Lucchi++ mitochondria (FIB-SEM), README's defaults.

    python benchmarks/accuracy_real_em.py --data PATH/lucchi_pp_train --out runs/accuracy_real_em
        [--budget-min 60] [--variants default paper] [--jobs 2] [--threads N] [--test-time [OPTION ...]] [--eval-only]

Data (``--data``): a lucchi_pp_train folder with images/ and masks/ (55 slices, 1024x768, every third
slice of the Lucchi++ FIB-SEM training volume, with the experts' binary mitochondria masks). Boxes are the 8-connected components of the expert masks
(keras_frcnn_cryo.masks_to_boxes). The split is by contiguous slice ranges, as that README asks:
the first two thirds of the slices train, the last third is evaluated (``--test-split 1/3``; split
file beside the annotations, method "contiguous").

Each variant trains from scratch for ``--budget-min`` minutes with
``train_frcnn.py -p annotations.txt --test-split 0.333 --time-budget B`` plus its flags: "default"
adds none (the recipe README gives a new user: here the input size and anchors are fitted to these
40-220 px mitochondria), "paper" adds ``--recipe paper`` (Li et al. 2019 as published: 600-px input,
128/256/512-px anchors, alternating steps at lr 1e-5). ``--jobs 2`` trains both at once, each on
half the cores; a single variant gets every core. ``--test-time [OPTION ...]`` also evaluates the
first ``--variants`` model with those test-time options (accuracy_common.TEST_TIME; all when none is named);
``--eval-only`` re-evaluates the models an earlier run left in ``--out`` without training.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import accuracy_common as common  # noqa: E402
from accuracy_common import evaluate, load_run, model_runs, records_of  # noqa: E402
from keras_frcnn_cryo import masks_to_boxes  # noqa: E402

TEST_FRACTION = round(1.0 / 3.0, 6)  # as written to the split file
# the shared variants, and the input size fitted to this data shrunk by a quarter
VARIANTS = {**common.VARIANTS,
            "small-input": ["--im-size", "576"]}  # 3/4 of the native 768 (fitted: 800): more images per hour


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the lucchi_pp_train folder (images/, masks/)")
    common.add_run_options(parser, VARIANTS, "runs/accuracy_real_em")
    args = parser.parse_args()
    box_dir = os.path.join(args.out, "boxes")
    annotations = os.path.join(box_dir, "annotations.txt")
    flags = {name: ["--test-split", str(TEST_FRACTION), *extra] for name, extra in VARIANTS.items()}
    if common.start(args, annotations, flags):
        return
    if not os.path.isdir(args.data):
        sys.exit(f"error: {args.data}: Lucchi++ data folder not found")
    records = masks_to_boxes.masks_to_records(os.path.join(args.data, "masks"), os.path.join(args.data, "images"),
                                              box_dir)
    annotations = masks_to_boxes.write_annotations(records, box_dir, source=args.data)
    sizes = sorted(((b["x2"] - b["x1"]) * (b["y2"] - b["y1"])) ** 0.5 for r in records for b in r["bboxes"])
    print(f"{len(records)} slices, {len(sizes)} boxes, sqrt(area) {sizes[0]:.0f}-{sizes[-1]:.0f} px "
          f"(median {sizes[len(sizes) // 2]:.0f})", flush=True)
    common.train_all(args, __file__, annotations, flags)
    test = records_of(annotations, "test", args.seed, TEST_FRACTION)
    results = {label: evaluate(load_run(os.path.join(args.out, variant), overrides, weights), test,
                               f"{label} | last third")
               for label, variant, overrides, weights in model_runs(args)}
    common.write_results(args.out, results)


if __name__ == "__main__":
    main()
