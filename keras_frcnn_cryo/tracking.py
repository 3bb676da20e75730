"""3D linking: per-slice 2D detections -> 3D objects; 3D IoU and object-level matching; tilt checks.

Li et al. (2019) detect boxes on each slice of a tomogram independently. A mitochondrion spans many
consecutive slices, so :func:`link_boxes` links boxes of the same class on neighbouring slices into
tracks and reports each track as one :class:`Object3D`.

Coordinates. Boxes are float pixels ``[x1, y1, x2, y2]``, 0-based, x right, y down (array column
and row), x2/y2 exclusive edges (width = x2 - x1). The z axis is the slice index of the volume
(mrcfile arrays are ``(z, y, x)``; slice z is ``data[z]``), 0-based, with the same edge convention:
an object seen on slices 3, 4 and 5 has ``z1 = 3`` and ``z2 = 6`` (exclusive: last slice + 1), so its
depth is ``z2 - z1`` like its width is ``x2 - x1``. A 3D box is ``[x1, y1, z1, x2, y2, z2]``.

Linking (:func:`link_boxes`, deterministic):

1. slices are visited in increasing order; a track is *open* while the number of slices it has
   missed since its last box is at most ``max_gap``;
2. a box and an open track of the same class are *compatible* when IoU(track's last box, box) >=
   ``min_iou`` or their centre distance <= ``max_centre_distance_frac`` x their size (size: the mean
   of the two boxes' geometric sizes sqrt(w * h));
3. compatible (track, box) pairs are taken greedily, best first: higher IoU, then smaller centre
   distance relative to size, then the more recent track, then the higher-scoring box, then the
   older track and the box coordinates (never the input order); each track takes at most one box
   per slice and each box joins at most one track;
4. boxes left over start new tracks (in descending score, exact ties by box coordinates);
5. tracks with fewer than ``min_length`` member slices (slices with a box, gaps not counted) are
   dropped.

Taking pairs by affinity rather than by box score alone keeps the better continuation of a track
when a stronger but worse-placed box competes for it (detections after per-class NMS rarely
compete at all, so on real data the two rules almost always agree).

Object extent: x/y are the union (min x1, min y1, max x2, max y2) of the member boxes, the 3D
bounding box of the detections, as a 3D ground-truth box built from per-slice annotations would be.
With ``extent_quantile = q > 0`` a robust extent is used instead: x1 = q-quantile of the members' x1,
x2 = (1 - q)-quantile of their x2 (likewise y), which ignores a single oversized box on a long track.
Object score: the mean of the member scores (a length-neutral confidence; ``n_slices`` carries
the length).

Refinement along z (:func:`refine_along_z`, not in the paper): once linked, each member box can be
replaced by the score-weighted mean of its object's boxes on neighbouring slices, and rescored by the
object's mean score; test_frcnn.py does this for tomograms when the config asks
(``Config.track_refine_window``, ``track_rescore``; the scratch recipe's default).

The specimen's slices (:func:`specimen_z_range`, not in the paper): a tomogram reconstructed thicker
than its lamella shows, beyond the lamella's faces, faint ghosts of the objects those faces cut (the
missing wedge elongates everything along z), and a detector fires on them. test_frcnn.py drops the
detections on slices outside the estimated specimen before linking when the config asks
(``Config.track_clip_to_specimen``; the scratch recipe's default).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import numpy as np

from .boxes import areas, iou_matrix
from .config import check_field
from .errors import CryoError

__all__ = [
    "TrackingParams",
    "Object3D",
    "link_boxes",
    "refine_along_z",
    "specimen_z_range",
    "iou_3d",
    "iou_3d_matrix",
    "ObjectMatch",
    "match_flags_3d",
    "match_objects_3d",
    "flag_isolated_tilt_detections",
    "as_slice_detections",
]

# per-slice input: (boxes (N, 4), scores (N,), labels (N,)) or anything with .boxes/.scores/.labels
SliceDetections = Any


@dataclass
class TrackingParams:
    """Tunables of :func:`link_boxes`; each reads ``cfg.track_<name>`` in :meth:`from_config`."""

    min_iou: float = 0.3                    # IoU of a track's last box with a new box to link them
    max_centre_distance_frac: float = 0.5   # ... or centre distance <= this x box size (0: off)
    max_gap: int = 2                        # slices a track may miss and still continue
    min_length: int = 3                     # tracks with fewer member slices are dropped
    extent_quantile: float = 0.0            # 0: union of member boxes; q > 0: robust quantile extent

    def __post_init__(self) -> None:
        for param in fields(self):             # Config.validate's rules (config.FIELD_RULES)
            check_field("track_" + param.name, getattr(self, param.name))
        self.max_gap = int(self.max_gap)
        self.min_length = int(self.min_length)

    @classmethod
    def from_config(cls, cfg: Any) -> "TrackingParams":
        """Values from ``cfg.track_min_iou``, ``cfg.track_max_gap``, ...; defaults where cfg lacks them."""
        defaults = cls()
        return cls(**{param.name: getattr(cfg, "track_" + param.name, getattr(defaults, param.name))
                      for param in fields(cls)})


@dataclass(eq=False)
class Object3D:
    """One linked object.

    Box ``[x1, y1, z1, x2, y2, z2]`` in float pixels / slice indices, 0-based, x2/y2/z2 exclusive
    (``z2 = last slice + 1``). ``slices``: member slice indices (increasing; gaps allowed);
    ``boxes``: (n, 4) float64 member boxes, row k on ``slices[k]``; ``scores``: (n,) member scores;
    ``score``: their mean. ``members``: (n,) int64, row k the index of member box k among its slice's
    detections as :func:`link_boxes` got them (empty for objects read back from a file: not written).
    """

    class_index: int
    class_name: str
    x1: float
    y1: float
    z1: int
    x2: float
    y2: float
    z2: int
    score: float
    slices: list[int] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    members: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64), repr=False)

    @property
    def n_slices(self) -> int:
        """Number of slices with a member box (gaps not counted)."""
        return len(self.slices)

    @property
    def first_slice(self) -> int:
        return int(self.z1)

    @property
    def last_slice(self) -> int:
        """Last slice with a member box (inclusive): ``z2 - 1``."""
        return int(self.z2) - 1

    @property
    def box3d(self) -> np.ndarray:
        """(6,) float64 ``[x1, y1, z1, x2, y2, z2]``."""
        return np.array([self.x1, self.y1, self.z1, self.x2, self.y2, self.z2], dtype=np.float64)

    @property
    def centre(self) -> tuple[float, float, float]:
        """Centre ``(x, y, z)`` in pixel-index coordinates: pixel i (slice k) is centred at i (k).

        ``x = (x1 + x2) / 2 - 0.5`` (the edge-convention centre minus half a pixel), likewise y, and
        ``z = (first_slice + last_slice) / 2``: the convention of point formats (IMOD, RELION, napari),
        where a coordinate names a pixel or slice.
        """
        return ((self.x1 + self.x2) / 2.0 - 0.5, (self.y1 + self.y2) / 2.0 - 0.5, (self.z1 + self.z2) / 2.0 - 0.5)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data dict (JSON-serialisable), member boxes as lists."""
        return {
            "class_index": int(self.class_index), "class_name": str(self.class_name),
            "x1": float(self.x1), "y1": float(self.y1), "z1": int(self.z1),
            "x2": float(self.x2), "y2": float(self.y2), "z2": int(self.z2),
            "score": float(self.score), "n_slices": self.n_slices,
            "first_slice": self.first_slice, "last_slice": self.last_slice,
            "slices": [int(s) for s in self.slices],
            "boxes": np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4).tolist(),
            "scores": np.asarray(self.scores, dtype=np.float64).reshape(-1).tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Object3D":
        """Inverse of :meth:`to_dict` (``n_slices``, ``first_slice``, ``last_slice`` are derived)."""
        return cls(
            class_index=int(data["class_index"]), class_name=str(data["class_name"]),
            x1=float(data["x1"]), y1=float(data["y1"]), z1=int(data["z1"]),
            x2=float(data["x2"]), y2=float(data["y2"]), z2=int(data["z2"]),
            score=float(data["score"]),
            slices=[int(s) for s in data.get("slices", [])],
            boxes=np.asarray(data.get("boxes", []), dtype=np.float64).reshape(-1, 4),
            scores=np.asarray(data.get("scores", []), dtype=np.float64).reshape(-1),
        )


