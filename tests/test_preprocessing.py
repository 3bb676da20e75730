"""Tests for keras_frcnn_cryo.preprocessing (tiny synthetic images, independent references)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from keras_frcnn_cryo import preprocessing as pp
from keras_frcnn_cryo.config import Config


def _textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Standardized float32 test image: a dark disc, a bright band, smooth texture and white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    img = np.where((xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (min(height, width) / 3) ** 2, -2.0, 0.0)
    img += np.where(xx > width * 0.8, 1.5, 0.0)
    img += cv2.GaussianBlur(rng.standard_normal((height, width)), (0, 0), 3) * 3
    img += rng.standard_normal((height, width)) * 0.7
    return pp.standardize(img)


def _brute_force_bilateral(img: np.ndarray, sigma_r: float, sigma_d: float, radius: int) -> np.ndarray:
    """Direct bilateral sum over a circular window, reflect-101 borders (what cv2 documents)."""
    padded = np.pad(img.astype(np.float64), radius, mode="reflect")
    height, width = img.shape
    num = np.zeros((height, width))
    den = np.zeros((height, width))
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy > radius * radius:
                continue
            shifted = padded[radius + dy: radius + dy + height, radius + dx: radius + dx + width]
            weight = np.exp(-(dx * dx + dy * dy) / (2 * sigma_d ** 2) - (shifted - img) ** 2 / (2 * sigma_r ** 2))
            num += weight * shifted
            den += weight
    return num / den


# ------------------------------------------------------------------------------------------ standardize
def test_standardize_hand_computed():
    img = np.array([[0, 1, 2], [3, 4, 100]], dtype=np.int32)
    # median 2.5; |x - 2.5| = 2.5 1.5 0.5 0.5 1.5 97.5 -> MAD 1.5
    expected = (img - 2.5) / (1.4826 * 1.5)
    out = pp.standardize(img)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int64, np.float32, np.float64])
def test_standardize_dtypes_and_affine_invariance(dtype):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, size=(30, 40))
    ref = pp.standardize(base.astype(np.float64))
    np.testing.assert_allclose(pp.standardize(base.astype(dtype)), ref, atol=1e-6)
    np.testing.assert_allclose(pp.standardize(base * 0.037 - 1234.5), ref, atol=1e-4)
    assert abs(float(np.median(ref))) < 1e-6
    assert abs(1.4826 * float(np.median(np.abs(ref))) - 1.0) < 1e-5


def test_standardize_mad_zero_falls_back_to_std_and_constant_gives_zeros():
    img = np.zeros((10, 10), np.uint8)
    img[0, :3] = 200                        # > half the pixels equal: MAD = 0
    out = pp.standardize(img)
    assert np.isfinite(out).all() and abs(float(out.std()) - 1.0) < 1e-5
    assert float(np.median(out)) == 0.0
    const = pp.standardize(np.full((4, 5), 7.5))
    assert const.dtype == np.float32 and not const.any()


@pytest.mark.parametrize("bad", [np.zeros((3, 4, 2)), np.zeros(5), np.zeros((0, 3)),
                                 np.array([[1.0, np.nan]]), np.array([[1.0, np.inf]]),
                                 np.array([[1 + 1j, 2]])])
def test_standardize_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        pp.standardize(bad)


# --------------------------------------------------------------------------------------------- to_uint8
def test_to_uint8_hand_computed_and_clipping():
    img = np.arange(64, dtype=np.float64).reshape(1, 64)      # k * 255 / 63 is never a .5 tie
    out = pp.to_uint8(img, (0.0, 100.0))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], [int(k * 255 / 63 + 0.5) for k in range(64)])
    wide = np.linspace(0.0, 100.0, 101).reshape(1, 101)
    clipped = pp.to_uint8(wide, (10.0, 90.0))   # 10 -> 0, 90 -> 255, outside clipped
    assert clipped[0, :11].max() == 0 and clipped[0, 90:].min() == 255
    assert clipped[0, 30] == round(20 / 80 * 255)


def test_to_uint8_degenerate_ranges_and_bad_percentiles():
    assert not pp.to_uint8(np.full((3, 3), 4.0)).any()
    sparse = np.zeros((20, 20))
    sparse[0, 0] = 5.0                              # both percentiles 0: falls back to min..max
    out = pp.to_uint8(sparse, (1.0, 99.0))
    assert out[0, 0] == 255 and out.sum() == 255
    for bad in [(50.0, 50.0), (-1.0, 99.0), (1.0, 101.0), (60.0, 40.0)]:
        with pytest.raises(ValueError):
            pp.to_uint8(sparse, bad)


# ----------------------------------------------------------------------------------- equalize_histogram
def test_equalize_histogram_matches_numpy_reference():
    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(90, 12, (40, 50)), 0, 255).astype(np.uint8)
    hist = np.bincount(img.ravel(), minlength=256)
    cdf = np.cumsum(hist)
    cdf_min = cdf[hist > 0][0]
    lut = np.clip(np.rint((cdf - cdf_min) * 255.0 / (img.size - cdf_min)), 0, 255).astype(np.uint8)
    out = pp.equalize_histogram(img)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.abs(out.astype(int) - lut[img]).max() <= 1
    with pytest.raises(ValueError):
        pp.equalize_histogram(img.astype(np.float32))


# ------------------------------------------------------------------------------------- bilateral_filter
def test_exact_matches_brute_force_sum():
    img = _textured(24, 19, seed=2)
    sigma_d, sigma_r = 2.0, 0.8
    radius = math.ceil(pp.EXACT_RADIUS_SIGMAS * sigma_d)
    ref = _brute_force_bilateral(img, sigma_r, sigma_d, radius)
    out = pp.bilateral_filter(img, sigma_r, sigma_d, "exact")
    assert out.dtype == np.float32 and out.shape == img.shape
    assert np.abs(out - ref).max() < 2e-3 * float(img.std())


@pytest.mark.parametrize("shape,sigma_d,sigma_r", [((96, 128), 4.0, 1.2), ((128, 96), 6.0, 1.0),
                                                    ((150, 150), 3.0, 0.5), ((64, 64), 2.5, 2.0)])
def test_grid_agrees_with_exact(shape, sigma_d, sigma_r):
    # measured: mean |grid - exact| = 0.6-1.0 % of the image std, max 3-6 %, borders included
    img = _textured(*shape)
    exact = pp.bilateral_filter(img, sigma_r, sigma_d, "exact")
    grid = pp.bilateral_filter(img, sigma_r, sigma_d, "grid")
    assert grid.dtype == np.float32 and grid.shape == img.shape
    diff = np.abs(grid - exact)
    assert diff.mean() < 0.02 * float(img.std())
    assert diff.max() < 0.12 * float(img.std())
    # the filter does something substantial compared with the approximation error
    assert np.abs(exact - img).mean() > 10 * diff.mean()


@pytest.mark.parametrize("method", ["grid", "exact"])
def test_step_edge_stays_sharper_than_gaussian(method):
    rng = np.random.default_rng(3)
    img = np.zeros((60, 80), np.float32)
    img[:, 40:] = 5.0
    img += rng.normal(0, 0.3, img.shape).astype(np.float32)
    sigma_d = 6.0
    smooth = pp.bilateral_filter(img, 1.0, sigma_d, method)
    gauss = cv2.GaussianBlur(img, (0, 0), sigma_d)
    # height of the step between pixels 2 px either side of the edge (true: 5)
    bil_step = float(np.mean(smooth[:, 42] - smooth[:, 37]))
    gauss_step = float(np.mean(gauss[:, 42] - gauss[:, 37]))
    assert bil_step > 4.7 and gauss_step < 2.5
    # and flat regions are denoised
    assert float(smooth[:, 5:30].std()) < 0.5 * float(img[:, 5:30].std())


def test_grid_with_outliers_and_degenerate_shapes():
    rng = np.random.default_rng(4)
    img = rng.standard_normal((80, 90)).astype(np.float32)
    img[40, 40], img[5, 7] = 1000.0, -500.0          # hot and dead pixels: sparse range levels
    grid = pp.bilateral_filter(img, 1.0, 4.0, "grid")
    exact = pp.bilateral_filter(img, 1.0, 4.0, "exact")
    assert abs(grid[40, 40] - 1000.0) < 1e-2 and abs(grid[5, 7] + 500.0) < 1e-2
    assert np.abs(grid - exact).mean() < 0.02
    for shape in [(1, 1), (1, 40), (40, 1), (2, 2), (3, 50)]:
        small = rng.standard_normal(shape).astype(np.float32)
        out = pp.bilateral_filter(small, 1.0, 4.0, "grid")
        assert out.shape == shape and np.isfinite(out).all()
        assert np.abs(out - pp.bilateral_filter(small, 1.0, 4.0, "exact")).mean() < 0.1
    const = np.full((20, 30), 2.5, np.float32)
    np.testing.assert_array_equal(pp.bilateral_filter(const, 1.0, 4.0), const)


def test_bilateral_rejects_bad_arguments():
    img = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="unknown bilateral method"):
        pp.bilateral_filter(img, 1.0, 3.0, "fast")
    for sigma_r, sigma_d in [(0.0, 3.0), (1.0, -1.0), (float("nan"), 3.0)]:
        with pytest.raises(ValueError):
            pp.bilateral_filter(img, sigma_r, sigma_d)
    with pytest.raises(ValueError):
        pp.bilateral_filter(np.array([[0.0, np.nan]], np.float32), 1.0, 3.0)
    raw = np.random.default_rng(0).uniform(0, 60000, (200, 200)).astype(np.float32)
    with pytest.raises(ValueError, match="standardize"):
        pp.bilateral_filter(raw, 1.2, 5.0, "grid")    # unnormalised counts: grid refused, not OOM


# ------------------------------------------------------------------------------------- preprocess_image
def _raw_uint8(height: int = 90, width: int = 120) -> np.ndarray:
    img = _textured(height, width, seed=5)
    return np.clip(np.rint((img - img.min()) / (img.max() - img.min()) * 255), 0, 255).astype(np.uint8)


def test_preprocess_dtype_families_agree():
    base = _raw_uint8()
    cfg = Config()
    raw_cfg = Config(preprocess=False)
    ref, ref_raw = pp.preprocess_image(base, cfg), pp.preprocess_image(base, raw_cfg)
    assert ref.dtype == np.uint8 and ref.shape == base.shape
    for variant in [base.astype(np.uint16) * 257, base.astype(np.int32) - 100,
                    base.astype(np.float64) * 0.013 - 7.2, base.astype(np.float32) * -0.5 * -2.0 + 1e3]:
        np.testing.assert_array_less(np.abs(pp.preprocess_image(variant, raw_cfg).astype(int) - ref_raw), 2)
        diff = np.abs(pp.preprocess_image(variant, cfg).astype(int) - ref)
        assert diff.max() <= 2 and diff.mean() < 0.01


def test_preprocess_pipeline_steps_and_parameters(monkeypatch):
    base = _raw_uint8(90, 120)
    cfg = Config(bilateral_sigma_r=0.9, bilateral_method="exact")
    calls = []
    real = pp.bilateral_filter

    def spy(image, sigma_r, sigma_d, method="grid"):
        calls.append((image.shape, sigma_r, sigma_d, method))
        return real(image, sigma_r, sigma_d, method)

    monkeypatch.setattr(pp, "bilateral_filter", spy)
    out = pp.preprocess_image(base, cfg)
    assert calls == [((90, 120), 0.9, pytest.approx(100.0 * 90 / 3708), "exact")]
    manual = pp.to_uint8(real(pp.standardize(base), 0.9, 100.0 * 90 / 3708, "exact"), cfg.norm_percentiles)
    np.testing.assert_array_equal(out, cv2.equalizeHist(manual))
    cfg.histogram_equalization = False
    np.testing.assert_array_equal(pp.preprocess_image(base, cfg), manual)


def test_preprocess_switch_and_polarity():
    base = _raw_uint8()
    off = pp.preprocess_image(base, Config(preprocess=False))
    np.testing.assert_array_equal(off, pp.to_uint8(pp.standardize(base), (0.5, 99.5)))
    on = pp.preprocess_image(base, Config())
    assert np.abs(on.astype(int) - off).mean() > 5                   # filtering + equalisation changed it
    for preprocess in (True, False):
        dark = pp.preprocess_image(base, Config(preprocess=preprocess))
        bright = pp.preprocess_image(base, Config(preprocess=preprocess, dark_objects=False))
        np.testing.assert_array_equal(bright, 255 - dark)


def test_effective_sigma_d_at_600():
    assert Config().effective_sigma_d(600) == pytest.approx(16.18, abs=0.01)


# ----------------------------------------------------------------------------------------- resize_image
def test_resize_shapes_scales_and_cap():
    img = np.zeros((300, 450), np.uint8)
    out, (sx, sy) = pp.resize_image(img, Config(im_size=600, im_max_size=0))
    assert out.shape == (600, 900) and out.dtype == np.uint8 and (sx, sy) == (2.0, 2.0)
    out, (sx, sy) = pp.resize_image(img, Config(im_size=600, im_max_size=800))
    assert out.shape == (533, 800)
    assert sx == 800 / 450 and sy == 533 / 300
    out, scale = pp.resize_image(np.zeros((61, 40), np.uint16), Config(im_size=40, im_max_size=1000))
    assert out.dtype == np.float32 and out.shape == (61, 40) and scale == (1.0, 1.0)


def test_resize_interpolation_and_box_mapping():
    rng = np.random.default_rng(6)
    img = rng.uniform(0, 1000, (40, 60)).astype(np.float64)
    half, scale = pp.resize_image(img, Config(im_size=20, im_max_size=0))
    assert half.dtype == np.float32 and scale == (0.5, 0.5)
    np.testing.assert_allclose(half, img.reshape(20, 2, 30, 2).mean(axis=(1, 3)), rtol=1e-5)  # INTER_AREA
    ramp = np.tile(np.arange(50, dtype=np.float32), (50, 1))
    big, _ = pp.resize_image(ramp, Config(im_size=100, im_max_size=0))   # INTER_LINEAR keeps a ramp linear
    np.testing.assert_allclose(np.diff(big[10, 2:-2]), 0.5, atol=1e-4)
    # a box in the original maps to box * [sx, sy, sx, sy]
    boxed = np.zeros((120, 200), np.uint8)
    x1, y1, x2, y2 = 50, 30, 110, 90
    boxed[y1:y2, x1:x2] = 255
    out, (sx, sy) = pp.resize_image(boxed, Config(im_size=75, im_max_size=0))
    ys, xs = np.nonzero(out > 127)
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1],
                               [x1 * sx, y1 * sy, x2 * sx, y2 * sy], atol=1.0)


# ---------------------------------------------------------------------------------------- prepare_image
def test_prepare_image_shape_channels_and_determinism():
    rng = np.random.default_rng(7)
    raw = (cv2.GaussianBlur(rng.standard_normal((80, 130)), (0, 0), 3) * 50 + 3000).astype(np.float32)
    cfg = Config(im_size=60, im_max_size=90, img_scaling_factor=0.5)
    net, (sx, sy) = pp.prepare_image(raw, cfg)
    assert net.dtype == np.float32 and net.shape == (55, 90, 3)
    assert (sx, sy) == (90 / 130, 55 / 80)
    resized, _ = pp.resize_image(raw, cfg)
    grey = pp.preprocess_image(resized, cfg).astype(np.float32)
    for channel, mean in enumerate(cfg.img_channel_mean):
        np.testing.assert_allclose(net[:, :, channel], (grey - mean) * 0.5, atol=1e-4)
    # training and prediction both call prepare_image: identical bits on repeated calls
    again, scale_again = pp.prepare_image(raw.copy(), cfg)
    np.testing.assert_array_equal(net, again)
    assert scale_again == (sx, sy)
    with pytest.raises(ValueError):
        pp.prepare_image(raw, Config(img_channel_mean=[100.0]))


# ----------------------------------------------------------------------------------------- estimate_snr
@pytest.mark.parametrize("snr", [0.06, 0.1, 0.5, 1.0])
def test_estimate_snr_on_known_snr(snr):
    # measured over 10 seeds at 384 x 384: worst relative error 7 % (SNR 0.1), mean within 1 %
    rng = np.random.default_rng(int(snr * 100))
    signal = cv2.GaussianBlur(rng.standard_normal((384, 384)), (0, 0), 3)
    noise = rng.standard_normal((384, 384)) * math.sqrt(signal.var() / snr)
    truth = signal.var() / noise.var()
    estimate = pp.estimate_snr(signal + noise)
    assert abs(estimate / truth - 1.0) < 0.25
    # invariant to offset and scale
    assert pp.estimate_snr((signal + noise) * 7.0 - 300.0) == pytest.approx(estimate, rel=1e-9)


def test_estimate_snr_limits():
    rng = np.random.default_rng(8)
    assert pp.estimate_snr(rng.standard_normal((256, 256))) < 0.02            # white noise only
    smooth = cv2.GaussianBlur(rng.standard_normal((256, 256)), (0, 0), 4)
    assert pp.estimate_snr(smooth) > 100                                        # (almost) noise-free
    assert math.isnan(pp.estimate_snr(np.ones((10, 10))))
    with pytest.raises(ValueError):
        pp.estimate_snr(np.zeros((2, 10)))


def test_resize_by_a_given_scale():
    cfg = Config(im_size=48, im_max_size=64)
    image = np.zeros((40, 60), np.uint8)
    assert pp.resize_scale(40, 60, cfg) == pytest.approx(64 / 60)            # im_size rule, capped by im_max_size
    resized, (sx, sy) = pp.resize_image(image, cfg, scale=2.0)               # a given scale ignores both
    assert resized.shape == (80, 120) and (sx, sy) == (2.0, 2.0)
    net, scale = pp.prepare_image(image, cfg, scale=0.5)
    assert net.shape == (20, 30, 3) and scale == (0.5, 0.5)
    with pytest.raises(ValueError):
        pp.resize_scale(40, 60, cfg, scale=0.0)


def test_median_snr_of_a_group():
    rng = np.random.default_rng(3)
    signal = cv2.GaussianBlur(rng.standard_normal((256, 256)), (0, 0), 3)
    images = [signal + rng.standard_normal((256, 256)) * math.sqrt(signal.var() / 0.5) for _ in range(3)]
    assert pp.median_snr(images) == pytest.approx(0.5, rel=0.25)
    assert pp.median_snr(iter(images)) == pp.median_snr(images)        # any iterable
    assert math.isnan(pp.median_snr([]))


def test_prepare_image_three_channels_are_prepared_one_by_one():
    rng = np.random.default_rng(5)
    cfg = Config(im_size=48, im_max_size=0)
    channels = [rng.normal(size=(64, 80)).astype(np.float32) for _ in range(3)]
    stacked, scale = pp.prepare_image(np.stack(channels, axis=2), cfg)
    assert stacked.shape == (48, 60, 3) and scale == (0.75, 0.75)
    for c, image in enumerate(channels):
        single, _ = pp.prepare_image(image, cfg)                # each grey image alone, repeated
        np.testing.assert_array_equal(stacked[:, :, c], single[:, :, c])
    grey = stacked + np.asarray(cfg.img_channel_mean, np.float32)
    assert not np.array_equal(grey[:, :, 0], grey[:, :, 1])     # three images, not one repeated
    with pytest.raises(ValueError, match="3 channels"):
        pp.prepare_image(np.zeros((8, 8, 2), np.float32), cfg)


def test_structure_level_sees_structure_not_noise_or_beads():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(300, 400)).astype(np.float32)
    texture = cv2.GaussianBlur(rng.normal(size=(300, 400)).astype(np.float32), (0, 0), 6.0) * 20.0
    quiet, busy = pp.structure_level(noise, 256, 2.0), pp.structure_level(noise + texture, 256, 2.0)
    assert busy > 3 * quiet
    beads = noise.copy()
    beads[rng.integers(0, 300, 40), rng.integers(0, 400, 40)] = 500.0       # a few gold beads
    assert pp.structure_level(beads, 256, 2.0) < 1.5 * quiet
    assert pp.structure_level(noise, 64, 0.0) > 0                          # shrunk, no blur
    bad = noise.copy()
    bad[0, 0] = np.nan
    assert math.isnan(pp.structure_level(bad, 256, 2.0))
