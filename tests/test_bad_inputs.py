"""Catalogue of bad inputs for every command-line tool: each must stop cleanly, or (where marked) work.

Commands: train_frcnn.py, test_frcnn.py, measure_map.py, ``python -m keras_frcnn_cryo.masks_to_boxes`` and
``python -m keras_frcnn_cryo.tomo_io export``. For every bad input we assert what a user sees and what is
left on disk:

* exit status 2 and exactly one ``error:`` line on stderr, naming the file (and line) and the problem;
* no traceback (``--debug`` is the only way to get one);
* no new file except those a case explicitly allows (so no partial output that looks complete, and no
  leftover ``.tmp_*`` file);
* the existing model (config.pickle, config.json, weights) untouched: stat before/after every case, SHA-256
  at the end of the module.

Inputs that are unusual but valid (1-bit, 16-bit, float and RGB images; a config.pickle of an older
layout; an XML file without ``<object>``) must work.

SUBPROCESS_CASES run the real scripts (two at a time, to fit the time budget); IN_PROCESS_CASES call the
same ``run_cli`` entry point in this process, which is what each script does, without paying for a
TensorFlow import per case. The model is an untrained detector written exactly as train_frcnn.py writes
one (config via save_config, weights via save_weights_atomic): these tests exercise input checks, not
accuracy, and tests/test_end_to_end.py covers a trained one.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import RESNET50, TOY_ANCHORS, TOY_NET_ARGS, TOY_SIZE, sha256

from keras_frcnn_cryo import annotations, detections_csv, evaluation, masks_to_boxes, predict, tomo_io, train
from keras_frcnn_cryo.cli import run_cli
from keras_frcnn_cryo.config import Config, load_config, save_config
from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"train": "train_frcnn.py", "predict": "test_frcnn.py", "measure": "measure_map.py"}
MODULES = {"masks": "keras_frcnn_cryo.masks_to_boxes", "tomo": "keras_frcnn_cryo.tomo_io"}
PARALLEL_RUNS = 2            # subprocesses at a time (the suite runs on 2 cores)
SUBPROCESS_TIMEOUT_S = 300
MODEL_FILES = ("config.pickle", "config.json", "model_frcnn.weights.h5")
TOY_ARGS = ["--im-size", str(TOY_SIZE), "--anchor-scales", *(f"{s:g}" for s in TOY_ANCHORS), "-n", "8", *TOY_NET_ARGS]


# ------------------------------------------------------------------------------------------
# the model every case runs against, and shared inputs
# ------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """Paths shared by the cases: the model folder, a toy image and its annotations, a regular file."""

    model_dir: Path
    annotations: Path
    image: Path
    other_classes_weights: Path
    regular_file: Path
    model_stat: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    model_sha256: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.model_dir / "config.pickle"

    @property
    def weights(self) -> Path:
        return self.model_dir / "model_frcnn.weights.h5"


def model_stat(model_dir: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime ns) of each model file: any write or replacement changes it."""
    out = {}
    for name in MODEL_FILES:
        info = os.stat(model_dir / name)
        out[name] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def inputs(toy_dataset, tmp_path_factory) -> Inputs:
    """An untrained detector written the way train_frcnn.py writes one, plus a 3-class one."""
    from keras_frcnn_cryo.model import build_models, save_weights_atomic
    root = tmp_path_factory.mktemp("bad_inputs")
    model_dir = root / "model"
    weights = model_dir / "model_frcnn.weights.h5"
    args = train.build_parser().parse_args(["-p", toy_dataset, *TOY_ARGS, "--output_weight_path", str(weights)])
    cfg = train.config_from_args(args)
    _, _, class_mapping = annotations.load_annotations(cfg.annotation_path, cfg.parser)
    cfg.class_mapping = dict(class_mapping)
    save_weights_atomic(build_models(cfg).model_all, str(weights))
    save_config(cfg, str(model_dir / "config.pickle"))
    other = Config(**{**cfg.__dict__, "class_mapping": {"mitochondrion": 0, "vesicle": 1, "bg": 2}})
    other_weights = root / "three_classes.weights.h5"
    save_weights_atomic(build_models(other).model_all, str(other_weights))
    regular_file = root / "a_regular_file"
    regular_file.write_text("not a folder\n")
    image = Path(toy_dataset).parent / "images" / "toy_g000_z00.png"
    found = Inputs(model_dir, Path(toy_dataset), image, other_weights, regular_file)
    found.model_stat = model_stat(model_dir)
    found.model_sha256 = {name: sha256(model_dir / name) for name in MODEL_FILES}
    return found


def case_inputs(inp: Inputs, work: Path) -> Inputs:
    """``inp`` with its model files hard-linked into ``work/model``, so that a case which (wrongly)
    replaced one would change only its own link (its stat check fails, the other cases are unharmed)."""
    model_dir = work / "model"
    model_dir.mkdir()
    for name in MODEL_FILES:
        os.link(inp.model_dir / name, model_dir / name)
    return dataclasses.replace(inp, model_dir=model_dir)


