"""Tests for keras_frcnn_cryo.tomo_io (image part)."""
from __future__ import annotations

import os
import stat

import cv2
import numpy as np
import pytest

from keras_frcnn_cryo import tomo_io
from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.atomic import write_bytes_atomic
from keras_frcnn_cryo.tomo_io import (
    IMAGE_EXTENSIONS,
    image_size,
    list_images,
    natural_sort_key,
    read_image,
    write_png_atomic,
)
from keras_frcnn_cryo.tomo_io.images import _header_size


def _ramp(height: int = 5, width: int = 7, dtype=np.uint8) -> np.ndarray:
    return (np.arange(height * width).reshape(height, width) * 3).astype(dtype)


def test_image_extensions_exact():
    assert IMAGE_EXTENSIONS == (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_read_png_keeps_dtype_and_values(tmp_path, dtype):
    image = _ramp(dtype=dtype) * (200 if dtype == np.uint16 else 1)
    path = str(tmp_path / "a.png")
    assert cv2.imwrite(path, image)
    out = read_image(path)
    assert out.dtype == dtype and out.shape == (5, 7)
    np.testing.assert_array_equal(out, image)


def test_read_float32_tif_keeps_values(tmp_path):
    image = np.linspace(-3.5, 2.25, 35, dtype=np.float32).reshape(5, 7)
    path = str(tmp_path / "f.tif")
    assert cv2.imwrite(path, image)
    out = read_image(path)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, image)


def test_rgb_and_rgba_become_luminance(tmp_path):
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 100, 200  # B, G, R
    expected = round(0.299 * 200 + 0.587 * 100 + 0.114 * 10)  # 118.5 -> OpenCV fixed point
    rgb_path = str(tmp_path / "rgb.png")
    rgba_path = str(tmp_path / "rgba.png")
    cv2.imwrite(rgb_path, bgr)
    cv2.imwrite(rgba_path, np.dstack([bgr, np.full((4, 6), 255, np.uint8)]))
    for path in (rgb_path, rgba_path):
        out = read_image(path)
        assert out.shape == (4, 6) and out.dtype == np.uint8
        assert abs(int(out[0, 0]) - expected) <= 1
        assert np.all(out == out[0, 0])


def test_one_bit_png(tmp_path):
    image = np.zeros((8, 9), np.uint8)
    image[2:5, 3:7] = 255
    path = str(tmp_path / "bits.png")
    cv2.imwrite(path, image, [cv2.IMWRITE_PNG_BILEVEL, 1])
    out = read_image(path)
    np.testing.assert_array_equal(out, image)


def test_missing_empty_corrupt_truncated(tmp_path):
    with pytest.raises(CryoError, match="not found"):
        read_image(str(tmp_path / "nope.png"))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(CryoError, match="empty.png.*empty"):
        read_image(str(empty))
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 4)
    with pytest.raises(CryoError, match="garbage.png.*decode"):
        read_image(str(garbage))
    ok, buf = cv2.imencode(".png", _ramp(40, 40))
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(CryoError, match="cut.png"):
        read_image(str(truncated))


def test_nan_and_inf_rejected(tmp_path):
    for bad in (np.nan, np.inf):
        image = np.ones((3, 4), np.float32)
        image[1, 2] = bad
        path = str(tmp_path / f"bad_{bad}.tif")
        cv2.imwrite(path, image)
        with pytest.raises(CryoError, match="NaN/Inf"):
            read_image(path)


@pytest.mark.parametrize("ext", [".png", ".tif", ".jpg", ".bmp"])
def test_image_size_header_matches_decoded(tmp_path, ext):
    image = _ramp(13, 21)
    path = str(tmp_path / f"img{ext}")
    assert cv2.imwrite(path, image)
    assert image_size(path) == (21, 13)
    assert _header_size(path) == (21, 13)  # answered from the header, without decoding
    assert read_image(path).shape == (13, 21)


def test_image_size_float_tif_and_errors(tmp_path):
    path = str(tmp_path / "f.tiff")
    cv2.imwrite(path, np.zeros((300, 2), np.float32))  # width 2, height 300
    assert image_size(path) == (2, 300)
    with pytest.raises(CryoError, match="not found"):
        image_size(str(tmp_path / "missing.png"))
    garbage = tmp_path / "g.jpg"
    garbage.write_bytes(b"\x00" * 50)
    with pytest.raises(CryoError, match="g.jpg"):
        image_size(str(garbage))


def test_list_images_dir_natural_order_and_single_file(tmp_path):
    for name in ("s_10.png", "s_2.png", "s_1.tif", "notes.txt", ".hidden.png", "UP.PNG"):
        (tmp_path / name).write_bytes(b"x")
    listed = [os.path.basename(p) for p in list_images(str(tmp_path))]
    assert listed == ["s_1.tif", "s_2.png", "s_10.png", "UP.PNG"]
    assert list_images(str(tmp_path / "s_2.png")) == [str(tmp_path / "s_2.png")]
    with pytest.raises(CryoError, match="not a supported image"):
        list_images(str(tmp_path / "notes.txt"))
    with pytest.raises(CryoError, match="no such"):
        list_images(str(tmp_path / "absent"))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(CryoError, match="no image files"):
        list_images(str(empty_dir))


def test_natural_sort_key():
    names = ["z10", "z2", "z1", "Z3", "a"]
    assert sorted(names, key=natural_sort_key) == ["a", "z1", "z2", "Z3", "z10"]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_write_png_atomic_roundtrip(tmp_path, dtype):
    image = _ramp(6, 9, dtype) * (1000 if dtype == np.uint16 else 1)
    path = str(tmp_path / "sub" / "out.png")
    write_png_atomic(path, image)
    np.testing.assert_array_equal(read_image(path), image)
    assert os.listdir(tmp_path / "sub") == ["out.png"]  # no temporary left behind
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode & 0o044  # readable by others like an ordinary file (mkstemp alone gives 0600)


def test_write_png_atomic_replaces_and_rejects_bad_input(tmp_path):
    path = str(tmp_path / "x.png")
    write_png_atomic(path, np.zeros((2, 2), np.uint8))
    write_png_atomic(path, np.full((3, 4), 7, np.uint8))
    assert read_image(path).shape == (3, 4)
    with pytest.raises(ValueError):
        write_png_atomic(path, np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError):
        write_png_atomic(path, np.zeros((2, 2, 2), np.uint8))
    assert read_image(path).shape == (3, 4)  # failed writes leave the old file alone


def test_write_bytes_atomic(tmp_path):
    path = str(tmp_path / "a.json")
    write_bytes_atomic(path, b"one")
    write_bytes_atomic(path, b"two")
    assert (tmp_path / "a.json").read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["a.json"]


def test_evenly_spaced_picks():
    assert tomo_io.evenly_spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert tomo_io.evenly_spaced(list(range(3)), 8) == [0, 1, 2]
    assert tomo_io.evenly_spaced(["a", "b", "c", "d", "e"], 1) == ["a"]
    assert tomo_io.evenly_spaced([], 3) == [] and tomo_io.evenly_spaced([1, 2], 0) == []
    assert tomo_io.evenly_spaced(range(5), 2) == [0, 4]
