"""Tests for keras_frcnn_cryo.pascal_voc_parser."""
from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest
from lxml import etree

from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.pascal_voc_parser import get_data, make_safe_parser, write_labelimg_xml


def _png(path, width=50, height=40):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((height, width), np.uint8))


def _obj(name, xmin, ymin, xmax, ymax, difficult=None, extra=""):
    diff = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    return (f"<object><name>{name}</name>{diff}{extra}<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def _xml(path, filename, objects=(), size=(50, 40), extra=""):
    size_xml = "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>1</depth></size>"
    path.write_text(f"<annotation><filename>{filename}</filename>{extra}{size_xml}{''.join(objects)}</annotation>")
    return str(path)


def test_labelimg_dir_reads_every_object_and_converts_to_zero_based(tmp_path):
    _png(tmp_path / "t1_z001.png")
    _xml(tmp_path / "t1_z001.xml", "t1_z001.png", [
        _obj("mito", 1, 1, 10, 20, difficult=0, extra="<pose>Unspecified</pose><truncated>1</truncated>"),
        _obj("mito", 11, 5, 30, 25),                 # no difficult / truncated / pose
        _obj("vesicle", 40, 30, 50, 40, difficult=1),
    ])
    records, counts, mapping = get_data(str(tmp_path))
    assert len(records) == 1
    record = records[0]
    assert record["filepath"] == str(tmp_path / "t1_z001.png")
    assert (record["width"], record["height"]) == (50, 40)
    boxes = [(b["class"], b["x1"], b["y1"], b["x2"], b["y2"], b["difficult"]) for b in record["bboxes"]]
    assert boxes == [
        ("mito", 0.0, 0.0, 10.0, 20.0, False),        # 1-based inclusive 1..10 -> [0, 10)
        ("mito", 10.0, 4.0, 30.0, 25.0, False),
        ("vesicle", 39.0, 29.0, 50.0, 40.0, True),
    ]
    assert mapping == {"mito": 0, "vesicle": 1, "bg": 2}
    assert counts == {"mito": 2, "vesicle": 1, "bg": 0}


def test_labelimg_path_fallback_no_objects_and_zero_coordinate(tmp_path):
    _png(tmp_path / "images" / "real.png")
    xml_dir = tmp_path / "xml"
    xml_dir.mkdir()
    # <filename> not beside the XML: <path> (relative to the XML) is used
    _xml(xml_dir / "a.xml", "real.png", extra="<path>../images/real.png</path>")
    _xml(xml_dir / "b.xml", "gone.png", [_obj("mito", 0, 3, 5, 8)], extra=f"<path>{tmp_path / 'images' / 'real.png'}</path>")
    records, counts, _ = get_data(str(xml_dir))
    assert [r["filepath"] for r in records] == [str(tmp_path / "images" / "real.png")] * 2
    assert records[0]["bboxes"] == []
    box = records[1]["bboxes"][0]
    assert (box["x1"], box["y1"], box["x2"], box["y2"]) == (0.0, 2.0, 5.0, 8.0)  # xmin=0: clipped, not an error


def _voc(root, year, ids, trainval, test):
    voc = root / f"VOC{year}"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    for image_id in ids:
        _png(voc / "JPEGImages" / f"{image_id}.png")
        _xml(voc / "Annotations" / f"{image_id}.xml", f"{image_id}.png", [_obj("mito", 2, 2, 9, 9)])
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(trainval) + "\n")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(test) + "\n")
    return voc


def test_voc_folder_imagesets(tmp_path):
    voc = _voc(tmp_path, 2007, ["000001", "000002", "000003"], ["000001", "000003"], ["000002"])
    records, counts, _ = get_data(str(voc))
    sets = {os.path.basename(r["filepath"]): r["imageset"] for r in records}
    assert sets == {"000001.png": "trainval", "000002.png": "test", "000003.png": "trainval"}
    assert all(r["filepath"].startswith(str(voc / "JPEGImages")) for r in records)
    assert counts["mito"] == 3


