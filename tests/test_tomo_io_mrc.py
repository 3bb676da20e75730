"""Tests for the MRC part of keras_frcnn_cryo.tomo_io (volumes, tilt series, export for labelling)."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import warnings

import cv2
import mrcfile
import numpy as np
import pytest

from keras_frcnn_cryo import tomo_io
from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.pascal_voc_parser import get_data as voc_get_data
from keras_frcnn_cryo.pascal_voc_parser import write_labelimg_xml
from keras_frcnn_cryo.tomo_io import (
    MRC_EXTENSIONS,
    Volume,
    boxes_png_to_volume,
    export_slices_for_labelling,
    open_volume,
    read_sidecar,
    sidecar_index,
    write_volume,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mrc(path, data, voxel=None, stack=False) -> str:
    """Write ``data`` with mrcfile directly (independent of write_volume)."""
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(data)
        if stack:
            mrc.set_image_stack()
        if voxel is not None:
            mrc.voxel_size = voxel
    return str(path)


def _patch(path, offset: int, raw: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(raw)


def _tomogram(seed=0, shape=(8, 32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).normal(5.0, 2.0, shape).astype(np.float32)


@pytest.fixture
def no_mmap(monkeypatch):
    """Make any attempt to map the file fail loudly: guards must fire before mapping."""
    def refuse(*args, **kwargs):
        raise AssertionError("mrcfile.mmap must not be called for this file")
    monkeypatch.setattr(mrcfile, "mmap", refuse)


def test_extensions_exact():
    assert MRC_EXTENSIONS == (".mrc", ".rec", ".st", ".map", ".ali", ".mrcs")


# ------------------------------------------------------------------------------------------
# opening
# ------------------------------------------------------------------------------------------
def test_tomogram_basic_and_memmapped(tmp_path):
    data = _tomogram()
    path = _mrc(tmp_path / "tomo.mrc", data, voxel=7.5)
    with open_volume(path) as vol:
        assert isinstance(vol, Volume)
        assert vol.kind == "tomogram" and vol.shape == (8, 32, 32) and vol.n_slices == 8
        assert vol.pixel_size_a == pytest.approx(7.5) and vol.angles is None
        assert vol.path == os.path.abspath(path)
        # memory-mapped from the file, not an in-memory copy
        assert isinstance(vol.data, np.memmap) and not vol.data.flags.owndata
        assert os.path.samefile(vol.data.filename, path)
        image = vol.slice(3)
        assert image.dtype == np.float32 and image.shape == (32, 32)
        np.testing.assert_array_equal(image, data[3])
        assert [index for index, _ in vol.iter_slices([1, 6])] == [1, 6]
        np.testing.assert_array_equal(dict(vol.iter_slices([6]))[6], data[6])
        assert len(list(vol.iter_slices())) == 8
    assert vol.data is None  # closed by the context manager
    vol.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        vol.slice(0)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int8, np.float16])
def test_other_modes_read_as_float32(tmp_path, dtype):
    data = (np.arange(4 * 6 * 5).reshape(4, 6, 5) % 50).astype(dtype)
    with open_volume(_mrc(tmp_path / "m.mrc", data)) as vol:
        out = vol.slice(2)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data[2].astype(np.float32))


def test_imod_unsigned_bytes(tmp_path):
    raw = np.array([[[200, 10], [255, 0]], [[1, 2], [3, 4]]], np.uint8)
    path = _mrc(tmp_path / "u.mrc", raw.view(np.int8))  # mode 0
    _patch(path, 152, struct.pack("<2i", 1146047817, 0))  # IMOD stamp, bytes unsigned
    with open_volume(path) as vol:
        np.testing.assert_array_equal(vol.slice(0), raw[0].astype(np.float32))
    _patch(path, 156, struct.pack("<i", 1))  # signed-bytes flag
    with open_volume(path) as vol:
        assert vol.slice(0)[0, 0] == -56.0


def test_pixel_size_missing_and_override(tmp_path):
    path = _mrc(tmp_path / "t.mrc", _tomogram())
    with open_volume(path) as vol:
        assert vol.pixel_size_a is None and vol.slice_pixel_size_a is None
    with open_volume(path, apix=3.25, binning=2) as vol:
        assert vol.pixel_size_a == 3.25 and vol.slice_pixel_size_a == 6.5
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(CryoError, match="apix"):
            open_volume(path, apix=bad)


def test_slab_ranges_by_hand(tmp_path):
    with open_volume(_mrc(tmp_path / "t.mrc", _tomogram()), slab=3) as vol:
        assert [vol.slab_range(i) for i in (0, 3, 7)] == [(0, 2), (2, 5), (6, 8)]
    with open_volume(tmp_path / "t.mrc", slab=4) as vol:
        assert [vol.slab_range(i) for i in (0, 3, 7)] == [(0, 3), (2, 6), (6, 8)]
    with open_volume(tmp_path / "t.mrc", slab=2) as vol:
        assert [vol.slab_range(i) for i in (0, 7)] == [(0, 2), (7, 8)]


def _brute_bin(image: np.ndarray, binning: int) -> np.ndarray:
    rows, cols = image.shape[0] // binning, image.shape[1] // binning
    out = np.zeros((rows, cols))
    for r in range(rows):
        for c in range(cols):
            out[r, c] = sum(float(image[r * binning + i, c * binning + j])
                            for i in range(binning) for j in range(binning)) / binning ** 2
    return out


@pytest.mark.parametrize("slab,binning", [(1, 1), (3, 1), (1, 2), (3, 3), (4, 2), (5, 1)])
def test_slab_and_binning_match_numpy(tmp_path, slab, binning):
    data = _tomogram(seed=slab * 10 + binning)
    path = _mrc(tmp_path / "t.mrc", data)
    expected_ranges = {1: {0: (0, 1), 4: (4, 5), 7: (7, 8)}, 3: {0: (0, 2), 4: (3, 6), 7: (6, 8)},
                       4: {0: (0, 3), 4: (3, 7), 7: (6, 8)}, 5: {0: (0, 3), 4: (2, 7), 7: (5, 8)}}[slab]
    with open_volume(path, slab=slab, binning=binning) as vol:
        assert vol.shape == (8, 32 // binning, 32 // binning)
        for index, (lo, hi) in expected_ranges.items():
            mean = data[lo:hi].astype(np.float64).mean(axis=0)
            np.testing.assert_allclose(vol.slice(index), _brute_bin(mean, binning), rtol=1e-5, atol=1e-5)


def test_binning_too_large_and_bad_arguments(tmp_path):
    path = _mrc(tmp_path / "t.mrc", _tomogram(shape=(3, 5, 7)))
    with pytest.raises(CryoError, match="binning 6"):
        open_volume(path, binning=6)
    with pytest.raises(CryoError, match="slab"):
        open_volume(path, slab=0)
    with pytest.raises(CryoError, match="kind"):
        open_volume(path, kind="movie")
    with open_volume(path) as vol:
        with pytest.raises(CryoError, match="out of range"):
            vol.slice(3)
        with pytest.raises(CryoError, match="out of range"):
            vol.slice(-1)


# ------------------------------------------------------------------------------------------
# tilt series
# ------------------------------------------------------------------------------------------
def test_tilt_series_with_tlt(tmp_path):
    data = _tomogram(shape=(5, 16, 12))
    path = _mrc(tmp_path / "ts.st", data, voxel=2.0, stack=True)
    (tmp_path / "ts.tlt").write_text("-60\n -30.5\n0\n30.5\n60.0\n\n")
    with open_volume(path) as vol:
        assert vol.kind == "tilt_series" and vol.angles == (-60.0, -30.5, 0.0, 30.5, 60.0)
        assert vol.tilt_file == str(tmp_path / "ts.tlt")
        np.testing.assert_array_equal(vol.slice(4), data[4])
    with pytest.raises(CryoError, match="is a tilt series"):   # a tilt series passed as a tomogram
        open_volume(path, kind="tomogram")
    with pytest.raises(CryoError, match="slab"):
        open_volume(path, slab=3)


def test_tilt_file_rules(tmp_path):
    data = _tomogram(shape=(3, 8, 8))
    # .mrc with a .rawtlt beside it: a tilt series
    mrc_path = _mrc(tmp_path / "a.mrc", data, stack=True)
    (tmp_path / "a.rawtlt").write_text("-3\n0\n3\n")
    with open_volume(mrc_path) as vol:
        assert vol.kind == "tilt_series" and vol.angles == (-3.0, 0.0, 3.0)
    # .tlt is preferred over .rawtlt
    (tmp_path / "a.tlt").write_text("-2.9\n0.1\n3.1\n")
    with open_volume(mrc_path) as vol:
        assert vol.angles == (-2.9, 0.1, 3.1)
    # IMOD's NAME.rec beside NAME.tlt is the reconstruction, not the stack
    rec_path = _mrc(tmp_path / "a.rec", _tomogram(shape=(9, 8, 8)))
    with open_volume(rec_path) as vol:
        assert vol.kind == "tomogram" and vol.angles is None
    # no tilt file, plain .mrc: a tomogram; a .st without tilt file: tilt series without angles
    with open_volume(_mrc(tmp_path / "b.mrc", data)) as vol:
        assert vol.kind == "tomogram"
    with open_volume(_mrc(tmp_path / "c.st", data, stack=True)) as vol:
        assert vol.kind == "tilt_series" and vol.angles is None


def test_tilt_count_mismatch_and_bad_line(tmp_path):
    path = _mrc(tmp_path / "ts.st", _tomogram(shape=(4, 8, 8)), stack=True)
    (tmp_path / "ts.tlt").write_text("-10\n0\n10\n")
    with pytest.raises(CryoError, match=r"ts\.st.*3 tilt angles.*4 images"):
        open_volume(path)
    (tmp_path / "ts.tlt").write_text("-10\n0\nten\n20\n")
    with pytest.raises(CryoError, match=r"ts\.tlt:3"):
        open_volume(path)


def test_two_dimensional_file(tmp_path):
    image = _tomogram(shape=(1, 6, 9))[0]
    path = _mrc(tmp_path / "one.mrc", image)  # 2-D data: nz = 1, image stack space group
    with pytest.raises(CryoError, match="has one slice") as info:
        open_volume(path)
    assert "one.mrc" in str(info.value)
    with pytest.raises(CryoError, match="has one slice"):
        open_volume(path, kind="tomogram")
    with open_volume(path, kind="tilt_series") as vol:
        assert vol.shape == (1, 6, 9) and isinstance(vol.data, np.memmap)
        np.testing.assert_array_equal(vol.slice(0), image)


# ------------------------------------------------------------------------------------------
# guard rails
# ------------------------------------------------------------------------------------------
def test_truncated_file_refused_before_mapping(tmp_path, no_mmap):
    path = str(tmp_path / "cut.mrc")
    with mrcfile.new(path) as mrc:
        mrc.set_data(_tomogram())
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size - 100)
    with pytest.raises(CryoError, match=r"cut\.mrc: truncated.*promises 33792 bytes.*33692"):
        open_volume(path)


@pytest.mark.parametrize("dims", [(100000, 100000, 100000), (2 ** 31 - 1, 2 ** 31 - 1, 1)])
def test_absurd_header_refused_before_mapping(tmp_path, no_mmap, dims):
    path = str(tmp_path / "huge.mrc")
    with mrcfile.new(path) as mrc:
        mrc.set_data(_tomogram())
    _patch(path, 0, struct.pack("<3i", *dims))
    with pytest.raises(CryoError, match=r"huge\.mrc: header claims .*GiB"):
        open_volume(path)


def test_negative_dimension(tmp_path, no_mmap):
    path = _mrc(tmp_path / "neg.mrc", _tomogram())
    _patch(path, 8, struct.pack("<i", -8))
    with pytest.raises(CryoError, match=r"neg\.mrc: damaged MRC header"):
        open_volume(path)


@pytest.mark.parametrize("mode,message", [(7, "unknown MRC mode 7"), (4, "complex"), (101, "4-bit")])
def test_unsupported_modes(tmp_path, mode, message):
    path = _mrc(tmp_path / "mode.mrc", _tomogram())
    _patch(path, 12, struct.pack("<i", mode))
    with pytest.raises(CryoError, match=message):
        open_volume(path)


def test_not_an_mrc_file(tmp_path):
    short = tmp_path / "short.mrc"
    short.write_bytes(b"hello")
    with pytest.raises(CryoError, match=r"short\.mrc: not an MRC file"):
        open_volume(str(short))
    png = tmp_path / "picture.mrc"
    ok, encoded = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8))
    png.write_bytes(encoded.tobytes())
    with pytest.raises(CryoError, match=r"picture\.mrc: not an MRC file"):
        open_volume(str(png))
    with pytest.raises(CryoError, match="not found"):
        open_volume(str(tmp_path / "missing.mrc"))


def test_damaged_map_string_read_permissively_with_warning(tmp_path):
    data = _tomogram()
    path = _mrc(tmp_path / "damaged.mrc", data)
    _patch(path, 208, b"XXXX")
    with pytest.raises(ValueError):  # mrcfile itself refuses it
        mrcfile.mmap(path, mode="r").close()
    with pytest.warns(RuntimeWarning, match=r"damaged\.mrc: damaged MRC header"):
        vol = open_volume(path)
    with vol:
        assert isinstance(vol.data, np.memmap)
        np.testing.assert_array_equal(vol.slice(5), data[5])


@pytest.mark.filterwarnings("ignore:Data array contains NaN values:RuntimeWarning")
def test_nan_slice_reported_when_read(tmp_path):
    data = _tomogram()
    data[5, 3, 4] = np.nan
    data[5, 0, 0] = np.inf
    path = _mrc(tmp_path / "nan.mrc", data)
    with open_volume(path) as vol:  # opening does not read slices
        np.testing.assert_array_equal(vol.slice(2), data[2])
        with pytest.raises(CryoError, match=r"nan\.mrc: slice 5 \(0-based\) holds 2 NaN/Inf"):
            vol.slice(5)
    with open_volume(path, slab=3) as vol:
        with pytest.raises(CryoError, match="slice 5"):
            vol.slice(4)  # slab 3..5 includes slice 5


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
def test_write_volume_roundtrip(tmp_path, dtype):
    data = (np.random.default_rng(1).integers(0, 200, (3, 7, 5))).astype(dtype)
    path = str(tmp_path / "out" / "v.mrc")
    write_volume(path, data, pixel_size_a=4.5)
    assert os.listdir(tmp_path / "out") == ["v.mrc"]
    with mrcfile.open(path) as mrc:  # read back with mrcfile itself
        np.testing.assert_array_equal(np.asarray(mrc.data).astype(np.float64), data.astype(np.float64))
        assert float(mrc.voxel_size.x) == pytest.approx(4.5) and int(mrc.header.ispg) == 1
    with open_volume(path) as vol:
        assert vol.pixel_size_a == pytest.approx(4.5)
        np.testing.assert_array_equal(vol.slice(1), data[1].astype(np.float32))


def test_write_volume_image_stack_and_errors(tmp_path):
    path = str(tmp_path / "s.mrc")
    write_volume(path, np.zeros((2, 3, 4), np.float32), image_stack=True)
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.ispg) == 0
    write_volume(path, np.ones((2, 3, 4), np.float32))  # replaces
    with mrcfile.open(path) as mrc:
        assert float(mrc.data.max()) == 1.0
    with pytest.raises(ValueError):
        write_volume(path, np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError):
        write_volume(path, np.zeros((2, 3, 4), np.float64))
    assert sorted(os.listdir(tmp_path)) == ["s.mrc"]


# ------------------------------------------------------------------------------------------
# export for labelling and mapping boxes back
# ------------------------------------------------------------------------------------------
def _volume_with_object(tmp_path, name="cell.mrc") -> tuple[str, tuple[int, int, int, int], int]:
    rng = np.random.default_rng(3)
    data = rng.normal(0.0, 1.0, (8, 40, 48)).astype(np.float32)
    box = (12, 8, 28, 20)  # x1, y1, x2, y2 (exclusive), on binning-2 boundaries
    z = 5
    data[z, box[1]:box[3], box[0]:box[2]] += 40.0
    return _mrc(tmp_path / name, data, voxel=3.0), box, z


def test_export_roundtrip_through_labelimg(tmp_path):
    path, placed, z = _volume_with_object(tmp_path)
    out = tmp_path / "png"
    written = export_slices_for_labelling(path, str(out), [z, 1], binning=2)
    assert [os.path.basename(p) for p in written] == ["cell_z0005.png", "cell_z0001.png"]
    png = cv2.imread(written[0], cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint8 and png.shape == (20, 24)
    sidecar = read_sidecar(written[0])
    assert sidecar["source"] == os.path.abspath(path) and sidecar["kind"] == "tomogram"
    assert sidecar["z"] == 5 and sidecar_index(sidecar) == 5 and sidecar["index_base"] == 0
    assert sidecar["binning"] == 2 and sidecar["slab"] == 1 and sidecar["angle"] is None
    assert sidecar["pixel_size_a"] == pytest.approx(6.0) and sidecar["source_pixel_size_a"] == pytest.approx(3.0)
    # "label" the object on the PNG: bounding box of the bright pixels, in PNG pixels
    rows, cols = np.nonzero(png > 200)
    drawn = np.array([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], np.float64)
    np.testing.assert_array_equal(drawn, [[6, 4, 14, 10]])
    # through LabelImg's XML (1-based on disk) and the VOC parser
    write_labelimg_xml(str(out / "cell_z0005.xml"), written[0], 24, 20, drawn, ["mitochondrion"])
    records, _, _ = voc_get_data(str(out / "cell_z0005.xml"))
    parsed = np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in records[0]["bboxes"]])
    back = boxes_png_to_volume(parsed, sidecar)
    np.testing.assert_array_equal(back, [placed])
    assert boxes_png_to_volume(np.zeros((0, 4)), sidecar).shape == (0, 4)


def test_export_tilt_series_names_and_angles(tmp_path):
    data = _tomogram(shape=(4, 10, 12))
    path = _mrc(tmp_path / "ts.mrcs", data, voxel=1.5, stack=True)
    (tmp_path / "ts.tlt").write_text("-45\n-15\n15\n45\n")
    written = export_slices_for_labelling(path, str(tmp_path / "o"), slice(0, None, 2), binning=2, apix=2.0)
    assert [os.path.basename(p) for p in written] == ["ts_t000.png", "ts_t002.png"]
    sidecar = read_sidecar(written[1] + ".json")
    assert sidecar["kind"] == "tilt_series" and sidecar["tilt_index"] == 2 and sidecar_index(sidecar) == 2
    assert sidecar["angle"] == 15.0 and sidecar["pixel_size_a"] == 4.0 and "z" not in sidecar
    png = cv2.imread(written[1], cv2.IMREAD_UNCHANGED)
    assert png.shape == (5, 6) and png.min() == 0 and png.max() == 255


def test_export_percentile_scaling(tmp_path):
    data = np.zeros((2, 10, 10), np.float32)
    data[0] = np.arange(100, dtype=np.float32).reshape(10, 10) * 7.0 - 300.0  # any offset and scale
    path = _mrc(tmp_path / "r.mrc", data)
    png_path = export_slices_for_labelling(path, str(tmp_path / "o"), [0], percentiles=(0.0, 100.0))[0]
    png = cv2.imread(png_path, cv2.IMREAD_UNCHANGED)
    expected = np.rint(np.arange(100).reshape(10, 10) * 255.0 / 99.0).astype(np.uint8)
    np.testing.assert_array_equal(png, expected)


def test_export_bad_index_writes_nothing(tmp_path):
    path = _mrc(tmp_path / "t.mrc", _tomogram())
    out = tmp_path / "o"
    with pytest.raises(CryoError, match="slice index 8 is out of range"):
        export_slices_for_labelling(path, str(out), [2, 8])
    assert not out.exists() or os.listdir(out) == []
    with pytest.raises(CryoError, match="no slices"):
        export_slices_for_labelling(path, str(out), [])


def test_sidecar_errors(tmp_path):
    with pytest.raises(CryoError, match="not found"):
        read_sidecar(str(tmp_path / "x.png"))
    (tmp_path / "x.png.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CryoError, match="not a slice sidecar"):
        read_sidecar(str(tmp_path / "x.png"))
    with pytest.raises(CryoError, match="binning"):
        boxes_png_to_volume(np.zeros((1, 4)), {"binning": 0})


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
def test_cli_export_every_and_error(tmp_path, capsys):
    path = _mrc(tmp_path / "t.mrc", _tomogram())
    out = tmp_path / "o"
    assert tomo_io.console_main(["export", "--input", path, "--out", str(out), "--every", "3", "--slab", "3",
                         "--bin", "2", "--apix", "5"]) == 0
    names = sorted(os.listdir(out))
    assert names == ["t_z0000.png", "t_z0000.png.json", "t_z0003.png", "t_z0003.png.json",
                     "t_z0006.png", "t_z0006.png.json"]
    sidecar = read_sidecar(str(out / "t_z0003.png"))
    assert sidecar["slab"] == 3 and sidecar["slab_range"] == [2, 5] and sidecar["pixel_size_a"] == 10.0
    capsys.readouterr()
    assert tomo_io.console_main(["export", "--input", path, "--out", str(out), "--z", "99"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "t.mrc" in err[0] and "99" in err[0]


def test_cli_module_entry_point(tmp_path):
    path = _mrc(tmp_path / "t.mrc", _tomogram())
    out = tmp_path / "o"
    done = subprocess.run([sys.executable, "-m", "keras_frcnn_cryo.tomo_io", "export", "--input", path,
                           "--out", str(out), "--z", "1", "4"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p for p in os.listdir(out) if p.endswith(".png")) == ["t_z0001.png", "t_z0004.png"]
    bad = subprocess.run([sys.executable, "-m", "keras_frcnn_cryo.tomo_io", "export", "--input",
                          str(tmp_path / "nope.mrc"), "--out", str(out), "--z", "1"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "nope.mrc" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_no_warning_for_clean_files(tmp_path):
    path = _mrc(tmp_path / "t.mrc", _tomogram())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_volume(path) as vol:
            vol.slice(0)


def test_tilt_series_given_as_tomogram_is_refused(tmp_path):
    path = str(tmp_path / "stack.st")
    tomo_io.write_volume(path, np.zeros((3, 8, 8), np.float32), image_stack=True)
    with pytest.raises(CryoError, match="is a tilt series .*extension .st"):
        tomo_io.open_volume(path, kind="tomogram")
    other = str(tmp_path / "stack2.mrc")
    tomo_io.write_volume(other, np.zeros((3, 8, 8), np.float32))
    (tmp_path / "stack2.tlt").write_text("-1\n0\n1\n")
    with pytest.raises(CryoError, match="stack2.tlt beside it"):
        tomo_io.open_volume(other, kind="tomogram")


def _rss_file_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    return -1


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_streaming_does_not_keep_the_file_resident(tmp_path):
    """Reading every slice of a 96 MB tomogram must not leave the file's pages counted in our memory."""
    path = str(tmp_path / "big.mrc")
    data = np.random.default_rng(0).normal(size=(96, 512, 512)).astype(np.float32)
    tomo_io.write_volume(path, data)
    del data
    before = _rss_file_kib()
    with open_volume(path) as vol:
        checksum = sum(float(vol.slice(z)[::64, ::64].sum()) for z in range(vol.n_slices))
        grown = _rss_file_kib() - before
    assert np.isfinite(checksum)
    assert grown < 24 * 1024, f"file pages resident after streaming: {grown} KiB of a 98304 KiB file"


