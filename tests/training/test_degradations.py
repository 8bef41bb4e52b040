"""Degradation synthesis: statistics, physics, determinism."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from lorair_desktop.training import degradations as D


def smooth_image(seed: int = 0, h: int = 96, w: int = 96) -> np.ndarray:
    """A natural-ish test image: a smooth colour field plus mild texture, in [0.1, 0.9]."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.random((6, 6, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 1.0)
    img = 0.7 * base + 0.3 * fine
    return np.clip(0.1 + 0.8 * (img - img.min()) / (img.max() - img.min()), 0, 1).astype(np.float32)


def blockiness(img: np.ndarray) -> float:
    """Mean |horizontal + vertical step| across 8x8 block borders over the mean step elsewhere."""
    g = img.mean(axis=2)
    dx = np.abs(np.diff(g, axis=1))
    dy = np.abs(np.diff(g, axis=0))
    bx = dx[:, 7::8].mean() + dy[7::8, :].mean()
    mask_x = np.ones(dx.shape[1], bool)
    mask_x[7::8] = False
    mask_y = np.ones(dy.shape[0], bool)
    mask_y[7::8] = False
    inner = dx[:, mask_x].mean() + dy[mask_y, :].mean()
    return float(bx / inner)


@pytest.mark.parametrize("name", D.EXPERTS)
def test_range_dtype_shape(name: str) -> None:
    img = smooth_image(1, 64, 80)
    for seed in range(3):
        y = D.degrade(img, name, np.random.default_rng(seed))
        assert y.dtype == np.float32
        assert y.shape == img.shape
        assert np.isfinite(y).all()
        assert y.min() >= 0.0 and y.max() <= 1.0
        assert not np.array_equal(y, img)


@pytest.mark.parametrize("name", D.EXPERTS)
def test_determinism(name: str) -> None:
    img = smooth_image(2, 64, 64)
    a = D.degrade(img, name, np.random.default_rng(123))
    b = D.degrade(img, name, np.random.default_rng(123))
    assert np.array_equal(a, b)
    others = [D.degrade(img, name, np.random.default_rng(s)) for s in (1, 2, 3)]
    assert any(not np.array_equal(a, o) for o in others)


def test_input_is_not_modified() -> None:
    img = smooth_image(3, 32, 32)
    copy = img.copy()
    for name in D.EXPERTS:
        D.degrade(img, name, np.random.default_rng(0))
    assert np.array_equal(img, copy)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        D.degrade(np.zeros((8, 8), np.float32), "noise", np.random.default_rng(0))
    with pytest.raises(ValueError):
        D.degrade(smooth_image(), "snow", np.random.default_rng(0))
    with pytest.raises(ValueError):
        D.degrade_mixed(smooth_image(), ["noise", "fog"], np.random.default_rng(0))


# -- noise -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [5.0, 25.0, 50.0])
def test_gaussian_noise_std(sigma: float) -> None:
    img = np.full((160, 160, 3), 0.5, np.float32)
    y = D.add_gaussian_noise(img, sigma, np.random.default_rng(0))
    res = (y - img) * 255.0
    # at σ=50 a few values are clipped at 0/1 (2.6 σ away): allow for it
    assert abs(res.std() - sigma) < 0.03 * sigma
    assert abs(res.mean()) < 0.5


def test_degrade_noise_explicit_params() -> None:
    img = np.full((128, 128, 3), 0.5, np.float32)
    y = D.degrade_noise(img, np.random.default_rng(1), sigma255=15.0)
    assert abs((y - img).std() * 255 - 15.0) < 0.5


def test_poisson_gaussian_is_signal_dependent() -> None:
    img = np.zeros((128, 128, 3), np.float32)
    img[:, :64] = 0.2
    img[:, 64:] = 0.7
    a, b = 0.01, 0.02
    y = D.add_poisson_gaussian_noise(img, np.random.default_rng(0), a, b)
    for x, sl in ((0.2, np.s_[:, :64]), (0.7, np.s_[:, 64:])):
        var = (y[sl] - x).var()
        assert abs(var - (a * x + b * b)) < 0.08 * (a * x + b * b)


