"""Tests of the synthetic cryo-ET generator (tiny volumes; each runs in well under a second or two)."""
from __future__ import annotations

import json
import math
import os
import re

import cv2
import mrcfile
import numpy as np
import pytest

from keras_frcnn_cryo import synthetic
from keras_frcnn_cryo.errors import CryoError

SHAPE = (16, 96, 96)
APIX = 100.0          # 96 px = 960 nm: mitochondria 20-50 px wide
TILTS = dict(tilt_range=(-60.0, 60.0), tilt_step=10.0)


@pytest.fixture(scope="module")
def tomo() -> dict:
    return synthetic.generate_tomogram(SHAPE, APIX, snr=0.1, n_mito=3, seed=7, second_class=True,
                                       keep_clean=True, return_masks=True, **TILTS)


def _min_area_px() -> float:
    return synthetic.PARAMS.min_area_nm2 / (APIX / 10.0) ** 2


def _paint(mask_entry: dict, shape: tuple[int, int, int]) -> np.ndarray:
    """Brute force: the object's voxels inside the field of view as a full boolean volume."""
    full = np.zeros(shape, bool)
    z0, y0, x0 = mask_entry["origin"]
    for k, j, i in np.argwhere(mask_entry["mask"]):
        z, y, x = z0 + k, y0 + j, x0 + i
        if 0 <= z < shape[0] and 0 <= y < shape[1] and 0 <= x < shape[2]:
            full[z, y, x] = True
    return full


def test_determinism_for_a_seed(tomo: dict) -> None:
    again = synthetic.generate_tomogram(SHAPE, APIX, snr=0.1, n_mito=3, seed=7, second_class=True, **TILTS)
    np.testing.assert_array_equal(again["tomogram"], tomo["tomogram"])
    np.testing.assert_array_equal(again["tilts"], tomo["tilts"])
    assert again["objects"] == tomo["objects"]
    assert again["slice_boxes"] == tomo["slice_boxes"]
    assert again["tilt_boxes"] == tomo["tilt_boxes"]
    other = synthetic.generate_tomogram(SHAPE, APIX, snr=0.1, n_mito=3, seed=8, **TILTS)
    assert not np.allclose(other["tomogram"], tomo["tomogram"])


def test_output_layout(tomo: dict) -> None:
    n_tilts = 13
    assert tomo["tomogram"].shape == SHAPE and tomo["tomogram"].dtype == np.float32
    assert tomo["tilts"].shape == (n_tilts, 96, 96) and tomo["tilts"].dtype == np.float32
    assert tomo["angles"] == [-60.0 + 10.0 * k for k in range(n_tilts)]
    assert sorted(tomo["slice_boxes"]) == list(range(SHAPE[0]))
    assert sorted(tomo["tilt_boxes"]) == list(range(n_tilts))
    assert tomo["pixel_size_a"] == APIX
    assert sum(o["class"] == synthetic.MITO_CLASS for o in tomo["objects"]) == 3
    assert len(tomo["masks"]) == len(tomo["objects"])
    assert abs(float(tomo["tomogram"].mean())) < 1e-4 and abs(float(tomo["tomogram"].std()) - 1.0) < 1e-3


def test_default_angles_match_the_paper() -> None:
    angles = synthetic.tilt_angles()
    assert len(angles) == 81 and angles[0] == -60.0 and angles[-1] == 60.0 and angles[41] == 1.5
    with pytest.raises(CryoError):
        synthetic.tilt_angles((-60, 60), 0.0)


def _key(box: dict) -> tuple:
    return (box["class"], box["x1"], box["y1"], box["x2"], box["y2"])


