"""Reading and writing images, MRC volumes and tilt series, and slices exported for labelling.

Images
    :func:`read_image` returns a 2-D grey array ``(height, width)`` in the file's own dtype
    (uint8, uint16, int16 or float32; other numeric dtypes become float32). Colour files are
    reduced to grey by luminance (0.299 R + 0.587 G + 0.114 B, OpenCV's rule). No intensity scaling
    happens here: normalisation is :mod:`keras_frcnn_cryo.preprocessing`'s job.

    :func:`image_size` returns ``(width, height)``. For PNG, JPEG, TIFF and BMP it reads only the
    file header (annotation parsers call it once per image; decoding thousands of 4k float TIFFs
    would take minutes), so a file whose pixel data are corrupt passes here and fails later in
    :func:`read_image`, with a :class:`CryoError` naming it.

File lists
    :func:`list_images` accepts a directory (its image files, natural sort: ``z2`` before ``z10``)
    or one image file.

Writing
    :func:`write_png_atomic`, :func:`write_bytes_atomic` and :func:`write_volume` write to a
    temporary name in the target directory and ``os.replace`` it, so a reader never sees a
    half-written file.

MRC volumes and tilt series (mrcfile)
    :func:`open_volume` memory-maps a tomogram or tilt series (never reads the whole file) and
    returns a :class:`Volume`: ``data`` is the file's ``(z, y, x)`` memmap, ``slice(i)`` one
    ``(y, x)`` float32 image (optionally the mean of a slab of neighbouring slices and block-mean
    binned in x and y), ``pixel_size_a`` the header's voxel size in Angstrom (or ``apix``),
    ``angles`` the tilt angles from ``NAME.tlt`` / ``NAME.rawtlt`` beside a tilt series.
    Slice and tilt indices are 0-based everywhere (IMOD's 3dmod counts from 1).

    Guard rails (CryoError naming the file): not an MRC file, a header claiming more than
    :data:`MAX_MRC_DATA_BYTES` of data, a truncated data block (checked from the file size before
    mapping), complex / packed / unknown modes, volume stacks, a one-slice file opened as a
    tomogram, a tilt file whose angle count differs from the stack, NaN/Inf voxels in a slice (when
    that slice is read). A header that mrcfile refuses but can read permissively (damaged ``MAP``
    id or machine stamp) is read with a warning naming the file.

Labelling slices
    :func:`export_slices_for_labelling` writes 8-bit PNGs of chosen slices for LabelImg, each with a
    ``PNG.json`` sidecar recording where it came from; :func:`boxes_png_to_volume` maps boxes drawn
    on such a PNG back to the volume's pixels. Command line::

        python -m keras_frcnn_cryo.tomo_io export --input VOL --out DIR (--z 10 20 | --every 5)
                                                  [--slab N] [--bin B] [--apix A] [--kind K]

Modules: ``images`` (2D files), ``mrc`` (volumes and tilt series), ``slices`` (labelling export,
sidecars, network-input channels), ``command`` (the ``export`` command line). Everything public is
importable from ``keras_frcnn_cryo.tomo_io`` itself.
"""
from __future__ import annotations

from .images import (
    evenly_spaced, IMAGE_EXTENSIONS, image_size, is_image_file, list_images, natural_sort_key, read_image,
    write_png_atomic,
)
from .mrc import (
    bin_image, is_mrc_file, MAX_MRC_DATA_BYTES, MRC_EXTENSIONS, MRC_HEADER_BYTES, open_volume,
    read_tilt_angles, TILT_FILE_EXTENSIONS, tilt_file_for, TILT_SERIES_EXTENSIONS, TOMOGRAM_EXTENSIONS,
    Volume, VOLUME_KINDS, write_volume,
)
from .slices import (
    boxes_png_to_volume, export_slices_for_labelling, image_pixel_size, image_source, ImageSource,
    INPUT_CHANNEL_MODES, read_sidecar, SIDECAR_FORMAT, sidecar_index, sidecar_source, slice_png_name,
    slice_sidecar, tomogram_of, write_sidecar,
)
from .command import build_parser, console_main, main

__all__ = [
    'evenly_spaced', 'IMAGE_EXTENSIONS', 'image_size', 'is_image_file', 'list_images', 'natural_sort_key',
    'read_image', 'write_png_atomic', 'bin_image', 'is_mrc_file', 'MAX_MRC_DATA_BYTES', 'MRC_EXTENSIONS',
    'MRC_HEADER_BYTES', 'open_volume', 'read_tilt_angles', 'TILT_FILE_EXTENSIONS', 'tilt_file_for',
    'TILT_SERIES_EXTENSIONS', 'TOMOGRAM_EXTENSIONS', 'Volume', 'VOLUME_KINDS', 'write_volume',
    'boxes_png_to_volume', 'export_slices_for_labelling', 'image_pixel_size', 'image_source', 'ImageSource',
    'INPUT_CHANNEL_MODES', 'read_sidecar', 'SIDECAR_FORMAT', 'sidecar_index', 'sidecar_source',
    'slice_png_name', 'slice_sidecar', 'tomogram_of', 'write_sidecar', 'build_parser', 'console_main', 'main',
]
