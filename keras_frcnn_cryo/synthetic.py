"""Synthetic cryo-ET data: cells with mitochondria, imaged as a tilt series and reconstructed.

A seeded, deterministic stand-in for the data of Li et al. (2019): a slab of cytoplasm with 0-4
mitochondria (double membrane, lamellar cristae, dense matrix, some cut by the field of view) among
distractors (single-membrane vesicles, large vesicles, lipid droplets, multivesicular bodies, ER sheets,
microtubules, ribosomes, gold beads), imaged as a single-axis tilt series (axis along y) with a
CTF-like transfer and Gaussian noise at a target SNR, and reconstructed by weighted back-projection,
so slices show the missing-wedge elongation and streaks of real tomograms.

Conventions
-----------
* Arrays: volumes are float32 ``(z, y, x)``; a tilt series is float32 ``(n_tilts, y, x)``; tilt images
  have the tomogram's y rows and x columns (tilt axis along y, through the volume centre).
* Polarity: **density is dark** (more mass = lower value) in tilts, tomograms and PNGs, as raw cryo-ET
  data displayed the usual way (``Config.dark_objects=True``).
* Boxes: float pixels ``[x1, y1, x2, y2]``, 0-based, pixel ``j`` covers ``[j, j+1)``, so width =
  ``x2 - x1`` and a box from a mask is ``[min col, min row, max col + 1, max row + 1]``.
* Slice numbers and tilt indices are 0-based everywhere (IMOD's viewer counts from 1).
* Pixel size: ``DEFAULT_PIXEL_SIZE_A`` = 30 A/px, so a 512-px slice covers 1.5 um and mitochondria
  (200-500 nm wide, 300-1000 nm long) span about 65-330 px: the anchors (128-512 px at a 600-px
  shorter side) fit them after the usual resize. (The paper's images are 2.6 A/px; a coarser default
  keeps whole mitochondria inside a 512-px slice. Set ``pixel_size_a`` / ``--apix`` to change it.)
* Scale: tomograms are standardised (mean 0, std 1); tilts are divided by the noisy series' std.
* SNR: signal variance / noise variance of the tilt images (signal = the noise-free image after the
  CTF-like transfer); one noise level for the whole series, set from the series' mean signal variance.

Physical model (all lengths in nm in :class:`SimulationParams`, converted with the pixel size): the
specimen is simulated wider than the field of view in x (so high tilts see material, as in a real slab);
projections are exact shear-sums along x in Fourier space followed by area resampling to the detector
grid; reconstruction is the ramp-filtered (Hamming-apodised) back-projection of every y row.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from . import tomo_io
from .atomic import write_bytes_atomic
from .config import Config
from .errors import CryoError

MITO_CLASS = "mitochondrion"
DROPLET_CLASS = "lipid_droplet"
DEFAULT_PIXEL_SIZE_A = 30.0
DEFAULT_SHAPE = (100, 512, 512)
DEFAULT_SLICE_STEP = 5
TOY_IMAGES_PER_GROUP = 4


@dataclass(frozen=True)
class SimulationParams:
    """Physical constants of the phantom and the microscope (lengths in nm, densities relative to ice=0)."""

    # mitochondria
    mito_count_probs: tuple[float, ...] = (0.1, 0.25, 0.3, 0.2, 0.15)   # P(0..4 mitochondria)
    mito_length_nm: tuple[float, float] = (300.0, 1000.0)
    mito_width_nm: tuple[float, float] = (200.0, 500.0)
    mito_max_elevation_deg: float = 35.0        # slant of the long axis out of the xy plane
    mito_bend_prob: float = 0.5
    membrane_thickness_nm: tuple[float, float] = (4.0, 6.0)
    membrane_gap_nm: tuple[float, float] = (10.0, 20.0)    # outer-inner membrane distance
    crista_spacing_nm: tuple[float, float] = (35.0, 90.0)
    crista_lumen_nm: tuple[float, float] = (6.0, 12.0)
    crista_max_tilt_deg: float = 12.0
    crista_presence: float = 0.85               # fraction of crista slots filled
    mito_granules: tuple[int, int] = (0, 3)     # dense matrix granules per mitochondrion
    granule_radius_nm: tuple[float, float] = (10.0, 20.0)
    # densities
    rho_membrane: float = 1.0
    rho_cytoplasm: float = 0.2
    rho_cytoplasm_texture: float = 0.05         # std of the smooth cytoplasm fluctuation
    cytoplasm_texture_nm: float = 60.0          # correlation length of that fluctuation
    rho_ims: float = 0.18                       # intermembrane space and crista lumen
    rho_matrix: tuple[float, float] = (0.38, 0.5)
    rho_granule: float = 1.3
    rho_droplet: tuple[float, float] = (0.55, 0.7)
    rho_vesicle_lumen: tuple[float, float] = (0.03, 0.25)
    rho_mvb_lumen: float = 0.25
    rho_er_lumen: float = 0.22
    rho_microtubule: float = 0.9
    rho_ribosome: float = 0.8
    rho_gold: float = 6.0
    # distractors (counts per um^2 of simulated xy area unless said otherwise)
    droplet_count_probs: tuple[float, ...] = (0.45, 0.35, 0.2)          # P(0..2) in the field of view
    droplet_radius_nm: tuple[float, float] = (80.0, 250.0)
    vesicles_per_um2: tuple[float, float] = (3.0, 10.0)
    vesicle_radius_nm: tuple[float, float] = (15.0, 80.0)
    large_vesicles_per_um2: tuple[float, float] = (0.2, 0.8)
    large_vesicle_radius_nm: tuple[float, float] = (100.0, 250.0)
    mvb_per_um2: tuple[float, float] = (0.0, 0.4)
    mvb_radius_nm: tuple[float, float] = (120.0, 250.0)
    mvb_inner_vesicles: tuple[int, int] = (4, 15)
    mvb_inner_radius_nm: tuple[float, float] = (15.0, 30.0)
    er_sheets_per_um2: tuple[float, float] = (0.3, 1.2)
    er_half_extent_nm: tuple[float, float] = (100.0, 400.0)
    er_lumen_nm: tuple[float, float] = (25.0, 50.0)
    er_normal_max_elevation_deg: float = 20.0    # most sheets stand nearly upright: line pairs in a slice
    microtubules_per_um2: tuple[float, float] = (0.0, 1.0)
    microtubule_length_nm: tuple[float, float] = (400.0, 2500.0)
    microtubule_outer_nm: float = 12.5          # 25 nm tube
    microtubule_max_elevation_deg: float = 8.0  # nearly in-plane: long lines in a slice
    microtubule_wall_nm: float = 5.0
    ribosomes_per_um3: tuple[float, float] = (2000.0, 7000.0)
    ribosome_radius_nm: float = 12.5            # ~25 nm dots
    gold_per_um2: tuple[float, float] = (0.0, 3.0)
    gold_radius_nm: float = 5.0
    cell_edge_prob: float = 0.3                 # a plasma membrane cuts the field, ice beyond it
    cell_radius_nm: tuple[float, float] = (2000.0, 6000.0)
    placement_tries: int = 60
    # microscope
    voltage_kv: float = 300.0
    defocus_um: float = 6.0
    amplitude_contrast: float = 0.35            # effective, includes energy-filter (zero-loss) contrast
    bfactor_a2: float = 12000.0                 # Gaussian envelope exp(-B k^2 / 4): the low-pass
    # ground truth
    min_area_nm2: float = 4000.0                # slice cross-sections / tilt boxes below this are skipped


PARAMS = SimulationParams()


# ------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------
def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _count(rng: np.random.Generator, per_um2: tuple[float, float], area_um2: float) -> int:
    return int(rng.poisson(_uniform(rng, per_um2) * area_um2))


def _inside(dist: np.ndarray, edge: float = 0.0) -> np.ndarray:
    """Antialiased indicator of ``dist <= edge`` (1 px ramp), float32."""
    return np.clip(edge - dist + 0.5, 0.0, 1.0).astype(np.float32, copy=False)


def _band(dist: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Antialiased indicator of ``lo <= dist <= hi`` (a shell of thickness hi - lo px), float32."""
    return np.clip(np.minimum(dist - lo, hi - dist) + 0.5, 0.0, 1.0).astype(np.float32, copy=False)


def _mix(base: np.ndarray, value: float | np.ndarray, weight: np.ndarray) -> np.ndarray:
    return base + weight * (value - base)


def _unit(vec: np.ndarray) -> np.ndarray:
    return vec / np.linalg.norm(vec)