# ------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One command line and what must come of it."""

    tool: str                                   # train, predict, measure, masks, tomo
    args: list
    needles: tuple[str, ...] = ()               # all in the one error line (the file and the problem)
    ok: bool = False                            # a valid input: exit 0
    allowed_new: tuple[str, ...] = ()           # files (relative to the case folder) the run may leave
    check: Callable[[Path, str], None] | None = None   # extra assertions(case folder, stdout + stderr)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def train_args(inp: Inputs, work: Path, annotations: Path | str, *extra: str) -> list:
    """train_frcnn.py aimed at the existing model's files (a user re-running training in its folder)."""
    return ["-p", annotations, *TOY_ARGS, "--num_epochs", "1", "--epoch_length", "1",
            "--output_weight_path", inp.weights, "--config_filename", inp.config,
            "--split-file", work / "split.json", *extra]


def predict_args(inp: Inputs, work: Path, path: Path | str, *extra: str) -> list:
    return ["-p", path, "--config_filename", inp.config, "--output", work / "out", *extra]


def voc_folder(inp: Inputs, folder: Path, xml: str, image_name: str = "a.png") -> Path:
    """``folder`` with a copy of the toy image as ``image_name`` and ``a.xml``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(inp.image, folder / image_name)
    write(folder / "a.xml", xml)
    return folder


def voc_xml(objects: str, filename: str = "a.png") -> str:
    return f"<annotation><filename>{filename}</filename><size><width>96</width><height>96</height>" \
           f"<depth>1</depth></size>{objects}</annotation>"


def voc_object(name: str = "mitochondrion", box: tuple = (11, 11, 40, 40)) -> str:
    return f"<object><name>{name}</name><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>" \
           f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>"


def mrc(path: Path, nan_at: tuple | None = None, value: float = np.nan, slices: int = 4) -> Path:
    """A float32 (slices, 96, 96) tomogram; ``nan_at`` (z, y, x) gets ``value``."""
    volume = np.random.default_rng(1).normal(size=(slices, TOY_SIZE, TOY_SIZE)).astype(np.float32)
    if nan_at is not None:
        volume[nan_at] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile notes the NaN itself
        tomo_io.write_volume(str(path), volume)
    return path


def mrc_claiming(path: Path, nx: int, ny: int, nz: int) -> Path:
    """A valid MRC header (mode 2) claiming nx x ny x nz voxels, followed by only 4 KiB of data."""
    good = mrc(path.with_suffix(".good.mrc"), slices=2)
    header = bytearray(good.read_bytes()[:tomo_io.MRC_HEADER_BYTES])
    good.unlink()
    header[0:12] = struct.pack("<3i", nx, ny, nz)
    path.write_bytes(bytes(header) + bytes(4096))
    return path


def evil_pickle(path: Path, marker: Path) -> Path:
    """A pickle whose loading would run ``touch marker`` (what a restricted unpickler must refuse)."""
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    path.write_bytes(pickle.dumps(Payload()))
    return path


def marker_absent(marker: Path) -> Callable[[Path, str], None]:
    def check(work: Path, output: str) -> None:
        assert not marker.exists(), "unpickling ran code"
    return check


def older_layout_pickle(inp: Inputs, path: Path) -> Path:
    """config.pickle of an older release: only the fields it had, plus one this version dropped."""
    cfg = load_config(str(inp.config))
    old = Config.__new__(Config)
    kept = ("class_mapping", "anchor_box_scales", "anchor_box_ratios", "im_size", "model_path", "num_rois",
            "rpn_stride", "seed", "annotation_path")
    old.__dict__.update({name: getattr(cfg, name) for name in kept})
    old.__dict__["balanced_classes"] = False     # a keras-frcnn field this version does not have
    path.write_bytes(pickle.dumps(old, protocol=2))
    return path


def image_types(folder: Path, source: Path) -> Path:
    """The toy image as 1-bit PNG, 16-bit PNG, float32 TIFF (offset and scale) and RGB PNG."""
    grey = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "bit1.png"), (grey > grey.mean()).astype(np.uint8) * 255, [cv2.IMWRITE_PNG_BILEVEL, 1])
    cv2.imwrite(str(folder / "u16.png"), grey.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "f32.tif"), grey.astype(np.float32) * 0.013 - 3.2)
    cv2.imwrite(str(folder / "rgb.png"), np.dstack([grey, grey // 2, 255 - grey]))
    # the files really are what their names say (PNG bit depth: IHDR byte 24)
    assert (folder / "bit1.png").read_bytes()[24] == 1
    assert cv2.imread(str(folder / "u16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert cv2.imread(str(folder / "f32.tif"), cv2.IMREAD_UNCHANGED).dtype == np.float32
    assert cv2.imread(str(folder / "rgb.png"), cv2.IMREAD_UNCHANGED).shape == (TOY_SIZE, TOY_SIZE, 3)
    return folder


def detections_written(n_images: int) -> Callable[[Path, str], None]:
    def check(work: Path, output: str) -> None:
        header = (work / "out" / "detections.csv").read_text().splitlines()[0]
        assert header == ",".join(detections_csv.CSV_COLUMNS)
        assert len(list((work / "out" / "overlays").glob("*.png"))) == n_images
    return check


# --- run as real subprocesses ---------------------------------------------------------------------------
def sp_simple_box_outside_image(inp: Inputs, work: Path) -> Case:
    ann = write(work / "ann.txt", f"{inp.image},10,10,400,40,mitochondrion\n")
    return Case("train", train_args(inp, work, ann), ("ann.txt:1", "outside the 96x96 image"))


def sp_xml_external_entity(inp: Inputs, work: Path) -> Case:
    secret = write(work / "secret.txt", "TOP-SECRET-CONTENT\n")
    xml = (f'<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY leak SYSTEM "file://{secret}">]>'
           + voc_xml(voc_object("&leak;")))
    folder = voc_folder(inp, work / "voc", xml)

    def check(_: Path, output: str) -> None:
        assert "TOP-SECRET" not in output
    return Case("train", train_args(inp, work, folder, "-o", "pascal_voc"), ("a.xml", "entities", "refused"),
                check=check)


def sp_zero_byte_imagenet_weights(inp: Inputs, work: Path) -> Case:
    (work / "resnet50_notop.h5").write_bytes(b"")
    return Case("train", train_args(inp, work, inp.annotations, "--input_weight_path", work / "resnet50_notop.h5",
                                   "--set", f"resnet_blocks={RESNET50}"),
                ("resnet50_notop.h5", "empty"), allowed_new=("split.json",))


def sp_mrc_truncated(inp: Inputs, work: Path) -> Case:
    path = mrc(work / "trunc.mrc")
    path.write_bytes(path.read_bytes()[:-TOY_SIZE * TOY_SIZE * 4 - 100])
    return Case("predict", predict_args(inp, work, path), ("trunc.mrc", "truncated MRC file"))


def sp_mrc_nan_voxel(inp: Inputs, work: Path) -> Case:
    path = mrc(work / "nan.mrc", nan_at=(2, 5, 7))
    return Case("predict", predict_args(inp, work, path), ("nan.mrc", "slice 2", "NaN/Inf"))


def sp_mrc_header_over_2e31_voxels(inp: Inputs, work: Path) -> Case:
    assert 2048 * 2048 * 600 > 2 ** 31
    path = mrc_claiming(work / "huge.mrc", 2048, 2048, 600)
    return Case("predict", predict_args(inp, work, path), ("huge.mrc", "2048 x 2048 x 600", "truncated"))


def sp_images_1bit_16bit_float_rgb_work(inp: Inputs, work: Path) -> Case:
    folder = image_types(work / "types", inp.image)
    names = ("bit1", "u16", "f32", "rgb")
    return Case("predict", predict_args(inp, work, folder, "--threshold", "0"), ok=True,
                allowed_new=("out/detections.csv", *(f"out/overlays/{n}.png" for n in names)),
                check=detections_written(len(names)))


def sp_config_pickle_that_runs_code(inp: Inputs, work: Path) -> Case:
    marker = work / "PWNED"
    evil = evil_pickle(work / "evil.pickle", marker)
    return Case("predict", ["-p", inp.image, "--config_filename", evil, "--output", work / "out"],
                ("evil.pickle", "refusing to load global"), check=marker_absent(marker))


def sp_weights_file_zero_bytes(inp: Inputs, work: Path) -> Case:
    (work / "empty.weights.h5").write_bytes(b"")
    return Case("predict", predict_args(inp, work, inp.image, "--model", work / "empty.weights.h5"),
                ("empty.weights.h5", "empty"))


def sp_weights_for_another_class_count(inp: Inputs, work: Path) -> Case:
    return Case("predict", predict_args(inp, work, inp.image, "--model", inp.other_classes_weights),
                ("three_classes.weights.h5", "do not fit"))


def sp_output_dir_not_writable(inp: Inputs, work: Path) -> Case:
    # root ignores chmod: a folder below a regular file can be made by nobody
    return Case("predict", ["-p", inp.image, "--config_filename", inp.config, "--output", inp.regular_file / "sub"],
                ("a_regular_file/sub", "Not a directory"))


def sp_older_layout_config_loads(inp: Inputs, work: Path) -> Case:
    old = older_layout_pickle(inp, work / "old_config.pickle")
    # an older release knew only ResNet-50 (resnet_blocks is not in its pickle): weights of one
    from keras_frcnn_cryo.model import build_models, save_weights_atomic
    cfg = Config(**{**load_config(str(inp.config)).__dict__, "resnet_blocks": RESNET50})
    weights = work / "resnet50.weights.h5"
    save_weights_atomic(build_models(cfg).model_all, str(weights))

    def check(folder: Path, output: str) -> None:
        detections_written(1)(folder, output)
        assert "balanced_classes" in output  # named in the warning about fields this version ignores
    return Case("predict", ["-p", inp.image, "--config_filename", old, "--model", weights,
                            "--output", work / "out", "--threshold", "0"], ok=True,
                allowed_new=("resnet50.weights.h5", "out/detections.csv", "out/overlays/toy_g000_z00.png"),
                check=check)


def sp_unknown_class_at_test_time(inp: Inputs, work: Path) -> Case:
    folder = voc_folder(inp, work / "voc", voc_xml(voc_object("nucleus")))
    return Case("measure", ["--config_filename", inp.config, "-p", folder, "-o", "pascal_voc", "--split", "all",
                            "--output", work / "eval"], ("voc", "'nucleus'", "not a class of the model"))


def sp_mrc_header_beyond_reader_limit(inp: Inputs, work: Path) -> Case:
    path = mrc_claiming(work / "huge.mrc", 65536, 65536, 65536)
    return Case("tomo", ["export", "--input", path, "--out", work / "png", "--every", "1"],
                ("huge.mrc", "65536 x 65536 x 65536", "refusing"))


def sp_mask_without_image(inp: Inputs, work: Path) -> Case:
    (work / "masks").mkdir()
    cv2.imwrite(str(work / "masks" / "slice_0009.png"), np.zeros((TOY_SIZE, TOY_SIZE), np.uint8))
    return Case("masks", ["--masks", work / "masks", "--images", inp.image.parent, "--out", work / "boxes"],
                ("slice_0009.png", "no image of the same name"))


# every sp_* builder above, by name without the prefix
SUBPROCESS_CASES: dict[str, Callable[[Inputs, Path], Case]] = {
    name[3:]: func for name, func in list(globals().items()) if name.startswith("sp_")}


# --- run in this process through run_cli ---------------------------------------------------------------
def simple_case(line: str, *needles: str) -> Callable[[Inputs, Path], Case]:
    def build(inp: Inputs, work: Path) -> Case:
        ann = write(work / "ann.txt", line.replace("IMAGE", str(inp.image)))
        return Case("train", train_args(inp, work, ann), needles)
    return build


def voc_case(xml: str, *needles: str, image_name: str = "a.png") -> Callable[[Inputs, Path], Case]:
    def build(inp: Inputs, work: Path) -> Case:
        folder = voc_folder(inp, work / "voc", xml, image_name)
        return Case("train", train_args(inp, work, folder, "-o", "pascal_voc"), needles)
    return build


def ip_simple_not_utf8(inp: Inputs, work: Path) -> Case:
    (work / "ann.txt").write_bytes(f"{inp.image},10,10,40,40,caf\xe9\n".encode("latin-1"))
    return Case("train", train_args(inp, work, work / "ann.txt"), ("ann.txt", "not a UTF-8"))


def ip_xml_two_files_for_one_image(inp: Inputs, work: Path) -> Case:
    folder = voc_folder(inp, work / "voc", voc_xml(voc_object()))
    write(folder / "b.xml", voc_xml(voc_object(box=(50, 50, 80, 80))))
    return Case("train", train_args(inp, work, folder, "-o", "pascal_voc"), ("voc", "a.png", "annotated twice"))


def ip_xml_billion_laughs(inp: Inputs, work: Path) -> Case:
    entities = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    xml = (f'<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY lol0 "lol">{entities}]>'
           + voc_xml(voc_object("&lol9;")))
    folder = voc_folder(inp, work / "voc", xml)
    return Case("train", train_args(inp, work, folder, "-o", "pascal_voc"), ("a.xml", "entities", "refused"))


def ip_folder_without_annotations(inp: Inputs, work: Path) -> Case:
    (work / "empty").mkdir()
    return Case("train", train_args(inp, work, work / "empty", "-o", "pascal_voc"), ("empty", "no XML files"))


def ip_train_output_not_writable(inp: Inputs, work: Path) -> Case:
    return Case("train", ["-p", inp.annotations, "--output_weight_path", inp.regular_file / "sub" / "m.weights.h5",
                          "--config_filename", work / "config.pickle"], ("a_regular_file/sub", "Not a directory"))


def ip_train_config_not_writable(inp: Inputs, work: Path) -> Case:
    return Case("train", ["-p", inp.annotations, "--output_weight_path", work / "m.weights.h5",
                          "--config_filename", "/proc/no_such_dir/config.pickle"],
                ("/proc/no_such_dir", "cannot create output directory"))


def ip_predict_folder_without_images(inp: Inputs, work: Path) -> Case:
    write(work / "noimages" / "readme.txt", "no pictures here\n")
    return Case("predict", predict_args(inp, work, work / "noimages"), ("noimages", "no images or MRC files"))


def ip_predict_missing_input(inp: Inputs, work: Path) -> Case:
    return Case("predict", predict_args(inp, work, work / "nope.png"), ("nope.png", "input not found"))


def ip_predict_corrupt_image_among_good(inp: Inputs, work: Path) -> Case:
    folder = work / "imgs"
    folder.mkdir()
    shutil.copy(inp.image, folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    # a.png's overlay is a complete picture of a finished image; the CSV (written last) must not exist
    return Case("predict", predict_args(inp, work, folder), ("b.png", "cannot decode image"),
                allowed_new=("out/overlays/a.png",))


def ip_predict_zero_byte_image(inp: Inputs, work: Path) -> Case:
    (work / "blank.png").write_bytes(b"")
    return Case("predict", predict_args(inp, work, work / "blank.png"), ("blank.png", "empty"))


def ip_measure_config_pickle_that_runs_code(inp: Inputs, work: Path) -> Case:
    marker = work / "PWNED"
    evil = evil_pickle(work / "evil.pickle", marker)
    return Case("measure", ["--config_filename", evil, "--split", "all", "--output", work / "eval"],
                ("evil.pickle", "refusing to load global"), check=marker_absent(marker))


def ip_measure_truncated_config_pickle(inp: Inputs, work: Path) -> Case:
    (work / "config.pickle").write_bytes(inp.config.read_bytes()[:50])
    return Case("measure", ["--config_filename", work / "config.pickle", "--split", "all", "--output", work / "eval"],
                ("config.pickle", "truncated"))


def ip_measure_csv_nan_score(inp: Inputs, work: Path) -> Case:
    csv_path = write(work / "det.csv", "image,x1,y1,x2,y2,class,score\n"
                                       f"{inp.image.name},1,1,20,20,mitochondrion,nan\n")
    return Case("measure", ["--detections", csv_path, "-p", inp.annotations, "--split", "all",
                            "--output", work / "eval"], ("det.csv:2", "score", "not a finite number"))


def ip_measure_csv_missing_column(inp: Inputs, work: Path) -> Case:
    csv_path = write(work / "det.csv", "image,x1,y1,x2,y2,class\n")
    return Case("measure", ["--detections", csv_path, "-p", inp.annotations, "--split", "all",
                            "--output", work / "eval"], ("det.csv", "lacks column", "score"))


def ip_measure_output_not_writable(inp: Inputs, work: Path) -> Case:
    return Case("measure", ["--config_filename", inp.config, "--split", "all", "--output", "/proc/no_such_dir/eval"],
                ("/proc/no_such_dir/eval", "cannot create output directory"))


def ip_measure_annotation_with_missing_image(inp: Inputs, work: Path) -> Case:
    ann = write(work / "ann.txt", f"{work / 'gone.png'},10,10,40,40,mitochondrion\n")
    return Case("measure", ["--config_filename", inp.config, "-p", ann, "--split", "all", "--output", work / "eval"],
                ("ann.txt:1", "image file not found"))


def ip_export_corrupt_mrc(inp: Inputs, work: Path) -> Case:
    (work / "corrupt.mrc").write_bytes(np.random.default_rng(0).bytes(5000))
    return Case("tomo", ["export", "--input", work / "corrupt.mrc", "--out", work / "png", "--every", "1"],
                ("corrupt.mrc", "not an MRC file"))


def ip_export_truncated_mrc(inp: Inputs, work: Path) -> Case:
    path = mrc(work / "trunc.mrc")
    path.write_bytes(path.read_bytes()[:2000])
    return Case("tomo", ["export", "--input", path, "--out", work / "png", "--every", "1"],
                ("trunc.mrc", "truncated MRC file"))


def ip_export_inf_voxel(inp: Inputs, work: Path) -> Case:
    path = mrc(work / "inf.mrc", nan_at=(1, 3, 3), value=np.inf)
    # slice 0 was exported (a complete PNG + sidecar pair) before slice 1 was found bad; slice 1 is not
    return Case("tomo", ["export", "--input", path, "--out", work / "png", "--every", "1"],
                ("inf.mrc", "slice 1", "NaN/Inf"), allowed_new=("png/inf_z0000.png", "png/inf_z0000.png.json"))


def ip_export_output_not_writable(inp: Inputs, work: Path) -> Case:
    path = mrc(work / "good.mrc")
    return Case("tomo", ["export", "--input", path, "--out", inp.regular_file / "sub", "--z", "0"],
                ("a_regular_file/sub", "Not a directory"))


def ip_masks_nan_float_mask(inp: Inputs, work: Path) -> Case:
    (work / "masks").mkdir()
    mask = np.zeros((TOY_SIZE, TOY_SIZE), np.float32)
    mask[3, 3] = np.nan
    cv2.imwrite(str(work / "masks" / "toy_g000_z00.tif"), mask)
    return Case("masks", ["--masks", work / "masks", "--images", inp.image.parent, "--out", work / "boxes"],
                ("toy_g000_z00.tif", "NaN/Inf"))


def ip_masks_output_not_writable(inp: Inputs, work: Path) -> Case:
    (work / "masks").mkdir()
    mask = np.zeros((TOY_SIZE, TOY_SIZE), np.uint8)
    mask[10:30, 10:30] = 1
    cv2.imwrite(str(work / "masks" / "toy_g000_z00.png"), mask)
    return Case("masks", ["--masks", work / "masks", "--images", inp.image.parent, "--out", inp.regular_file / "sub"],
                ("a_regular_file/sub", "Not a directory"))


IN_PROCESS_CASES: dict[str, Callable[[Inputs, Path], Case]] = {
    "simple_empty_box_x2_le_x1": simple_case("IMAGE,40,10,40,40,mitochondrion\n", "ann.txt:1", "empty box"),
    "simple_negative_coordinate": simple_case("IMAGE,-5,10,40,40,mitochondrion\n", "ann.txt:1", "negative"),
    "simple_too_few_fields": simple_case("IMAGE,10,10,40,mitochondrion\n", "ann.txt:1", "expected 6 or 7", "got 5"),
    "simple_too_many_fields": simple_case("IMAGE,10,10,40,40,mitochondrion,g1,extra\n", "ann.txt:1", "got 8"),
    "simple_missing_image": simple_case("/nonexistent/slice.png,10,10,40,40,mitochondrion\n", "ann.txt:1",
                                        "image file not found"),
    "simple_nan_coordinate": simple_case("IMAGE,nan,10,40,40,mitochondrion\n", "ann.txt:1", "not a finite number"),
    "simple_empty_file": simple_case("", "ann.txt", "no annotated images"),
    "simple_reserved_class_bg": simple_case("IMAGE,10,10,40,40,bg\n", "ann.txt:1", "reserved"),
    "simple_no_boxes_at_all": simple_case("IMAGE,,,,,\n", "ann.txt", "no boxes in any image"),
    "simple_not_utf8": ip_simple_not_utf8,
    "xml_empty": voc_case("", "a.xml", "XML file is empty"),
    "xml_malformed": voc_case("<annotation><filename>a.png", "a.xml", "malformed XML"),
    "xml_no_object_anywhere": voc_case(voc_xml(""), "voc", "no boxes in any image"),
    "xml_box_outside_image": voc_case(voc_xml(voc_object(box=(10, 10, 400, 40))), "a.xml:1", "outside the 96x96"),
    "xml_box_x2_le_x1": voc_case(voc_xml(voc_object(box=(40, 10, 30, 40))), "a.xml:1", "empty box"),
    "xml_negative_coordinate": voc_case(voc_xml(voc_object(box=(-3, 10, 30, 40))), "a.xml:1", "negative"),
    "xml_image_missing": voc_case(voc_xml(voc_object(), filename="gone.png"), "a.xml", "image file not found"),
    "xml_size_disagrees_with_image": voc_case(voc_xml(voc_object()).replace("<width>96", "<width>512"),
                                              "a.xml:1", "<size> says 512x96"),
    "xml_two_files_for_one_image": ip_xml_two_files_for_one_image,
    "xml_billion_laughs": ip_xml_billion_laughs,
    "folder_without_annotations": ip_folder_without_annotations,
    "train_output_not_writable": ip_train_output_not_writable,
    "train_config_not_writable": ip_train_config_not_writable,
    "predict_folder_without_images": ip_predict_folder_without_images,
    "predict_missing_input": ip_predict_missing_input,
    "predict_corrupt_image_among_good": ip_predict_corrupt_image_among_good,
    "predict_zero_byte_image": ip_predict_zero_byte_image,
    "measure_config_pickle_that_runs_code": ip_measure_config_pickle_that_runs_code,
    "measure_truncated_config_pickle": ip_measure_truncated_config_pickle,
    "measure_csv_nan_score": ip_measure_csv_nan_score,
    "measure_csv_missing_column": ip_measure_csv_missing_column,
    "measure_output_not_writable": ip_measure_output_not_writable,
    "measure_annotation_with_missing_image": ip_measure_annotation_with_missing_image,
    "export_corrupt_mrc": ip_export_corrupt_mrc,
    "export_truncated_mrc": ip_export_truncated_mrc,
    "export_inf_voxel": ip_export_inf_voxel,
    "export_output_not_writable": ip_export_output_not_writable,
    "masks_nan_float_mask": ip_masks_nan_float_mask,
    "masks_output_not_writable": ip_masks_output_not_writable,
}


# ------------------------------------------------------------------------------------------
# running and checking
# ------------------------------------------------------------------------------------------
def command(tool: str, args: list) -> list[str]:
    """The command line a user types for ``tool``."""
    if tool in SCRIPTS:
        return [sys.executable, str(ROOT / SCRIPTS[tool]), *map(str, args)]
    return [sys.executable, "-m", MODULES[tool], *map(str, args)]


def run_subprocess(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
                          check=False)


def run_in_process(tool: str, args: list) -> int:
    """What each script's ``__main__`` does, in this process."""
    argv = list(map(str, args))
    if tool == "tomo":
        return tomo_io.console_main(argv)
    if tool == "masks":
        return masks_to_boxes.console_main(argv)
    module = {"train": train, "predict": predict, "measure": evaluation}[tool]
    return run_cli(module.main, module.build_parser(), argv)


