"""The detections CSV: test_frcnn.py writes it, measure_map.py reads it (one home for the format).

One row per box, the first line the header ``image,x1,y1,x2,y2,class,score`` (:data:`CSV_COLUMNS`):
float pixels of the original image, 0-based, x2/y2 exclusive edges; ``image`` the image path
(relative to the input folder when written by test_frcnn.py). A ``test_frcnn.py --shard K/N`` run
writes part K as ``detections.shard-K-of-N.csv``; :func:`detection_csv_files` finds every part of a
folder and :func:`load_detections` merges them. Reading matches each row to an annotated image by
file name (:class:`ImageIndex`).

Tomograms: test_frcnn.py writes NAME_boxes2d.csv per MRC volume (``slice,x1,y1,x2,y2,class,score``
in the volume's pixels; a tomogram's boxes refined along z when the config says so; the tilt index
for a tilt series). A folder of those is evaluated too: each labelled PNG whose sidecar (written by
``tomo_io export`` and the synthetic generator) names volume NAME and slice (tilt) z gets the rows
of that slice, scaled by the sidecar's binning. So measure_map.py scores the tomogram path test_frcnn.py takes, not only slice by slice.
"""
from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .atomic import atomic_path
from .errors import CryoError, parse_float
from .textio import read_csv_rows
from .tomo_io import natural_sort_key, read_sidecar, sidecar_source
from .writers import read_boxes2d_csv

if TYPE_CHECKING:                       # the writer only reads the fields of model.Detections
    from .model import Detections

CSV_COLUMNS = ("image", "x1", "y1", "x2", "y2", "class", "score")
DETECTIONS_CSV = "detections.csv"
SHARD_CSV = re.compile(r"^detections\.shard-(\d+)-of-(\d+)\.csv$")
TOMOGRAM_CSV_SUFFIX = "_boxes2d.csv"   # test_frcnn.py's per-tomogram boxes: NAME_boxes2d.csv
OBJECTS3D_CSV_SUFFIX = "_objects3d.csv"  # ... and its 3D objects: NAME_objects3d.csv
SCORE_FLOOR_SLACK = 0.01   # lowest score this far above eval_min_score: the file was cut at a higher threshold


def write_detections_csv(path: str, results: dict[str, Detections], relative_to: str | None = None) -> int:
    """One row per box (image, x1, y1, x2, y2, class, score); written atomically. Returns the row count."""
    rows = 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for image_path, dets in results.items():
            name = os.path.relpath(image_path, relative_to) if relative_to else image_path
            for box, score, label in zip(dets.boxes, dets.scores, dets.labels):
                writer.writerow([name, *(f"{v:.2f}" for v in box), dets.class_names[int(label)], f"{score:.6f}"])
                rows += 1
    return rows


def shard_csv_name(shard: tuple[int, int] | None) -> str:
    """detections.csv, or detections.shard-K-of-N.csv for part K of N."""
    return DETECTIONS_CSV if shard is None else f"detections.shard-{shard[0]}-of-{shard[1]}.csv"


def _path_parts(path: str) -> list[str]:
    return [part for part in path.replace("\\", "/").split("/") if part not in ("", ".")]


def _shared_tail(parts_a: Sequence[str], parts_b: Sequence[str]) -> int:
    """Number of trailing path components two paths have in common."""
    count = 0
    for a, b in zip(reversed(parts_a), reversed(parts_b)):
        if a != b:
            break
        count += 1
    return count


