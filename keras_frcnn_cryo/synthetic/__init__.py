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

Modules: ``params`` (class names, defaults, :class:`SimulationParams`), ``phantom`` (the 3D
phantom), ``imaging`` (tilt series and reconstruction), ``groundtruth`` (boxes on slices and tilts),
``files`` (grey levels, MRC/PNG output, the split), ``dataset`` (one tomogram end to end, a montage,
a dataset on disk and ``python -m keras_frcnn_cryo.synthetic``), ``toy`` (2D toy images for tests).
Everything public is importable from ``keras_frcnn_cryo.synthetic`` itself.
"""
from __future__ import annotations

from .params import (
    DEFAULT_PIXEL_SIZE_A, DEFAULT_SHAPE, DEFAULT_SLICE_STEP, DROPLET_CLASS, MITO_CLASS, PARAMS,
    SimulationParams, TOY_IMAGES_PER_GROUP,
)
from .phantom import build_phantom, Phantom
from .imaging import (
    add_noise, apply_ctf, ctf_transfer, electron_wavelength_a, measured_snr, project_tilt_series,
    reconstruct_wbp, tilt_angles,
)
from .groundtruth import object_summaries, slice_boxes, tilt_boxes
from .files import robust_range, to_uint8, write_mrc, write_png
from .dataset import (
    build_parser, CLASS_COLOURS, console_main, generate_tomogram, main, render_preview, write_dataset,
)
from .toy import make_toy_image, write_toy_dataset

__all__ = [
    'DEFAULT_PIXEL_SIZE_A', 'DEFAULT_SHAPE', 'DEFAULT_SLICE_STEP', 'DROPLET_CLASS', 'MITO_CLASS', 'PARAMS',
    'SimulationParams', 'TOY_IMAGES_PER_GROUP', 'build_phantom', 'Phantom', 'add_noise', 'apply_ctf',
    'ctf_transfer', 'electron_wavelength_a', 'measured_snr', 'project_tilt_series', 'reconstruct_wbp',
    'tilt_angles', 'object_summaries', 'slice_boxes', 'tilt_boxes', 'robust_range', 'to_uint8', 'write_mrc',
    'write_png', 'build_parser', 'CLASS_COLOURS', 'console_main', 'generate_tomogram', 'main',
    'render_preview', 'write_dataset', 'make_toy_image', 'write_toy_dataset',
]
