"""Pascal VOC / LabelImg XML annotations (read with a hardened lxml parser, written atomically).

Accepted layouts for :func:`get_data`'s ``input_path``:

(a) a directory of LabelImg XML files beside their images (or one XML file): the image is
    ``<filename>`` next to the XML, else ``<path>`` (absolute, or relative to the XML's directory);
    a ``<filename>`` without extension is tried with each image extension;
(b) a VOC2007/VOC2012 folder: ``Annotations/*.xml``, images ``JPEGImages/<filename>``; when
    ``ImageSets/Main/trainval.txt`` or ``test.txt`` exists, ``record['imageset']`` is ``'trainval'``
    or ``'test'`` (images listed in neither are ``'trainval'``);
(c) a VOCdevkit folder holding VOC2007 and/or VOC2012 (every sub-folder with ``Annotations/``).

Coordinates. VOC and LabelImg boxes are 1-based inclusive pixel indices: a box covering pixels
1..10 (1-based) has ``xmin=1, xmax=10``. Ours are 0-based with exclusive far edges, so on reading

    x1 = xmin - 1,   y1 = ymin - 1,   x2 = xmax,   y2 = ymax      (width = xmax - xmin + 1)

and :func:`write_labelimg_xml` applies the inverse (``xmin = x1 + 1``, ``xmax = x2``), rounding to
integers only at write time (round half up, see there). Integer boxes round-trip exactly.

Every ``<object>`` is read (the paper's converter kept only the last). ``<difficult>`` (0/1),
``<truncated>`` and ``<pose>`` may be missing. Validation follows the simple parser (CryoError
naming the XML file and line): negative coordinate, empty box, box beyond the image by more than
the 1-px tolerance (clipped within it; so LabelImg-style ``xmin=0`` becomes x1 = 0), missing image,
reserved class ``"bg"``, ``<size>`` disagreeing with the image, malformed or empty XML.
An XML without ``<object>`` is a valid image with no objects.

Security: the parser never resolves entities, loads DTDs or touches the network, and a document
declaring entities is refused outright (no billion-laughs expansion, no external-entity file reads).
"""
from __future__ import annotations

import math
import os

import numpy as np
from lxml import etree

from .atomic import write_bytes_atomic
from .errors import CryoError, parse_float
from .simple_parser import check_box, check_class_name, summarize
from .tomo_io import IMAGE_EXTENSIONS, image_size, natural_sort_key

_COORD_TAGS = ("xmin", "ymin", "xmax", "ymax")
_IMAGESETS = ("trainval", "test")