def files_under(*roots: Path) -> set[str]:
    """Every file below ``roots`` (absolute paths)."""
    found = set()
    for root in roots:
        for folder, _, names in os.walk(root):
            found.update(os.path.join(folder, name) for name in names)
    return found


def check_outcome(case: Case, returncode: int, stdout: str, stderr: str, work: Path, new_files: set[str],
                  inp: Inputs) -> None:
    """The assertions every case shares (see the module docstring), then the case's own.

    ``inp`` is the case's own (hard-linked) view of the model; its files must keep the original stat."""
    if case.ok:
        assert returncode == 0, stderr[-3000:]
        assert "error:" not in stderr
    else:
        assert returncode == 2, (returncode, stderr[-3000:])
        errors = [line for line in stderr.splitlines() if "error:" in line]
        assert len(errors) == 1, stderr[-3000:]
        assert errors[0].startswith("error: "), errors[0]       # on a line of its own, not after a progress bar
        for needle in case.needles:
            assert needle in errors[0], (needle, errors[0])
    assert "Traceback" not in stderr
    allowed = {str(work / name) for name in case.allowed_new}
    assert new_files <= allowed, sorted(new_files - allowed)
    assert model_stat(inp.model_dir) == inp.model_stat, "the existing model files were written"
    if case.check is not None:
        case.check(work, stdout + stderr)