# ------------------------------------------------------------------------------------------
# input normalisation
# ------------------------------------------------------------------------------------------
def as_slice_detections(value: SliceDetections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes, scores, labels)`` tuple or a Detections-like object -> (N,4) f64, (N,) f64, (N,) int64."""
    if hasattr(value, "boxes") and hasattr(value, "scores") and hasattr(value, "labels"):
        boxes, scores, labels = value.boxes, value.scores, value.labels
    else:
        boxes, scores, labels = value
    boxes = np.asarray(boxes, dtype=np.float64)
    boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {boxes.shape}")
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError("boxes or scores hold NaN/Inf")
    return boxes, scores, labels


def _relative_centre_distances(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(T, N) centre distance / mean geometric size sqrt(w * h) of the two boxes (inf when both are empty)."""
    dx = (boxes_a[:, None, 0] + boxes_a[:, None, 2] - boxes_b[None, :, 0] - boxes_b[None, :, 2]) / 2.0
    dy = (boxes_a[:, None, 1] + boxes_a[:, None, 3] - boxes_b[None, :, 1] - boxes_b[None, :, 3]) / 2.0
    size = 0.5 * (np.sqrt(areas(boxes_a))[:, None] + np.sqrt(areas(boxes_b))[None, :])
    out = np.full(dx.shape, np.inf)
    np.divide(np.hypot(dx, dy), size, out=out, where=size > 0)
    return out


