"""Evaluation (measure_map.py): AP at IoU 0.5..0.9, COCO AP, F1, mean IoU, per tomogram, ablations, 3D.

What Li et al. (2019) report, and where it appears here:

* Fig. 6a, AP at IoU 0.5 ... 0.9 (``Config.eval_iou_thresholds``), per class and their mean ("mAP"),
  with COCO-style AP 0.50:0.95, AP50 and AP75 beside it; the best F1 over score cuts and the score
  threshold reaching it, at ``--table-iou`` (default 0.7); the mean IoU of the matched detections;
* Fig. 6b, precision-recall curves at ``--pr-iou`` (one PNG per value);
* Table 2, F1, AP and mIoU per tomogram (image group, as the split defines it) at ``--table-iou``;
* the preprocessing ablation: ``--compare B.csv`` evaluates a second run on the same ground truth
  and puts both side by side (table, Markdown, JSON ``"runs"``, one PR plot per IoU with both runs);
* object level in 3D: ``--objects3d PRED.csv --gt3d GT.csv``, AP (ranked by object score), best F1, and
  precision/recall/F1 of every object, at 3D IoU 0.5 ... 0.9.

Detections come either from a CSV written by test_frcnn.py (``--detections``; every row counts,
whatever its score: write it with ``test_frcnn.py --threshold 0`` for full PR curves) or from the
model itself (config + weights, the same :class:`~keras_frcnn_cryo.model.Detector` as test_frcnn.py,
keeping scores >= ``Config.eval_min_score``). CSV rows are matched to the annotations by image file
name (by the trailing path components when two annotated images share a name). Rows of annotated
images outside the evaluated split are dropped (and counted), and so are rows of images that are not
in the annotations (reported with examples); an annotated class the config's model was not trained
on is an error. Without ``--split`` the test split is evaluated when the annotations have a split
file (the one training wrote), else every image; measure_map.py never writes a split file. All metric
arithmetic lives in :mod:`keras_frcnn_cryo.metrics`.

3D objects (``--objects3d PRED.csv --gt3d GT.csv``): the ground truth is the synthetic generator's
``annotations_3d.csv`` (``tomogram,class,x1,y1,z1,x2,y2,z2,incomplete``); predictions need
``class,score,x1,y1,z1,x2,y2,z2`` (writers.write_objects3d_csv's file qualifies; ``#`` lines are
skipped). Boxes are voxels, 0-based, with exclusive upper edges (z2 = last slice + 1). When the
ground truth holds several tomograms, the predictions need a ``tomogram`` column, or the file must
be named after its tomogram (``tomo_03.csv``, or test_frcnn.py's ``tomo_03_objects3d.csv``); with one
tomogram neither is needed. ``--objects3d FOLDER`` reads every NAME_objects3d.csv in it. Objects are
matched per tomogram and class with :func:`keras_frcnn_cryo.tracking.match_flags_3d`.

Library: :func:`evaluate` (what measure_map.py computes; prints notes, writes nothing) returns an
:class:`Evaluation` (its tables as text or Markdown, its JSON payload); :func:`write_evaluation` writes
the files. The command and the demo both call these two.

Outputs in ``--output``: ``metrics.json`` (also ``--json``), ``metrics.md``, ``pr_iou<t>.png``.
JSON: :func:`reports.results_to_json` of the (first) run, i.e. ``"classes": {name: row}`` and
``"mAP": row`` where ``row["ap"]`` is keyed by the IoU thresholds as strings ("0.5" ... "0.9"),
plus ``"per_group"`` (Table 2), ``"split"``, ``"n_images"``, ``"annotations"``, ``"label"``,
``"source"``, ``"n_detections"``, ``"table_iou"``; with ``--compare`` also ``"runs": {label: the
same for each run}``; with ``--objects3d`` also ``"objects3d"``.
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import metrics, preprocessing, reports, splits, tomo_io, tracking, writers
from .annotations import detections_to_dicts, load_annotations, records_to_ground_truth
from .atomic import check_output_dir, write_text_atomic
from .config import BG_CLASS, PAPER_TABLE_IOU, Config, load_config
from .errors import CryoError
from .detections_csv import OBJECTS3D_CSV_SUFFIX, ImageIndex, load_detections
from .predict import add_detector_options, detect_images, load_detector
from .textio import read_csv_rows, write_json
from .tomo_io import natural_sort_key

if TYPE_CHECKING:
    from .model import Detector

SPLITS = ("test", "val", "train", "all")
DEFAULT_CONFIG = "config.pickle"
# 3D object-level matching thresholds reported by --objects3d.
OBJECT3D_IOU_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
GT3D_COLUMNS = ("tomogram", "class", "x1", "y1", "z1", "x2", "y2", "z2")


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of measure_map.py."""
    p = argparse.ArgumentParser(
        description="Measure AP (IoU 0.5-0.9, COCO), F1, mean IoU and per-tomogram metrics of a detector.")
    p.add_argument("-p", "--path", default=None,
                   help="ground-truth annotations (default: the ones the config was trained on)")
    p.add_argument("-o", "--parser", default=None, choices=("simple", "pascal_voc"),
                   help="annotation format (default: the config's; with -p: pascal_voc for a folder, else simple)")
    p.add_argument("--config_filename", default=None,
                   help=f"config written by training (default: {DEFAULT_CONFIG}; not needed with --detections and -p)")
    p.add_argument("--model", default=None, help="weights (.weights.h5); default: the config's model_path")
    add_detector_options(p)
    p.add_argument("--detections", default=None,
                   help="detections CSV from test_frcnn.py (image,x1,y1,x2,y2,class,score), or its --output "
                        "folder (detections.csv, or every detections.shard-K-of-N.csv of a --shard run, "
                        "merged; and every tomogram's NAME_boxes2d.csv, scored on the labelled PNGs whose "
                        "sidecars name tomogram NAME): skip prediction")
    p.add_argument("--compare", default=None, metavar="CSV",
                   help="a second detections CSV (e.g. a run without preprocessing) shown side by side")
    p.add_argument("--labels", nargs=2, default=None, metavar=("FIRST", "SECOND"),
                   help="names of the two runs with --compare (default: the CSV file names)")
    p.add_argument("--split", default=None, choices=SPLITS,
                   help="which images to evaluate (default: test when the annotations have a split file, "
                        "else all of them)")
    p.add_argument("--split-file", default=None,
                   help="split JSON written by training (default: the one the config records, else beside the "
                        "annotations); never written by measure_map.py")
    p.add_argument("--output", default="evaluation", help="folder for metrics.json, metrics.md and PR plots")
    p.add_argument("--json", default=None, help="also write the JSON here")
    p.add_argument("--pr-iou", type=float, nargs="+", default=[PAPER_TABLE_IOU],
                   help="IoU(s) of the precision-recall plots, one PNG each (default: 0.7)")
    p.add_argument("--table-iou", type=float, default=PAPER_TABLE_IOU,
                   help="IoU of the F1 columns and of the per-tomogram table (paper: 0.7); "
                        "one of the config's eval_iou_thresholds")
    p.add_argument("--objects3d", default=None, metavar="CSV",
                   help="3D objects found (class,score,x1,y1,z1,x2,y2,z2[,tomogram]) for object-level scores, "
                        "or test_frcnn.py's output folder (every NAME_objects3d.csv in it)")
    p.add_argument("--gt3d", default=None, metavar="CSV",
                   help="3D ground truth (annotations_3d.csv: tomogram,class,x1,y1,z1,x2,y2,z2,incomplete)")
    return p