@dataclass
class SubprocessRun:
    case: Case
    work: Path
    inputs: Inputs
    proc: subprocess.CompletedProcess
    new_files: set[str]
    seconds: float


@pytest.fixture(scope="module")
def subprocess_runs(inputs, tmp_path_factory) -> dict[str, SubprocessRun]:
    """Every SUBPROCESS_CASES entry run as a real command, PARALLEL_RUNS at a time."""
    root = tmp_path_factory.mktemp("subprocess_cases")
    prepared = {}
    for name, build in SUBPROCESS_CASES.items():
        work = root / name
        work.mkdir()
        own = case_inputs(inputs, work)
        prepared[name] = (build(own, work), work, own, files_under(work))

    def run(name: str) -> SubprocessRun:
        case, work, own, before = prepared[name]
        start = time.monotonic()
        proc = run_subprocess(command(case.tool, case.args), cwd=work)
        return SubprocessRun(case, work, own, proc, files_under(work) - before, time.monotonic() - start)

    with ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as pool:
        return dict(zip(prepared, pool.map(run, prepared)))


def test_catalogue_is_large_enough():
    assert len(SUBPROCESS_CASES) >= 12
    assert len(SUBPROCESS_CASES) + len(IN_PROCESS_CASES) >= 25


@pytest.mark.parametrize("name", list(SUBPROCESS_CASES))
def test_subprocess_case(name, subprocess_runs):
    run = subprocess_runs[name]
    check_outcome(run.case, run.proc.returncode, run.proc.stdout, run.proc.stderr, run.work, run.new_files,
                  run.inputs)


