"""Evaluation (measure_map.py): AP at IoU 0.5..0.9, precision, recall, F1, mean IoU, per tomogram.

Either runs the trained detector itself on the chosen split of the annotations (the same
:class:`~keras_frcnn_cryo.model.Detector` as test_frcnn.py), or reads a detections CSV written by
test_frcnn.py (``--detections``), matching images by file name. All metric arithmetic lives in
:mod:`keras_frcnn_cryo.metrics`.
"""
from __future__ import annotations

import argparse
import csv
import math
import os

from . import metrics, splits
from .atomic import write_text_atomic
from .cli import check_output_dir
from .config import BG_CLASS, Config, load_config
from .errors import CryoError
from .predict import CSV_COLUMNS, detect_images, load_detector
from .train import detections_to_dicts, load_annotations, records_to_ground_truth

SPLITS = ("test", "val", "train", "all")


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of measure_map.py."""
    p = argparse.ArgumentParser(description="Measure AP, precision, recall, F1 and mean IoU of a detector.")
    p.add_argument("-p", "--path", default=None,
                   help="ground-truth annotations (default: the ones the config was trained on)")
    p.add_argument("-o", "--parser", default=None, help="simple or pascal_voc (default: the config's)")
    p.add_argument("--config_filename", default="config.pickle")
    p.add_argument("--model", default=None, help="weights (.weights.h5); default: the config's model_path")
    p.add_argument("--detections", default=None, help="detections CSV from test_frcnn.py (skip prediction)")
    p.add_argument("--split", default="test", choices=SPLITS, help="which images to evaluate (default: test)")
    p.add_argument("--split-file", default=None, help="split JSON (default: beside the annotations)")
    p.add_argument("--output", default="evaluation", help="folder for metrics.json, metrics.md and PR plots")
    p.add_argument("--json", default=None, help="also write the JSON here")
    p.add_argument("--pr-iou", type=float, default=0.7, help="IoU of the precision-recall plot")
    return p


def read_detections_csv(path: str, known_images: dict[str, str]) -> list[dict]:
    """Rows of a test_frcnn.py CSV -> detection dicts keyed to ground-truth image ids by file name."""
    if not os.path.isfile(path):
        raise CryoError("detections file not found", path)
    detections = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CryoError(f"detections CSV lacks columns: {', '.join(missing)}", path)
        unmatched = set()
        for line_no, row in enumerate(reader, start=2):
            try:
                values = [float(row[k]) for k in ("x1", "y1", "x2", "y2", "score")]
            except (TypeError, ValueError):
                raise CryoError("non-numeric box or score", path, line_no) from None
            if not all(math.isfinite(v) for v in values):
                raise CryoError("NaN or infinite box or score", path, line_no)
            name = os.path.basename(row["image"])
            if name not in known_images:
                unmatched.add(name)
                continue
            detections.append({"image": known_images[name], "class": row["class"], "x1": values[0],
                               "y1": values[1], "x2": values[2], "y2": values[3], "score": values[4]})
    if unmatched and not detections:
        raise CryoError(f"no image of the detections matches the ground truth (e.g. {sorted(unmatched)[0]})", path)
    if unmatched:
        print(f"warning: {len(unmatched)} images in {path} are not in the evaluated ground truth; ignored")
    return detections


def format_group_table(by_group: dict, markdown: bool = False) -> str:
    """Per-tomogram table (the paper's Table 2): F1, AP, mIoU, precision, recall at IoU 0.7."""
    header = ["group", "images", "objects", "F1", "AP", "mIoU", "precision", "recall"]

    def num(value) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    rows = [[str(name), str(v["n_images"]), str(v["n_gt"]), num(v["f1"]), num(v["ap"]), num(v["miou"]),
             num(v["precision"]), num(v["recall"])] for name, v in sorted(by_group.items(), key=lambda kv: str(kv[0]))]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "Per tomogram (image group), IoU 0.7\n\n" + "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "Per tomogram (image group), IoU 0.7\n" + "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """measure_map.py."""
    cfg: Config | None = None
    if args.detections is None or args.path is None or args.parser is None:
        cfg = load_config(args.config_filename)
    ann_path = args.path or (cfg.annotation_path if cfg else None)
    if not ann_path:
        raise CryoError("no annotations given (-p) and the config records none", args.config_filename)
    parser = args.parser or (cfg.parser if cfg else "simple")
    records, _, class_mapping = load_annotations(ann_path, parser)
    if args.split != "all":
        split_path = args.split_file or splits.default_split_path(ann_path)
        seed = cfg.seed if cfg else Config().seed
        test_fraction = cfg.test_fraction if cfg else Config().test_fraction
        val_fraction = cfg.val_fraction if cfg else Config().val_fraction
        splits.assign_splits(records, split_path, test_fraction, val_fraction, seed)
        records = [r for r in records if r.get("imageset") == args.split]
        if not records:
            raise CryoError(f"the {args.split} split has no images", split_path)
    out_dir = check_output_dir(args.output)
    classes = [c for c in (cfg.class_names if cfg else sorted(class_mapping)) if c != BG_CLASS]
    thresholds = list(cfg.eval_iou_thresholds if cfg else Config().eval_iou_thresholds)

    gt = records_to_ground_truth(records)
    if args.detections:
        by_name = {os.path.basename(r["filepath"]): r["filepath"] for r in records}
        detections = read_detections_csv(args.detections, by_name)
    else:
        detector = load_detector(args.config_filename, args.model)
        results = detect_images(detector, [r["filepath"] for r in records], detector.cfg.eval_min_score,
                                desc=f"evaluate {args.split}")
        detections = [d for path, dets in results.items() for d in detections_to_dicts(path, dets)]

    results = metrics.evaluate(gt, detections, thresholds, classes=classes)
    groups = {r["filepath"]: r.get("group") or splits.image_group(r["filepath"]) for r in records}
    by_group = metrics.evaluate_by_group(gt, detections, groups, iou_threshold=0.7)
    print(f"{len(records)} images ({args.split} split), {sum(len(v) for v in gt.values())} objects, "
          f"{len(detections)} detections")
    print(metrics.format_table(results))
    print(format_group_table(by_group))

    payload = metrics.results_to_json(results)
    payload["per_group"] = by_group
    payload["split"] = args.split
    payload["n_images"] = len(records)
    json_path = os.path.join(out_dir, "metrics.json")
    metrics.write_json_atomic(payload, json_path)
    if args.json:
        metrics.write_json_atomic(payload, args.json)
    md_path = os.path.join(out_dir, "metrics.md")
    write_text_atomic(md_path, metrics.format_markdown(results) + "\n\n" + format_group_table(by_group, markdown=True))
    pr_path = os.path.join(out_dir, f"pr_iou{args.pr_iou:g}.png")
    metrics.plot_pr_curves(results, args.pr_iou, pr_path)
    print(f"written: {json_path}, {md_path}, {pr_path}")
    return 0


def console_main() -> None:
    """Console entry point (setup.py)."""
    import sys

    from .cli import run_cli
    sys.exit(run_cli(main, build_parser()))