# ------------------------------------------------------------------------------------------
# three slabs as the network's input channels (Config.input_channels "slabs")
# ------------------------------------------------------------------------------------------
def _ramp_volume(tmp_path, nz=9, size=8) -> str:
    """Slice z holds the value z everywhere (and x/100 added, so binning is visible)."""
    data = np.zeros((nz, size, size), np.float32) + np.arange(nz, dtype=np.float32)[:, None, None]
    data += np.arange(size, dtype=np.float32)[None, None, :] / 100.0
    return _mrc(tmp_path / "ramp.mrc", data, voxel=10.0)


def test_slab_channels_by_hand(tmp_path):
    with open_volume(_ramp_volume(tmp_path)) as volume:
        stack = volume.slab_channels(4, 3)                   # slabs 1..3, 4..6... centred on 1, 4, 7
        assert stack.shape == (8, 8, 3) and stack.dtype == np.float32
        np.testing.assert_allclose(stack[0, 0], [1.0, 4.0, 7.0], atol=1e-6)
        np.testing.assert_allclose(volume.slab_channels(4, 1)[0, 0], [3.0, 4.0, 5.0], atol=1e-6)
        # slab 2 around 0: slices -2..-1 (the end slice 0 stands in), 0..1, 2..3 -> 0, 0.5, 2.5
        np.testing.assert_allclose(volume.slab_channels(0, 2)[0, 0], [0.0, 0.5, 2.5], atol=1e-6)
        np.testing.assert_allclose(volume.slab_channels(8, 1)[0, 0], [7.0, 8.0, 8.0], atol=1e-6)
        with pytest.raises(CryoError, match="out of range"):
            volume.slab_channels(9, 1)
    with open_volume(_ramp_volume(tmp_path), binning=2) as volume:
        stack = volume.slab_channels(4, 1)
        assert stack.shape == (4, 4, 3)
        np.testing.assert_allclose(stack[0, 0], np.array([3.0, 4.0, 5.0]) + 0.005, atol=1e-6)