@pytest.mark.parametrize("name", list(IN_PROCESS_CASES))
def test_in_process_case(name, inputs, tmp_path, capsys):
    own = case_inputs(inputs, tmp_path)
    case = IN_PROCESS_CASES[name](own, tmp_path)
    before = files_under(tmp_path)
    capsys.readouterr()
    returncode = run_in_process(case.tool, case.args)
    captured = capsys.readouterr()
    check_outcome(case, returncode, captured.out, captured.err, tmp_path, files_under(tmp_path) - before, own)


# ------------------------------------------------------------------------------------------
# a write that fails half-way (disk full)
# ------------------------------------------------------------------------------------------
def disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_detections_csv(inputs, tmp_path, monkeypatch, capsys):
    """The CSV writer fails after part of its first row: no detections.csv, no temporary file, one line."""
    class HalfWriter:
        def __init__(self, handle, *args, **kwargs):
            self.handle = handle

        def writerow(self, row):
            self.handle.write(",".join(map(str, row))[:5])
            self.handle.flush()
            raise disk_full()

    monkeypatch.setattr(detections_csv.csv, "writer", HalfWriter)
    case = Case("predict", predict_args(inputs, tmp_path, inputs.image, "--no-overlays", "--threshold", "0"),
                ("detections.csv", "No space left on device"))
    returncode = run_in_process(case.tool, case.args)
    captured = capsys.readouterr()
    check_outcome(case, returncode, captured.out, captured.err, tmp_path, files_under(tmp_path), inputs)
    assert os.listdir(tmp_path / "out") == []