# ------------------------------------------------------------------------------------------
# inputs: config, annotations, split
# ------------------------------------------------------------------------------------------
def resolve_config(args: argparse.Namespace) -> Config | None:
    """The run's Config, or None when it is not needed (``--detections`` and ``-p`` without a config)."""
    if args.config_filename is not None:
        return load_config(args.config_filename)
    if args.detections is None or args.path is None:
        return load_config(DEFAULT_CONFIG)
    return None


def _config_name(args: argparse.Namespace) -> str:
    return args.config_filename or DEFAULT_CONFIG


def resolve_annotations(args: argparse.Namespace, cfg: Config | None) -> tuple[str, str]:
    """(annotation path, parser name) from -p/-o, else from the config."""
    ann_path = args.path or (cfg.annotation_path if cfg else None)
    if not ann_path:
        raise CryoError("no annotations given (-p) and the config records none", _config_name(args))
    if args.parser:
        return ann_path, args.parser
    if args.path is None and cfg is not None:
        return ann_path, cfg.parser
    return ann_path, "pascal_voc" if os.path.isdir(ann_path) else "simple"


def check_classes_known(gt: Mapping[str, Sequence[Mapping[str, Any]]], cfg: Config, ann_path: str,
                        config_name: str) -> None:
    """CryoError naming the annotations when they hold a class the model's config does not know."""
    known = set(cfg.class_mapping) - {BG_CLASS}
    if not known:
        return
    for image, boxes in gt.items():
        unknown = sorted({box["class"] for box in boxes} - known)
        if unknown:
            raise CryoError(f"class {unknown[0]!r} (image {image}) is not a class of the model in {config_name} "
                            f"(it knows: {', '.join(sorted(known))})", ann_path)