def test_partial_params_are_completed() -> None:
    img = smooth_image(14, 32, 32)
    for seed in range(5):
        y = D.degrade_noise(img, np.random.default_rng(seed), kind="poisson_gaussian")
        assert y.shape == img.shape
        for kind in ("gaussian", "defocus", "motion"):
            assert D.degrade_blur(img, np.random.default_rng(seed), kind=kind).shape == img.shape
    assert D.sample_blur_params(np.random.default_rng(0), "motion")["kind"] == "motion"
    with pytest.raises(ValueError):
        D.sample_noise_params(np.random.default_rng(0), "speckle")


def test_noise_param_ranges() -> None:
    rng = np.random.default_rng(0)
    params = [D.sample_noise_params(rng) for _ in range(400)]
    kinds = {p["kind"] for p in params}
    assert kinds == {"gaussian", "poisson_gaussian"}
    sig = [p["sigma255"] for p in params if p["kind"] == "gaussian"]
    assert min(sig) >= 5 and max(sig) <= 55 and max(sig) - min(sig) > 40


# -- blur --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kernel",
    [
        D.gaussian_kernel(0.8),
        D.gaussian_kernel(3.0),
        D.gaussian_kernel(2.0, 0.8, 0.6),
        D.defocus_kernel(1.5),
        D.defocus_kernel(4.5),
        D.motion_kernel(5, 0),
        D.motion_kernel(17, 33.0, 1.4),
    ],
)
def test_kernels_normalised(kernel: np.ndarray) -> None:
    assert kernel.dtype == np.float32
    assert kernel.ndim == 2 and kernel.shape[0] % 2 == 1 and kernel.shape[1] % 2 == 1
    assert (kernel >= 0).all()
    assert abs(float(kernel.sum()) - 1.0) < 1e-5


def test_gaussian_kernel_variance() -> None:
    k = D.gaussian_kernel(2.0).astype(np.float64)
    r = k.shape[0] // 2
    _, xx = np.mgrid[-r : r + 1, -r : r + 1]
    assert abs((k * xx**2).sum() - 4.0) < 0.1
    assert abs((k * xx).sum()) < 1e-6


def test_motion_kernel_orientation() -> None:
    k = D.motion_kernel(11, 0.0)
    r = k.shape[0] // 2
    assert k[r].sum() > 0.9  # a horizontal line lives in the centre row
    kv = D.motion_kernel(11, 90.0)
    assert kv[:, r].sum() > 0.9


def test_apply_kernel_is_true_convolution() -> None:
    img = np.zeros((15, 15, 3), np.float32)
    img[7, 7] = 1.0
    k = np.zeros((3, 3), np.float32)
    k[0, 0] = 0.75
    k[1, 1] = 0.25
    y = D.apply_kernel(img, k)
    # convolution of a delta reproduces the kernel unflipped around the delta
    assert y[6, 6, 0] == pytest.approx(0.75)
    assert y[7, 7, 0] == pytest.approx(0.25)
    assert y[8, 8, 0] == pytest.approx(0.0)


def test_blur_removes_detail_and_returns_kernel() -> None:
    rng = np.random.default_rng(4)
    img = cv2.GaussianBlur(rng.random((96, 96, 3)).astype(np.float32), (0, 0), 0.7)
    y, k = D.gaussian_blur(img, 2.0)
    assert np.array_equal(k, D.gaussian_kernel(2.0))
    hf = lambda a: np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
    assert hf(y) < 0.6 * hf(img)
    for seed in range(5):
        yb = D.degrade_blur(img, np.random.default_rng(seed))
        assert hf(yb) < hf(img)


def test_blur_param_ranges() -> None:
    rng = np.random.default_rng(0)
    params = [D.sample_blur_params(rng) for _ in range(300)]
    assert {p["kind"] for p in params} == {"gaussian", "defocus", "motion"}
    assert all(0 <= p["noise_sigma255"] <= 2 for p in params)
    assert max(p["sigma"] for p in params if p["kind"] == "gaussian") <= 3.0


# -- jpeg --------------------------------------------------------------------------------------