def _check_boxes_against_masks(result: dict) -> int:
    """Recompute 3D, slice and tilt boxes from the masks by brute force; returns the number of slice boxes."""
    nz, ny, nx = SHAPE
    min_area = _min_area_px()
    expected = {z: [] for z in range(nz)}
    for entry, obj in zip(result["masks"], result["objects"]):
        full = _paint(entry, SHAPE)
        zs, ys, xs = np.nonzero(full)
        assert obj["box3d"] == [xs.min(), ys.min(), zs.min(), xs.max() + 1, ys.max() + 1, zs.max() + 1]
        outside_x = entry["mask"].sum() > full.sum()            # voxels beyond the field's x border
        touches = xs.min() == 0 or ys.min() == 0 or xs.max() == nx - 1 or ys.max() == ny - 1
        assert obj["incomplete"] == bool(outside_x or touches)
        assert obj["cut_z"] == bool(zs.min() == 0 or zs.max() == nz - 1)
        for z in range(nz):
            pts = np.argwhere(full[z])
            if len(pts) >= min_area:
                expected[z].append({"class": entry["class"], "x1": float(pts[:, 1].min()), "y1": float(pts[:, 0].min()),
                                    "x2": float(pts[:, 1].max() + 1), "y2": float(pts[:, 0].max() + 1)})
    for z in range(nz):
        assert sorted(result["slice_boxes"][z], key=_key) == sorted(expected[z], key=_key), z
    for i, angle in enumerate(result["angles"]):
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        tilt_expected = []
        for entry in result["masks"]:
            k, j, e = np.nonzero(entry["mask"])
            z, y, x = k + entry["origin"][0], j + entry["origin"][1], e + entry["origin"][2]
            # every corner of every voxel square in (x, z), as a detector coordinate from the left edge
            ts = [(x + dx - nx / 2.0) * c + (z + dz - nz / 2.0) * s + nx / 2.0 for dx in (0, 1) for dz in (0, 1)]
            x1, x2 = max(0.0, min(t.min() for t in ts)), min(float(nx), max(t.max() for t in ts))
            y1, y2 = max(0.0, float(y.min())), min(float(ny), float(y.max() + 1))
            if x2 > x1 and (x2 - x1) * (y2 - y1) >= min_area:
                tilt_expected.append((entry["class"], x1, y1, x2, y2))
        got = sorted(_key(b) for b in result["tilt_boxes"][i])
        assert len(got) == len(tilt_expected)
        for g, e in zip(got, sorted(tilt_expected)):
            assert g[0] == e[0]
            np.testing.assert_allclose(g[1:], e[1:], atol=1e-6)
    return sum(len(v) for v in expected.values())


def test_boxes_match_masks(tomo: dict) -> None:
    assert _check_boxes_against_masks(tomo) > 0


@pytest.mark.parametrize("seed", range(6))
def test_boxes_match_masks_over_seeds(seed: int) -> None:
    """Random counts (0-4 mitochondria, droplets labelled), cell edges, border cuts: still exact boxes."""
    result = synthetic.generate_tomogram(SHAPE, APIX, snr=0.1, seed=seed, second_class=True, return_masks=True,
                                         **TILTS)
    _check_boxes_against_masks(result)


@pytest.mark.parametrize("snr", [0.06, 0.12])
def test_noise_matches_target_snr(snr: float) -> None:
    out = synthetic.generate_tomogram(SHAPE, APIX, snr=snr, n_mito=1, seed=3, keep_clean=True, **TILTS)
    clean, noisy = out["tilts_clean"].astype(np.float64), out["tilts"].astype(np.float64)
    signal_var = np.mean([img.var() for img in clean])
    noise_var = np.mean([img.var() for img in noisy - clean])
    assert signal_var / noise_var == pytest.approx(snr, rel=0.03)
    assert synthetic.measured_snr(out["tilts_clean"], out["tilts"]) == pytest.approx(snr, rel=0.03)


def test_projection_geometry_of_a_blob() -> None:
    """Ray sums keep the mass, and the blob's centroid lands at t = u cos + w sin (brute force reference)."""
    nz, ny, nxe, width = 20, 8, 80, 48
    zz, xx = np.mgrid[0:nz, 0:nxe].astype(float)
    z0, x0 = 6.3, 47.0                                                     # voxel-centre coordinates
    blob = np.exp(-((zz - z0) ** 2 + (xx - x0) ** 2) / (2 * 1.5 ** 2))
    vol = np.repeat(blob[:, None, :], ny, axis=1).astype(np.float32)
    angles = [-50.0, -20.0, 0.0, 35.0]
    proj = synthetic.project_tilt_series(vol, angles, width)
    assert proj.shape == (4, ny, width)
    u0, w0 = x0 + 0.5 - nxe / 2.0, z0 + 0.5 - nz / 2.0
    cols = np.arange(width) + 0.5
    for i, angle in enumerate(angles):
        th = math.radians(angle)
        row = proj[i, 3].astype(np.float64)
        assert row.sum() == pytest.approx(blob.sum(), rel=1e-3)
        expected = u0 * math.cos(th) + w0 * math.sin(th) + width / 2.0
        assert (row * cols).sum() / row.sum() == pytest.approx(expected, abs=0.02)