def test_disk_full_while_saving_weights_keeps_the_old_model(inputs, tmp_path, monkeypatch, capsys):
    """Training over an existing model; the weights save dies half-way with ENOSPC.

    The old weights and config stay byte for byte (the config is written only after this run's first
    weights save succeeded), the half-written temporary file is removed, the error is one line.
    Training steps are stubbed (constant finite losses): the save path is what is under test.
    """
    import keras
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in MODEL_FILES:
        shutil.copy2(inputs.model_dir / name, model_dir / name)
    before = {name: sha256(model_dir / name) for name in MODEL_FILES}
    monkeypatch.setattr(Trainer, "train_on_batch", lambda self, samples, rng: [{
        "rpn_cls": 0.6, "rpn_regr": 0.2, "cls_cls": 0.7, "cls_regr": 0.3, "cls_acc": 0.5, "pos_fraction": 0.25}
        for _ in samples])
    real_save = keras.Model.save_weights
    sizes = []

    def save_half_then_disk_full(self, filepath, *args, **kwargs):
        real_save(self, filepath, *args, **kwargs)
        size = os.path.getsize(filepath)
        with open(filepath, "r+b") as handle:
            handle.truncate(size // 2)
        sizes.append(size)
        raise disk_full()

    monkeypatch.setattr(keras.Model, "save_weights", save_half_then_disk_full)
    args = ["-p", inputs.annotations, *TOY_ARGS, "--num_epochs", "1", "--epoch_length", "1",
            "--output_weight_path", model_dir / "model_frcnn.weights.h5",
            "--config_filename", model_dir / "config.pickle", "--split-file", tmp_path / "split.json"]
    returncode = run_in_process("train", args)
    captured = capsys.readouterr()
    assert sizes, "the weights save was never reached"
    assert returncode == 2
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), captured.err[-2000:]
    assert "model_frcnn.weights.h5" in errors[0] and "No space left on device" in errors[0]
    assert "Traceback" not in captured.err
    assert sorted(os.listdir(model_dir)) == sorted(MODEL_FILES)      # no .tmp_*, no state, no log
    assert {name: sha256(model_dir / name) for name in MODEL_FILES} == before