class ImageIndex:
    """Finds the annotated image a CSV row names: by file name; among annotated images sharing that
    name, the one sharing the most trailing path components with it.

    ``all_paths``: every annotated image (file paths, the ground-truth ids); ``evaluated``: those of
    the evaluated split.
    """

    def __init__(self, all_paths: Sequence[str], evaluated: Sequence[str]):
        self.by_name: dict[str, list[str]] = {}
        for path in all_paths:
            self.by_name.setdefault(os.path.basename(path), []).append(path)
        self.evaluated = set(evaluated)
        self._slices: dict[tuple[str, int], list[tuple[str, int]]] | None = None

    def slices(self) -> dict[tuple[str, int], list[tuple[str, int]]]:
        """(volume file stem, slice z or tilt index) -> [(annotated image, its binning)] for every
        annotated image with a sidecar (read once, on first use)."""
        if self._slices is None:
            self._slices = {}
            for paths in self.by_name.values():
                for path in paths:
                    if not os.path.isfile(path + ".json"):
                        continue
                    sidecar = read_sidecar(path)
                    z = sidecar.get("tilt_index" if sidecar.get("kind") == "tilt_series" else "z")
                    if not isinstance(z, int):
                        continue
                    stem = os.path.splitext(os.path.basename(sidecar_source(sidecar, path + ".json")))[0]
                    binning = sidecar.get("binning", 1)
                    self._slices.setdefault((stem, z), []).append(
                        (path, int(binning) if isinstance(binning, int) and binning >= 1 else 1))
        return self._slices

    def lookup(self, name: str, source: str, line: int) -> str | None:
        """Ground-truth id of ``name``; None when no annotated image has that file name;
        CryoError (``source:line``) when several do and its path does not single one out."""
        parts = _path_parts(name)
        candidates = self.by_name.get(parts[-1] if parts else "", [])
        if len(candidates) > 1:
            shared = [_shared_tail(_path_parts(c), parts) for c in candidates]
            best = [c for c, n in zip(candidates, shared) if n == max(shared)]
            if len(best) != 1:
                raise CryoError(f"image {name!r} is ambiguous: several annotated images have this file name "
                                "(write the path relative to a common folder)", source, line)
            return best[0]
        return candidates[0] if candidates else None


@dataclass
class DetectionsFile:
    """Detections read from one CSV, keyed to ground-truth ids (image file paths)."""

    path: str
    detections: list[dict] = field(default_factory=list)
    n_rows: int = 0
    n_other_split: int = 0   # rows of annotated images outside the evaluated split (dropped)
    unannotated: dict[str, int] = field(default_factory=dict)  # image name -> rows, images not in the annotations
    min_score: float = math.nan
    unlabelled_slices: int = 0  # a tomogram's CSV: slices with boxes but no labelled image (not evaluated)


def _csv_float(row: Mapping[str, str], key: str, source: str, line: int) -> float:
    return parse_float(row[key], f"column {key!r}", source, line)


def read_detections_csv(path: str, index: ImageIndex) -> DetectionsFile:
    """Rows of a test_frcnn.py CSV (:data:`CSV_COLUMNS`) -> detection dicts.

    Each dict: ``{"image": ground-truth id, "class": str, "x1", "y1", "x2", "y2", "score": float}``
    (float pixels, x2/y2 exclusive). Rows of annotated images outside ``index.evaluated`` are
    dropped and counted, and so are rows of images that are not in the annotations at all
    (``unannotated``). CryoError naming ``path`` (and the line) for: a missing file or column, a
    non-numeric or non-finite value (NaN score), x2 < x1 or y2 < y1, an empty class.
    """
    out = DetectionsFile(path=path)
    _, rows = read_csv_rows(path, CSV_COLUMNS, "detections")
    scores = []
    for line_no, row in rows:
        out.n_rows += 1
        x1, y1, x2, y2, score = (_csv_float(row, key, path, line_no) for key in ("x1", "y1", "x2", "y2", "score"))
        if x2 < x1 or y2 < y1:
            raise CryoError(f"box with x2 < x1 or y2 < y1: {(x1, y1, x2, y2)}", path, line_no)
        class_name = row["class"]
        if not class_name:
            raise CryoError("empty class name", path, line_no)
        name = row["image"]
        image_id = index.lookup(name, path, line_no)
        if image_id is None:
            out.unannotated[name] = out.unannotated.get(name, 0) + 1
            continue
        if image_id not in index.evaluated:
            out.n_other_split += 1
            continue
        scores.append(score)
        out.detections.append({"image": image_id, "class": class_name, "x1": x1, "y1": y1, "x2": x2,
                               "y2": y2, "score": score})
    out.min_score = min(scores) if scores else math.nan
    return out