def test_wbp_puts_a_point_back_where_it_was() -> None:
    nz, ny, nx = 16, 4, 64
    vol = np.zeros((nz, ny, nx + 2 * 40), np.float32)
    vol[5, :, 40 + 37] = 1.0
    angles = synthetic.tilt_angles((-60, 60), 3.0)
    rec = synthetic.reconstruct_wbp(synthetic.project_tilt_series(vol, angles, nx), angles, nz)
    z, x = np.unravel_index(np.argmax(rec[:, 2, :]), (nz, nx))
    assert (z, x) == (5, 37)


def test_labels_sit_where_the_reconstruction_shows_the_objects() -> None:
    """No shift between a high-SNR reconstruction and its label masks: the cross-power spectrum of the
    negated slices (density dark) against the masks, summed over slices, peaks at (0, 0) to a fraction
    of a pixel (sub-pixel by a parabola through the peak and its neighbours)."""
    result = synthetic.generate_tomogram(SHAPE, APIX, snr=100.0, n_mito=3, seed=3, return_masks=True, **TILTS)
    density = -result["tomogram"]
    labels = np.zeros(SHAPE, np.float32)
    for entry in result["masks"]:
        labels[_paint(entry, SHAPE)] = 1.0
    cross = np.zeros(SHAPE[1:], np.complex128)
    for z in range(SHAPE[0]):
        if labels[z].sum() > 20:
            a, b = density[z] - density[z].mean(), labels[z] - labels[z].mean()
            cross += np.fft.fft2(a) * np.conj(np.fft.fft2(b))
    corr = np.fft.fftshift(np.real(np.fft.ifft2(cross)))
    iy, ix = np.unravel_index(np.argmax(corr), corr.shape)

    def vertex(left: float, mid: float, right: float) -> float:
        return 0.5 * (left - right) / (left - 2 * mid + right)
    dy = iy + vertex(*corr[iy - 1:iy + 2, ix]) - SHAPE[1] // 2
    dx = ix + vertex(*corr[iy, ix - 1:ix + 2]) - SHAPE[2] // 2
    assert abs(dy) < 0.3 and abs(dx) < 0.3, (dy, dx)


def test_density_is_dark_in_the_tomogram(tomo: dict) -> None:
    """Inside a lipid droplet or mitochondrion (dense) the clean tilt at 0 degrees is darker than average."""
    zero = tomo["angles"].index(0.0)
    clean = tomo["tilts_clean"][zero]
    entry = max(tomo["masks"], key=lambda m: m["mask"].sum())
    footprint = _paint(entry, SHAPE).any(axis=0)
    assert footprint.sum() > 50
    assert clean[footprint].mean() < clean[~footprint].mean()