# ------------------------------------------------------------------------------------------
# valid but unusual inputs, parsers and loaders directly
# ------------------------------------------------------------------------------------------
def test_xml_without_object_is_an_image_without_objects(inputs, tmp_path):
    from keras_frcnn_cryo import pascal_voc_parser
    folder = voc_folder(inputs, tmp_path, voc_xml(""))
    shutil.copy(inputs.image, folder / "b.png")
    write(folder / "b.xml", voc_xml(voc_object(), filename="b.png"))
    records, counts, mapping = pascal_voc_parser.get_data(str(folder))
    by_name = {os.path.basename(r["filepath"]): r for r in records}
    assert by_name["a.png"]["bboxes"] == [] and len(by_name["b.png"]["bboxes"]) == 1
    assert mapping == {"mitochondrion": 0, "bg": 1} and counts["mitochondrion"] == 1


def test_duplicate_simple_lines_are_kept_once_with_a_warning(inputs, tmp_path):
    from keras_frcnn_cryo import simple_parser
    line = f"{inputs.image},10,10,40,40,mitochondrion\n"
    ann = write(tmp_path / "ann.txt", line + line + f"{inputs.image},50,50,80,80,mitochondrion\n")
    with pytest.warns(UserWarning, match="duplicate box"):
        records, _, _ = simple_parser.get_data(str(ann))
    assert len(records) == 1 and len(records[0]["bboxes"]) == 2


