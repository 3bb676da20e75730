"""Boxes from segmentation masks: one box per object, written as annotations.txt and LabelImg XML.

Command line::

    python -m keras_frcnn_cryo.masks_to_boxes --masks DIR_OR_MRC --images DIR_OR_MRC --out DIR
        [--min-size PX] [--class-name mitochondrion] [--instance | --binary]

Inputs (pairs of mask and image)
    * folders (or single files) of PNG/TIF masks and images: a mask pairs with the image of the
      same file-name stem (``masks/slice_0003.png`` <-> ``images/slice_0003.tif``); a mask without
      its image is an error, an image without a mask is left out with a warning;
    * an MRC segmentation volume with an MRC image volume of the same ``(z, y, x)`` shape: slice z
      pairs with slice z, and the image slices are exported to ``DIR`` as 8-bit PNGs (with ``.json``
      sidecars, :func:`keras_frcnn_cryo.tomo_io.export_slices_for_labelling`) so the boxes refer to
      real files; their group (the tomogram, for splits) is the volume's file stem;
    * an MRC segmentation volume with a folder of images: slice z pairs with the z-th image in
      natural file-name order (the counts must match).

Objects
    A mask pixel is foreground when it is non-zero (float masks must hold whole numbers; threshold
    probability maps first; colour masks are reduced to grey by luminance). In a *binary* mask each
    8-connected component (``cv2.connectedComponentsWithStats``) is one object. In an *instance*
    mask (``--instance``, or automatically when a mask holds more than 2 distinct values) each
    label value is one object, so touching objects with different labels stay apart; a label whose
    pixels fall apart into several 8-connected pieces in a slice (a curved organelle cut by the
    plane, a stray pixel) gives one box per piece, as an annotator drawing on that slice would.
    With a single label value both readings agree. Objects whose area (pixel count) is below
    ``--min-size`` are dropped.

Boxes follow the package convention: 0-based pixels, x2/y2 exclusive (a component covering
columns 3..7 gives x1 = 3, x2 = 8).

Output in ``DIR``
    ``annotations.txt`` (keras-frcnn simple format, ``path,x1,y1,x2,y2,class[,group]``, paths
    relative to ``DIR``, an image without objects as ``path,,,,,``) and one LabelImg XML per image,
    ``DIR/<image stem>.xml`` (its ``<path>`` is the image's absolute path: in LabelImg, open the
    image folder and set the save folder to ``DIR``). Every input is checked and every box computed
    before anything is written; annotations.txt is written last, atomically.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

import cv2
import numpy as np

from .atomic import check_output_dir, write_bytes_atomic
from .config import Config
from .errors import CryoError
from .pascal_voc_parser import write_labelimg_xml
from .simple_parser import check_class_name
from .tomo_io import (
    export_slices_for_labelling,
    image_size,
    is_mrc_file,
    list_images,
    natural_sort_key,
    open_volume,
    read_image,
)

ANNOTATIONS_NAME = "annotations.txt"
DEFAULT_CLASS_NAME = "mitochondrion"
CONNECTIVITY = 8


# ------------------------------------------------------------------------------------------
# one mask -> boxes
# ------------------------------------------------------------------------------------------
def _check_mask(mask: np.ndarray, source: str) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 2 or array.size == 0:
        raise CryoError(f"mask must be a non-empty 2-D image, got shape {array.shape}", source)
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise CryoError("mask holds NaN/Inf values", source)
        fractional = array[array != np.floor(array)]
        if fractional.size:
            raise CryoError(
                f"mask holds non-integer values (e.g. {float(fractional[0]):g}): masks must hold labels; "
                "threshold probability maps first", source,
            )
    elif array.dtype.kind not in "iu":
        raise CryoError(f"unsupported mask dtype {array.dtype}", source)
    return array


def is_instance_mask(mask: np.ndarray) -> bool:
    """True when ``mask`` holds more than 2 distinct values (background and more than one label)."""
    return np.unique(np.asarray(mask)).size > 2


def _components(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a (H, W) 0/1 uint8 array: boxes (N, 4) int64 (exclusive), areas (N,)."""
    _count, _labels, stats, _centroids = cv2.connectedComponentsWithStats(binary, connectivity=CONNECTIVITY)
    stats = stats[1:].astype(np.int64)  # row 0 is the background
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    boxes = np.stack([left, top, left + stats[:, cv2.CC_STAT_WIDTH], top + stats[:, cv2.CC_STAT_HEIGHT]], axis=1)
    return boxes.reshape(-1, 4), stats[:, cv2.CC_STAT_AREA]


