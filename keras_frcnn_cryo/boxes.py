"""Box arithmetic, the one home for it: areas, IoU (2D and 3D), box coding, NMS, box voting, the
flipped and transposed views of test-time augmentation and the fusion of their detections.

numpy only. A 2D box is a float ``[x1, y1, x2, y2]`` in pixels, 0-based, x right, y down, width
``x2 - x1`` (no +1). A 3D box is ``[x1, y1, z1, x2, y2, z2]`` with exclusive far edges. Inverted
extents (x2 < x1, ...) count as empty everywhere, so every caller (training targets, NMS, metrics,
tracking) gets the same IoU for the same pair.

Box coding (Faster R-CNN): for a reference box r and a target box t with centres (cx, cy) and sizes
(w, h), ``tx = (cx_t - cx_r) / w_r``, ``ty = (cy_t - cy_r) / h_r``, ``tw = log(w_t / w_r)``,
``th = log(h_t / h_r)``. The networks predict these multiplied by per-component weights:
:class:`BoxCoder` holds them (``BoxCoder.rpn(cfg)``: ``cfg.std_scaling`` on all four, keras-frcnn's
RPN; ``BoxCoder.head(cfg)``: ``cfg.classifier_regr_std``, its classifier).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import Config

# exp(tw) is clamped at 1000/16 (as torchvision's BoxCoder): a box may grow at most 62.5x per
# decoding step, which keeps exp() finite for any network output.
MAX_LOG_SCALE = float(np.log(1000.0 / 16.0))


def as_boxes(boxes: np.ndarray, name: str, width: int = 4) -> np.ndarray:
    """``boxes`` as a float64 (N, width) array (a view when possible); an empty input becomes (0, width).

    width is 4 for 2D boxes, 6 for 3D boxes. Raises ValueError naming ``name`` for another shape.
    """
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, width)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"{name} must have shape (N, {width}), got {arr.shape}")
    return arr


def areas(boxes: np.ndarray) -> np.ndarray:
    """(N,) areas of (N, 4) boxes, or volumes of (N, 6) boxes; inverted extents count as 0."""
    arr = np.asarray(boxes, dtype=np.float64)
    dims = arr.shape[1] // 2
    out = np.ones(arr.shape[0])
    for axis in range(dims):
        out *= np.clip(arr[:, axis + dims] - arr[:, axis], 0.0, None)
    return out


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair: (N, 4) x (M, 4) -> (N, M), or the same for (N, 6) 3D boxes.

    Returns float64 in [0, 1]. A pair whose union is empty (both boxes empty) has IoU 0, never NaN.
    """
    first = np.asarray(boxes_a)
    width = first.shape[-1] if first.ndim == 2 and first.shape[-1] in (4, 6) else 4
    a = as_boxes(boxes_a, "boxes_a", width)
    b = as_boxes(boxes_b, "boxes_b", width)
    return _iou(a, b, areas(a), areas(b))