# ------------------------------------------------------------------------------------------
# hardened XML
# ------------------------------------------------------------------------------------------
def make_safe_parser() -> etree.XMLParser:
    """An lxml parser that resolves no entities, loads no DTD, uses no network, caps tree size."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=True,
    )


def _declares_entities(root: etree._Element) -> bool:
    docinfo = root.getroottree().docinfo
    for dtd in (docinfo.internalDTD, docinfo.externalDTD):
        if dtd is not None and any(True for _ in dtd.iterentities()):
            return True
    return any(isinstance(node, etree._Entity) for node in root.iter())


def read_xml(path: str) -> etree._Element:
    """Parse an XML file safely and return its root element.

    Raises CryoError naming the file when it is missing, empty, malformed, or declares entities.
    """
    if not os.path.isfile(path):
        raise CryoError("XML file not found", path)
    with open(path, "rb") as fh:
        data = fh.read()
    if not data.strip():
        raise CryoError("XML file is empty", path)
    if b"<!ENTITY" in data:  # refused before parsing: no expansion work at all (billion laughs)
        raise CryoError("XML declares entities (DTD); refused for safety", path)
    try:
        root = etree.fromstring(data, make_safe_parser())
    except etree.XMLSyntaxError as exc:
        raise CryoError(f"malformed XML: {exc}", path) from None
    if _declares_entities(root):
        raise CryoError("XML declares or uses entities (DTD); refused for safety", path)
    return root


def _text(element: etree._Element, tag: str) -> str:
    child = element.find(tag)
    if child is None or child.text is None:
        return ""
    return child.text.strip()


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------
def _find_image(root: etree._Element, xml_path: str, image_dir: str | None) -> str:
    """Image of an annotation: ``<filename>`` in ``image_dir`` (default: the XML's dir), else ``<path>``."""
    xml_dir = os.path.dirname(os.path.abspath(xml_path))
    filename = _text(root, "filename")
    candidates: list[str] = []
    if filename:
        folder = image_dir or xml_dir
        candidates.append(os.path.join(folder, filename))
        if not os.path.splitext(filename)[1]:
            candidates += [os.path.join(folder, filename + ext) for ext in IMAGE_EXTENSIONS]
    labelimg_path = _text(root, "path")
    if labelimg_path:
        candidates.append(os.path.join(xml_dir, os.path.expanduser(labelimg_path)))
    if image_dir is not None and not filename:
        stem = os.path.splitext(os.path.basename(xml_path))[0]
        candidates += [os.path.join(image_dir, stem + ext) for ext in IMAGE_EXTENSIONS]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.normpath(os.path.abspath(candidate))
    if not candidates:
        raise CryoError("neither <filename> nor <path> names the image", xml_path)
    raise CryoError(f"image file not found (looked for {', '.join(candidates)})", xml_path)


def _parse_flag(text: str, tag: str, xml_path: str, line: int | None) -> bool:
    if text in ("", "0", "false", "False"):
        return False
    if text in ("1", "true", "True"):
        return True
    raise CryoError(f"<{tag}> must be 0 or 1, got {text!r}", xml_path, line)


def parse_annotation(xml_path: str, image_dir: str | None = None) -> dict:
    """One XML file -> record ``{'filepath', 'width', 'height', 'bboxes', 'group': ''}``.

    Boxes are converted to our 0-based, exclusive-edge convention (x1 = xmin - 1, x2 = xmax).
    ``image_dir``: where ``<filename>`` lives (VOC: JPEGImages); default the XML's directory.
    """
    root = read_xml(xml_path)
    if root.tag != "annotation":
        raise CryoError(f"root element is <{root.tag}>, expected <annotation>", xml_path, root.sourceline)
    image_path = _find_image(root, xml_path, image_dir)
    try:
        width, height = image_size(image_path)
    except CryoError as exc:
        raise CryoError(f"unreadable image ({exc})", xml_path) from None
    size = root.find("size")
    if size is not None:
        declared = (_text(size, "width"), _text(size, "height"))
        if all(declared) and declared != ("0", "0"):
            try:
                declared_wh = (float(declared[0]), float(declared[1]))
            except ValueError:
                raise CryoError(f"<size> is not numeric: {declared}", xml_path, size.sourceline) from None
            if declared_wh != (float(width), float(height)):
                raise CryoError(
                    f"<size> says {declared[0]}x{declared[1]} but {image_path} is {width}x{height}",
                    xml_path, size.sourceline,
                )

    bboxes: list[dict] = []
    for obj in root.iter("object"):
        line = obj.sourceline
        class_name = check_class_name(_text(obj, "name"), xml_path, line)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise CryoError(f"object {class_name!r} has no <bndbox>", xml_path, line)
        values = []
        for tag in _COORD_TAGS:
            text = _text(bndbox, tag)
            value = parse_float(text, f"<{tag}>", xml_path, line)
            if value < 0:
                raise CryoError(f"negative coordinate <{tag}>{text}</{tag}>", xml_path, line)
            values.append(value)
        xmin, ymin, xmax, ymax = values
        x1, y1, x2, y2 = check_box(xmin - 1.0, ymin - 1.0, xmax, ymax, width, height, xml_path, line)
        difficult = _parse_flag(_text(obj, "difficult"), "difficult", xml_path, line)
        bboxes.append({"class": class_name, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "difficult": difficult})
    return {"filepath": image_path, "width": width, "height": height, "bboxes": bboxes, "group": ""}


def _read_imageset(path: str) -> set[str]:
    ids = set()
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            parts = raw.split()
            if parts:
                ids.add(parts[0])
    return ids


def _xml_files(directory: str) -> list[str]:
    names = [n for n in os.listdir(directory) if n.lower().endswith(".xml") and not n.startswith(".")]
    return [os.path.join(directory, n) for n in sorted(names, key=natural_sort_key)]


def _parse_voc_folder(voc_dir: str) -> list[dict]:
    """Layout (b): Annotations/, JPEGImages/, optional ImageSets/Main/{trainval,test}.txt."""
    annotations = os.path.join(voc_dir, "Annotations")
    image_dir = os.path.join(voc_dir, "JPEGImages")
    sets: dict[str, set[str]] = {}
    for name in _IMAGESETS:
        set_file = os.path.join(voc_dir, "ImageSets", "Main", name + ".txt")
        if os.path.isfile(set_file):
            sets[name] = _read_imageset(set_file)
    records = []
    for xml_path in _xml_files(annotations):
        record = parse_annotation(xml_path, image_dir if os.path.isdir(image_dir) else None)
        if sets:
            image_id = os.path.splitext(os.path.basename(xml_path))[0]
            record["imageset"] = "test" if image_id in sets.get("test", set()) else "trainval"
        records.append(record)
    return records


def get_data(input_path: str) -> tuple[list[dict], dict[str, int], dict[str, int]]:
    """Parse LabelImg / VOC annotations (layouts (a), (b), (c) of the module docstring).

    Returns ``(records, classes_count, class_mapping)`` like :func:`simple_parser.get_data`;
    VOC folders with ImageSets add ``record['imageset']`` in {'trainval', 'test'}.
    """
    source = str(input_path)
    if os.path.isfile(source):
        if not source.lower().endswith(".xml"):
            raise CryoError("not an XML file (give a directory of XMLs or a VOC folder)", source)
        return summarize([parse_annotation(source)], source)
    if not os.path.isdir(source):
        raise CryoError("annotation directory not found", source)
    if os.path.isdir(os.path.join(source, "Annotations")):
        records = _parse_voc_folder(source)
    else:
        voc_dirs = [
            os.path.join(source, name) for name in sorted(os.listdir(source), key=natural_sort_key)
            if os.path.isdir(os.path.join(source, name, "Annotations"))
        ]
        if voc_dirs:
            records = [record for voc_dir in voc_dirs for record in _parse_voc_folder(voc_dir)]
        else:
            xml_files = _xml_files(source)
            if not xml_files:
                raise CryoError("no XML files, Annotations/ folder or VOC20xx folders here", source)
            records = [parse_annotation(xml_path) for xml_path in xml_files]
    return summarize(records, source)


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------
def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def _sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, tag)
    if text is not None:
        child.text = text
    return child