def mask_components(mask: np.ndarray, instance: bool | None = None,
                    source: str = "<mask>") -> tuple[np.ndarray, np.ndarray]:
    """Objects of a ``(H, W)`` label or binary mask (rules in the module docstring).

    ``instance``: True (each label value separately), False (all non-zero pixels together) or None
    (instance when :func:`is_instance_mask`). Returns ``(boxes (N, 4) float64 [x1, y1, x2, y2]
    0-based with exclusive x2/y2, areas (N,) int64 pixel counts)``: binary objects in raster order
    of their first pixel, instance objects by label value, then raster order.
    """
    array = _check_mask(mask, source)
    if instance is None:
        instance = is_instance_mask(array)
    if not instance:
        boxes, areas = _components((array != 0).astype(np.uint8))
        return boxes.astype(np.float64), areas
    rows, cols = np.nonzero(array)
    if rows.size == 0:
        return np.zeros((0, 4), np.float64), np.zeros(0, np.int64)
    values = array[rows, cols]
    order = np.argsort(values, kind="stable")
    values, rows, cols = values[order], rows[order], cols[order]
    labels, starts = np.unique(values, return_index=True)
    ends = np.append(starts[1:], values.size)
    all_boxes, all_areas = [], []
    for label, start, end in zip(labels, starts, ends):
        top, bottom = int(rows[start:end].min()), int(rows[start:end].max()) + 1
        left, right = int(cols[start:end].min()), int(cols[start:end].max()) + 1
        crop = (array[top:bottom, left:right] == label).astype(np.uint8)
        boxes, areas = _components(crop)
        all_boxes.append(boxes + np.array([left, top, left, top], np.int64))
        all_areas.append(areas)
    return np.concatenate(all_boxes).astype(np.float64), np.concatenate(all_areas)


def boxes_from_mask(mask: np.ndarray, min_size: int = 0, instance: bool | None = None) -> np.ndarray:
    """Boxes ``(N, 4)`` float64 of the objects of ``mask`` whose area is at least ``min_size`` pixels."""
    boxes, areas = mask_components(mask, instance)
    return boxes[areas >= min_size]


# ------------------------------------------------------------------------------------------
# many masks -> records
# ------------------------------------------------------------------------------------------
def _record(image_path: str, width: int, height: int, boxes: np.ndarray, areas: np.ndarray, min_size: int,
            class_name: str, group: str, mask_source: str) -> dict:
    keep = areas >= min_size
    return {
        "filepath": os.path.abspath(image_path),
        "width": int(width),
        "height": int(height),
        "group": group,
        "bboxes": [
            {"class": class_name, "x1": float(x1), "y1": float(y1), "x2": float(x2), "y2": float(y2),
             "difficult": False}
            for x1, y1, x2, y2 in boxes[keep]
        ],
        "mask": mask_source,
        "n_dropped": int(np.count_nonzero(~keep)),
    }