def resolve_split(split: str | None, split_file: str | None, cfg: Config | None, ann_path: str) -> tuple[str, str]:
    """(split name, split file) for this evaluation; the file is only read here, never written.

    The file: ``--split-file``, else the one training recorded in the config (when the annotations
    are the config's), else :func:`splits.default_split_path` beside the annotations. ``--split``
    unset: "test" when that file exists, else "all" (said on stdout). A train/val/test split
    without its file is a CryoError: splits are made by training, where they decide what it sees.
    """
    if split_file:
        split_path = split_file
    elif cfg is not None and cfg.split_path and cfg.annotation_path and \
            os.path.abspath(cfg.annotation_path) == os.path.abspath(ann_path):
        split_path = cfg.split_path
    else:
        split_path = splits.default_split_path(ann_path)
    exists = os.path.isfile(split_path)
    if split is None:
        split = "test" if exists else "all"
        if not exists:
            print(f"{ann_path}: no split file ({split_path}): evaluating every image (--split all)")
    if split != "all" and not exists:
        raise CryoError(f"no split file to take the {split} split from: training writes it; name it with "
                        "--split-file, or evaluate every image with --split all", split_path)
    return split, split_path


def select_split(records: list[dict], split: str, split_path: str, defaults: Config) -> list[dict]:
    """The records of ``split`` (all of them for "all") as the existing ``split_path`` assigns them;
    CryoError naming the split file when the split is empty or does not fit these annotations."""
    if split == "all":
        return list(records)
    # val_fraction None: the stored one, so the file is reused as it is and never rewritten
    splits.assign_splits(records, split_path, defaults.test_fraction, None, defaults.seed)
    chosen = [r for r in records if r.get("imageset") == split]
    if not chosen:
        raise CryoError(f"the {split} split has no images", split_path)
    return chosen


def check_ground_truth(gt: Mapping[str, Sequence[Mapping[str, Any]]], ann_path: str, split: str) -> int:
    """Number of non-difficult objects; CryoError naming the annotations when there is none."""
    n_objects = sum(1 for objects in gt.values() for obj in objects if not obj.get("difficult", False))
    if n_objects == 0:
        raise CryoError(f"no (non-difficult) objects in the {len(gt)} image(s) of the {split} split: "
                        "nothing to evaluate", ann_path)
    return n_objects


# ------------------------------------------------------------------------------------------
# detections CSV
# ------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------
# one evaluated run
# ------------------------------------------------------------------------------------------
@dataclass
class EvaluatedRun:
    """The metrics of one set of detections: summary (metrics.evaluate), per group, extra PR IoUs."""

    label: str
    source: str
    detections: list[dict]
    results: dict[str, Any]
    by_group: dict[Any, dict[str, Any]]
    pr_results: dict[float, dict[str, Any]]


def evaluate_run(label: str, source: str, gt: Mapping[str, Sequence[Mapping[str, Any]]], detections: list[dict],
                 groups: Mapping[str, str], classes: Sequence[str], iou_thresholds: Sequence[float],
                 table_iou: float, pr_ious: Sequence[float]) -> EvaluatedRun:
    """Evaluate ``detections`` against ``gt``; per-group metrics at ``table_iou`` (AP, F1 and mIoU);
    PR curves at each of ``pr_ious`` (evaluated separately when not among ``iou_thresholds``)."""
    results = metrics.evaluate(gt, detections, iou_thresholds, classes=classes)
    by_group = metrics.evaluate_by_group(gt, detections, groups, iou_threshold=table_iou, classes=classes,
                                         miou_iou_threshold=table_iou)
    pr_results = {}
    for iou in pr_ious:
        if any(math.isclose(iou, t, abs_tol=1e-9) for t in results["iou_thresholds"]):
            pr_results[iou] = results
        else:
            pr_results[iou] = metrics.evaluate(gt, detections, [iou], classes=classes)
    return EvaluatedRun(label, source, detections, results, by_group, pr_results)