def _direction(rng: np.random.Generator, max_elevation_deg: float) -> np.ndarray:
    """Random unit vector (z, y, x) with |elevation from the xy plane| <= max_elevation_deg."""
    phi = rng.uniform(0.0, 2.0 * math.pi)
    elev = math.radians(rng.uniform(-max_elevation_deg, max_elevation_deg))
    return np.array([math.sin(elev), math.cos(elev) * math.sin(phi), math.cos(elev) * math.cos(phi)])


def _perpendicular(rng: np.random.Generator, axis: np.ndarray) -> np.ndarray:
    """Random unit vector perpendicular to ``axis``."""
    vec = rng.normal(size=3)
    vec -= vec.dot(axis) * axis
    return _unit(vec)


@dataclass
class _Region:
    """Index window of a volume with voxel-centre coordinates (z, y, x) as broadcastable arrays."""

    slices: tuple[slice, slice, slice]
    zz: np.ndarray
    yy: np.ndarray
    xx: np.ndarray

    @property
    def origin(self) -> tuple[int, int, int]:
        return (self.slices[0].start, self.slices[1].start, self.slices[2].start)

    @property
    def empty(self) -> bool:
        return any(s.stop <= s.start for s in self.slices)


def _region(shape: Sequence[int], lo: np.ndarray, hi: np.ndarray) -> _Region:
    """Voxels whose centres lie in [lo, hi] (z, y, x), clipped to ``shape``."""
    sl = []
    for axis in range(3):
        start = max(0, int(math.floor(lo[axis])))
        stop = min(int(shape[axis]), int(math.ceil(hi[axis])) + 1)
        sl.append(slice(start, max(start, stop)))
    zz = np.arange(sl[0].start, sl[0].stop, dtype=np.float32)[:, None, None]
    yy = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)[None, :, None]
    xx = np.arange(sl[2].start, sl[2].stop, dtype=np.float32)[None, None, :]
    return _Region(tuple(sl), zz, yy, xx)  # type: ignore[arg-type]