def test_vocdevkit_with_two_years(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    _voc(devkit, 2007, ["000001", "000002"], ["000001"], ["000002"])
    _voc(devkit, 2012, ["2008_000001"], ["2008_000001"], [])
    records, _, _ = get_data(str(devkit))
    assert [(os.path.basename(r["filepath"]), r["imageset"]) for r in records] == [
        ("000001.png", "trainval"), ("000002.png", "test"), ("2008_000001.png", "trainval"),
    ]


@pytest.mark.parametrize(
    "objects, size, message",
    [
        ([_obj("bg", 1, 1, 5, 5)], (50, 40), "reserved"),
        ([_obj("mito", 1, 1, 52, 5)], (50, 40), "outside"),
        ([_obj("mito", -2, 1, 5, 5)], (50, 40), "negative"),
        ([_obj("mito", 6, 1, 4, 5)], (50, 40), "empty box"),
        ([_obj("mito", "a", 1, 4, 5)], (50, 40), "not a number"),
        (["<object><name>mito</name></object>"], (50, 40), "no <bndbox>"),
        ([_obj("mito", 1, 1, 5, 5)], (60, 40), "<size> says 60x40"),
    ],
)
def test_invalid_objects_name_the_xml(tmp_path, objects, size, message):
    _png(tmp_path / "im.png")
    xml = _xml(tmp_path / "im.xml", "im.png", objects, size=size)
    with pytest.raises(CryoError, match=message) as info:
        get_data(str(tmp_path))
    assert str(info.value).startswith(xml)


def test_empty_malformed_and_missing_image(tmp_path):
    _png(tmp_path / "im.png")
    (tmp_path / "im.xml").write_text("")
    with pytest.raises(CryoError, match=r"im.xml: XML file is empty"):
        get_data(str(tmp_path))
    (tmp_path / "im.xml").write_text("<annotation><filename>im.png</filename><object>")
    with pytest.raises(CryoError, match=r"im.xml: malformed XML"):
        get_data(str(tmp_path))
    _xml(tmp_path / "im.xml", "other.png")
    with pytest.raises(CryoError, match=r"im.xml: image file not found"):
        get_data(str(tmp_path))
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(CryoError, match="no XML files"):
        get_data(str(empty))


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><filename>im.png</filename><object><name>&lol9;</name>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>
"""


def test_billion_laughs_does_not_expand(tmp_path):
    _png(tmp_path / "im.png")
    (tmp_path / "im.xml").write_text(BILLION_LAUGHS)
    start = time.perf_counter()
    with pytest.raises(CryoError, match="im.xml") as info:
        get_data(str(tmp_path))
    assert time.perf_counter() - start < 2.0
    assert "lollollol" not in str(info.value)
    # the parser itself either refuses the document (libxml2's amplification guard) or leaves the
    # reference unexpanded; it never builds the 3-GB text
    try:
        root = etree.fromstring(BILLION_LAUGHS.encode(), make_safe_parser())
    except etree.XMLSyntaxError:
        return
    assert len(etree.tostring(root)) < 5000


def test_external_entity_does_not_read_local_files(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-42")
    _png(tmp_path / "im.png")
    xxe = (f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file://{secret}">]>'
           "<annotation><filename>im.png</filename><object><name>&xxe;</name>"
           "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
    (tmp_path / "im.xml").write_text(xxe)
    with pytest.raises(CryoError, match="im.xml") as info:
        get_data(str(tmp_path))
    assert "TOPSECRET" not in str(info.value)
    root = etree.fromstring(xxe.encode(), make_safe_parser())
    assert b"TOPSECRET" not in etree.tostring(root)
    assert "TOPSECRET" not in "".join(root.itertext())
    # an external DTD is not fetched either
    dtd = tmp_path / "evil.dtd"
    dtd.write_text('<!ENTITY leak "TOPSECRET-DTD">')
    external = f'<?xml version="1.0"?><!DOCTYPE annotation SYSTEM "{dtd}"><annotation><filename>&leak;</filename></annotation>'
    try:
        root = etree.fromstring(external.encode(), make_safe_parser())
        assert b"TOPSECRET" not in etree.tostring(root)
    except etree.XMLSyntaxError:
        pass  # undefined entity rejected: also safe
    (tmp_path / "im.xml").write_text(external)
    with pytest.raises(CryoError, match="im.xml") as info:
        get_data(str(tmp_path))
    assert "TOPSECRET" not in str(info.value)


def test_write_read_round_trip_integer_boxes(tmp_path):
    image = tmp_path / "t2_z005.png"
    _png(image, width=64, height=48)
    boxes = np.array([[0, 0, 10, 20], [5.0, 7.0, 64.0, 48.0], [30, 12, 31, 13]], dtype=np.float64)
    names = ["mito", "vesicle", "mito"]
    xml = str(tmp_path / "t2_z005.xml")
    write_labelimg_xml(xml, str(image), 64, 48, boxes, names, scores=np.array([0.9, 0.5, 0.25]))
    assert sorted(os.listdir(tmp_path)) == ["t2_z005.png", "t2_z005.xml"]
    records, counts, _ = get_data(str(tmp_path))
    read = np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in records[0]["bboxes"]])
    np.testing.assert_array_equal(read, boxes)
    assert [b["class"] for b in records[0]["bboxes"]] == names
    root = etree.parse(xml).getroot()
    first = root.find("object/bndbox")
    assert [first.findtext(t) for t in ("xmin", "ymin", "xmax", "ymax")] == ["1", "1", "10", "20"]
    assert root.findtext("size/width") == "64" and root.findtext("size/depth") == "1"
    assert [o.findtext("score") for o in root.iter("object")] == ["0.900000", "0.500000", "0.250000"]
    assert [o.findtext("truncated") for o in root.iter("object")] == ["1", "1", "0"]


def test_write_rounds_half_up_and_keeps_tiny_boxes(tmp_path):
    image = tmp_path / "im.png"
    _png(image)
    xml = str(tmp_path / "im.xml")
    write_labelimg_xml(xml, str(image), 50, 40, np.array([[2.5, 3.4, 7.5, 9.6], [4.6, 4.6, 4.9, 4.9]]), ["a", "b"])
    root = etree.parse(xml).getroot()
    coords = [[int(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")] for o in root.iter("object")]
    assert coords == [[4, 4, 8, 10], [6, 6, 6, 6]]
    with pytest.raises(ValueError):
        write_labelimg_xml(xml, str(image), 50, 40, np.zeros((2, 4)), ["a"])