def run_payload(run: EvaluatedRun, table_iou: float) -> dict[str, Any]:
    """JSON data of one run: :func:`reports.results_to_json` plus ``per_group``, ``source``,
    ``n_detections`` and ``table_iou``."""
    payload = reports.results_to_json(run.results)
    payload["per_group"] = run.by_group
    payload["table_iou"] = table_iou
    payload["source"] = run.source
    payload["n_detections"] = len(run.detections)
    return payload


def group_snr(records: Sequence[Mapping[str, Any]], groups: Mapping[str, str], per_group: int) -> dict[str, float]:
    """{group: median single-image SNR estimate (preprocessing.estimate_snr, Thong et al. 2001) of up
    to ``per_group`` evenly spaced images of it}; NaN for a group whose images cannot be read."""
    members: dict[str, list[str]] = {}
    for record in records:
        members.setdefault(groups[record["filepath"]], []).append(record["filepath"])
    out = {}
    for group, paths in members.items():
        paths = sorted(paths, key=natural_sort_key)
        picks = tomo_io.evenly_spaced(paths, per_group)
        try:
            out[group] = preprocessing.median_snr(tomo_io.read_image(path) for path in picks)
        except (CryoError, OSError, ValueError):
            out[group] = math.nan
    return out


# ------------------------------------------------------------------------------------------
# 3D objects
# ------------------------------------------------------------------------------------------
def read_gt3d_csv(path: str) -> list[dict]:
    """annotations_3d.csv -> ``[{"tomogram", "class", "box": float64 (6,) [x1, y1, z1, x2, y2, z2],
    "incomplete": bool}]`` (voxels, 0-based, exclusive upper edges). CryoError naming file and line."""
    _, rows = read_csv_rows(path, GT3D_COLUMNS, "3D ground-truth")
    objects = []
    for line_no, row in rows:
        if not row["class"]:
            raise CryoError("empty class name", path, line_no)
        objects.append({"tomogram": row["tomogram"], "class": row["class"],
                        "box": writers.box3d_from_row(row, path, line_no),
                        "incomplete": row.get("incomplete", "0").lower() in ("1", "true", "yes")})
    if not objects:
        raise CryoError("no 3D objects: nothing to evaluate", path)
    return objects


def _objects3d_stem(path: str) -> str:
    """``tomo_03`` for ``.../tomo_03_objects3d.csv`` (test_frcnn.py's name) or ``.../tomo_03.csv``."""
    name = os.path.basename(path)
    return name[:-len(OBJECTS3D_CSV_SUFFIX)] if name.endswith(OBJECTS3D_CSV_SUFFIX) else os.path.splitext(name)[0]


def predicted_objects3d(path: str, tomograms: Sequence[str]) -> list[dict]:
    """3D predictions (writers.read_objects3d_csv) -> dicts as :func:`read_gt3d_csv` (without
    ``incomplete``) plus ``"score"``, each with the ground-truth tomogram it belongs to.

    ``path``: one CSV, or a folder: every NAME_objects3d.csv test_frcnn.py wrote there whose NAME is
    one of ``tomograms`` (the others are listed in a printed note and left out). The tomogram of a
    row is its ``tomogram`` column; without that column, the file name stem when it is one of
    ``tomograms`` (``tomo_03_objects3d.csv`` or ``tomo_03.csv`` for tomogram ``tomo_03``), else the
    only tomogram when the ground truth has one. Otherwise CryoError naming the file.
    """
    known = sorted(set(tomograms))
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(OBJECTS3D_CSV_SUFFIX))
        if not files:
            raise CryoError(f"no NAME{OBJECTS3D_CSV_SUFFIX} in the folder (test_frcnn.py writes one per tomogram)",
                            path)
        stems = {f: _objects3d_stem(f) for f in files}
        used = [f for f in files if stems[f] in known]
        left = [stems[f] for f in files if stems[f] not in known]
        if not used:
            raise CryoError(f"none of its {len(files)} NAME{OBJECTS3D_CSV_SUFFIX} names a tomogram of the 3D "
                            f"ground truth ({', '.join(known[:3])}, ...)", path)
        if left:
            print(f"note: {path}: {len(left)} tomogram(s) without 3D ground truth left out of the 3D scores "
                  f"({', '.join(left[:5])}{', ...' if len(left) > 5 else ''})")
        return [obj for f in used for obj in predicted_objects3d(f, known)]
    rows = writers.read_objects3d_csv(path)
    default_tomogram = None
    if rows and "tomogram" not in rows[0]:
        stem = _objects3d_stem(path)
        if stem in known:
            default_tomogram = stem
        elif len(known) == 1:
            default_tomogram = known[0]
        else:
            raise CryoError(f"no 'tomogram' column, and the file name does not name one of the {len(known)} "
                            f"ground-truth tomograms ({', '.join(known[:3])}, ...): add the column or name the "
                            "file after its tomogram", path)
    objects = []
    for number, row in enumerate(rows):
        tomogram = default_tomogram or row["tomogram"]
        if tomogram not in known:
            raise CryoError(f"tomogram {tomogram!r} is not in the 3D ground truth (row {number + 1})", path)
        objects.append({"tomogram": tomogram, "class": row["class"], "score": row["score"],
                        "box": np.array([row[key] for key in writers.BOX3D_KEYS], dtype=np.float64)})
    return objects