def write_labelimg_xml(
    xml_path: str,
    image_path: str,
    width: int,
    height: int,
    boxes: np.ndarray,
    class_names: list[str],
    scores: np.ndarray | None = None,
    depth: int = 1,
) -> None:
    """Write a LabelImg-compatible VOC XML (atomically) for one image.

    boxes: (N, 4) float, ours (0-based, exclusive x2/y2, original image pixels); class_names: N
    names; scores: optional (N,) floats, written as an extra ``<score>`` per object (LabelImg
    ignores it). Each box becomes ``xmin = round(x1) + 1, ymin = round(y1) + 1, xmax = round(x2),
    ymax = round(y2)`` with round half up, clipped to ``1..width`` / ``1..height``, and ``xmax``
    raised to ``xmin`` when a sub-pixel box would round to nothing. ``<truncated>`` is 1 for boxes
    touching the image border (as LabelImg does). Raises ValueError on inconsistent arguments.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
    if len(class_names) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(class_names)} class names")
    if scores is not None and len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    if not np.isfinite(boxes).all():
        raise ValueError("boxes hold NaN/Inf")

    abs_image = os.path.abspath(str(image_path))
    root = etree.Element("annotation")
    _sub(root, "folder", os.path.basename(os.path.dirname(abs_image)))
    _sub(root, "filename", os.path.basename(abs_image))
    _sub(root, "path", abs_image)
    _sub(_sub(root, "source"), "database", "Unknown")
    size = _sub(root, "size")
    _sub(size, "width", str(int(width)))
    _sub(size, "height", str(int(height)))
    _sub(size, "depth", str(int(depth)))
    _sub(root, "segmented", "0")
    for index, (box, name) in enumerate(zip(boxes, class_names)):
        xmin = min(max(_round_half_up(box[0]) + 1, 1), int(width))
        ymin = min(max(_round_half_up(box[1]) + 1, 1), int(height))
        xmax = max(min(_round_half_up(box[2]), int(width)), xmin)
        ymax = max(min(_round_half_up(box[3]), int(height)), ymin)
        truncated = xmin == 1 or ymin == 1 or xmax == int(width) or ymax == int(height)
        obj = _sub(root, "object")
        _sub(obj, "name", str(name))
        _sub(obj, "pose", "Unspecified")
        _sub(obj, "truncated", "1" if truncated else "0")
        _sub(obj, "difficult", "0")
        bndbox = _sub(obj, "bndbox")
        for tag, value in zip(_COORD_TAGS, (xmin, ymin, xmax, ymax)):
            _sub(bndbox, tag, str(value))
        if scores is not None:
            _sub(obj, "score", f"{float(scores[index]):.6f}")
    write_bytes_atomic(xml_path, etree.tostring(root, pretty_print=True, encoding="utf-8"))
