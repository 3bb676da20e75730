"""Synthetic data: imaging, i.e. tilt projection, CTF-like transfer, noise at a target SNR and weighted
back-projection."""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from ..errors import CryoError
from .params import PARAMS, SimulationParams


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