def test_jpeg_is_really_encoded() -> None:
    img = smooth_image(5, 128, 128)
    y = D.jpeg(img, 10)
    assert not np.allclose(y, img, atol=1 / 255)
    assert np.allclose(y * 255, np.round(y * 255), atol=1e-4)  # decoded 8-bit values
    assert blockiness(y) > 1.3 * blockiness(img)
    assert blockiness(y) > 1.3
    err10 = np.abs(D.jpeg(img, 10) - img).mean()
    err60 = np.abs(D.jpeg(img, 60) - img).mean()
    assert err10 > err60


def test_jpeg_quality_range() -> None:
    rng = np.random.default_rng(0)
    qs = [D.sample_jpeg_params(rng)["quality"] for _ in range(500)]
    assert min(qs) == 10 and max(qs) == 60


# -- rain --------------------------------------------------------------------------------------


def _streak_angle_from_vertical(diff: np.ndarray) -> float:
    gx = cv2.Sobel(diff, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(diff, cv2.CV_64F, 0, 1, ksize=3)
    j = np.array([[(gx * gx).mean(), (gx * gy).mean()], [(gx * gy).mean(), (gy * gy).mean()]])
    _, v = np.linalg.eigh(j)
    dx, dy = v[:, 0]  # smallest eigenvalue: along the streaks (image coords, y down)
    if dy > 0:
        dx, dy = -dx, -dy
    return math.degrees(math.atan2(dx, -dy))


def test_rain_adds_bright_oriented_streaks() -> None:
    img = np.full((128, 128, 3), 0.25, np.float32)
    layer = {"density": 0.004, "length": 30.0, "angle": 20.0, "width": 0.6, "brightness": 0.8}
    y = D.degrade_rain(img, np.random.default_rng(0), layers=[layer], blend="screen")
    diff = (y - img).mean(axis=2)
    assert (diff >= -1e-6).all()  # rain only brightens
    assert diff.max() > 0.4  # visible streaks
    assert 0.005 < (diff > 0.1).mean() < 0.5  # sparse, not a veil
    assert abs(_streak_angle_from_vertical(diff.astype(np.float64)) - 20.0) < 6.0
    vertical = D.degrade_rain(img, np.random.default_rng(0), layers=[{**layer, "angle": 0.0}], blend="add")
    dv = (vertical - img).mean(axis=2)
    assert np.abs(np.diff(dv, axis=0)).mean() < 0.5 * np.abs(np.diff(dv, axis=1)).mean()


def test_sampled_rain_brightens() -> None:
    img = smooth_image(6)
    for seed in range(5):
        y = D.degrade_rain(img, np.random.default_rng(seed))
        assert (y >= img - 1e-6).all()
        assert y.mean() > img.mean() + 0.003


# -- haze --------------------------------------------------------------------------------------


def test_haze_formula() -> None:
    img = smooth_image(7)
    depth = np.ones(img.shape[:2], np.float32)
    a = np.array([0.9, 0.92, 0.95], np.float32)
    y = D.haze(img, beta=1.0, airlight=a, depth=depth, depth_range=(0.0, 1.0))
    t = math.exp(-1.0)
    assert np.allclose(y, img * t + a * (1 - t), atol=1e-5)


def test_haze_reduces_contrast_and_pulls_to_airlight() -> None:
    img = smooth_image(8)
    for seed in range(6):
        p = D.sample_haze_params(np.random.default_rng(seed))
        y = D.degrade_haze(img, np.random.default_rng(seed + 100), **p)
        a = np.asarray(p["airlight"], np.float32)
        assert a.min() >= 0.65 and a.max() <= 1.0
        assert y.std() < img.std()
        assert np.abs(y - a).mean() < np.abs(img - a).mean()


@pytest.mark.parametrize("kind", ["vertical", "field", "luminance", "mixture"])
def test_depth_maps_are_smooth(kind: str) -> None:
    img = smooth_image(9)
    d = D.depth_map(img.shape[:2], np.random.default_rng(0), kind, img)
    assert d.shape == img.shape[:2] and d.dtype == np.float32
    assert d.min() >= 0 and d.max() <= 1 and d.max() - d.min() > 0.5
    assert np.abs(np.diff(d, axis=0)).max() < 0.1 and np.abs(np.diff(d, axis=1)).max() < 0.1


# -- low light ---------------------------------------------------------------------------------


def test_low_light_darkens() -> None:
    img = smooth_image(10)
    for seed in range(6):
        y = D.degrade_low_light(img, np.random.default_rng(seed))
        assert y.mean() < 0.5 * img.mean()
        assert 0.02 < y.mean() < 0.25
        assert np.allclose(y * 255, np.round(y * 255), atol=1e-4)


def test_low_light_fixed_no_noise() -> None:
    img = smooth_image(11)
    y = D.low_light(img, np.random.default_rng(0), gamma=2.0, gain=0.5)
    assert np.allclose(y, 0.5 * img**2, atol=0.51 / 255)


def test_low_light_adds_noise() -> None:
    img = np.full((96, 96, 3), 0.6, np.float32)
    clean = D.low_light(img, np.random.default_rng(0), gamma=1.5, gain=0.3)
    noisy = D.low_light(img, np.random.default_rng(0), gamma=1.5, gain=0.3, a=0.004, b=3 / 255)
    assert clean.std() == 0
    assert noisy.std() > 2 / 255


# -- mixtures and pairs ------------------------------------------------------------------------


def test_mixed_order_is_physical() -> None:
    img = smooth_image(12, 64, 64)
    got = D.degrade_mixed(img, ["noise", "haze"], np.random.default_rng(5))
    rng = np.random.default_rng(5)
    want = D.DEGRADATIONS["noise"](D.DEGRADATIONS["haze"](img, rng), rng)
    assert np.array_equal(got, want)
    y = D.degrade_mixed(img, ["jpeg", "blur"], np.random.default_rng(1))
    assert np.allclose(y * 255, np.round(y * 255), atol=1e-4)  # jpeg applied last


def test_training_pair() -> None:
    img = smooth_image(13, 48, 48)
    names = list(D.EXPERTS)
    labels = set()
    for seed in range(40):
        deg, clean, label = D.make_training_pair(img, names, np.random.default_rng(seed))
        assert clean is img or np.array_equal(clean, img)
        assert 0 <= label < len(names)
        assert np.allclose(deg * 255, np.round(deg * 255), atol=1e-4)
        labels.add(label)
    assert len(labels) >= 5
    w = [0, 0, 0, 0, 1, 0]
    assert all(D.make_training_pair(img, names, np.random.default_rng(s), w)[2] == 4 for s in range(5))
    with pytest.raises(ValueError):
        D.make_training_pair(img, names, np.random.default_rng(0), [0] * 6)


def test_mixed_pair_degrades_twice_and_labels_both() -> None:
    img = smooth_image(14, 48, 48)
    names = list(D.EXPERTS)
    seen = set()
    for seed in range(30):
        deg, clean, target = D.make_mixed_pair(img, names, np.random.default_rng(seed))
        assert np.array_equal(clean, img) and target.dtype == np.float32
        pair = np.flatnonzero(target)
        assert len(pair) == 2 and np.allclose(target[pair], 0.5)
        rng = np.random.default_rng(seed)
        assert sorted(rng.choice(len(names), size=2, replace=False)) == sorted(pair)
        want = D.quantize8(D.degrade_mixed(img, [names[i] for i in pair], rng))
        assert np.array_equal(deg, want)  # the same draws, in physical order, quantised
        seen.add(tuple(pair))
    assert len(seen) >= 8
    w = [0, 0, 1, 0, 3, 0]
    assert all(set(np.flatnonzero(D.make_mixed_pair(img, names, np.random.default_rng(s), w)[2])) == {2, 4}
               for s in range(5))
    with pytest.raises(ValueError):
        D.make_mixed_pair(img, names, np.random.default_rng(0), [0, 0, 1, 0, 0, 0])
    with pytest.raises(ValueError):
        D.make_mixed_pair(img, ["noise"], np.random.default_rng(0))