def _polyline(points: np.ndarray, zz: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of every point to a polyline (n, 3) and the arclength of its foot (unclamped at the ends)."""
    best = None
    arclen = None
    start = 0.0
    for k in range(len(points) - 1):
        a = points[k].tolist()                  # python floats keep the float32 grids float32
        d = (points[k + 1] - points[k]).tolist()
        length2 = d[0] ** 2 + d[1] ** 2 + d[2] ** 2
        length = math.sqrt(length2)
        pz, py, px = zz - a[0], yy - a[1], xx - a[2]
        t = (pz * d[0] + py * d[1] + px * d[2]) / length2
        tc = np.clip(t, 0.0, 1.0)
        d2 = (pz - tc * d[0]) ** 2 + (py - tc * d[1]) ** 2 + (px - tc * d[2]) ** 2
        s = start + t * length
        if k > 0:
            s = np.where(t < 0, start, s)          # inner joints: no extrapolation past a bend
        if k < len(points) - 2:
            s = np.where(t > 1, start + length, s)
        if best is None:
            best, arclen = d2, s
        else:
            closer = d2 < best
            best = np.where(closer, d2, best)
            arclen = np.where(closer, s, arclen)
        start += length
    return np.sqrt(best).astype(np.float32), np.asarray(arclen, dtype=np.float32)


# ------------------------------------------------------------------------------------------
# phantom objects
# ------------------------------------------------------------------------------------------
class _Shape:
    """A phantom object: bounds (voxel coords z, y, x), an approximate signed distance and a renderer."""

    label: str | None = None

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def sdf(self, zz: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def render(self, vol: np.ndarray, occupied: np.ndarray) -> np.ndarray | None:
        """Composite into ``vol`` (z, y, x), mark ``occupied``; labelled shapes return their mask in the bounds."""
        reg = _region(vol.shape, *self.bounds())
        if reg.empty:
            return None
        value, alpha, dist = self.profile(reg)
        view = vol[reg.slices]
        view += alpha * (value - view)
        occupied[reg.slices] |= dist < 1.0
        return dist <= 0.0

    def profile(self, reg: _Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(value, coverage alpha, signed distance) on the region."""
        raise NotImplementedError


class _Mitochondrion(_Shape):
    label = MITO_CLASS

    def __init__(self, rng: np.random.Generator, centre: np.ndarray, nm: float, params: SimulationParams,
                 scale: float = 1.0):
        length = _uniform(rng, params.mito_length_nm) * scale
        width = min(_uniform(rng, params.mito_width_nm) * scale, length)
        self.radius = width / 2.0 / nm
        half = max((length - width) / 2.0 / nm, 0.5)
        axis = _direction(rng, params.mito_max_elevation_deg)
        bend_dir = _perpendicular(rng, axis)
        self.crista_normal = _unit(np.cross(axis, bend_dir))   # sheets tilt about this direction
        if half > self.radius and rng.random() < params.mito_bend_prob:
            bend = rng.uniform(-0.35, 0.35) * half
            self.points = np.stack([centre - half * axis, centre + bend * bend_dir, centre + half * axis])
        else:
            self.points = np.stack([centre - half * axis, centre + half * axis])
        self.centre = centre
        self.tm = _uniform(rng, params.membrane_thickness_nm) / nm
        self.gap = _uniform(rng, params.membrane_gap_nm) / nm
        self.rho_matrix = _uniform(rng, params.rho_matrix)
        spacing = _uniform(rng, params.crista_spacing_nm) / nm
        total = float(sum(np.linalg.norm(self.points[k + 1] - self.points[k]) for k in range(len(self.points) - 1)))
        n_slots = int(math.ceil((total + 2 * self.radius) / spacing)) + 3
        self.crista_spacing = spacing
        self.crista_start = -self.radius - spacing + rng.uniform(0, spacing)
        self.crista_jitter = rng.uniform(-0.2, 0.2, n_slots) * spacing
        max_tilt = params.crista_max_tilt_deg
        self.crista_tan = np.tan(np.radians(rng.uniform(-max_tilt, max_tilt, n_slots)))
        self.crista_side = rng.choice([-1.0, 0.0, 1.0], size=n_slots, p=[0.35, 0.3, 0.35])
        self.crista_depth = rng.uniform(0.35, 0.9, n_slots)
        self.crista_on = rng.random(n_slots) < params.crista_presence
        self.crista_lumen = _uniform(rng, params.crista_lumen_nm) / nm
        n_gran = int(rng.integers(params.mito_granules[0], params.mito_granules[1] + 1))
        self.granules = []
        inner = self.radius - 2 * self.tm - self.gap
        for _ in range(n_gran):
            r = _uniform(rng, params.granule_radius_nm) / nm
            if inner - r < 2:
                continue
            k = int(rng.integers(0, len(self.points) - 1))
            along = self.points[k] + rng.random() * (self.points[k + 1] - self.points[k])
            off = _perpendicular(rng, _unit(self.points[-1] - self.points[0])) * rng.uniform(0, inner - r - 1)
            self.granules.append((along + off, r))
        self.params = params

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.points.min(0) - self.radius - 1, self.points.max(0) + self.radius + 1

    def sdf(self, zz: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return _polyline(self.points, zz, yy, xx)[0] - self.radius

    def profile(self, reg: _Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = self.params
        axial, arclen = _polyline(self.points, reg.zz, reg.yy, reg.xx)
        dist = axial - self.radius
        tm, gap = self.tm, self.gap
        inner_edge = -(2 * tm + gap)
        value = np.full(dist.shape, p.rho_ims, np.float32)
        in_matrix = _inside(dist, inner_edge)
        value = _mix(value, self.rho_matrix, in_matrix)
        # lamellar cristae: pairs of membranes across the matrix, roughly perpendicular to the axis
        n, c = self.crista_normal.tolist(), self.centre.tolist()
        across = ((reg.zz - c[0]) * n[0] + (reg.yy - c[1]) * n[1] + (reg.xx - c[2]) * n[2]).astype(np.float32)
        inner_r = max(self.radius + inner_edge, 1.0)
        slot_f = (arclen - self.crista_start) / self.crista_spacing
        best = np.full(dist.shape, np.inf, np.float32)
        reach = np.zeros(dist.shape, np.float32)
        n_slots = len(self.crista_on)
        for shift in (0, 1):
            slot = np.clip(np.floor(slot_f).astype(np.int64) + shift, 0, n_slots - 1)
            centre_s = self.crista_start + slot * self.crista_spacing + self.crista_jitter[slot]
            delta = np.abs(arclen - centre_s + self.crista_tan[slot] * across)
            side = self.crista_side[slot]
            limit = inner_r * (1.0 - 2.0 * self.crista_depth[slot])
            extent = np.where(side == 0, 1.0, _inside(limit - side * across)).astype(np.float32)
            extent *= self.crista_on[slot]
            delta = np.where(extent > 0, delta, np.inf)
            closer = delta < best
            best = np.where(closer, delta, best)
            reach = np.where(closer, extent, reach)
        half_lumen = self.crista_lumen / 2
        lumen = _inside(best, half_lumen) * reach * in_matrix
        crista_mem = _band(best, half_lumen, half_lumen + tm) * reach * in_matrix
        value = _mix(value, p.rho_ims, lumen)
        value = _mix(value, p.rho_membrane, crista_mem)
        for centre_arr, radius in self.granules:
            centre = centre_arr.tolist()
            gd = np.sqrt((reg.zz - centre[0]) ** 2 + (reg.yy - centre[1]) ** 2 + (reg.xx - centre[2]) ** 2) - radius
            value = _mix(value, p.rho_granule, _inside(gd) * in_matrix)
        value = _mix(value, p.rho_membrane, _band(dist, -tm, 0.0))
        value = _mix(value, p.rho_membrane, _band(dist, -(2 * tm + gap), -(tm + gap)))
        return value, _inside(dist), dist


class _Sphere(_Shape):
    """Vesicle, large vesicle, lipid droplet or multivesicular body."""

    def __init__(self, centre: np.ndarray, radius: float, membrane: float, lumen: float, rho_membrane: float,
                 label: str | None = None, inner: Sequence[tuple[np.ndarray, float]] = ()):
        self.centre, self.radius, self.membrane = centre, radius, membrane
        self.lumen, self.rho_membrane, self.label = lumen, rho_membrane, label
        self.inner = list(inner)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.centre - self.radius - 1, self.centre + self.radius + 1

    def sdf(self, zz: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        c = self.centre.tolist()
        return np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) - self.radius

    def profile(self, reg: _Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dist = self.sdf(reg.zz, reg.yy, reg.xx).astype(np.float32)
        value = np.full(dist.shape, self.lumen, np.float32)
        for centre_arr, radius in self.inner:
            centre = centre_arr.tolist()
            vd = np.sqrt((reg.zz - centre[0]) ** 2 + (reg.yy - centre[1]) ** 2 + (reg.xx - centre[2]) ** 2) - radius
            value = _mix(value, self.rho_membrane, _band(vd, -self.membrane, 0.0))
        value = _mix(value, self.rho_membrane, _band(dist, -self.membrane, 0.0))
        return value, _inside(dist), dist


class _ERSheet(_Shape):
    """A (slightly curved) flat cisterna: two membranes around a lumen, bounded by an ellipse."""

    def __init__(self, rng: np.random.Generator, centre: np.ndarray, nm: float, params: SimulationParams):
        self.centre = centre
        self.normal = _direction(rng, params.er_normal_max_elevation_deg)
        self.normal = self.normal if rng.random() < 0.85 else _direction(rng, 90.0)
        horiz = np.array([0.0, -self.normal[2], self.normal[1]])
        self.e1 = _unit(horiz) if np.linalg.norm(horiz) > 1e-3 else np.array([0.0, 1.0, 0.0])
        self.e2 = _unit(np.cross(self.normal, self.e1))
        self.half_a = _uniform(rng, params.er_half_extent_nm) / nm
        self.half_b = _uniform(rng, params.er_half_extent_nm) / nm
        self.tm = _uniform(rng, params.membrane_thickness_nm) / nm
        self.half_h = _uniform(rng, params.er_lumen_nm) / nm / 2 + self.tm
        self.curv = rng.uniform(-0.4, 0.4) / self.half_a
        self.params = params

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = max(self.half_a, self.half_b) + self.half_h + abs(self.curv) * self.half_a ** 2 + 2
        return self.centre - reach, self.centre + reach

    def sdf(self, zz: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        c, e1, e2, n = self.centre.tolist(), self.e1.tolist(), self.e2.tolist(), self.normal.tolist()
        dz, dy, dx = zz - c[0], yy - c[1], xx - c[2]
        a = dz * e1[0] + dy * e1[1] + dx * e1[2]
        b = dz * e2[0] + dy * e2[1] + dx * e2[2]
        h = dz * n[0] + dy * n[1] + dx * n[2] - float(self.curv) * a ** 2
        ell = (np.sqrt((a / self.half_a) ** 2 + (b / self.half_b) ** 2) - 1.0) * min(self.half_a, self.half_b)
        return np.maximum(np.abs(h) - self.half_h, ell)

    def profile(self, reg: _Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dist = self.sdf(reg.zz, reg.yy, reg.xx).astype(np.float32)
        value = np.full(dist.shape, self.params.rho_er_lumen, np.float32)
        value = _mix(value, self.params.rho_membrane, _band(dist, -self.tm, 0.0))
        return value, _inside(dist), dist


class _Microtubule(_Shape):
    """A 25 nm hollow tube, rendered piecewise so long diagonal tubes stay cheap."""

    PIECE = 48.0

    def __init__(self, rng: np.random.Generator, centre: np.ndarray, nm: float, params: SimulationParams):
        self.axis = _direction(rng, params.microtubule_max_elevation_deg)
        self.length = _uniform(rng, params.microtubule_length_nm) / nm
        self.start = centre - self.axis * self.length / 2
        self.outer = params.microtubule_outer_nm / nm
        self.inner = max(self.outer - params.microtubule_wall_nm / nm, 0.0)
        self.params = params

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        end = self.start + self.axis * self.length
        return np.minimum(self.start, end) - self.outer - 1, np.maximum(self.start, end) + self.outer + 1

    def _coords(self, zz: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        o, ax = self.start.tolist(), self.axis.tolist()
        pz, py, px = zz - o[0], yy - o[1], xx - o[2]
        t = pz * ax[0] + py * ax[1] + px * ax[2]
        radial = np.sqrt((pz - t * ax[0]) ** 2 + (py - t * ax[1]) ** 2 + (px - t * ax[2]) ** 2)
        return t, radial

    def sdf(self, zz: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        t, radial = self._coords(zz, yy, xx)
        return np.maximum(radial - self.outer, np.maximum(-t, t - self.length))

    def render(self, vol: np.ndarray, occupied: np.ndarray) -> np.ndarray | None:
        n_pieces = max(1, int(math.ceil(self.length / self.PIECE)))
        for k in range(n_pieces):
            t0, t1 = k * self.length / n_pieces, (k + 1) * self.length / n_pieces
            a, b = self.start + t0 * self.axis, self.start + t1 * self.axis
            reg = _region(vol.shape, np.minimum(a, b) - self.outer - 1, np.maximum(a, b) + self.outer + 1)
            if reg.empty:
                continue
            t, radial = self._coords(reg.zz, reg.yy, reg.xx)
            mine = (t >= t0) & (t < t1) if k < n_pieces - 1 else (t >= t0)
            dist = np.maximum(radial - self.outer, np.maximum(-t, t - self.length)).astype(np.float32)
            value = _mix(np.full(dist.shape, self.params.rho_cytoplasm * 0.5, np.float32),
                         self.params.rho_microtubule, _band(radial, self.inner, self.outer))
            alpha = _inside(dist) * mine
            view = vol[reg.slices]
            view += alpha * (value - view)
            occupied[reg.slices] |= (dist < 1.0) & mine
        return None


# ------------------------------------------------------------------------------------------
# phantom assembly
# ------------------------------------------------------------------------------------------
class _Occupancy:
    """Coarse occupancy grid used to place objects without overlap."""

    def __init__(self, shape: Sequence[int], factor: int = 4):
        self.factor = factor
        self.grid = np.zeros([int(math.ceil(n / factor)) for n in shape], bool)
        self.centres = [np.arange(n, dtype=np.float32) * factor + (factor - 1) / 2.0 for n in self.grid.shape]

    def try_place(self, shape: _Shape, clearance: float) -> bool:
        lo, hi = shape.bounds()
        margin = clearance + self.factor
        idx = []
        for axis in range(3):
            c = self.centres[axis]
            i0 = int(np.searchsorted(c, lo[axis] - margin))
            i1 = int(np.searchsorted(c, hi[axis] + margin, side="right"))
            if i1 <= i0:
                return True
            idx.append(slice(i0, i1))
        zz = self.centres[0][idx[0]][:, None, None]
        yy = self.centres[1][idx[1]][None, :, None]
        xx = self.centres[2][idx[2]][None, None, :]
        mask = shape.sdf(zz, yy, xx) < margin
        if (mask & self.grid[tuple(idx)]).any():
            return False
        self.grid[tuple(idx)] |= mask
        return True


@dataclass
class Phantom:
    """Density of the simulated specimen and its labelled objects.

    ``density`` is float32 (z, y, x_ext) with x_ext = x + 2 * ``margin`` (field-of-view column x is
    ``x + margin``); ``objects`` holds one dict per labelled object with 'class', 'mask' (bool, in the
    bounds of the object) and 'origin' (z, y, x of mask[0, 0, 0] in field-of-view voxels; x may be <0).
    """

    density: np.ndarray
    margin: int
    objects: list[dict[str, Any]]


def _margin_for(shape: Sequence[int], max_tilt_deg: float) -> int:
    """Columns simulated on each side of the field so every ray hitting the detector sees specimen."""
    z, _, x = shape
    th = math.radians(max_tilt_deg)
    return int(math.ceil(x / 2.0 * (1.0 / math.cos(th) - 1.0) + z / 2.0 * math.tan(th))) + 8


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], corr_px: float) -> np.ndarray:
    """Unit-variance-ish smooth random field (z, y, x) with correlation length ~corr_px, float32."""
    step = max(2.0, corr_px)
    coarse = [int(math.ceil(n / step)) + 2 for n in shape]
    noise = rng.standard_normal(coarse).astype(np.float32)
    planes = np.stack([cv2.resize(noise[k], (shape[2], shape[1]), interpolation=cv2.INTER_CUBIC)
                       for k in range(coarse[0])])
    pos = (np.arange(shape[0]) + 0.5) / shape[0] * (coarse[0] - 1)
    i0 = np.minimum(np.floor(pos).astype(int), coarse[0] - 2)
    frac = (pos - i0).astype(np.float32)
    out = np.empty(shape, np.float32)
    for k in range(shape[0]):
        out[k] = planes[i0[k]] * (1 - frac[k]) + planes[i0[k] + 1] * frac[k]
    out /= max(float(out.std()), 1e-6)
    return out


def _stamp_balls(vol: np.ndarray, centres: np.ndarray, radius: float, value: float) -> None:
    """Add antialiased balls (value inside) at integer-rounded centres (n, 3) into vol (z, y, x)."""
    if len(centres) == 0:
        return
    r = int(math.ceil(radius + 0.5))
    off = np.arange(-r, r + 1)
    oz, oy, ox = np.meshgrid(off, off, off, indexing="ij")
    weight = _inside(np.sqrt(oz ** 2 + oy ** 2 + ox ** 2).astype(np.float32), radius).ravel()
    keep = weight > 0
    oz, oy, ox, weight = oz.ravel()[keep], oy.ravel()[keep], ox.ravel()[keep], weight[keep] * value
    base = np.round(centres).astype(np.int64)
    zi = base[:, 0:1] + oz[None]
    yi = base[:, 1:2] + oy[None]
    xi = base[:, 2:3] + ox[None]
    ok = (zi >= 0) & (zi < vol.shape[0]) & (yi >= 0) & (yi < vol.shape[1]) & (xi >= 0) & (xi < vol.shape[2])
    flat = (zi * vol.shape[1] + yi) * vol.shape[2] + xi
    np.add.at(vol.reshape(-1), flat[ok], np.broadcast_to(weight[None], flat.shape)[ok].astype(np.float32))


def build_phantom(shape: Sequence[int], pixel_size_a: float, rng: np.random.Generator, n_mito: int | None = None,
                  second_class: bool = False, max_tilt_deg: float = 60.0,
                  params: SimulationParams = PARAMS) -> Phantom:
    """Simulate the specimen density for a field of view ``shape`` (z, y, x) at ``pixel_size_a`` A/px."""
    nz, ny, nx = (int(v) for v in shape)
    nm = pixel_size_a / 10.0                     # nm per voxel
    margin = _margin_for(shape, max_tilt_deg)
    ext = (nz, ny, nx + 2 * margin)
    area_um2 = ny * ext[2] * (nm / 1000.0) ** 2
    texture = _smooth_field(rng, ext, params.cytoplasm_texture_nm / nm)
    vol = params.rho_cytoplasm + params.rho_cytoplasm_texture * texture
    del texture
    occupied = np.zeros(ext, bool)
    occ = _Occupancy(ext)
    clearance = 8.0 / nm

    cell = None
    if rng.random() < params.cell_edge_prob:
        radius = _uniform(rng, params.cell_radius_nm) / nm
        direction = _unit(np.array([0.0, *rng.normal(size=2)]))
        fov_centre = np.array([nz / 2.0, ny / 2.0, margin + nx / 2.0])
        depth = rng.uniform(0.15, 0.45) * min(ny, nx)          # membrane this far from the field's edge
        reach = np.abs(direction[1]) * ny / 2 + np.abs(direction[2]) * nx / 2
        centre = fov_centre - direction * (radius - reach + depth)
        cell = _Sphere(centre, radius, _uniform(rng, params.membrane_thickness_nm) / nm, 0.0, params.rho_membrane)
        outside = _Sphere(centre, radius, 0.0, 0.0, 0.0)
        # everything beyond the plasma membrane is off limits (checked by the coarse sdf of the outside)
        zz, yy, xx = occ.centres[0][:, None, None], occ.centres[1][None, :, None], occ.centres[2][None, None, :]
        occ.grid |= -outside.sdf(zz, yy, xx) < clearance + occ.factor

    def place(make: Callable[[], _Shape], tries: int = params.placement_tries) -> _Shape | None:
        for _ in range(tries):
            shape_obj = make()
            if occ.try_place(shape_obj, clearance):
                return shape_obj
        return None

    def fov_point(z_lo: float = 0.0, z_hi: float = 1.0) -> np.ndarray:
        return np.array([rng.uniform(z_lo, z_hi) * nz, rng.uniform(0, ny), margin + rng.uniform(0, nx)])

    def ext_point() -> np.ndarray:
        return np.array([rng.uniform(0, nz), rng.uniform(0, ny), rng.uniform(0, ext[2])])

    shapes: list[_Shape] = []
    if n_mito is None:
        probs = np.asarray(params.mito_count_probs, float)
        n_mito = int(rng.choice(len(probs), p=probs / probs.sum()))
    for _ in range(int(n_mito)):
        placed = None
        scale = 1.0
        while placed is None and scale > 0.2:
            placed = place(lambda: _Mitochondrion(rng, fov_point(0.3, 0.7), nm, params, scale))
            scale *= 0.8
        if placed is None:     # crowded field: place it anyway, overlapping, rather than silently drop it
            placed = _Mitochondrion(rng, fov_point(0.3, 0.7), nm, params, 0.5)
        shapes.append(placed)

    probs = np.asarray(params.droplet_count_probs, float)
    for _ in range(int(rng.choice(len(probs), p=probs / probs.sum()))):
        radius = _uniform(rng, params.droplet_radius_nm) / nm
        rho = _uniform(rng, params.rho_droplet)
        tm = params.membrane_thickness_nm[0] / nm
        label = DROPLET_CLASS if second_class else None
        obj = place(lambda: _Sphere(fov_point(), radius, tm, rho, rho + 0.2, label))
        if obj is not None:
            shapes.append(obj)

    for _ in range(_count(rng, params.mvb_per_um2, area_um2)):
        radius = _uniform(rng, params.mvb_radius_nm) / nm
        tm = _uniform(rng, params.membrane_thickness_nm) / nm
        centre = ext_point()
        inner = []
        for _ in range(int(rng.integers(params.mvb_inner_vesicles[0], params.mvb_inner_vesicles[1] + 1))):
            r_in = _uniform(rng, params.mvb_inner_radius_nm) / nm
            if radius - r_in - 2 * tm < 1:
                continue
            offset = _unit(rng.normal(size=3)) * rng.uniform(0, radius - r_in - 2 * tm)
            inner.append((centre + offset, r_in))
        obj = place(lambda: _Sphere(centre, radius, tm, params.rho_mvb_lumen, params.rho_membrane, inner=inner), 1)
        if obj is not None:
            shapes.append(obj)

    for count_range, radius_range in ((params.large_vesicles_per_um2, params.large_vesicle_radius_nm),
                                      (params.vesicles_per_um2, params.vesicle_radius_nm)):
        for _ in range(_count(rng, count_range, area_um2)):
            radius = math.exp(_uniform(rng, (math.log(radius_range[0]), math.log(radius_range[1])))) / nm
            tm = _uniform(rng, params.membrane_thickness_nm) / nm
            lumen = _uniform(rng, params.rho_vesicle_lumen)
            obj = place(lambda: _Sphere(ext_point(), radius, tm, lumen, params.rho_membrane), 10)
            if obj is not None:
                shapes.append(obj)

    for _ in range(_count(rng, params.er_sheets_per_um2, area_um2)):
        obj = place(lambda: _ERSheet(rng, ext_point(), nm, params), 10)
        if obj is not None:
            shapes.append(obj)
    for _ in range(_count(rng, params.microtubules_per_um2, area_um2)):
        obj = place(lambda: _Microtubule(rng, ext_point(), nm, params), 10)
        if obj is not None:
            shapes.append(obj)

    objects = []
    for shape_obj in shapes:
        mask = shape_obj.render(vol, occupied)
        if shape_obj.label is not None and mask is not None:
            z0, y0, x0 = _region(ext, *shape_obj.bounds()).origin
            objects.append({"class": shape_obj.label, "mask": mask, "origin": (z0, y0, x0 - margin)})

    # ribosomes in free cytoplasm, gold beads near the slab surfaces
    volume_um3 = area_um2 * nz * nm / 1000.0
    n_rib = int(rng.poisson(_uniform(rng, params.ribosomes_per_um3) * volume_um3))
    centres = rng.uniform(0, 1, (n_rib, 3)) * np.array(ext)
    idx = np.minimum(centres.astype(np.int64), np.array(ext) - 1)
    free = ~occupied[idx[:, 0], idx[:, 1], idx[:, 2]]
    _stamp_balls(vol, centres[free], params.ribosome_radius_nm / nm, params.rho_ribosome - params.rho_cytoplasm)

    if cell is not None:
        reg = _region(ext, np.zeros(3), np.array(ext, float))
        dist = cell.sdf(reg.zz, reg.yy, reg.xx).astype(np.float32)       # > 0 outside the cell
        vol *= 1.0 - _inside(-dist)                                        # vitreous ice outside: 0
        vol += _band(dist, -cell.membrane, 0.0) * (params.rho_membrane - vol)

    n_gold = _count(rng, params.gold_per_um2, area_um2)
    gold = np.column_stack([rng.choice([1.0, nz - 2.0], n_gold), rng.uniform(0, ny, n_gold),
                            rng.uniform(0, ext[2], n_gold)])
    _stamp_balls(vol, gold, max(params.gold_radius_nm / nm, 0.7), params.rho_gold)
    return Phantom(vol.astype(np.float32, copy=False), margin, objects)


# ------------------------------------------------------------------------------------------
# imaging: projection, CTF-like transfer, noise, weighted back-projection
# ------------------------------------------------------------------------------------------
def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (fast FFT length)."""
    best = 1 << int(math.ceil(math.log2(max(n, 1))))
    p5 = 1
    while p5 < 2 * n:
        p35 = p5
        while p35 < 2 * n:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def tilt_angles(tilt_range: tuple[float, float] = (-60.0, 60.0), tilt_step: float = 1.5) -> list[float]:
    """Tilt angles in degrees from tilt_range[0] to tilt_range[1] inclusive, every tilt_step."""
    lo, hi = float(tilt_range[0]), float(tilt_range[1])
    if tilt_step <= 0 or hi < lo or max(abs(lo), abs(hi)) > 80.0:
        raise CryoError(f"bad tilt scheme: range {tilt_range}, step {tilt_step} (need step > 0, -80 <= lo <= hi <= 80)")
    n = int(math.floor((hi - lo) / tilt_step + 1e-6)) + 1
    return [round(lo + k * tilt_step, 6) for k in range(n)]


def project_tilt_series(density: np.ndarray, angles_deg: Sequence[float], width: int, y_chunk: int = 128) -> np.ndarray:
    """Line integrals of ``density`` (z, y, x_ext) for a tilt axis along y -> float32 (n_tilts, y, width).

    The detector (``width`` columns, pixel j covers [j, j+1)) is centred on the volume's x centre; the ray of
    tilt theta through detector coordinate t (from the centre) meets the point (u, w) (x, z from the volume
    centre) where t = u cos(theta) + w sin(theta). Each z plane is shifted by w tan(theta) in Fourier space
    (exact), the planes are summed, then resampled to the detector by exact area integration.
    """
    nz, ny, nxe = density.shape
    theta = np.radians(np.asarray(angles_deg, float))
    cos, tan = np.cos(theta), np.tan(theta)
    w = np.arange(nz) + 0.5 - nz / 2.0
    shifts = tan[:, None] * w[None, :]                                   # (n_tilts, z)
    n_fft = _fast_len(nxe + int(math.ceil(np.abs(shifts).max())) + 16)
    nu = np.arange(n_fft // 2 + 1) / n_fft
    phase = np.exp(-2j * np.pi * nu[:, None, None] * shifts[None]).astype(np.complex64)
    out = np.empty((len(theta), ny, width), np.float32)
    edges = np.arange(width + 1) - width / 2.0
    for y0 in range(0, ny, y_chunk):
        y1 = min(ny, y0 + y_chunk)
        spec = np.fft.rfft(density[:, y0:y1], n=n_fft, axis=2)           # (z, b, nu)
        spec = np.ascontiguousarray(spec.transpose(2, 0, 1))
        sheared = np.matmul(phase, spec)                                   # (nu, tilts, b)
        planes = np.fft.irfft(np.ascontiguousarray(sheared.transpose(1, 2, 0)), n=n_fft, axis=2)
        for i in range(len(theta)):
            out[i, y0:y1] = _area_resample(planes[i], edges / cos[i] + nxe / 2.0)
    return out


def _area_resample(rows: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Integral of piecewise-constant rows (b, n) between consecutive edge positions (in samples) -> (b, len-1)."""
    n = rows.shape[1]
    cum = np.zeros((rows.shape[0], n + 1), np.float64)
    np.cumsum(rows, axis=1, out=cum[:, 1:])
    pos = np.clip(edges, 0.0, n - 1e-6)
    i0 = np.floor(pos).astype(np.int64)
    at = cum[:, i0] + (pos - i0) * rows[:, i0]
    return np.diff(at, axis=1).astype(np.float32)


def electron_wavelength_a(voltage_kv: float) -> float:
    """Relativistic electron wavelength in A."""
    volts = voltage_kv * 1e3
    return 12.2643 / math.sqrt(volts * (1.0 + 0.978466e-6 * volts))


def ctf_transfer(shape: tuple[int, int], pixel_size_a: float, params: SimulationParams = PARAMS) -> np.ndarray:
    """Phase-flipped CTF times a Gaussian envelope on the rfft2 grid of an image (y, x) -> float32 (y, x//2+1)."""
    ky = np.fft.fftfreq(shape[0])[:, None] / pixel_size_a
    kx = np.fft.rfftfreq(shape[1])[None, :] / pixel_size_a
    k2 = ky ** 2 + kx ** 2
    chi = math.pi * electron_wavelength_a(params.voltage_kv) * params.defocus_um * 1e4 * k2
    amp = params.amplitude_contrast
    ctf = np.abs(math.sqrt(1.0 - amp ** 2) * np.sin(chi) + amp * np.cos(chi))
    return (ctf * np.exp(-params.bfactor_a2 * k2 / 4.0)).astype(np.float32)


def apply_ctf(projections: np.ndarray, pixel_size_a: float, params: SimulationParams = PARAMS) -> np.ndarray:
    """Image formation: dark density. (n, y, x) ray sums -> float32 images = -(CTF * projection).

    Each image is mirror-padded by a quarter of its size before filtering, so edges do not wrap.
    """
    _, ny, nx = projections.shape
    py, px = ny // 4, nx // 4
    transfer = ctf_transfer((ny + 2 * py, nx + 2 * px), pixel_size_a, params)
    out = np.empty_like(projections, dtype=np.float32)
    for i, img in enumerate(projections):
        padded = cv2.copyMakeBorder(img, py, py, px, px, cv2.BORDER_REFLECT)
        spec = np.fft.rfft2(padded) * transfer
        out[i] = -np.fft.irfft2(spec, s=padded.shape)[py:py + ny, px:px + nx]
    return out


def add_noise(clean: np.ndarray, snr: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise with variance = mean over images of var(image) / snr -> float32, same shape."""
    if not snr > 0:
        raise CryoError(f"snr must be > 0, got {snr}")
    signal_var = float(np.mean([img.var(dtype=np.float64) for img in clean]))
    sigma = math.sqrt(signal_var / snr)
    noisy = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    return noisy.astype(np.float32, copy=False)


def measured_snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Mean over images of var(clean) divided by the variance of (noisy - clean)."""
    signal = float(np.mean([img.var(dtype=np.float64) for img in clean]))
    noise = float(np.mean([(n - c).var(dtype=np.float64) for n, c in zip(noisy, clean)]))
    return signal / noise


def reconstruct_wbp(tilts: np.ndarray, angles_deg: Sequence[float], thickness: int, y_chunk: int = 128) -> np.ndarray:
    """Weighted back-projection of a tilt series (n, y, x) -> float32 (thickness, y, x), each y row a 2D problem.

    Rows are ramp-filtered (Hamming-apodised, edge-padded to twice their length), stretched by 1/cos(theta)
    onto the volume's x grid, and back-projected with exact Fourier shifts of w tan(theta) per z plane.
    Uses the geometry of :func:`project_tilt_series`; the output's scale is arbitrary.
    """
    n_tilts, ny, nx = tilts.shape
    theta = np.radians(np.asarray(angles_deg, float))
    cos, tan = np.cos(theta), np.tan(theta)
    n_pad = _fast_len(2 * nx)
    left = (n_pad - nx) // 2
    freq = np.fft.rfftfreq(n_pad)
    ramp = (freq * (0.54 + 0.46 * np.cos(2 * np.pi * freq))).astype(np.float32) * (math.pi / n_tilts)
    w = np.arange(thickness) + 0.5 - thickness / 2.0
    shifts = w[:, None] * tan[None, :]                                        # (z, tilts)
    n_r = _fast_len(nx + 2 * int(math.ceil(np.abs(shifts).max())) + 64)
    off = (n_r - nx) // 2
    u = np.arange(n_r) - off + 0.5 - nx / 2.0
    nu = np.arange(n_r // 2 + 1) / n_r
    phase = np.exp(2j * np.pi * nu[:, None, None] * shifts[None]).astype(np.complex64)   # (nu, z, tilts)
    vol = np.empty((thickness, ny, nx), np.float32)
    for y0 in range(0, ny, y_chunk):
        y1 = min(ny, y0 + y_chunk)
        block = tilts[:, y0:y1]
        padded = np.pad(block, ((0, 0), (0, 0), (left, n_pad - nx - left)), mode="edge")
        filtered = np.fft.irfft(np.fft.rfft(padded, axis=2) * ramp, n=n_pad, axis=2)[..., left:left + nx]
        stretched = np.empty((n_tilts, y1 - y0, n_r), np.float32)
        for i in range(n_tilts):
            pos = np.clip(u * cos[i] + nx / 2.0 - 0.5, 0.0, nx - 1.0)
            i0 = np.minimum(np.floor(pos).astype(np.int64), nx - 2)
            frac = (pos - i0).astype(np.float32)
            stretched[i] = filtered[i][:, i0] * (1 - frac) + filtered[i][:, i0 + 1] * frac
        spec = np.ascontiguousarray(np.fft.rfft(stretched, axis=2).transpose(2, 0, 1))   # (nu, tilts, b)
        summed = np.matmul(phase, spec)                                                  # (nu, z, b)
        planes = np.fft.irfft(np.ascontiguousarray(summed.transpose(1, 2, 0)), n=n_r, axis=2)
        vol[:, y0:y1] = planes[..., off:off + nx]
    return vol


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


# ------------------------------------------------------------------------------------------
# public API: one tomogram
# ------------------------------------------------------------------------------------------
def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(v) != v for v in shape):
        raise CryoError(f"shape must be three integers (z, y, x), got {tuple(shape)}")
    nz, ny, nx = (int(v) for v in shape)
    if nz < 4 or ny < 16 or nx < 16:
        raise CryoError(f"shape {tuple(shape)} too small (need z >= 4, y >= 16, x >= 16)")
    return nz, ny, nx


def generate_tomogram(shape: Sequence[int] = DEFAULT_SHAPE, pixel_size_a: float = DEFAULT_PIXEL_SIZE_A,
                      snr: float = 0.1, n_mito: int | None = None, seed: int = 0,
                      tilt_range: tuple[float, float] = (-60.0, 60.0), tilt_step: float = 1.5,
                      second_class: bool = False, *, keep_clean: bool = False, return_masks: bool = False,
                      params: SimulationParams = PARAMS) -> dict[str, Any]:
    """Simulate one tomogram with its tilt series and ground truth (deterministic for a seed).

    Returns a dict: 'tomogram' float32 (z, y, x), standardised (mean 0, std 1), density dark;
    'tilts' float32 (n_tilts, y, x), density dark, scaled by the noisy series' std; 'angles' (degrees);
    'objects' [{'class', 'box3d': [x1, y1, z1, x2, y2, z2], 'incomplete', 'cut_z'}];
    'slice_boxes' {z: [{'class', 'x1', 'y1', 'x2', 'y2'}]}; 'tilt_boxes' {tilt index: [...]};
    'pixel_size_a', 'snr'. keep_clean adds 'tilts_clean' (noise-free, same scale as 'tilts');
    return_masks adds 'masks' ([{'class', 'mask' bool (z, y, x), 'origin' (z, y, x) in field voxels}],
    the masks extend beyond the field in x where the object does).
    """
    nz, ny, nx = _check_shape(shape)
    if not pixel_size_a > 0:
        raise CryoError(f"pixel size must be > 0 A, got {pixel_size_a}")
    if not snr > 0:
        raise CryoError(f"snr must be > 0, got {snr}")
    if n_mito is not None and not 0 <= int(n_mito) <= 50:
        raise CryoError(f"n_mito must be in 0..50, got {n_mito}")
    angles = tilt_angles(tilt_range, tilt_step)
    rng = np.random.default_rng(seed)
    max_tilt = max(abs(a) for a in angles)
    phantom = build_phantom((nz, ny, nx), pixel_size_a, rng, n_mito, second_class, max_tilt, params)
    projections = project_tilt_series(phantom.density, angles, nx)
    del phantom.density
    clean = apply_ctf(projections, pixel_size_a, params)
    del projections
    noisy = add_noise(clean, snr, rng)
    scale = 1.0 / max(float(noisy.std()), 1e-12)
    noisy *= scale
    tomogram = reconstruct_wbp(noisy, angles, nz)
    tomogram -= tomogram.mean()
    tomogram /= max(float(tomogram.std()), 1e-12)

    min_area_px = params.min_area_nm2 / (pixel_size_a / 10.0) ** 2
    summaries = object_summaries(phantom.objects, (nz, ny, nx))
    kept = [(o, s) for o, s in zip(phantom.objects, summaries) if s is not None]
    labelled = [o for o, _ in kept]
    result: dict[str, Any] = {
        "tomogram": tomogram,
        "tilts": noisy,
        "angles": [float(a) for a in angles],
        "objects": [s for _, s in kept],
        "slice_boxes": slice_boxes(labelled, (nz, ny, nx), min_area_px),
        "tilt_boxes": tilt_boxes(labelled, (nz, ny, nx), angles, min_area_px),
        "pixel_size_a": float(pixel_size_a),
        "snr": float(snr),
    }
    if keep_clean:
        result["tilts_clean"] = clean * np.float32(scale)
    if return_masks:
        result["masks"] = [{"class": o["class"], "mask": o["mask"], "origin": o["origin"]} for o in labelled]
    return result


# ------------------------------------------------------------------------------------------
# images and montage
# ------------------------------------------------------------------------------------------
def robust_range(data: np.ndarray, percentiles: Sequence[float] | None = None,
                 max_samples: int = 2_000_000) -> tuple[float, float]:
    """(low, high) percentiles of ``data`` (default Config.norm_percentiles), on a strided subsample."""
    pct = tuple(Config().norm_percentiles if percentiles is None else percentiles)
    flat = data.reshape(-1)
    step = max(1, flat.size // max_samples)
    lo, hi = np.percentile(flat[::step], pct)
    return float(lo), float(max(hi, lo + 1e-12))


def to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly to 0..255 (clipped) -> uint8, same shape."""
    scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


CLASS_COLOURS = {MITO_CLASS: (40, 220, 40), DROPLET_CLASS: (0, 140, 255)}


def _draw_boxes(grey: np.ndarray, boxes: Sequence[dict[str, Any]], title: str) -> np.ndarray:
    rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    for box in boxes:
        colour = CLASS_COLOURS.get(box["class"], (0, 0, 255))
        cv2.rectangle(rgb, (int(round(box["x1"])), int(round(box["y1"]))),
                      (int(round(box["x2"])) - 1, int(round(box["y2"])) - 1), colour, 1)
    cv2.putText(rgb, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 255), 1, cv2.LINE_AA)
    return rgb


def render_montage(result: dict[str, Any], n_slices: int = 4, n_tilts: int = 3,
                   smooth_sigma: float = 1.5) -> np.ndarray:
    """BGR uint8 montage of a :func:`generate_tomogram` result with the ground-truth boxes drawn.

    Rows: ``n_slices`` tomogram slices (15-85 % of the depth); the same slices Gaussian-smoothed by
    ``smooth_sigma`` px (a preview of what a denoised slice shows; row skipped when 0); ``n_tilts`` tilt
    images from the first to the last angle. Each panel is scaled by its own robust percentiles.
    """
    tomo, tilts = result["tomogram"], result["tilts"]
    nz = tomo.shape[0]
    zs = np.linspace(nz * 0.15, nz * 0.85, n_slices).astype(int)
    ts = np.linspace(0, len(tilts) - 1, n_tilts).astype(int)
    rows = [[(tomo[z], result["slice_boxes"].get(int(z), []), f"z={z}") for z in zs]]
    if smooth_sigma > 0:
        rows.append([(cv2.GaussianBlur(tomo[z], (0, 0), smooth_sigma), result["slice_boxes"].get(int(z), []),
                      f"z={z} smoothed") for z in zs])
    rows.append([(tilts[i], result["tilt_boxes"].get(int(i), []), f"tilt {result['angles'][i]:+.1f}") for i in ts])
    panels = []
    for row in rows:
        imgs = [_draw_boxes(to_uint8(img, *robust_range(img)), boxes, title) for img, boxes, title in row]
        panels.append(np.concatenate(imgs, axis=1))
    width = max(p.shape[1] for p in panels)
    panels = [np.pad(p, ((0, 4), (0, width - p.shape[1]), (0, 0))) for p in panels]
    return np.concatenate(panels, axis=0)


# ------------------------------------------------------------------------------------------
# files (every write is atomic: temp name in the same folder, then os.replace)
# ------------------------------------------------------------------------------------------
def write_mrc(path: str, data: np.ndarray, pixel_size_a: float, image_stack: bool = False) -> None:
    """Write float32 ``data`` (z, y, x) as MRC with voxel_size = pixel_size_a (A), atomically.

    image_stack=True marks it a stack of 2D images (a tilt series) rather than a volume.
    """
    tomo_io.write_volume(path, np.asarray(data, dtype=np.float32), pixel_size_a, image_stack=image_stack)


write_png = tomo_io.write_png_atomic


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _write_split(annotations_path: str, seed: int) -> dict[str, Any]:
    """Split whole tomograms (image groups) into train/test exactly as train_frcnn.py will.

    Written with :func:`keras_frcnn_cryo.splits.assign_splits` to its default path beside the
    annotations (``annotations.split.json``), so training and measure_map reuse it. Returns
    {"path", "train": [groups], "test": [groups]}.
    """
    from . import simple_parser, splits
    records, _, _ = simple_parser.get_data(annotations_path)
    split_path = splits.default_split_path(annotations_path)
    splits.assign_splits(records, split_path, Config().test_fraction, 0.0, seed)
    with open(split_path) as fh:
        groups = json.load(fh)["groups"]
    return {"path": split_path, "train": sorted(g for g, v in groups.items() if v == "train"),
            "test": sorted(g for g, v in groups.items() if v == "test")}


def write_dataset(out_dir: str, n_tomograms: int, seed: int = 0, shape: Sequence[int] = DEFAULT_SHAPE,
                  snr_range: tuple[float, float] = (0.06, 0.12), slice_step: int = DEFAULT_SLICE_STEP,
                  second_class: bool = False, pixel_size_a: float = DEFAULT_PIXEL_SIZE_A,
                  tilt_range: tuple[float, float] = (-60.0, 60.0), tilt_step: float = 1.5,
                  progress: bool = True) -> dict[str, Any]:
    """Simulate ``n_tomograms`` tomograms and write a training set under ``out_dir``.

    Layout (paths in text files are relative to out_dir; slice numbers and tilt indices 0-based):
      tomograms/tomo_NN.mrc   float32 (z, y, x), voxel_size set; tilts/tomo_NN.mrc (+ .tlt, one angle per line)
      images/tomo_NN_zKKKK.png  8-bit slices every ``slice_step`` (robust percentiles of the whole tomogram),
                              each with a sidecar .png.json naming its tomogram and slice (tomo_io.slice_sidecar)
      annotations.txt         ``path,x1,y1,x2,y2,class``; an image without objects as ``path,,,,,``
      annotations_3d.csv      tomogram,class,x1,y1,z1,x2,y2,z2,incomplete (exclusive upper edges)
      tilt_annotations.csv    tomogram,tilt_index,angle,class,x1,y1,x2,y2 (boxes on the tilt images)
      annotations.split.json  whole tomograms to train/test (seeded; Config.test_fraction; splits.py format)
      metadata.json           per tomogram: snr, seed, objects; generator settings
    Returns a summary dict (paths and counts).
    """
    nz, ny, nx = _check_shape(shape)
    if n_tomograms < 1:
        raise CryoError(f"need at least one tomogram, got {n_tomograms}")
    if slice_step < 1:
        raise CryoError(f"slice_step must be >= 1, got {slice_step}")
    lo_snr, hi_snr = float(snr_range[0]), float(snr_range[1])
    if not 0 < lo_snr <= hi_snr:
        raise CryoError(f"bad SNR range {snr_range} (need 0 < min <= max)")
    for sub in ("tomograms", "tilts", "images"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    digits = max(2, len(str(n_tomograms - 1)))
    rng = np.random.default_rng(seed)
    snrs = rng.uniform(lo_snr, hi_snr, n_tomograms)
    ann_lines: list[str] = []
    csv3d = ["tomogram,class,x1,y1,z1,x2,y2,z2,incomplete"]
    csv_tilt = ["tomogram,tilt_index,angle,class,x1,y1,x2,y2"]
    meta: dict[str, Any] = {"generator": "keras_frcnn_cryo.synthetic", "seed": int(seed), "shape": [nz, ny, nx],
                            "pixel_size_a": float(pixel_size_a), "slice_step": int(slice_step),
                            "polarity": "density dark", "slice_numbering": "0-based", "tomograms": {}}
    names, tomo_paths, tilt_paths = [], [], []
    n_images = n_boxes = 0
    class_counts: dict[str, int] = {}
    started = time.time()
    for i in tqdm(range(n_tomograms), desc="tomograms", unit="tomogram", disable=not progress):
        name = f"tomo_{i:0{digits}d}"
        tomo_seed = int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
        result = generate_tomogram((nz, ny, nx), pixel_size_a, float(snrs[i]), None, tomo_seed, tilt_range,
                                   tilt_step, second_class)
        tomo_path = os.path.join(out_dir, "tomograms", name + ".mrc")
        tilt_path = os.path.join(out_dir, "tilts", name + ".mrc")
        write_mrc(tomo_path, result["tomogram"], pixel_size_a)
        write_mrc(tilt_path, result["tilts"], pixel_size_a, image_stack=True)
        write_bytes_atomic(os.path.join(out_dir, "tilts", name + ".tlt"),
                      "".join(f"{a:.2f}\n" for a in result["angles"]).encode())
        low, high = robust_range(result["tomogram"])
        for z in range(slice_step // 2, nz, slice_step):
            rel = f"images/{name}_z{z:04d}.png"
            write_png(os.path.join(out_dir, rel), to_uint8(result["tomogram"][z], low, high))
            tomo_io.write_sidecar(os.path.join(out_dir, rel), tomo_io.slice_sidecar(
                f"../tomograms/{name}.mrc", "tomogram", z, (nz, ny, nx), (ny, nx), pixel_size_a))
            n_images += 1
            boxes = result["slice_boxes"][z]
            if not boxes:
                ann_lines.append(f"{rel},,,,,")
            for box in boxes:
                coords = ",".join(_fmt(box[c]) for c in ("x1", "y1", "x2", "y2"))
                ann_lines.append(f"{rel},{coords},{box['class']}")
                class_counts[box["class"]] = class_counts.get(box["class"], 0) + 1
                n_boxes += 1
        for obj in result["objects"]:
            csv3d.append(",".join([name, obj["class"], *(_fmt(v) for v in obj["box3d"]), str(int(obj["incomplete"]))]))
        for k, boxes in result["tilt_boxes"].items():
            for box in boxes:
                csv_tilt.append(",".join([name, str(k), f"{result['angles'][k]:.2f}", box["class"],
                                          *(_fmt(box[c]) for c in ("x1", "y1", "x2", "y2"))]))
        meta["tomograms"][name] = {"seed": tomo_seed, "snr": float(snrs[i]), "n_tilts": len(result["angles"]),
                                   "objects": result["objects"]}
        names.append(name)
        tomo_paths.append(tomo_path)
        tilt_paths.append(tilt_path)
    paths = {
        "annotations": os.path.join(out_dir, "annotations.txt"),
        "annotations_3d": os.path.join(out_dir, "annotations_3d.csv"),
        "tilt_annotations": os.path.join(out_dir, "tilt_annotations.csv"),
        "metadata": os.path.join(out_dir, "metadata.json"),
    }
    write_bytes_atomic(paths["annotations"], ("\n".join(ann_lines) + "\n").encode())
    write_bytes_atomic(paths["annotations_3d"], ("\n".join(csv3d) + "\n").encode())
    write_bytes_atomic(paths["tilt_annotations"], ("\n".join(csv_tilt) + "\n").encode())
    split = _write_split(paths["annotations"], seed)
    paths["split"] = split["path"]
    write_bytes_atomic(paths["metadata"], (json.dumps(meta, indent=2) + "\n").encode())
    return {**paths, "out_dir": out_dir, "tomograms": tomo_paths, "tilt_series": tilt_paths, "names": names,
            "n_images": n_images, "n_boxes": n_boxes, "class_counts": class_counts,
            "n_objects": sum(len(v["objects"]) for v in meta["tomograms"].values()),
            "split_counts": {"train": len(split["train"]), "test": len(split["test"])},
            "seconds": round(time.time() - started, 1)}


# ------------------------------------------------------------------------------------------
# toy 2D data for unit tests and smoke training
# ------------------------------------------------------------------------------------------
def _toy_layout(rng: np.random.Generator, size: int, n_objects: int,
                strict: bool = True) -> list[tuple[float, float, float, float, float]]:
    """Non-overlapping ellipses (cx, cy, semi-axis a, semi-axis b, angle) fully inside a size x size image.

    strict: raise CryoError when n_objects do not fit; otherwise return those that fit (at least one).
    """
    placed: list[tuple[float, float, float, float, float]] = []
    max_semi = min(25.0, (size - 4) / 2.0)
    if n_objects and max_semi < 10.0:
        raise CryoError(f"toy image size {size} too small for 20-50 px objects")
    for _ in range(n_objects):
        for _attempt in range(200):
            a = rng.uniform(10.0, max_semi)
            b = rng.uniform(max(10.0, 0.6 * a), a)
            cx, cy = rng.uniform(a + 2, size - a - 2, 2)
            if all(math.hypot(cx - p[0], cy - p[1]) > a + p[2] + 4 for p in placed):
                placed.append((float(cx), float(cy), float(a), float(b), float(rng.uniform(0, math.pi))))
                break
        else:
            if strict or not placed:
                raise CryoError(f"cannot place {n_objects} toy objects in a {size}-px image")
            break
    return placed


def _toy_render(rng: np.random.Generator, size: int, layout: Sequence[tuple[float, float, float, float, float]],
                snr: float) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    signal = np.zeros((size, size), np.float32)
    boxes = []
    for cx, cy, a, b, ang in layout:
        c, s = math.cos(ang), math.sin(ang)
        xr = (xx - cx) * c + (yy - cy) * s
        yr = -(xx - cx) * s + (yy - cy) * c
        dist = (np.sqrt((xr / a) ** 2 + (yr / b) ** 2) - 1.0) * b       # ~px from the outer edge, < 0 inside
        dense = 0.3 * _inside(dist, -5.0) + _band(dist, -2.0, 0.0) + _band(dist, -6.0, -4.0)
        signal -= np.minimum(dense, 1.0)                                   # dark rings, slightly dark inside
        inside = dist <= 0
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        boxes.append([float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)])
    signal = cv2.GaussianBlur(signal, (0, 0), 0.7)
    sigma = math.sqrt(max(float(signal.var()), 1e-4) / snr)
    image = signal + sigma * rng.standard_normal((size, size)).astype(np.float32)
    low, high = robust_range(image)
    return to_uint8(image, low, high), np.asarray(boxes, np.float32).reshape(-1, 4)


def make_toy_image(size: int = 128, n_objects: int = 2, seed: int = 0,
                   snr: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A tiny image of dark double rings (organelle-like, 20-50 px) on noise.

    Returns (uint8 (size, size) image, float32 (n_objects, 4) boxes [x1, y1, x2, y2], exclusive edges).
    ``snr`` is the variance of the noise-free image over the noise variance.
    """
    if not snr > 0:
        raise CryoError(f"snr must be > 0, got {snr}")
    rng = np.random.default_rng(seed)
    return _toy_render(rng, int(size), _toy_layout(rng, int(size), int(n_objects)), snr)


def write_toy_dataset(out_dir: str, n_images: int, size: int = 128, seed: int = 0, snr: float = 1.0) -> str:
    """Write ``n_images`` toy PNGs (images/toy_g{group}_z{index}.png, 4 per group: one layout, shrinking
    slightly slice to slice, fresh noise), annotations.txt (paths relative to out_dir) and annotations.split.json
    (whole groups). Returns the annotations.txt path."""
    if n_images < 1:
        raise CryoError(f"need at least one image, got {n_images}")
    rng = np.random.default_rng(seed)
    lines: list[str] = []
    groups: list[str] = []
    n_groups = int(math.ceil(n_images / TOY_IMAGES_PER_GROUP))
    written = 0
    for g in range(n_groups):
        layout = _toy_layout(rng, int(size), int(rng.integers(1, 4)), strict=False)
        group = f"toy_g{g:03d}"
        groups.append(group)
        for k in range(min(TOY_IMAGES_PER_GROUP, n_images - written)):
            shrink = 1.0 - 0.04 * k
            this = [(cx, cy, a * shrink, b * shrink, ang) for cx, cy, a, b, ang in layout]
            image, boxes = _toy_render(rng, int(size), this, snr)
            rel = f"images/{group}_z{k:02d}.png"
            write_png(os.path.join(out_dir, rel), image)
            for box in boxes:
                lines.append(f"{rel},{_fmt(box[0])},{_fmt(box[1])},{_fmt(box[2])},{_fmt(box[3])},{MITO_CLASS}")
            written += 1
    path = os.path.join(out_dir, "annotations.txt")
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())
    _write_split(path, seed)
    return path


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m keras_frcnn_cryo.synthetic``."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_frcnn_cryo.synthetic",
        description="Write a synthetic cryo-ET dataset (tomograms, tilt series, slice PNGs, boxes, split).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tomograms", type=int, default=6, help="number of tomograms (toy: number of groups)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=DEFAULT_SHAPE[1], help="slice width and height (px)")
    parser.add_argument("--slices", type=int, default=DEFAULT_SHAPE[0], help="slices per tomogram (z)")
    parser.add_argument("--snr-min", type=float, default=0.06, help="lowest tilt-image SNR")
    parser.add_argument("--snr-max", type=float, default=0.12, help="highest tilt-image SNR")
    parser.add_argument("--apix", type=float, default=DEFAULT_PIXEL_SIZE_A, help="pixel size (A/px)")
    parser.add_argument("--slice-step", type=int, default=DEFAULT_SLICE_STEP, help="write every n-th slice as PNG")
    parser.add_argument("--tilt-step", type=float, default=1.5, help="tilt increment (degrees)")
    parser.add_argument("--max-tilt", type=float, default=60.0, help="tilt range is -max..+max (degrees)")
    parser.add_argument("--second-class", action="store_true", help="also label lipid droplets (lipid_droplet)")
    parser.add_argument("--toy", action="store_true",
                        help=f"write the toy 2D dataset instead ({TOY_IMAGES_PER_GROUP} images per group, --size px)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(args: argparse.Namespace) -> int:
    """``python -m keras_frcnn_cryo.synthetic``: write a synthetic dataset (or the toy one)."""
    if args.toy:
        path = write_toy_dataset(args.out, args.tomograms * TOY_IMAGES_PER_GROUP, args.size, args.seed)
        print(f"wrote {path}")
        return 0
    summary = write_dataset(args.out, args.tomograms, seed=args.seed, shape=(args.slices, args.size, args.size),
                            snr_range=(args.snr_min, args.snr_max), slice_step=args.slice_step,
                            second_class=args.second_class, pixel_size_a=args.apix,
                            tilt_range=(-args.max_tilt, args.max_tilt), tilt_step=args.tilt_step,
                            progress=not args.quiet)
    print(f"wrote {len(summary['names'])} tomograms, {summary['n_images']} images, {summary['n_boxes']} boxes "
          f"({summary['class_counts']}) to {args.out}; split {summary['split_counts']}")
    return 0


def console_main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with one ``error:`` line on bad input)."""
    from .cli import run_cli
    return run_cli(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(console_main())