def _iou(a: np.ndarray, b: np.ndarray, area_a: np.ndarray, area_b: np.ndarray) -> np.ndarray:
    """iou_matrix of checked (N, 2d) and (M, 2d) arrays with their areas (N,), (M,) given."""
    dims = a.shape[1] // 2
    inter = np.ones((a.shape[0], b.shape[0]))
    for axis in range(dims):
        low = np.maximum(a[:, None, axis], b[None, :, axis])
        high = np.minimum(a[:, None, axis + dims], b[None, :, axis + dims])
        inter *= np.clip(high - low, 0.0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _centre_size(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * width, boxes[:, 1] + 0.5 * height, width, height


def encode_boxes(reference: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Unweighted deltas ``[tx, ty, tw, th]`` (N, 4) float64 that move each ``reference`` box onto
    the ``target`` box of the same row. reference, target: (N, 4) with positive width and height."""
    ref = as_boxes(reference, "reference")
    tgt = as_boxes(target, "target")
    if ref.shape != tgt.shape:
        raise ValueError(f"reference {ref.shape} and target {tgt.shape} must have the same shape")
    cx_r, cy_r, w_r, h_r = _centre_size(ref)
    cx_t, cy_t, w_t, h_t = _centre_size(tgt)
    return np.stack(
        [(cx_t - cx_r) / w_r, (cy_t - cy_r) / h_r, np.log(w_t / w_r), np.log(h_t / h_r)], axis=1
    )


def apply_regr(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_boxes`: move each box (N, 4) by its unweighted deltas (N, 4).

    tw and th are clamped at ``MAX_LOG_SCALE`` before exp. Returns (N, 4) float64 boxes, not clipped
    to any image.
    """
    ref = as_boxes(boxes, "boxes")
    dlt = np.asarray(deltas, dtype=np.float64)
    if dlt.size == 0:
        dlt = dlt.reshape(0, 4)
    if dlt.shape != ref.shape:
        raise ValueError(f"deltas {dlt.shape} must have the shape of boxes {ref.shape}")
    cx, cy, width, height = _centre_size(ref)
    new_cx = dlt[:, 0] * width + cx
    new_cy = dlt[:, 1] * height + cy
    new_w = np.exp(np.minimum(dlt[:, 2], MAX_LOG_SCALE)) * width
    new_h = np.exp(np.minimum(dlt[:, 3], MAX_LOG_SCALE)) * height
    return np.stack(
        [new_cx - 0.5 * new_w, new_cy - 0.5 * new_h, new_cx + 0.5 * new_w, new_cy + 0.5 * new_h], axis=1
    )


@dataclass(frozen=True)
class BoxCoder:
    """The deltas a network predicts: :func:`encode_boxes` times ``weights`` (4,), per component.

    ``BoxCoder.rpn(cfg)`` and ``BoxCoder.head(cfg)`` are the only places the weights are read, so
    targets (training) and decoding (prediction) cannot disagree.
    """

    weights: tuple[float, float, float, float]

    @classmethod
    def rpn(cls, cfg: Config) -> BoxCoder:
        """The RPN's coder: ``cfg.std_scaling`` on all four components."""
        return cls((float(cfg.std_scaling),) * 4)

    @classmethod
    def head(cls, cfg: Config) -> BoxCoder:
        """The classifier head's coder: ``cfg.classifier_regr_std`` ([x, y, w, h])."""
        weights = tuple(float(w) for w in cfg.classifier_regr_std)
        if len(weights) != 4:
            raise ValueError(f"classifier_regr_std needs 4 values, got {list(cfg.classifier_regr_std)}")
        return cls(weights)  # type: ignore[arg-type]

    def encode(self, reference: np.ndarray, target: np.ndarray) -> np.ndarray:
        """(N, 4) weighted deltas moving ``reference`` onto ``target`` (both (N, 4))."""
        return encode_boxes(reference, target) * np.asarray(self.weights)

    def unweight(self, deltas: np.ndarray) -> np.ndarray:
        """Network output (..., 4) -> unweighted deltas (..., 4) float64."""
        return np.asarray(deltas, dtype=np.float64) / np.asarray(self.weights)

    def decode(self, reference: np.ndarray, deltas: np.ndarray) -> np.ndarray:
        """(N, 4) boxes: ``reference`` (N, 4) moved by the network's weighted ``deltas`` (N, 4)."""
        return apply_regr(reference, self.unweight(deltas))


def nms(boxes: np.ndarray, scores: np.ndarray, overlap_thresh: float, max_boxes: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression.

    boxes: (N, 4); scores: (N,). Repeatedly keeps the best remaining box and drops every remaining
    box whose IoU with it is greater than ``overlap_thresh``. Equal scores keep input order.
    Stops after ``max_boxes`` kept boxes (None: no limit). Returns int64 indices into ``boxes``, in
    descending score order.
    """
    bxs = as_boxes(boxes, "boxes")
    scr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scr.shape[0] != bxs.shape[0]:
        raise ValueError(f"{bxs.shape[0]} boxes but {scr.shape[0]} scores")
    limit = bxs.shape[0] if max_boxes is None else int(max_boxes)
    order = np.argsort(-scr, kind="stable")
    box_areas = areas(bxs)
    keep: list[int] = []
    while order.size > 0 and len(keep) < limit:
        best = order[0]
        keep.append(int(best))
        rest = order[1:]
        overlap = _iou(bxs[best : best + 1], bxs[rest], box_areas[best : best + 1], box_areas[rest])[0]
        order = rest[overlap <= overlap_thresh]
    return np.asarray(keep, dtype=np.int64)


def box_voting(kept: np.ndarray, candidates: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Each kept box replaced by the score-weighted mean of the candidates overlapping it at IoU >= ``iou_thresh``.

    kept: (K, 4); candidates: (N, 4) with scores (N,) >= 0 (the kept boxes are normally among them).
    A kept box with no such candidate (or zero total weight) is returned unchanged. Returns (K, 4) float64.
    """
    kept_boxes = as_boxes(kept, "kept")
    cand = as_boxes(candidates, "candidates")
    weights = np.asarray(scores, dtype=np.float64).reshape(-1)
    if kept_boxes.shape[0] == 0 or cand.shape[0] == 0:
        return kept_boxes.copy()
    members = (iou_matrix(kept_boxes, cand) >= iou_thresh) * weights[None, :]      # (K, N)
    total = members.sum(axis=1, keepdims=True)
    voted = members @ cand / np.where(total > 0, total, 1.0)
    return np.where(total > 0, voted, kept_boxes)


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """(N, 4) boxes clipped to ``[0, width] x [0, height]`` (a new float64 array): the one clipping rule
    of proposals (rpn_to_roi) and final boxes (Detector)."""
    return np.clip(as_boxes(boxes, "boxes"), 0.0, np.array([width, height, width, height], dtype=np.float64))


# ------------------------------------------------------------------------------------------
# views of an image (test-time augmentation): flips and transposes, and their detections fused
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class View:
    """One of the 8 symmetries of a rectangle: transpose first (x <-> y), then flips in that frame."""

    transpose: bool = False
    hflip: bool = False
    vflip: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W, ...) image -> the view (W, H, ...) when transposed, else (H, W, ...)."""
        out = np.swapaxes(image, 0, 1) if self.transpose else image
        if self.hflip:
            out = out[:, ::-1]
        if self.vflip:
            out = out[::-1]
        return np.ascontiguousarray(out)

    def boxes_back(self, boxes: np.ndarray, view_width: float, view_height: float) -> np.ndarray:
        """(N, 4) boxes in the view's pixels (view_width x view_height) -> the original image's pixels."""
        out = as_boxes(boxes, "boxes").copy()
        if self.hflip:
            out[:, [0, 2]] = view_width - out[:, [2, 0]]
        if self.vflip:
            out[:, [1, 3]] = view_height - out[:, [3, 1]]
        if self.transpose:
            out = out[:, [1, 0, 3, 2]]
        return out


# views per Config.detection_views choice (the identity first): "transpose" adds the image mirrored
# on its diagonal; "dihedral" is all 8 symmetries: the identity, the 3 flips, and the 4 transposed
# views (the 90-degree turns and the two diagonal mirrors)
VIEWS: dict[str, tuple[View, ...]] = {
    "none": (View(),),
    "transpose": (View(), View(transpose=True)),
    "dihedral": tuple(View(t, h, v) for t in (False, True) for h in (False, True) for v in (False, True)),
}


def fuse_views(boxes: np.ndarray, scores: np.ndarray, view_ids: np.ndarray, n_views: int, overlap_thresh: float,
               match_iou: float, max_boxes: int | None = None, agreement_weight: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """One class's detections from ``n_views`` views of an image (boxes already mapped back) fused.

    boxes: (N, 4), scores: (N,), view_ids: (N,) int in [0, n_views). Greedy NMS at ``overlap_thresh``
    over all views picks the clusters; each kept box, best first, gathers from every other view
    that view's best-scoring box overlapping it at IoU >= ``match_iou`` that no better cluster
    took (a box joins one cluster at most, so a weak box beside an object cannot borrow the
    object's strong boxes and come out as a strong duplicate; a kept box a better cluster took is
    no cluster of its own); the fused box is those members' score-weighted mean and its score their
    summed score / n_views, so a box every view agrees on keeps its score and one a single view
    found gets a quarter (with 4 views). With
    ``agreement_weight`` a > 0 the score is also multiplied by the members' score-weighted mean IoU
    with the fused box ``^ a``: boxes the views place alike rank above boxes they place apart.
    Returns (K, 4) float64 boxes and (K,) scores, scores descending.
    """
    bxs = as_boxes(boxes, "boxes")
    scr = np.asarray(scores, dtype=np.float64).reshape(-1)
    ids = np.asarray(view_ids, dtype=np.int64).reshape(-1)
    if bxs.shape[0] == 0:
        return np.zeros((0, 4)), np.zeros((0,))
    kept = nms(bxs, scr, overlap_thresh, max_boxes)
    overlap = iou_matrix(bxs[kept], bxs) >= match_iou                        # (K, N)
    weights = np.zeros((kept.shape[0], bxs.shape[0]))
    used = np.zeros(bxs.shape[0], bool)
    alive = np.ones(kept.shape[0], bool)
    for k, seed in enumerate(kept):                       # best cluster first: it claims its members
        if used[seed]:                                    # already a member of a better cluster
            alive[k] = False
            continue
        used[seed] = True
        weights[k, seed] = scr[seed]
        for view in range(n_views):
            if view == ids[seed]:
                continue
            free = np.flatnonzero((ids == view) & overlap[k] & ~used)
            if free.size:
                best = free[np.argmax(scr[free])]
                used[best] = True
                weights[k, best] = scr[best]
    kept, weights = kept[alive], weights[alive]
    total = weights.sum(axis=1)
    fused = weights @ bxs / np.where(total > 0, total, 1.0)[:, None]
    fused = np.where(total[:, None] > 0, fused, bxs[kept])
    fused_scores = total / float(n_views)
    if agreement_weight > 0.0:
        agreement = (weights * iou_matrix(fused, bxs)).sum(axis=1) / np.where(total > 0, total, 1.0)
        fused_scores = fused_scores * np.clip(agreement, 0.0, 1.0) ** agreement_weight
    order = np.argsort(-fused_scores, kind="stable")
    return fused[order], fused_scores[order]
