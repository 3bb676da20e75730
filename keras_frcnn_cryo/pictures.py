"""Pictures of detections, written headless with OpenCV: a slice with its boxes and scores
(:func:`render_overlay`), true against predicted boxes (:func:`render_comparison`), pictures tiled
with a caption (:func:`render_montage`), a tomogram's z projection with its 3D objects
(:func:`render_z_projection`), and :func:`write_png` (atomic).

Boxes are ``[x1, y1, x2, y2]`` in the picture's pixels with exclusive far edges (a box covers
pixels x1..x2-1, y1..y2-1); colours are BGR.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import cv2
import numpy as np

from . import tomo_io
from .tracking import Object3D, as_slice_detections

__all__ = ["PALETTE", "class_colour", "to_bgr", "draw_box", "add_title", "render_overlay", "TRUE_COLOUR",
           "PREDICTED_COLOUR", "render_comparison", "render_montage", "render_z_projection", "write_png"]

# BGR colours by class index
PALETTE = [(0, 255, 0), (0, 165, 255), (255, 0, 255), (255, 255, 0), (0, 0, 255), (0, 255, 255), (255, 0, 0)]


def class_colour(class_index: int) -> tuple[int, int, int]:
    """BGR colour of a class index (cycles through :data:`PALETTE`)."""
    return PALETTE[int(class_index) % len(PALETTE)]


def to_bgr(image: np.ndarray) -> np.ndarray:
    """2D any real dtype (robust 0.5-99.5 percentile stretch unless uint8) or (H, W, 3) uint8 -> BGR uint8."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
        return arr.copy()
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D image (or (H, W, 3) uint8), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        from .preprocessing import to_uint8
        arr = to_uint8(arr.astype(np.float32) if arr.dtype == bool else arr)
    return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_GRAY2BGR)


def draw_box(canvas: np.ndarray, box: Sequence[float], colour: tuple[int, int, int], text: str) -> None:
    """Rectangle covering pixels x1..x2-1, y1..y2-1 (rounded half up), text on a black backing above it
    (inside the box when there is no room above)."""
    height, width = canvas.shape[:2]
    thickness = max(1, int(round(max(height, width) / 400)))
    x1, y1, x2, y2 = (int(math.floor(float(v) + 0.5)) for v in box)  # round half up
    x1, y1 = min(max(x1, 0), width - 1), min(max(y1, 0), height - 1)
    x2, y2 = min(max(x2 - 1, x1), width - 1), min(max(y2 - 1, y1), height - 1)
    cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
    if text:
        scale = 0.4 * thickness
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        y_text = y1 - 3 if y1 - 3 - text_h >= 0 else min(y1 + text_h + 3, height - baseline)
        # dark backing so the label stays legible on noisy cryo-ET slices
        cv2.rectangle(canvas, (x1 + thickness, y_text - text_h - 1), (x1 + thickness + text_w, y_text + baseline - 1),
                      (0, 0, 0), cv2.FILLED)
        cv2.putText(canvas, text, (x1 + thickness, y_text), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness,
                    cv2.LINE_AA)


def render_overlay(slice_image: np.ndarray, boxes: np.ndarray, labels: Sequence[int], scores: Sequence[float],
                   class_names: Sequence[str], min_score: float = 0.0) -> np.ndarray:
    """(H, W, 3) BGR uint8 picture of a slice with its boxes of score >= ``min_score`` and their scores
    (and class names, when the model has more than one class) drawn.

    slice_image: (H, W) of any real dtype (uint8 shown as is, others stretched between their
    0.5 and 99.5 percentiles). boxes: (N, 4) ``[x1, y1, x2, y2]`` in the slice's pixels. The display
    threshold is separate from the detection threshold: a CSV written at --threshold 0 for
    evaluation would otherwise bury the slice under hundreds of boxes.
    """
    canvas = to_bgr(slice_image)
    boxes, scores_arr, labels_arr = as_slice_detections((boxes, scores, labels))
    named = len([name for name in class_names if name != "bg"]) > 1
    for index in np.argsort(scores_arr, kind="stable"):  # strongest drawn last, on top
        if scores_arr[index] < min_score:
            continue
        label = int(labels_arr[index])
        name = str(class_names[label]) if 0 <= label < len(class_names) else str(label)
        text = f"{name} {scores_arr[index]:.2f}" if named else f"{scores_arr[index]:.2f}"
        draw_box(canvas, boxes[index], class_colour(label), text)
    return canvas