def test_write_dataset_files_parse(tmp_path) -> None:
    out = str(tmp_path / "ds")
    summary = synthetic.write_dataset(out, 3, seed=1, shape=(12, 64, 64), snr_range=(0.06, 0.12), slice_step=4,
                                      second_class=True, pixel_size_a=140.0, tilt_step=15.0, progress=False)
    n_tilts = len(synthetic.tilt_angles((-60, 60), 15.0))
    names = summary["names"]
    assert names == ["tomo_00", "tomo_01", "tomo_02"]
    for name in names:
        with mrcfile.open(os.path.join(out, "tomograms", name + ".mrc"), permissive=False) as mrc:
            assert mrc.data.shape == (12, 64, 64) and mrc.data.dtype == np.float32
            assert float(mrc.voxel_size.x) == pytest.approx(140.0)
        with mrcfile.open(os.path.join(out, "tilts", name + ".mrc")) as mrc:
            assert mrc.data.shape == (n_tilts, 64, 64)
        with open(os.path.join(out, "tilts", name + ".tlt")) as fh:
            angles = [float(v) for v in fh.read().split()]
        assert len(angles) == n_tilts and angles[0] == -60.0 and angles[-1] == 60.0
    pattern = re.compile(r"^images/tomo_\d\d_z\d{4}\.png$")
    seen = set()
    with open(summary["annotations"]) as fh:
        lines = fh.read().splitlines()
    for line in lines:
        fields = line.split(",")
        assert len(fields) == 6 and pattern.match(fields[0])
        assert os.path.isfile(os.path.join(out, fields[0]))
        seen.add(fields[0])
        if fields[1:] == [""] * 5:
            continue
        x1, y1, x2, y2 = (float(v) for v in fields[1:5])
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        assert fields[5] in (synthetic.MITO_CLASS, synthetic.DROPLET_CLASS)
    assert len(seen) == 3 * 3 == summary["n_images"]          # z = 2, 6, 10 per tomogram
    img = cv2.imread(os.path.join(out, sorted(seen)[0]), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint8 and img.shape == (64, 64)
    with open(summary["annotations_3d"]) as fh:
        rows = fh.read().splitlines()
    assert rows[0] == "tomogram,class,x1,y1,z1,x2,y2,z2,incomplete"
    for row in rows[1:]:
        fields = row.split(",")
        assert fields[0] in names and fields[8] in ("0", "1")
        x1, y1, z1, x2, y2, z2 = (float(v) for v in fields[2:8])
        assert x1 < x2 and y1 < y2 and z1 < z2 <= 12
    with open(summary["split"]) as fh:
        groups = json.load(fh)["groups"]
    split = {k: [g for g, v in groups.items() if v == k] for k in ("train", "test")}
    assert sorted(split["train"] + split["test"]) == names and not set(split["train"]) & set(split["test"])
    assert len(split["test"]) == 1
    leftovers = [f for _, _, files in os.walk(out) for f in files if f.startswith(".tmp_")]
    assert leftovers == []


def test_toy_image() -> None:
    image, boxes = synthetic.make_toy_image(size=128, n_objects=3, seed=4, snr=2.0)
    assert image.dtype == np.uint8 and image.shape == (128, 128)
    assert boxes.shape == (3, 4)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert np.all((widths >= 19) & (widths <= 51) & (heights >= 19) & (heights <= 51))
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= 128)
    inside = np.zeros(image.shape, bool)
    for x1, y1, x2, y2 in boxes.astype(int):
        inside[y1:y2, x1:x2] = True
    assert image[inside].mean() < image[~inside].mean() - 10        # dark organelles on a light background
    again, boxes_again = synthetic.make_toy_image(size=128, n_objects=3, seed=4, snr=2.0)
    np.testing.assert_array_equal(again, image)
    np.testing.assert_array_equal(boxes_again, boxes)
    with pytest.raises(CryoError):
        synthetic.make_toy_image(size=16, n_objects=1)


def test_toy_dataset(tmp_path) -> None:
    path = synthetic.write_toy_dataset(str(tmp_path), 10, size=96, seed=2)
    assert path == os.path.join(str(tmp_path), "annotations.txt")
    with open(path) as fh:
        lines = fh.read().splitlines()
    images = {line.split(",")[0] for line in lines}
    assert len(images) == 10
    groups = {re.match(r"^images/(toy_g\d{3})_z\d\d\.png$", name).group(1) for name in images}
    assert len(groups) == 3                                          # 4 + 4 + 2 images
    for line in lines:
        name, x1, y1, x2, y2, cls = line.split(",")
        assert cls == synthetic.MITO_CLASS and 0 <= float(x1) < float(x2) <= 96 and 0 <= float(y1) < float(y2) <= 96
        assert cv2.imread(os.path.join(str(tmp_path), name), cv2.IMREAD_UNCHANGED).shape == (96, 96)
    with open(os.path.join(str(tmp_path), "annotations.split.json")) as fh:
        groups_split = json.load(fh)["groups"]
    split = {k: [g for g, v in groups_split.items() if v == k] for k in ("train", "test")}
    assert sorted(split["train"] + split["test"]) == sorted(groups)


