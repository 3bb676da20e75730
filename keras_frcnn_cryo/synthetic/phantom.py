"""Synthetic data: the 3D phantom, a slab of cytoplasm with mitochondria and distractors (density volumes)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from .params import DROPLET_CLASS, MITO_CLASS, PARAMS, SimulationParams


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
