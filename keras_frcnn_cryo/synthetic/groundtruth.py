"""Synthetic data: ground-truth boxes of the phantom's objects on slices and on tilt images."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


# ------------------------------------------------------------------------------------------
# ground truth
# ------------------------------------------------------------------------------------------
def _crop_to_field(obj: dict[str, Any], shape: Sequence[int]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An object's mask cropped to the field of view, and the crop's origin (z, y, x)."""
    mask = obj["mask"]
    origin = obj["origin"]
    lo = [max(0, origin[a]) for a in range(3)]
    hi = [min(int(shape[a]), origin[a] + mask.shape[a]) for a in range(3)]
    if any(h <= l for l, h in zip(lo, hi)):
        return np.zeros((0, 0, 0), bool), (lo[0], lo[1], lo[2])
    sub = mask[tuple(slice(lo[a] - origin[a], hi[a] - origin[a]) for a in range(3))]
    return sub, (lo[0], lo[1], lo[2])


def _span(flags: np.ndarray) -> tuple[int, int]:
    idx = np.flatnonzero(flags)
    return int(idx[0]), int(idx[-1]) + 1


def object_summaries(objects: list[dict[str, Any]], shape: Sequence[int]) -> list[dict[str, Any]]:
    """3D boxes [x1, y1, z1, x2, y2, z2] (exclusive) of each object's voxels in the field of view.

    'incomplete': the object is cut by the field's x/y border (voxels beyond it, or touching row 0 / last);
    'cut_z': it reaches the first or last slice (cut by the slab surface). Objects with no voxel in the field
    get None.
    """
    out: list[dict[str, Any] | None] = []
    nz, ny, nx = (int(v) for v in shape)
    for obj in objects:
        sub, (z0, y0, x0) = _crop_to_field(obj, shape)
        if sub.size == 0 or not sub.any():
            out.append(None)
            continue
        za, zb = _span(sub.any(axis=(1, 2)))
        ya, yb = _span(sub.any(axis=(0, 2)))
        xa, xb = _span(sub.any(axis=(0, 1)))
        box = [float(x0 + xa), float(y0 + ya), float(z0 + za), float(x0 + xb), float(y0 + yb), float(z0 + zb)]
        x_org = obj["origin"][2]
        beyond_x = int(obj["mask"].sum()) != int(obj["mask"][:, :, max(0, -x_org):nx - x_org].sum())
        incomplete = beyond_x or box[1] <= 0 or box[4] >= ny or box[0] <= 0 or box[3] >= nx
        out.append({"class": obj["class"], "box3d": box, "incomplete": bool(incomplete),
                    "cut_z": bool(box[2] <= 0 or box[5] >= nz)})
    return out  # type: ignore[return-value]


def slice_boxes(objects: list[dict[str, Any]], shape: Sequence[int],
                min_area_px: float) -> dict[int, list[dict[str, Any]]]:
    """Per slice z: the box of each object's cross-section (mask at z, in the field) with >= min_area_px pixels."""
    boxes: dict[int, list[dict[str, Any]]] = {z: [] for z in range(int(shape[0]))}
    for obj in objects:
        sub, (z0, y0, x0) = _crop_to_field(obj, shape)
        if sub.size == 0:
            continue
        area = sub.sum(axis=(1, 2))
        rows = sub.any(axis=2)
        cols = sub.any(axis=1)
        for k in np.flatnonzero(area >= max(min_area_px, 1)):
            ya, yb = _span(rows[k])
            xa, xb = _span(cols[k])
            boxes[z0 + int(k)].append({"class": obj["class"], "x1": float(x0 + xa), "y1": float(y0 + ya),
                                       "x2": float(x0 + xb), "y2": float(y0 + yb)})
    return boxes


def tilt_boxes(objects: list[dict[str, Any]], shape: Sequence[int], angles_deg: Sequence[float],
               min_area_px: float) -> dict[int, list[dict[str, Any]]]:
    """Per tilt index: the box of each object's projected footprint on the detector (clipped to it).

    The footprint of a voxel (a unit square in x, z) spans t +- (|cos| + |sin|) / 2 around its centre's t;
    boxes whose clipped area is below min_area_px are skipped. y is unchanged by the tilt (axis along y).
    """
    nz, ny, nx = (int(v) for v in shape)
    theta = np.radians(np.asarray(angles_deg, float))
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(theta))}
    for obj in objects:
        mask, (z0, y0, x0) = obj["mask"], obj["origin"]
        if not mask.any():
            continue
        cols = mask.any(axis=1)                            # (z, x): columns present in each plane
        planes = np.flatnonzero(cols.any(axis=1))
        first = np.array([np.flatnonzero(cols[k])[0] for k in planes])
        last = np.array([np.flatnonzero(cols[k])[-1] for k in planes])
        w = z0 + planes + 0.5 - nz / 2.0
        u_lo = x0 + first + 0.5 - nx / 2.0
        u_hi = x0 + last + 0.5 - nx / 2.0
        ya, yb = _span(mask.any(axis=(0, 2)))
        y1, y2 = max(0.0, float(y0 + ya)), min(float(ny), float(y0 + yb))
        for i, th in enumerate(theta):
            c, s = math.cos(th), math.sin(th)
            half = 0.5 * (abs(c) + abs(s))
            t_lo = np.minimum(u_lo * c, u_hi * c) + w * s
            t_hi = np.maximum(u_lo * c, u_hi * c) + w * s
            x1 = max(0.0, float(t_lo.min() - half + nx / 2.0))
            x2 = min(float(nx), float(t_hi.max() + half + nx / 2.0))
            if x2 <= x1 or y2 <= y1 or (x2 - x1) * (y2 - y1) < min_area_px:
                continue
            out[i].append({"class": obj["class"], "x1": x1, "y1": y1, "x2": x2, "y2": y2})
    return out