# ------------------------------------------------------------------------------------------
# linking
# ------------------------------------------------------------------------------------------
@dataclass
class _Track:
    ident: int
    label: int
    slices: list[int]
    boxes: list[np.ndarray]
    scores: list[float]
    members: list[int]                  # index of each member box among its slice's detections


def _finish(track: _Track, class_names: Sequence[str] | None, extent_quantile: float) -> Object3D:
    boxes = np.stack(track.boxes).astype(np.float64)
    scores = np.asarray(track.scores, dtype=np.float64)
    if extent_quantile > 0.0:
        low = np.quantile(boxes[:, :2], extent_quantile, axis=0)
        high = np.quantile(boxes[:, 2:], 1.0 - extent_quantile, axis=0)
    else:
        low, high = boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)
    label = int(track.label)
    if class_names is not None and 0 <= label < len(class_names):
        name = str(class_names[label])
    else:
        name = str(label)
    return Object3D(
        class_index=label, class_name=name,
        x1=float(low[0]), y1=float(low[1]), z1=int(track.slices[0]),
        x2=float(high[0]), y2=float(high[1]), z2=int(track.slices[-1]) + 1,
        score=float(scores.mean()), slices=list(track.slices), boxes=boxes, scores=scores,
        members=np.asarray(track.members, dtype=np.int64),
    )