def test_older_and_keras_frcnn_config_pickles_load_with_defaults(inputs, tmp_path):
    with pytest.warns(UserWarning, match="balanced_classes"):
        old = load_config(str(older_layout_pickle(inputs, tmp_path / "old.pickle")))
    assert old.im_size == TOY_SIZE and old.class_names == ["mitochondrion", "bg"]
    assert old.bilateral_method == Config().bilateral_method and old.track_max_gap == Config().track_max_gap

    # keras-frcnn's own config.pickle refers to keras_frcnn.config.Config
    legacy_module = types.ModuleType("keras_frcnn.config")

    class LegacyConfig:
        pass
    LegacyConfig.__module__, LegacyConfig.__qualname__, LegacyConfig.__name__ = "keras_frcnn.config", "Config", "Config"
    legacy_module.Config = LegacyConfig
    legacy = LegacyConfig()
    legacy.__dict__.update(im_size=300, num_rois=4, class_mapping={"mito": 0, "bg": 1}, anchor_box_scales=[64, 128])
    modules = {"keras_frcnn": types.ModuleType("keras_frcnn"), "keras_frcnn.config": legacy_module}
    sys.modules.update(modules)
    try:
        (tmp_path / "legacy.pickle").write_bytes(pickle.dumps(legacy, protocol=2))
    finally:
        for name in modules:
            del sys.modules[name]
    loaded = load_config(str(tmp_path / "legacy.pickle"))
    assert (loaded.im_size, loaded.num_rois, loaded.anchor_box_scales) == (300, 4, [64, 128])
    assert loaded.rpn_stride == Config().rpn_stride


def test_debug_keeps_the_traceback(inputs, tmp_path):
    ann = write(tmp_path / "ann.txt", f"{inputs.image},40,10,40,40,mitochondrion\n")
    with pytest.raises(CryoError, match="empty box"):
        run_in_process("train", train_args(inputs, tmp_path, ann, "--debug"))


def test_model_files_untouched_by_the_whole_catalogue(inputs, subprocess_runs):
    """Last: byte-for-byte, after every case above has run against this model."""
    assert {name: sha256(inputs.model_dir / name) for name in MODEL_FILES} == inputs.model_sha256