def evaluate_objects_3d(predictions: Sequence[Mapping[str, Any]], ground_truth: Sequence[Mapping[str, Any]],
                        iou_thresholds: Sequence[float] = OBJECT3D_IOU_THRESHOLDS) -> dict[str, Any]:
    """Object-level AP, precision, recall and F1 of 3D boxes, per class and over all classes.

    Within each (tomogram, class), predictions are matched one-to-one to ground-truth objects at
    each 3D IoU threshold with :func:`keras_frcnn_cryo.tracking.match_flags_3d` (greedy, in
    descending score, each taking the free object of highest 3D IoU; TP when >= the threshold);
    unmatched predictions are FP, unmatched objects FN. The counts, precision, recall and F1 take
    every prediction, whatever its score; ``ap`` ranks them by object score over all tomograms
    (:func:`metrics.ranked_ap`, the area under P(R) as for slices) and ``best_f1`` is the F1 at the
    best score cut (``best_threshold``). Incomplete objects (cut by the field of view) count like the
    others; ``n_incomplete`` says how many there are.
    Returns ``{"iou_thresholds", "classes": {name: {t: counts}}, "all": {t: counts}}`` with counts
    ``{"tp", "fp", "fn", "n_pred", "n_gt", "n_incomplete", "precision", "recall", "f1", "ap",
    "best_f1", "best_threshold"}``. In "all", ``ap`` is the mean over classes with ground truth and
    ``best_f1`` the best common score cut over the predictions of every class.
    """
    thresholds = [float(t) for t in iou_thresholds]
    keys = sorted({(o["tomogram"], o["class"]) for o in [*predictions, *ground_truth]})
    classes = sorted({cls for _, cls in keys})
    flags: dict[str, dict[float, list[np.ndarray]]] = {cls: {t: [] for t in thresholds} for cls in classes}
    scores: dict[str, list[float]] = {cls: [] for cls in classes}
    n_gt = dict.fromkeys(classes, 0)
    n_incomplete = dict.fromkeys(classes, 0)
    for tomogram, cls in keys:
        pred = [o for o in predictions if o["tomogram"] == tomogram and o["class"] == cls]
        gt = [o for o in ground_truth if o["tomogram"] == tomogram and o["class"] == cls]
        n_gt[cls] += len(gt)
        n_incomplete[cls] += sum(bool(o["incomplete"]) for o in gt)
        pred_objects = [_as_object3d(o) for o in pred]
        gt_objects = [_as_object3d(o) for o in gt]
        scores[cls] += [obj.score for obj in pred_objects]
        for t in thresholds:
            flags[cls][t].append(tracking.match_flags_3d(pred_objects, gt_objects, t, class_aware=True))

    def finish(score: list[float], tp_flags: np.ndarray, gt_total: int, incomplete: int) -> dict[str, Any]:
        tp = int(tp_flags.sum())
        fp, fn = len(score) - tp, gt_total - tp
        precision = tp / (tp + fp) if tp + fp else math.nan
        recall = tp / (tp + fn) if tp + fn else math.nan
        f1 = (2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else math.nan
        ranked = metrics.ranked_ap(score, tp_flags, gt_total)
        return {"tp": tp, "fp": fp, "fn": fn, "n_pred": len(score), "n_gt": gt_total, "n_incomplete": incomplete,
                "precision": precision, "recall": recall, "f1": f1, "ap": ranked["ap"], "best_f1": ranked["f1"],
                "best_threshold": ranked["best_threshold"]}

    def joined(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    per_class = {cls: {t: finish(scores[cls], joined(flags[cls][t]), n_gt[cls], n_incomplete[cls])
                       for t in thresholds} for cls in classes}
    all_scores = [s for cls in classes for s in scores[cls]]
    overall = {}
    for t in thresholds:
        row = finish(all_scores, joined([f for cls in classes for f in flags[cls][t]]), sum(n_gt.values()),
                     sum(n_incomplete.values()))
        class_aps = [per_class[cls][t]["ap"] for cls in classes if n_gt[cls] > 0]
        row["ap"] = float(np.mean(class_aps)) if class_aps else math.nan
        overall[t] = row
    return {"iou_thresholds": thresholds, "classes": per_class, "all": overall}


def _as_object3d(obj: Mapping[str, Any]) -> tracking.Object3D:
    """A row of :func:`read_gt3d_csv` / :func:`predicted_objects3d` as a tracking.Object3D (its box as read)."""
    x1, y1, z1, x2, y2, z2 = (float(v) for v in obj["box"])
    return tracking.Object3D(class_index=-1, class_name=str(obj["class"]), x1=x1, y1=y1, z1=z1, x2=x2, y2=y2,
                             z2=z2, score=float(obj.get("score", 1.0)))


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------
def _check_iou(value: float, flag: str) -> float:
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise CryoError(f"{flag} must lie in (0, 1], got {value:g}")
    return float(value)


def check_options(table_iou: float, pr_ious: Sequence[float], objects3d: str | None,
                  gt3d: str | None) -> tuple[float, list[float]]:
    """(table IoU, distinct PR IoUs) once each lies in (0, 1] and the 3D files come as a pair."""
    table_iou = _check_iou(table_iou, "--table-iou")
    pr_ious = list(dict.fromkeys(_check_iou(v, "--pr-iou") for v in pr_ious))
    if (objects3d is None) != (gt3d is None):
        raise CryoError("--objects3d and --gt3d go together (3D predictions and 3D ground truth)")
    return table_iou, pr_ious


def _run_labels(args: argparse.Namespace) -> list[str]:
    """Names of the evaluated runs (one, or two with --compare)."""
    if args.labels is not None and args.compare is None:
        raise CryoError("--labels names the two runs of --compare; give --compare B.csv too")
    if args.compare is None:
        return [os.path.basename(args.detections) if args.detections else "model"]
    if args.labels is not None:
        labels = [str(label).strip() for label in args.labels]
    else:
        first = args.detections or "model"
        labels = [os.path.basename(first), os.path.basename(args.compare)]
        if labels[0] == labels[1]:
            labels = [first, args.compare]
    if not all(labels) or labels[0] == labels[1]:
        raise CryoError(f"the two runs need two different, non-empty labels, got {labels}")
    return labels


@dataclass
class Evaluation:
    """What :func:`evaluate` measured: the evaluated images, one :class:`EvaluatedRun` per set of
    detections (two with a comparison) and, optionally, the 3D object-level result."""

    ann_path: str
    split: str
    records: list[dict]
    n_objects: int
    table_iou: float
    pr_ious: list[float]
    runs: list[EvaluatedRun]
    objects3d: dict[str, Any] | None = None

    def payload(self) -> dict[str, Any]:
        """metrics.json's data (see the module docstring)."""
        out = run_payload(self.runs[0], self.table_iou)
        out.update(split=self.split, n_images=len(self.records), annotations=self.ann_path, label=self.runs[0].label)
        if len(self.runs) > 1:
            out["runs"] = {run.label: run_payload(run, self.table_iou) for run in self.runs}
        if self.objects3d is not None:
            out["objects3d"] = self.objects3d
        return out

    def text(self, markdown: bool = False) -> str:
        """The tables measure_map.py prints (plain text), or metrics.md (``markdown``)."""
        iou = self.table_iou
        parts: list[str] = []
        for run in self.runs:
            if markdown:
                parts.append(f"## {run.label}\n\nDetections: `{run.source}` ({len(run.detections)}).\n\n"
                             + reports.format_summary(run.results, iou, markdown=True)
                             + f"\n\n### {reports.box_errors_title(run.results)}\n\n"
                             + reports.format_box_errors(run.results, markdown=True)
                             + f"\n\n### {reports.error_breakdown_title(run.results, iou)}\n\n"
                             + reports.format_error_breakdown(run.results, iou, markdown=True)
                             + f"\n\n### Per tomogram (image group), IoU {iou:g}\n\n"
                             + reports.format_group_table(run.by_group, iou, markdown=True))
            else:
                parts.append(f"== {run.label}: {len(run.detections)} detections ({run.source}) ==\n"
                             + reports.format_summary(run.results, iou)
                             + f"\n\n{reports.box_errors_title(run.results)}\n"
                             + reports.format_box_errors(run.results)
                             + f"\n\n{reports.error_breakdown_title(run.results, iou)}\n"
                             + reports.format_error_breakdown(run.results, iou)
                             + f"\n\nPer tomogram (image group), IoU {iou:g}\n"
                             + reports.format_group_table(run.by_group, iou))
        if len(self.runs) > 1:
            table = reports.format_comparison(self.runs, iou, markdown=markdown)
            if markdown:
                parts.insert(0, "## Comparison\n\n" + table)
            else:
                parts.append(f"Comparison ({' vs '.join(r.label for r in self.runs)})\n{table}")
        if self.objects3d is not None:
            pred, truth = self.objects3d["predictions"], self.objects3d["ground_truth"]
            table = reports.format_objects_3d(self.objects3d, markdown=markdown)
            parts.append(f"## 3D objects\n\n`{pred}` against `{truth}`.\n\n{table}" if markdown
                         else f"3D objects ({pred} against {truth})\n{table}")
        if markdown:
            parts.insert(0, f"# Evaluation\n\n{len(self.records)} images ({self.split} split), {self.n_objects} "
                            f"objects; annotations `{self.ann_path}`.")
        return "\n\n".join(parts)


def evaluate(ann_path: str, detections: Sequence[tuple[str, str | Detector]], cfg: Config | None = None,
             parser: str = "simple", split: str | None = None, split_file: str | None = None,
             table_iou: float = PAPER_TABLE_IOU, pr_ious: Sequence[float] = (PAPER_TABLE_IOU,),
             objects3d: str | None = None, gt3d: str | None = None, config_name: str = DEFAULT_CONFIG,
             out_dir: str | None = None) -> Evaluation:
    """Evaluate one or two sets of detections against the annotations ``ann_path`` (measure_map.py's
    library entry; prints the notes a user needs, writes nothing).

    ``detections``: (label, source) pairs; a source is a detections CSV or test_frcnn.py output folder
    (:func:`~keras_frcnn_cryo.detections_csv.detection_csv_files`), or a :class:`~keras_frcnn_cryo.model.Detector` run on the
    evaluated images (scores >= its ``cfg.eval_min_score``). ``cfg``: the model's config (its IoU
    thresholds, split file and classes), or None for the defaults. ``split``/``split_file``: as
    :func:`resolve_split`. ``objects3d``/``gt3d``: 3D predictions and ground truth, both or neither.
    ``out_dir``: created and checked once the ground truth is valid, before any detection is read or
    predicted (so a bad folder fails early, and bad annotations leave no folder behind).
    """
    table_iou, pr_ious = check_options(table_iou, pr_ious, objects3d, gt3d)
    defaults = cfg or Config()
    thresholds = [float(t) for t in defaults.eval_iou_thresholds]
    if not any(math.isclose(table_iou, t, abs_tol=1e-9) for t in thresholds):
        raise CryoError(f"--table-iou {table_iou:g} is not one of the evaluated IoU thresholds "
                        f"({', '.join(f'{t:g}' for t in thresholds)})")

    all_records, _, class_mapping = load_annotations(ann_path, parser)
    group_of = dict(zip((r["filepath"] for r in all_records), splits.record_groups(all_records)))
    split, split_path = resolve_split(split, split_file, cfg, ann_path)
    records = select_split(all_records, split, split_path, defaults)
    gt = records_to_ground_truth(records)
    if cfg is not None:
        check_classes_known(gt, cfg, ann_path, config_name)
    n_objects = check_ground_truth(gt, ann_path, split)
    if out_dir is not None:
        check_output_dir(out_dir)
    groups = {r["filepath"]: group_of[r["filepath"]] for r in records}
    print(f"{len(records)} images ({split} split) in {len(set(groups.values()))} group(s), "
          f"{n_objects} objects, from {ann_path}")

    index = ImageIndex([r["filepath"] for r in all_records], [r["filepath"] for r in records])
    sources: list[tuple[str, str, list[dict]]] = []
    for label, source in detections:
        if isinstance(source, str):
            sources.append((label, source, load_detections(source, index, defaults.eval_min_score)))
        else:
            found = detect_images(source, [r["filepath"] for r in records], source.cfg.eval_min_score,
                                  desc=f"evaluate {split}")
            sources.append((label, "model", [d for path, dets in found.items() for d in detections_to_dicts(path, dets)]))

    gt_classes = [c for c in (cfg.class_names if cfg else sorted(class_mapping)) if c != BG_CLASS]
    extra = sorted({d["class"] for _, _, dets in sources for d in dets} - set(gt_classes) - {BG_CLASS})
    if extra:
        print(f"note: class(es) {', '.join(extra)} of the detections have no ground truth (left out of the means)")
    classes = gt_classes + extra
    runs = [evaluate_run(label, source, gt, dets, groups, classes, thresholds, table_iou, pr_ious)
            for label, source, dets in sources]
    snr = group_snr(records, groups, defaults.snr_sample_slices)
    for run in runs:
        for group, row in run.by_group.items():
            row["snr_estimate"] = snr.get(group, math.nan)

    result3d = None
    if objects3d:
        truth = read_gt3d_csv(gt3d)
        predicted = predicted_objects3d(objects3d, [o["tomogram"] for o in truth])
        result3d = {"predictions": objects3d, "ground_truth": gt3d, **evaluate_objects_3d(predicted, truth)}
    return Evaluation(ann_path, split, records, n_objects, table_iou, pr_ious, runs, result3d)


def write_evaluation(result: Evaluation, out_dir: str, json_copy: str | None = None) -> list[str]:
    """metrics.json (also at ``json_copy``), metrics.md and one pr_iou<t>.png per PR IoU into
    ``out_dir``; returns the paths written."""
    out_dir = check_output_dir(out_dir)
    payload = result.payload()
    json_path = os.path.join(out_dir, "metrics.json")
    write_json(json_path, payload)
    if json_copy:
        write_json(json_copy, payload)
    md_path = os.path.join(out_dir, "metrics.md")
    write_text_atomic(md_path, result.text(markdown=True) + "\n")
    written = [json_path, md_path] + ([json_copy] if json_copy else [])
    for iou in result.pr_ious:
        pr_path = os.path.join(out_dir, f"pr_iou{iou:g}.png")
        if len(result.runs) == 1:
            reports.plot_pr_curves(result.runs[0].pr_results[iou], iou, pr_path)
        else:
            reports.plot_pr_runs({run.label: run.pr_results[iou] for run in result.runs}, iou, pr_path)
        written.append(pr_path)
    return written


def main(args: argparse.Namespace) -> int:
    """measure_map.py (see the module docstring): the options into one :func:`evaluate`, printed and
    written by :func:`write_evaluation`."""
    check_options(args.table_iou, args.pr_iou, args.objects3d, args.gt3d)
    labels = _run_labels(args)
    cfg = resolve_config(args)
    ann_path, parser_name = resolve_annotations(args, cfg)
    first: str | Detector
    if args.detections:
        first = args.detections
    else:
        first = load_detector(_config_name(args), args.model, args.max_proposals, args.precision,
                              args.min_proposal_score, args.overrides, args.pixel_size_match, args.views)
    sources = [(labels[0], first)] + ([(labels[1], args.compare)] if args.compare else [])
    result = evaluate(ann_path, sources, cfg, parser_name, args.split, args.split_file, args.table_iou,
                      args.pr_iou, args.objects3d, args.gt3d, _config_name(args), args.output)
    print("\n" + result.text())
    written = write_evaluation(result, args.output, args.json)
    print(f"\nwritten: {', '.join(written)}")
    return 0


def console_main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the script and the setup.py command); returns the exit status (2 with
    one ``error:`` line on bad input)."""
    from .cli import run_cli
    return run_cli(main, build_parser(), argv)