def read_tomogram_csv(path: str, index: ImageIndex) -> DetectionsFile:
    """Rows of a test_frcnn.py NAME_boxes2d.csv -> detection dicts of the labelled slices of tomogram
    NAME (:meth:`ImageIndex.slices`), boxes divided by each slice image's binning (the CSV is in the
    tomogram's pixels, the labels in the PNG's). Rows of slices no annotated image shows are counted
    (``unlabelled_slices``), not evaluated. CryoError naming ``path`` for a bad row or when two
    annotated images show the same slice of NAME."""
    out = DetectionsFile(path=path)
    name = os.path.basename(path)
    stem = name[:-len(TOMOGRAM_CSV_SUFFIX)] if name.endswith(TOMOGRAM_CSV_SUFFIX) else os.path.splitext(name)[0]
    slices = index.slices()
    scores, unlabelled = [], set()
    for row in read_boxes2d_csv(path):
        out.n_rows += 1
        z = int(row["slice"])
        if not row["class"]:
            raise CryoError(f"empty class name on slice {z}", path)
        shown = slices.get((stem, z), [])
        if len(shown) > 1:
            raise CryoError(f"slice {z} of tomogram {stem} is shown by several annotated images "
                            f"({', '.join(p for p, _ in shown[:2])}): keep one", path)
        if not shown:
            unlabelled.add(z)
            continue
        image_id, binning = shown[0]
        if image_id not in index.evaluated:
            out.n_other_split += 1
            continue
        scores.append(row["score"])
        out.detections.append({"image": image_id, "class": row["class"], "x1": row["x1"] / binning,
                               "y1": row["y1"] / binning, "x2": row["x2"] / binning, "y2": row["y2"] / binning,
                               "score": row["score"]})
    out.unlabelled_slices = len(unlabelled)
    if out.n_rows and not any(key[0] == stem for key in slices):
        out.unannotated[f"{stem} (tomogram: no annotated image's sidecar names it)"] = out.n_rows
    out.min_score = min(scores) if scores else math.nan
    return out


def detection_csv_files(path: str) -> list[str]:
    """The detections CSV(s) that ``path`` names: the file itself, or in a folder its detections.csv or
    all parts detections.shard-K-of-N.csv of a ``test_frcnn.py --shard`` run, followed by every
    tomogram's NAME_boxes2d.csv (sorted).

    CryoError naming the folder when it holds none of these, both a detections.csv and shard parts,
    parts of two different N, or not every part K = 0 .. N-1 (the message names the missing parts
    and the command that writes them).
    """
    if not os.path.isdir(path):
        return [path]
    names = os.listdir(path)
    tomograms = [os.path.join(path, n) for n in sorted(names, key=natural_sort_key) if n.endswith(TOMOGRAM_CSV_SUFFIX)]
    images = _image_csv_files(path, names, bool(tomograms))
    return images + tomograms