def link_boxes(
    per_slice: Mapping[int, SliceDetections],
    params: TrackingParams | None = None,
    class_names: Sequence[str] | None = None,
) -> list[Object3D]:
    """Link per-slice boxes into 3D objects (rules in the module docstring).

    per_slice: ``{slice index (0-based): (boxes (N, 4) float, scores (N,), labels (N,) int)}``, or
    values with ``.boxes/.scores/.labels`` (model.Detections). Slices may be missing (no boxes).
    class_names: names by class index (``Object3D.class_name``; default ``str(index)``).
    Returns the objects sorted by (first slice, class index, y1, x1, score descending).
    """
    params = params if params is not None else TrackingParams()
    open_tracks: list[_Track] = []
    finished: list[_Track] = []
    next_ident = 0
    for z in sorted(int(k) for k in per_slice):
        boxes, scores, labels = as_slice_detections(per_slice[z])
        # close tracks that have missed more than max_gap slices before this one
        still_open = []
        for track in open_tracks:
            (still_open if z - track.slices[-1] - 1 <= params.max_gap else finished).append(track)
        open_tracks = still_open

        candidates = []
        if open_tracks and len(boxes):
            last = np.stack([track.boxes[-1] for track in open_tracks])
            track_labels = np.array([track.label for track in open_tracks])
            ious = iou_matrix(last, boxes)
            dists = _relative_centre_distances(last, boxes)
            compatible = (track_labels[:, None] == labels[None, :]) & (
                ((ious > 0.0) & (ious >= params.min_iou))
                | ((params.max_centre_distance_frac > 0.0) & (dists <= params.max_centre_distance_frac)))
            for t_pos, b_pos in zip(*np.nonzero(compatible)):
                track = open_tracks[t_pos]
                candidates.append((-float(ious[t_pos, b_pos]), float(dists[t_pos, b_pos]), -track.slices[-1],
                                   -float(scores[b_pos]), track.ident, tuple(boxes[b_pos]), int(b_pos), int(t_pos)))
        candidates.sort()
        used_tracks: set[int] = set()
        used_boxes: set[int] = set()
        for *_, b_pos, t_pos in candidates:
            if t_pos in used_tracks or b_pos in used_boxes:
                continue
            used_tracks.add(t_pos)
            used_boxes.add(b_pos)
            track = open_tracks[t_pos]
            track.slices.append(z)
            track.boxes.append(boxes[b_pos].copy())
            track.scores.append(float(scores[b_pos]))
            track.members.append(int(b_pos))

        # new tracks in descending score; exact ties ordered by box and label, not by input position
        leftovers = sorted((b for b in range(len(boxes)) if b not in used_boxes),
                           key=lambda b: (-scores[b], tuple(boxes[b]), labels[b]))
        for b_pos in leftovers:
            open_tracks.append(_Track(next_ident, int(labels[b_pos]), [z], [boxes[b_pos].copy()],
                                      [float(scores[b_pos])], [int(b_pos)]))
            next_ident += 1
    finished.extend(open_tracks)

    objects = [_finish(t, class_names, params.extent_quantile) for t in finished
               if len(t.slices) >= params.min_length]
    objects.sort(key=lambda o: (o.z1, o.class_index, o.y1, o.x1, -o.score, o.z2))
    return objects