def add_title(canvas: np.ndarray, title: str) -> np.ndarray:
    """``canvas`` (H, W, 3) BGR uint8 with ``title`` in white on a black band across its top (in place;
    returned; unchanged when ``title`` is empty)."""
    if title:
        band = max(14, canvas.shape[0] // 16)
        cv2.rectangle(canvas, (0, 0), (canvas.shape[1] - 1, band), (0, 0, 0), cv2.FILLED)
        cv2.putText(canvas, title, (3, band - 4), cv2.FONT_HERSHEY_SIMPLEX, band / 30.0, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return canvas


TRUE_COLOUR = (80, 220, 80)        # BGR green: ground-truth boxes in comparisons
PREDICTED_COLOUR = (230, 60, 230)  # BGR magenta: predicted boxes in comparisons


def render_comparison(slice_image: np.ndarray, true_boxes: np.ndarray, predicted_boxes: np.ndarray,
                      scores: Sequence[float], title: str = "") -> np.ndarray:
    """(H, W, 3) BGR uint8: a slice with its true boxes (green, unlabelled) and predicted boxes
    (magenta, with scores); ``title`` on a black band at the top. Boxes: (N, 4) ``[x1, y1, x2, y2]``."""
    canvas = to_bgr(slice_image)
    for box in np.asarray(true_boxes, float).reshape(-1, 4):
        draw_box(canvas, box, TRUE_COLOUR, "")
    predicted = np.asarray(predicted_boxes, float).reshape(-1, 4)
    for box, score in zip(predicted, scores):
        draw_box(canvas, box, PREDICTED_COLOUR, f"{float(score):.2f}")
    return add_title(canvas, title)


def render_montage(pictures: Sequence[np.ndarray], columns: int = 3, caption: str = "") -> np.ndarray:
    """Equal-sized (H, W, 3) BGR pictures tiled ``columns`` wide (2-px black gaps), with ``caption``
    on a black band underneath; (H', W', 3) uint8."""
    if not pictures:
        raise ValueError("render_montage needs at least one picture")
    height, width = pictures[0].shape[:2]
    columns = max(1, min(columns, len(pictures)))
    rows = -(-len(pictures) // columns)
    gap = 2
    band = 24 if caption else 0
    sheet = np.zeros((rows * (height + gap) + band, columns * (width + gap), 3), np.uint8)
    for index, picture in enumerate(pictures):
        if picture.shape[:2] != (height, width):
            picture = cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA)
        r, c = divmod(index, columns)
        sheet[r * (height + gap):r * (height + gap) + height, c * (width + gap):c * (width + gap) + width] = picture
    if caption:
        cv2.putText(sheet, caption, (4, sheet.shape[0] - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return sheet


def render_z_projection(volume_slices_mean: np.ndarray, objects: Sequence[Object3D]) -> np.ndarray:
    """(H, W, 3) BGR uint8: a z projection (e.g. ``volume.mean(axis=0)``, (y, x)) with each object's
    x/y rectangle and a label ``name z<first>-<last> <score>`` (0-based inclusive slice range)."""
    canvas = to_bgr(volume_slices_mean)
    for obj in sorted(objects, key=lambda o: o.score):
        text = f"{obj.class_name} z{obj.first_slice}-{obj.last_slice} {obj.score:.2f}"
        draw_box(canvas, (obj.x1, obj.y1, obj.x2, obj.y2), class_colour(obj.class_index), text)
    return canvas


def write_png(path: str | os.PathLike, bgr: np.ndarray) -> None:
    """Encode a uint8/uint16 (H, W), (H, W, 3) BGR or (H, W, 4) image as PNG and write it atomically."""
    tomo_io.write_png_atomic(os.fspath(path), bgr)
