"""Train / val / test splits by tomogram (image group), seeded and persisted.

Neighbouring slices of one tomogram are near copies, so a random split by slice leaks the test set
into training. Splits here are made by *group* (the tomogram or stack an image belongs to):

Group of a record
    ``record['group']`` when the annotations give one; otherwise :func:`image_group` of its path,
    which removes one trailing slice/tilt index from the file name::

        tomo01_z012.png -> tomo01      tomo01-0012.png -> tomo01     TS_03_slice_0040.png -> TS_03
        cellA_t07.png   -> cellA       ts01_-54.0.png  -> ts01       tomo01.png -> tomo01 (kept)

    The index must follow a separator (``_ - . space``), optionally with a word such as ``z``,
    ``slice``, ``t``, ``tilt``, ``frame``, ``img``; digits glued to the name (``tomo01``) are part
    of the name. A name that is only an index (``0012.png``, ``z012.png``, ``slice_0040.png``) takes
    the name of its parent directory (one directory per tomogram); when two such directories have
    the same name, their paths below the images' common directory. Otherwise the file name alone
    decides: ``slices/tomo03_z006.png`` and ``tilts/tomo03_tilt05.png`` are both ``tomo03``.
    Only one index is removed, so ``TS_03.png`` (no slice index) becomes ``TS``: names that end
    in a number are grouped conservatively (bigger groups, never leaks).

Assignment (:func:`assign_splits`)
    method ``"group"``: the sorted groups are shuffled with ``random.Random(seed)``; the first
    ``ceil(test_fraction * n_groups)`` go to test, the next ``ceil(val_fraction * n_groups)`` to val,
    the rest to train (at least one group stays train; with test_fraction > 0 at least one goes
    to test when there are two groups or more; val takes what is left).
    method ``"contiguous"``: with a single group, the images in natural file-name order are cut
    into contiguous ranges: the last ``test_fraction`` test, the ``val_fraction`` before them val.
    method ``"imageset"`` / ``"imageset-contiguous"``: when a VOC parser set ``imageset`` from
    ImageSets, its test images stay test and the trainval images are split into train/val as above
    (val_fraction then applies to the trainval groups or images).

Persistence
    The split is written (atomically) to ``split_path`` as JSON ``{"seed", "method",
    "test_fraction", "val_fraction", "groups": {group: split or "mixed"}, "images": {key: split}}``
    where key is the image's base name (or, when base names collide, its path relative to the
    images' common directory). A later call with the same groups reuses the file exactly,
    whatever seed or fractions it is given; different groups raise CryoError.
    Default location: :func:`default_split_path`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import warnings

from .atomic import write_bytes_atomic
from .errors import CryoError
from .tomo_io import natural_sort_key

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MIXED = "mixed"

_INDEX_WORDS = (
    "z|slice|sl|s|section|sec|t|tilt|tlt|frame|fr|f|img|image|im|idx|index|n|no|num|layer|plane|view"
)
_NUMBER = r"[+-]?\d+(?:\.\d+)?"
_TRAILING_INDEX = re.compile(rf"[_\-. ]+(?:(?:{_INDEX_WORDS})[_\-]?)?{_NUMBER}$", re.IGNORECASE)
_ONLY_INDEX = re.compile(rf"^(?:(?:{_INDEX_WORDS})[_\-. ]?)?{_NUMBER}$", re.IGNORECASE)
_FRACTION_EPS = 1e-9


def default_split_path(annotation_path: str) -> str:
    """``data/ann.txt`` -> ``data/ann.split.json``; a directory ``data/voc`` -> ``data/voc/split.json``."""
    path = str(annotation_path).rstrip("/\\") or str(annotation_path)
    if os.path.isdir(path):
        return os.path.join(path, "split.json")
    return os.path.splitext(path)[0] + ".split.json"


def image_group(filepath: str) -> str:
    """The tomogram/stack a slice belongs to, from its file name (rules in the module docstring)."""
    stem = os.path.splitext(os.path.basename(str(filepath)))[0]
    if _ONLY_INDEX.match(stem):
        parent = os.path.basename(os.path.dirname(os.path.abspath(str(filepath))))
        return parent or stem
    stripped = _TRAILING_INDEX.sub("", stem)
    return stripped or stem


def record_groups(records: list[dict]) -> list[str]:
    """Group of each record: ``record['group']`` if set, else :func:`image_group`; index-only names
    whose directories share a name are told apart by their relative directory paths."""
    derived = [image_group(record["filepath"]) for record in records]
    index_only = [index for index, record in enumerate(records) if not record.get("group")
                  and _ONLY_INDEX.match(os.path.splitext(os.path.basename(str(record["filepath"])))[0])]
    dirs = {index: os.path.dirname(os.path.abspath(str(records[index]["filepath"]))) for index in index_only}
    if len({derived[index] for index in index_only}) < len(set(dirs.values())):
        common = os.path.commonpath(list(dirs.values()))
        for index, directory in dirs.items():
            derived[index] = os.path.relpath(directory, common).replace(os.sep, "/")
    return [record.get("group") or derived[index] for index, record in enumerate(records)]


def image_keys(records: list[dict]) -> list[str]:
    """Key of each record in the split file: base name, or relative path when base names collide."""
    names = [os.path.basename(record["filepath"]) for record in records]
    if len(set(names)) == len(names):
        return names
    paths = [os.path.abspath(record["filepath"]) for record in records]
    common = os.path.commonpath([os.path.dirname(path) for path in paths])
    return [os.path.relpath(path, common).replace(os.sep, "/") for path in paths]


def _share(fraction: float, total: int) -> int:
    """ceil(fraction * total), robust to float error (1/6 * 6 -> 1)."""
    return int(math.ceil(fraction * total - _FRACTION_EPS)) if fraction > 0 else 0


def _counts(total: int, test_fraction: float, val_fraction: float) -> tuple[int, int]:
    """(n_test, n_val) out of ``total`` units, keeping at least one for train."""
    n_test = min(_share(test_fraction, total), max(total - 1, 0))
    n_val = min(_share(val_fraction, total), max(total - 1 - n_test, 0))
    return n_test, n_val


def _split_by_group(groups: list[str], test_fraction: float, val_fraction: float, seed: int) -> dict[str, str]:
    order = sorted(set(groups), key=natural_sort_key)
    random.Random(seed).shuffle(order)
    n_test, n_val = _counts(len(order), test_fraction, val_fraction)
    return {
        group: "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
        for rank, group in enumerate(order)
    }


def _split_contiguous(keys: list[str], test_fraction: float, val_fraction: float) -> dict[str, str]:
    order = sorted(keys, key=natural_sort_key)
    n_test, n_val = _counts(len(order), test_fraction, val_fraction)
    n_train = len(order) - n_test - n_val
    return {key: "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            for rank, key in enumerate(order)}


def _group_summary(groups: list[str], splits: list[str]) -> dict[str, str]:
    summary: dict[str, str] = {}
    for group, split in zip(groups, splits):
        summary[group] = split if summary.get(group, split) == split else MIXED
    return summary


def _compute(
    records: list[dict], groups: list[str], keys: list[str], test_fraction: float, val_fraction: float, seed: int
) -> tuple[str, list[str]]:
    """(method, split of each record) for a fresh split."""
    preset = [record.get("imageset") for record in records]
    if any(value in ("trainval", "test") for value in preset):
        fixed_test = [value == "test" for value in preset]
        pool = [index for index, is_test in enumerate(fixed_test) if not is_test]
        straddling = {groups[i] for i in pool} & {groups[i] for i, is_test in enumerate(fixed_test) if is_test}
        if straddling:
            warnings.warn(
                f"ImageSets put images of {len(straddling)} group(s) (e.g. {sorted(straddling)[0]!r}) in both "
                "trainval and test: the test set is not independent of training", stacklevel=3,
            )
        splits = ["test" if is_test else "train" for is_test in fixed_test]
        pool_groups = [groups[i] for i in pool]
        if len(set(pool_groups)) > 1:
            by_group = _split_by_group(pool_groups, 0.0, val_fraction, seed)
            for index in pool:
                splits[index] = by_group[groups[index]]
            return "imageset", splits
        by_key = _split_contiguous([keys[i] for i in pool], 0.0, val_fraction)
        for index in pool:
            splits[index] = by_key[keys[index]]
        return "imageset-contiguous", splits
    if len(set(groups)) > 1:
        by_group = _split_by_group(groups, test_fraction, val_fraction, seed)
        stems = [os.path.splitext(os.path.basename(record["filepath"]))[0] for record in records]
        if len(groups) > 2 and all(group == stem for group, stem in zip(groups, stems)):
            warnings.warn(
                "no slice index found in the file names, every image is its own group: if they are "
                "slices of one tomogram, name them like "
                "<tomo>_z<index>.png or give a group column, or neighbouring slices will straddle the split",
                stacklevel=3,
            )
        return "group", [by_group[group] for group in groups]
    logger.warning("only one image group (%s): splitting by contiguous slice ranges", groups[0])
    by_key = _split_contiguous(keys, test_fraction, val_fraction)
    return "contiguous", [by_key[key] for key in keys]


def _load_split(split_path: str) -> dict:
    try:
        with open(split_path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CryoError(
            f"not a valid split file ({exc.__class__.__name__}); delete it or pass another path", split_path
        ) from None
    if not (isinstance(data, dict) and isinstance(data.get("groups"), dict) and isinstance(data.get("images"), dict)):
        raise CryoError(
            "not a valid split file (needs 'groups' and 'images'); delete it or pass another path", split_path
        )
    return data


def _reuse(
    data: dict, split_path: str, records: list[dict], groups: list[str], keys: list[str],
    test_fraction: float, val_fraction: float, seed: int,
) -> list[str]:
    """Split of each record from a loaded split file; CryoError when the file does not fit them."""
    if set(data["groups"]) != set(groups):
        missing = sorted(set(groups) - set(data["groups"]))
        extra = sorted(set(data["groups"]) - set(groups))
        raise CryoError(
            f"split file was made for other image groups (new: {missing[:3]}, gone: {extra[:3]}); "
            "delete it or pass another split path", split_path,
        )
    splits = []
    for record, group, key in zip(records, groups, keys):
        split = data["images"].get(key)
        if split is None and data["groups"][group] != MIXED:
            split = data["groups"][group]
        if split not in SPLITS:
            raise CryoError(
                f"split file does not assign image {key!r}; delete it or pass another split path", split_path
            )
        if record.get("imageset") == "test" and split != "test":
            raise CryoError(f"image {key!r} is a VOC test image but the split file puts it in {split}", split_path)
        splits.append(split)
    requested = (seed, test_fraction, val_fraction)
    stored = (data.get("seed"), data.get("test_fraction"), data.get("val_fraction"))
    logger.info("reusing the split in %s (method %s)", split_path, data.get("method"))
    if requested != stored:
        logger.warning(
            "%s: its seed/fractions %s differ from the requested %s; the file wins", split_path, stored, requested
        )
    return splits


def assign_splits(
    records: list[dict], split_path: str, test_fraction: float, val_fraction: float | None, seed: int
) -> dict[str, str]:
    """Set ``record['imageset']`` to 'train', 'val' or 'test' for every record, by group.

    ``val_fraction=None`` takes the validation share stored in an existing split file (0 for a new
    one); a different value keeps the persisted test images and redraws validation among the rest.
    Reuses ``split_path`` when it exists and covers the same groups, otherwise computes the split
    (module docstring) and writes it there atomically. Returns ``{image key: split}`` (key: base
    name, see :func:`image_keys`). Raises CryoError on bad fractions, no records, or a split file
    made for other groups.
    """
    if not records:
        raise CryoError("no images to split")
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction or 0.0)):
        if not (0.0 <= value < 1.0):
            raise CryoError(f"{name} must be in [0, 1), got {value}")
    if test_fraction + (val_fraction or 0.0) >= 1.0:
        raise CryoError(f"test_fraction + val_fraction must be below 1, got {test_fraction + (val_fraction or 0.0)}")
    groups = record_groups(records)
    keys = image_keys(records)
    split_path = str(split_path)
    stored = _load_split(split_path) if os.path.exists(split_path) else None
    if stored is not None and val_fraction is None:
        val_fraction = stored.get("val_fraction", 0.0)
    val_fraction = 0.0 if val_fraction is None else val_fraction
    if stored is not None:
        splits = _reuse(stored, split_path, records, groups, keys, test_fraction, val_fraction, seed)
        if stored.get("val_fraction") != val_fraction:
            # the test set stays as persisted; only the validation share of the rest is redrawn
            fixed = [{**r, "imageset": "test" if s == "test" else "trainval"} for r, s in zip(records, splits)]
            method, splits = _compute(fixed, groups, keys, test_fraction, val_fraction, seed)
            method = stored.get("method", method)
            test_fraction = stored.get("test_fraction", test_fraction)
            logger.warning("%s: validation share changed from %s to %s; test images kept, validation redrawn",
                           split_path, stored.get("val_fraction"), val_fraction)
        else:
            method = None
    else:
        method, splits = _compute(records, groups, keys, test_fraction, val_fraction, seed)
    if method is not None:
        payload = {
            "seed": seed,
            "method": method,
            "test_fraction": test_fraction,
            "val_fraction": val_fraction,
            "groups": _group_summary(groups, splits),
            "images": dict(zip(keys, splits)),
        }
        write_bytes_atomic(split_path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        counts = {split: splits.count(split) for split in SPLITS}
        logger.info("wrote %s split to %s: %s images", method, split_path, counts)
    for record, split in zip(records, splits):
        record["imageset"] = split
    return dict(zip(keys, splits))