def refine_along_z(per_slice: Mapping[int, SliceDetections], objects: Sequence[Object3D], window: int = 1,
                   rescore: bool = True, orphan_weight: float = 1.0
                   ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per-slice detections refined by the 3D objects they were linked into (not in the paper).

    ``per_slice``: the detections :func:`link_boxes` was given; ``objects``: what it returned. For each
    member box of an object on slice z: with ``window`` w > 0, its box becomes the score-weighted
    mean of the object's member boxes on slices z - w .. z + w (a mitochondrion's outline changes
    little from one slice to the next, the regression noise of independent slices does); with
    ``rescore``, its score becomes the object's mean member score (the evidence of the whole
    track). Boxes in no object (tracks shorter than ``min_length``) keep their box, their score
    multiplied by ``orphan_weight``. Returns ``{z: (boxes (N, 4), scores (N,), labels (N,))}`` in the
    input's order, every box kept.
    """
    if window < 0 or not 0.0 <= orphan_weight <= 1.0:
        raise CryoError(f"window must be >= 0 and orphan_weight in [0, 1], got {window}, {orphan_weight}")
    out = {}
    member: dict[tuple[int, int], tuple[Object3D, int]] = {}     # (z, box index) -> (object, member row)
    for z, value in per_slice.items():
        boxes, scores, labels = as_slice_detections(value)
        out[int(z)] = (boxes.copy(), scores * orphan_weight, labels)
    for obj in objects:
        if len(obj.members) == len(obj.slices):          # linked here: the indices are known
            for row, (z, index) in enumerate(zip(obj.slices, obj.members)):
                member[(int(z), int(index))] = (obj, row)
            continue
        for row, z in enumerate(obj.slices):             # read back from a file: match by box
            boxes, _, labels = out[int(z)]
            same = np.flatnonzero((labels == obj.class_index) & np.all(boxes == obj.boxes[row], axis=1))
            free = [i for i in same if (int(z), int(i)) not in member]
            if free:
                member[(int(z), int(free[0]))] = (obj, row)
    for (z, index), (obj, row) in member.items():
        boxes, scores, _ = out[z]
        if window > 0:
            near = np.abs(np.asarray(obj.slices) - z) <= window
            weights = obj.scores[near] if obj.scores[near].sum() > 0 else np.ones(int(near.sum()))
            boxes[index] = (obj.boxes[near] * weights[:, None]).sum(axis=0) / weights.sum()
        scores[index] = obj.score if rescore else obj.scores[row]
    return out


def specimen_z_range(slices: Sequence[int], levels: Sequence[float], min_vacuum_slices: int = 4,
                     max_vacuum_slope: float = 0.75) -> tuple[int, int] | None:
    """The slices ``[first, stop)`` a tomogram's specimen fills, from the structure profile along z.

    ``slices``: increasing slice indices; ``levels``: each one's preprocessing.structure_level.
    The profile (scaled to its maximum, a 3-slice running mean) is differentiated along the slice
    positions; the lower face is where it rises steepest in the first half, the upper where it falls
    steepest in the second. A face counts only when at least ``min_vacuum_slices`` slices lie beyond
    it and the profile there is flat, a floor of vacuum: their mean slope (the slices beyond it, the
    one next to the face left out as part of the edge) at most ``max_vacuum_slope`` x the face's.
    A volume its specimen fills (or one too short to tell) has no such floor on either side: None.
    Otherwise the first slice at or beyond the lower face and the one after the upper face (the
    volume's own ends where a side has no face).
    """
    zs = np.asarray(slices, dtype=np.int64).reshape(-1)
    prof = np.asarray(levels, dtype=np.float64).reshape(-1)
    if len(zs) != len(prof):
        raise ValueError(f"{len(zs)} slices and {len(prof)} levels")
    if len(zs) < 2 * min_vacuum_slices + 3 or not np.isfinite(prof).all() or prof.max() <= 0:
        return None
    prof = prof / prof.max()
    smooth = np.convolve(np.pad(prof, 1, mode="edge"), np.ones(3) / 3.0, mode="valid")
    slope = np.gradient(smooth)
    half = len(zs) // 2
    first, stop = int(zs[0]), int(zs[-1]) + 1
    low = int(np.argmax(slope[:half]))
    found = False
    if low >= min_vacuum_slices and slope[low] > 0:
        floor = slope[:low - 1]
        if floor.mean() <= max_vacuum_slope * slope[low]:
            first, found = int(zs[low]), True
    high = half + int(np.argmin(slope[half:]))
    if len(zs) - 1 - high >= min_vacuum_slices and slope[high] < 0:
        floor = slope[high + 2:]
        if -floor.mean() <= max_vacuum_slope * -slope[high]:
            stop, found = int(zs[high]) + 1, True
    return (first, stop) if found else None


# ------------------------------------------------------------------------------------------
# 3D IoU and object-level evaluation
# ------------------------------------------------------------------------------------------
def _as_box3d(value: Any) -> np.ndarray:
    if isinstance(value, Object3D):
        return value.box3d
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (6,):
        raise ValueError(f"a 3D box has 6 values [x1, y1, z1, x2, y2, z2], got shape {np.shape(value)}")
    return arr


def iou_3d_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(N, 6) x (M, 6) ``[x1, y1, z1, x2, y2, z2]`` (exclusive far edges) -> (N, M) IoU of volumes
    (boxes.iou_matrix on 3D boxes; inverted extents count as 0, an empty union gives 0)."""
    return iou_matrix(np.asarray(boxes_a, dtype=np.float64).reshape(-1, 6),
                      np.asarray(boxes_b, dtype=np.float64).reshape(-1, 6))


def iou_3d(box_a: Any, box_b: Any) -> float:
    """IoU of two 3D boxes (``Object3D`` or 6 values ``[x1, y1, z1, x2, y2, z2]``, far edges exclusive)."""
    return float(iou_3d_matrix(_as_box3d(box_a)[None], _as_box3d(box_b)[None])[0, 0])


class ObjectMatch(NamedTuple):
    """Object-level result; unpacks as ``precision, recall, f1, tp, fp, fn``."""

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int


def match_flags_3d(
    pred: Sequence[Object3D],
    gt: Sequence[Any],
    iou_threshold: float = 0.5,
    class_aware: bool = True,
) -> np.ndarray:
    """Greedy object matching at 3D IoU >= ``iou_threshold``: (len(pred),) bool, True where a
    prediction is a true positive, in the order of ``pred``.

    Predictions in descending score (stable) each take the not-yet-matched ground-truth object with
    the highest 3D IoU (same ``class_name`` when ``class_aware``): TP if that IoU >= threshold, else
    FP; each ground-truth object is matched at most once.
    gt: Object3D list, or 6-value boxes (class-agnostic).
    """
    gt_boxes = np.array([_as_box3d(g) for g in gt], dtype=np.float64).reshape(-1, 6)
    gt_names = [g.class_name if isinstance(g, Object3D) else None for g in gt]
    order = sorted(range(len(pred)), key=lambda i: -float(pred[i].score))
    pred_boxes = np.array([pred[i].box3d for i in order], dtype=np.float64).reshape(-1, 6)
    ious = iou_3d_matrix(pred_boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    flags = np.zeros(len(pred), dtype=bool)
    for row, index in enumerate(order):
        allowed = ~taken
        if class_aware:
            allowed &= np.array([name is None or name == pred[index].class_name for name in gt_names], dtype=bool)
        if not allowed.any():
            continue
        candidates = np.where(allowed, ious[row], -1.0)
        best = int(np.argmax(candidates))
        if candidates[best] >= iou_threshold:
            taken[best] = True
            flags[index] = True
    return flags


def match_objects_3d(
    pred: Sequence[Object3D],
    gt: Sequence[Any],
    iou_threshold: float = 0.5,
    class_aware: bool = True,
) -> ObjectMatch:
    """Counts of :func:`match_flags_3d`: unmatched predictions are FP, unmatched ground truth FN.

    Precision is 0 without predictions; recall and F1 are ``nan`` without ground truth (the
    convention of metrics.py).
    """
    tp = int(match_flags_3d(pred, gt, iou_threshold, class_aware).sum())
    n_gt = len(gt)
    fp = len(pred) - tp
    fn = n_gt - tp
    precision = tp / len(pred) if len(pred) else 0.0
    if n_gt == 0:
        recall = f1 = math.nan
    else:
        recall = tp / n_gt
        f1 = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return ObjectMatch(float(precision), float(recall), float(f1), int(tp), int(fp), int(fn))


# ------------------------------------------------------------------------------------------
# tilt series
# ------------------------------------------------------------------------------------------
def flag_isolated_tilt_detections(
    per_tilt: Mapping[int, SliceDetections] | Sequence[SliceDetections],
    min_iou: float = 0.3,
) -> list[tuple[int, int]]:
    """Boxes seen on one tilt image but on neither neighbour: ``[(tilt index, box index), ...]``.

    per_tilt: ``{tilt index: (boxes, scores, labels)}`` (or a list indexed by tilt; tilt i is
    ``st[i]``, 0-based, in file order). A box is *supported* when tilt i-1 or i+1 holds a box of the
    same class with IoU >= ``min_iou`` (and > 0). A neighbour that is absent counts as holding no
    box, so the first and last tilts need support from their one neighbour. Objects move between
    tilts (by about height x sin(tilt step) in an aligned series), so a low ``min_iou`` suits
    large tilt steps. Sorted by (tilt, box index).
    """
    items = dict(enumerate(per_tilt)) if not isinstance(per_tilt, Mapping) else dict(per_tilt)
    parsed = {int(k): as_slice_detections(v) for k, v in items.items()}
    flagged: list[tuple[int, int]] = []
    for tilt in sorted(parsed):
        boxes, _, labels = parsed[tilt]
        supported = np.zeros(len(boxes), dtype=bool)
        for neighbour in (tilt - 1, tilt + 1):
            if neighbour not in parsed or not len(boxes):
                continue
            n_boxes, _, n_labels = parsed[neighbour]
            if not len(n_boxes):
                continue
            ious = iou_matrix(boxes, n_boxes)
            overlap = (ious > 0.0) & (ious >= min_iou) & (labels[:, None] == n_labels[None, :])
            supported |= overlap.any(axis=1)
        flagged.extend((tilt, int(b_pos)) for b_pos in np.flatnonzero(~supported))
    return flagged