def _image_csv_files(path: str, names: list[str], optional: bool) -> list[str]:
    """detections.csv or the complete set of shard parts in folder ``path`` (see detection_csv_files);
    [] when there are none and ``optional``."""
    parts: dict[int, dict[int, str]] = {}
    for name in names:
        match = SHARD_CSV.match(name)
        if match:
            parts.setdefault(int(match.group(2)), {})[int(match.group(1))] = os.path.join(path, name)
    whole = DETECTIONS_CSV in names
    if whole and parts:
        raise CryoError(f"holds both {DETECTIONS_CSV} and --shard parts: evaluate one of them "
                        f"(move the other run's files away)", path)
    if whole:
        return [os.path.join(path, DETECTIONS_CSV)]
    if not parts:
        if optional:
            return []
        raise CryoError(f"no {DETECTIONS_CSV}, no detections.shard-K-of-N.csv and no NAME{TOMOGRAM_CSV_SUFFIX} "
                        "in this folder", path)
    if len(parts) > 1:
        raise CryoError(f"holds --shard parts of different runs (N = {', '.join(map(str, sorted(parts)))})", path)
    (n, found), = parts.items()
    missing = [k for k in range(n) if k not in found]
    if missing:
        raise CryoError(f"--shard part(s) {', '.join(f'{k}/{n}' for k in missing)} missing (no "
                        f"detections.shard-{missing[0]}-of-{n}.csv yet): run test_frcnn.py --shard "
                        f"{missing[0]}/{n} --output {path} (add --resume to keep finished parts)", path)
    return [found[k] for k in range(n)]


def load_detections(path: str, index: ImageIndex, eval_min_score: float) -> list[dict]:
    """Detections of one CSV, or of the CSVs of a folder (:func:`detection_csv_files`), with the
    notes a user needs (dropped rows, truncated score range). CryoError when two parts hold
    detections of the same image."""
    files = detection_csv_files(path)

    def read(name: str) -> DetectionsFile:
        if name.endswith(TOMOGRAM_CSV_SUFFIX):
            return read_tomogram_csv(name, index)
        return read_detections_csv(name, index)

    found = read(files[0])
    owner = {d["image"]: files[0] for d in found.detections}
    for other in files[1:]:
        more = read(other)
        clash = next((d["image"] for d in more.detections if owner.get(d["image"], other) != other), None)
        if clash is not None:
            pair = f"{os.path.basename(owner[clash])} and {os.path.basename(other)}"
            if SHARD_CSV.match(os.path.basename(other)):
                raise CryoError(f"image {clash} has detections in two parts ({pair})", path)
            raise CryoError(f"image {clash} has detections in two files ({pair}): pass the one to evaluate "
                            "as --detections FILE", path)
        owner.update((d["image"], other) for d in more.detections)
        found.detections += more.detections
        found.n_rows += more.n_rows
        found.n_other_split += more.n_other_split
        for name, count in more.unannotated.items():
            found.unannotated[name] = found.unannotated.get(name, 0) + count
        found.min_score = min((s for s in (found.min_score, more.min_score) if not math.isnan(s)), default=math.nan)
        found.unlabelled_slices += more.unlabelled_slices
    tomograms = [f for f in files if f.endswith(TOMOGRAM_CSV_SUFFIX)]
    if len(files) - len(tomograms) > 1:
        print(f"{path}: detections merged from {len(files) - len(tomograms)} --shard parts")
    if tomograms:
        print(f"{path}: {len(tomograms)} tomogram(s) (NAME{TOMOGRAM_CSV_SUFFIX}) scored on their labelled slices, "
              f"as test_frcnn.py detected them; {found.unlabelled_slices} slice(s) with boxes but no label left out")
    if found.unannotated:
        names = sorted(found.unannotated, key=natural_sort_key)
        print(f"{path}: {sum(found.unannotated.values())} detections on {len(names)} image(s) that are not in the "
              f"ground truth (e.g. {', '.join(names[:3])}); left out. Annotate an image without objects as "
              "'path,,,,,' to count its detections as false positives")
    if found.n_other_split:
        print(f"{path}: {found.n_other_split} of {found.n_rows} detections are on images outside the "
              "evaluated split; ignored")
    if not found.detections:
        print(f"{path}: no detections on the evaluated images (AP 0)")
    elif found.min_score > eval_min_score + SCORE_FLOOR_SLACK:
        print(f"note: {path} holds no score below {found.min_score:.3g}: AP and PR curves stop there "
              f"(write it with test_frcnn.py --threshold {eval_min_score:g} for the full curves)")
    return found.detections