def test_image_source_reads_slabs_through_the_sidecar(tmp_path):
    volume_path = _ramp_volume(tmp_path)
    png = export_slices_for_labelling(volume_path, str(tmp_path / "png"), [4])[0]
    source = tomo_io.ImageSource("slabs", slab=1)
    stack = source(png)
    np.testing.assert_allclose(stack[0, 0], [3.0, 4.0, 5.0], atol=1e-5)
    # a sidecar naming its volume relative to its own folder works too (moved data sets)
    sidecar = read_sidecar(png)
    sidecar["source"] = os.path.relpath(volume_path, os.path.dirname(png))
    tomo_io.write_sidecar(png, sidecar)
    np.testing.assert_allclose(tomo_io.ImageSource("slabs", slab=1)(png)[0, 0], [3.0, 4.0, 5.0], atol=1e-5)
    source.close()
    # "repeat" reads the PNG itself
    assert tomo_io.ImageSource("repeat")(png).shape == (8, 8)


def test_image_source_falls_back_to_the_image_with_one_warning(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(plain / name), np.full((8, 8), 100, np.uint8))
    source = tomo_io.ImageSource("slabs", slab=3)
    with pytest.warns(UserWarning, match="no sidecar") as record:
        assert source(str(plain / "a.png")).shape == (8, 8)
        assert source(str(plain / "b.png")).shape == (8, 8)
    assert len(record) == 1                                  # one warning per folder
    tilts = export_slices_for_labelling(_mrc(tmp_path / "ts.st", _tomogram(1, (3, 8, 8))), str(tmp_path / "t"), [1])
    with pytest.warns(UserWarning, match="tilt images"):
        assert source(tilts[0]).shape == (8, 8)
    with pytest.raises(CryoError, match="input_channels = .* use one of repeat, slabs"):
        tomo_io.ImageSource("rgb")