def _by_stem(paths: list[str], folder: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in found:
            raise CryoError(f"two files share the name stem {stem!r}: {os.path.basename(found[stem])} and "
                            f"{os.path.basename(path)}", folder)
        found[stem] = path
    return found


def _pair_files(masks: str, images: str) -> list[tuple[str, str]]:
    mask_files, image_files = list_images(masks), list_images(images)
    if os.path.isfile(masks) and os.path.isfile(images):
        return [(mask_files[0], image_files[0])]
    image_by_stem = _by_stem(image_files, images)
    mask_by_stem = _by_stem(mask_files, masks)
    pairs = []
    for stem, mask_path in mask_by_stem.items():
        if stem not in image_by_stem:
            raise CryoError(f"mask has no image of the same name stem ({stem}.*) in {images}", mask_path)
        pairs.append((mask_path, image_by_stem[stem]))
    unmasked = sorted(set(image_by_stem) - set(mask_by_stem), key=natural_sort_key)
    if unmasked:
        warnings.warn(f"{images}: {len(unmasked)} image(s) without a mask left out (e.g. {unmasked[0]})",
                      stacklevel=3)
    return sorted(pairs, key=lambda pair: natural_sort_key(os.path.basename(pair[1])))


def _shape_error(mask_source: str, mask_shape: tuple, image_path: str, image_shape: tuple) -> CryoError:
    return CryoError(
        f"mask is {mask_shape[1]} x {mask_shape[0]} px (width x height) but its image {image_path} is "
        f"{image_shape[1]} x {image_shape[0]} px", mask_source,
    )


def _records_from_files(masks: str, images: str, min_size: int, class_name: str,
                        instance: bool | None) -> list[dict]:
    records = []
    for mask_path, image_path in _pair_files(masks, images):
        width, height = image_size(image_path)
        mask = read_image(mask_path)
        if mask.shape != (height, width):
            raise _shape_error(mask_path, mask.shape, image_path, (height, width))
        boxes, areas = mask_components(mask, instance, mask_path)
        records.append(_record(image_path, width, height, boxes, areas, min_size, class_name, "", mask_path))
    return records


def _records_from_volume(masks: str, images: str, out_dir: str, min_size: int, class_name: str,
                         instance: bool | None, percentiles: tuple[float, float]) -> list[dict]:
    if is_mrc_file(images) and os.path.isfile(images):
        with open_volume(images) as image_volume:
            kind, image_shape = image_volume.kind, tuple(image_volume.data.shape)
        image_files = None
    else:
        kind, image_files = "tomogram", list_images(images)
    per_slice = []
    with open_volume(masks, kind=kind) as mask_volume:
        mask_shape = tuple(mask_volume.data.shape)
        if image_files is None and mask_shape != image_shape:
            raise CryoError(f"segmentation is {mask_shape} (z, y, x) but the image volume {images} is "
                            f"{image_shape}", masks)
        if image_files is not None and len(image_files) != mask_shape[0]:
            raise CryoError(f"segmentation has {mask_shape[0]} slices but {images} holds {len(image_files)} "
                            "images (slice z pairs with the z-th image in natural name order)", masks)
        for z in range(mask_shape[0]):
            source = f"{mask_volume.path} slice {z} (0-based)"
            if image_files is not None:
                width, height = image_size(image_files[z])
                if mask_shape[1:] != (height, width):
                    raise _shape_error(source, mask_shape[1:], image_files[z], (height, width))
            per_slice.append((source,) + mask_components(np.asarray(mask_volume.data[z]), instance, source))
    if image_files is None:  # every input checked: now export the image slices the boxes refer to
        image_files = export_slices_for_labelling(images, out_dir, range(mask_shape[0]), kind=kind,
                                                  percentiles=percentiles)
        group = os.path.splitext(os.path.basename(images))[0]
    else:
        group = ""
    return [
        _record(image_path, mask_shape[2], mask_shape[1], boxes, areas, min_size, class_name, group, source)
        for image_path, (source, boxes, areas) in zip(image_files, per_slice)
    ]


def masks_to_records(
    masks: str,
    images: str,
    out_dir: str,
    min_size: int = 0,
    class_name: str = DEFAULT_CLASS_NAME,
    instance: bool | None = None,
    percentiles: tuple[float, float] = Config.norm_percentiles,
) -> list[dict]:
    """Boxes of every mask as records ``{'filepath' (absolute), 'width', 'height', 'group',
    'bboxes': [{'class', 'x1', 'y1', 'x2', 'y2', 'difficult': False}], 'mask' (source),
    'n_dropped' (objects below min_size)}``, in image order.

    Writes nothing except, for an MRC image volume, the exported slice PNGs (and sidecars) in
    ``out_dir``. ``instance``: True, False or None (automatic per mask). Raises CryoError for a
    mask without image, shapes that differ (naming both files), empty folders, a bad class name.
    """
    masks, images, out_dir = str(masks), str(images), str(out_dir)
    class_name = check_class_name(str(class_name), "--class-name", None)
    if "," in class_name:
        raise CryoError(f"class name {class_name!r} contains a comma (the annotation format's separator)")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise CryoError(f"--min-size must be a whole number of pixels >= 0, got {min_size!r}")
    if is_mrc_file(masks) and os.path.isfile(masks):
        return _records_from_volume(masks, images, out_dir, int(min_size), class_name, instance, percentiles)
    if is_mrc_file(images) and os.path.isfile(images):
        raise CryoError("the images are an MRC volume, so the masks must be an MRC segmentation of the same "
                        "shape", masks)
    return _records_from_files(masks, images, int(min_size), class_name, instance)


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------
def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_annotations(records: list[dict], out_dir: str, source: str = "") -> str:
    """Write one LabelImg XML per record (``out_dir/<image stem>.xml``), then ``out_dir/annotations.txt``
    (atomically, last); return the annotations.txt path. Paths in it are relative to ``out_dir``."""
    out_dir = os.path.abspath(check_output_dir(str(out_dir)))
    if not records:
        raise CryoError("no images to annotate", source or out_dir)
    lines = [
        f"# made by keras_frcnn_cryo.masks_to_boxes{' from ' + source if source else ''}",
        "# path,x1,y1,x2,y2,class[,group]: 0-based pixels, x2/y2 exclusive; slice numbers in names are 0-based",
    ]
    xml_names: dict[str, str] = {}
    for record in records:
        relative = os.path.relpath(record["filepath"], out_dir)
        if "," in relative:
            raise CryoError("file path contains a comma, which the annotation format cannot hold", record["filepath"])
        stem = os.path.splitext(os.path.basename(record["filepath"]))[0]
        if stem in xml_names:
            raise CryoError(f"two images share the name stem {stem!r} ({xml_names[stem]}): their XML files "
                            "would collide", record["filepath"])
        xml_names[stem] = record["filepath"]
    for record in records:
        relative = os.path.relpath(record["filepath"], out_dir)
        group = f",{record['group']}" if record.get("group") else ""
        boxes = np.array([[box["x1"], box["y1"], box["x2"], box["y2"]] for box in record["bboxes"]],
                         np.float64).reshape(-1, 4)
        stem = os.path.splitext(os.path.basename(record["filepath"]))[0]
        write_labelimg_xml(os.path.join(out_dir, stem + ".xml"), record["filepath"], record["width"],
                           record["height"], boxes, [box["class"] for box in record["bboxes"]])
        if not record["bboxes"]:
            lines.append(f"{relative},,,,,{group}")
        for box in record["bboxes"]:
            coords = ",".join(_number(box[key]) for key in ("x1", "y1", "x2", "y2"))
            lines.append(f"{relative},{coords},{box['class']}{group}")
    path = os.path.join(out_dir, ANNOTATIONS_NAME)
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m keras_frcnn_cryo.masks_to_boxes``."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_frcnn_cryo.masks_to_boxes",
        description="Turn segmentation masks into boxes: annotations.txt (simple format) and LabelImg XML.",
    )
    parser.add_argument("--masks", required=True, help="folder (or file) of PNG/TIF masks, or an MRC segmentation")
    parser.add_argument("--images", required=True, help="folder (or file) of images, or an MRC volume")
    parser.add_argument("--out", required=True, help="output folder (annotations.txt, XMLs, exported PNGs)")
    parser.add_argument("--min-size", type=int, default=0, metavar="PX",
                        help="drop objects with fewer pixels than this (default 0: keep all)")
    parser.add_argument("--class-name", default=DEFAULT_CLASS_NAME, help=f"class of every box ({DEFAULT_CLASS_NAME})")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--instance", dest="instance", action="store_const", const=True, default=None,
                      help="masks hold instance labels (default: automatic, more than 2 values)")
    mode.add_argument("--binary", dest="instance", action="store_const", const=False,
                      help="every non-zero pixel is foreground, objects are connected components")
    return parser


def main(args: argparse.Namespace) -> int:
    """``python -m keras_frcnn_cryo.masks_to_boxes``: masks -> annotations.txt and LabelImg XML."""
    records = masks_to_records(args.masks, args.images, args.out, min_size=args.min_size,
                               class_name=args.class_name, instance=args.instance)
    path = write_annotations(records, args.out, source=args.masks)
    n_boxes = sum(len(record["bboxes"]) for record in records)
    n_empty = sum(not record["bboxes"] for record in records)
    n_dropped = sum(record["n_dropped"] for record in records)
    print(f"{len(records)} image(s), {n_boxes} box(es), {n_empty} image(s) without objects, "
          f"{n_dropped} object(s) below --min-size {args.min_size} dropped -> {path}")
    return 0


def console_main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with one ``error:`` line on bad input)."""
    from .cli import run_cli
    return run_cli(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(console_main())