def test_cli(tmp_path, capsys) -> None:
    out = str(tmp_path / "cli")
    assert synthetic.console_main(["--out", out, "--tomograms", "1", "--size", "48", "--slices", "8", "--apix", "200",
                           "--tilt-step", "20", "--quiet"]) == 0
    assert os.path.isfile(os.path.join(out, "annotations.txt"))
    assert synthetic.console_main(["--out", out, "--tomograms", "1", "--snr-min", "0"]) == 2
    assert "error:" in capsys.readouterr().err
    assert synthetic.console_main(["--out", str(tmp_path / "toy"), "--tomograms", "1", "--toy", "--size", "64"]) == 0
    assert len(os.listdir(tmp_path / "toy" / "images")) == synthetic.TOY_IMAGES_PER_GROUP


def test_render_preview_shows_slices_smoothed_slices_and_tilts(tomo: dict) -> None:
    picture = synthetic.render_preview(tomo, n_slices=3, n_tilts=2)
    tilt_h, tilt_w = tomo["tilts"].shape[1:]
    assert picture.dtype == np.uint8 and picture.ndim == 3
    assert picture.shape[:2] == (2 * (SHAPE[1] + 4) + tilt_h + 4, max(3 * SHAPE[2], 2 * tilt_w))
    # the ground-truth boxes of the shown slices, in their class colours
    shown = np.linspace(SHAPE[0] * 0.15, SHAPE[0] * 0.85, 3).astype(int)
    classes = {box["class"] for z in shown for box in tomo["slice_boxes"].get(int(z), [])}
    assert synthetic.MITO_CLASS in classes
    for name in classes:
        colour = np.array(synthetic.CLASS_COLOURS[name], np.uint8)
        assert np.all(picture == colour, axis=2).any(), name
    assert synthetic.render_preview(tomo, n_slices=2, n_tilts=1, smooth_sigma=0).shape[0] == SHAPE[1] + 4 + tilt_h + 4


def test_a_lamella_thinner_than_the_reconstruction_adds_vacuum_only() -> None:
    """specimen_slices: the same tilt series as the thin volume of that depth (same seed), boxes and
    masks shifted by the vacuum above; the extra slices hold no labels; the middle ones look alike."""
    thin = synthetic.generate_tomogram(SHAPE, APIX, snr=0.1, n_mito=2, seed=5, return_masks=True, **TILTS)
    thick = synthetic.generate_tomogram((SHAPE[0] + 8, *SHAPE[1:]), APIX, snr=0.1, n_mito=2, seed=5,
                                        return_masks=True, specimen_slices=SHAPE[0], **TILTS)
    assert np.array_equal(thin["tilts"], thick["tilts"])
    assert thin["specimen_z"] == [0, SHAPE[0]] and thick["specimen_z"] == [4, 4 + SHAPE[0]]
    assert thick["tomogram"].shape == (SHAPE[0] + 8, *SHAPE[1:])
    assert len(thin["objects"]) == len(thick["objects"]) > 0
    for a, b in zip(thin["objects"], thick["objects"]):
        assert b["box3d"] == [a["box3d"][0], a["box3d"][1], a["box3d"][2] + 4,
                              a["box3d"][3], a["box3d"][4], a["box3d"][5] + 4]
        assert a["cut_z"] == b["cut_z"]                       # cut by the lamella's faces, not the volume's
    for z in range(SHAPE[0]):
        assert thin["slice_boxes"][z] == thick["slice_boxes"][z + 4]
    assert all(not thick["slice_boxes"][z] for z in (0, 1, 2, 3, SHAPE[0] + 4, SHAPE[0] + 7))
    assert thin["tilt_boxes"] == thick["tilt_boxes"]
    assert [m["origin"][0] + 4 for m in thin["masks"]] == [m["origin"][0] for m in thick["masks"]]
    # back-projection is slice by slice: the lamella's slices match up to the standardisation
    corr = np.corrcoef(thin["tomogram"][SHAPE[0] // 2].ravel(), thick["tomogram"][SHAPE[0] // 2 + 4].ravel())[0, 1]
    assert corr > 0.999


@pytest.mark.parametrize("depth", [3, 15, 17, 40])
def test_specimen_slices_must_fit_centred(depth: int) -> None:
    with pytest.raises(CryoError, match="specimen slices"):
        synthetic.generate_tomogram(SHAPE, APIX, snr=0.1, n_mito=1, seed=5, specimen_slices=depth, **TILTS)
