"""Layout conversions: exact for untouched pixels, alpha copied, BGRA read backwards, mask blend."""

from __future__ import annotations

import numpy as np
import pytest

from lorair_desktop.bridge import ORDERS, BridgeError, JobHeader
from lorair_desktop.bridge.protocol import ALPHA_ORDERS
from lorair_desktop.worker import pixels

LAYOUTS = [(o, s) for o in ORDERS for s in ("u8", "u16", "f32")]
COLOURS = {"RGBA": [0, 1, 2], "BGRA": [2, 1, 0], "RGB": [0, 1, 2], "GRAYA": [0], "GRAY": [0]}  # R, G, B or grey


def make(order: str, sample: str, h: int = 5, w: int = 7, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = ORDERS[order]
    if sample == "f32":
        return rng.random((h, w, c), dtype=np.float32)
    top = 255 if sample == "u8" else 65535
    return rng.integers(0, top + 1, (h, w, c)).astype(pixels.DTYPES[sample])


@pytest.mark.parametrize(("order", "sample"), LAYOUTS)
def test_identity_round_trip_is_exact(order: str, sample: str) -> None:
    src = make(order, sample)
    arr = pixels.as_array(src.tobytes(), 7, 5, order, sample)
    rgb = pixels.to_float_rgb(arr, order, sample)
    assert rgb.dtype == np.float32 and rgb.shape == (5, 7, 3)
    assert pixels.from_float_rgb(rgb, arr, order, sample) == src.tobytes()


def test_bgra_channels_and_alpha() -> None:
    src = np.array([[[10, 20, 30, 40]]], np.uint8)  # B G R A
    rgb = pixels.to_float_rgb(src, "BGRA", "u8")
    np.testing.assert_allclose(rgb[0, 0], np.array([30, 20, 10]) / 255, rtol=1e-6)
    out = np.frombuffer(pixels.from_float_rgb(np.ones((1, 1, 3), np.float32), src, "BGRA", "u8"), np.uint8)
    assert out.tolist() == [255, 255, 255, 40]  # alpha untouched


@pytest.mark.parametrize(("order", "sample"), LAYOUTS)
def test_mask_blend(order: str, sample: str) -> None:
    src = make(order, sample, 2, 3)
    restored = np.full((2, 3, 3), 0.5, np.float32)
    mask = np.array([[0, 255, 128], [0, 0, 255]], np.uint8)
    out = np.frombuffer(pixels.from_float_rgb(restored, src, order, sample, mask), src.dtype).reshape(src.shape)
    keep = mask == 0
    assert np.array_equal(out[keep], src[keep])  # unselected pixels: bit-exact input, alpha included
    top = 1.0 if sample == "f32" else np.iinfo(src.dtype).max
    full = mask == 255
    ch = COLOURS[order]
    np.testing.assert_allclose(out[full][:, ch].astype(np.float64) / top, 0.5, atol=0.5 / top + 1e-6)
    if order in ALPHA_ORDERS:
        assert np.array_equal(out[..., -1], src[..., -1])
    i = (0, 2)
    inp = src[i][ch].astype(np.float64) / top
    np.testing.assert_allclose(out[i][ch] / top, inp + 128 / 255 * (0.5 - inp), atol=1 / top + 1e-6)


def test_grey_is_restored_as_rgb_and_returned_as_the_mean() -> None:
    src = np.array([[[100, 7]]], np.uint8)  # grey, alpha
    rgb = pixels.to_float_rgb(src, "GRAYA", "u8")
    np.testing.assert_allclose(rgb[0, 0], [100 / 255] * 3, rtol=1e-6)
    restored = np.array([[[0.2, 0.5, 0.8]]], np.float32)
    out = np.frombuffer(pixels.from_float_rgb(restored, src, "GRAYA", "u8"), np.uint8)
    assert out.tolist() == [round(0.5 * 255), 7]  # the mean of the three; alpha untouched


def test_srgb_curve_matches_the_standard_and_round_trips() -> None:
    # IEC 61966-2-1 reference points: linear 0.5 encodes to ~0.7354, 18 % grey to ~0.4614
    enc = pixels.srgb_encode(np.array([0.0, 0.002, 0.18, 0.5, 1.0], np.float32))
    np.testing.assert_allclose(enc, [0.0, 0.02584, 0.46135, 0.73536, 1.0], atol=5e-5)
    x = np.linspace(0, 1, 4097, dtype=np.float32)
    np.testing.assert_allclose(pixels.srgb_decode(pixels.srgb_encode(x)), x, atol=2e-6)


@pytest.mark.parametrize("transfer", ["srgb", "linear"])
def test_float_values_outside_0_1_are_carried_around_the_model(transfer: str) -> None:
    rgb = np.array([[[4.0, 0.5, -0.25], [0.2, 0.3, 0.4]]], np.float32)
    x, spill = pixels.for_model(rgb, transfer)
    assert x.min() >= 0 and x.max() <= 1 and spill is not None
    back = pixels.from_model(x, transfer, spill)  # a model that changed nothing gives the input back
    np.testing.assert_allclose(back, rgb, atol=1e-6)
    inside, none = pixels.for_model(rgb[:, 1:], transfer)
    assert none is None
    if transfer == "linear":
        np.testing.assert_allclose(inside, pixels.srgb_encode(rgb[:, 1:]), atol=0)


def test_nan_and_inf_rejected() -> None:
    for bad_value in (np.nan, np.inf, -np.inf):
        a = np.zeros((2, 2, 3), np.float32)
        a[1, 1, 2] = bad_value
        with pytest.raises(BridgeError) as ei:
            pixels.check_finite(a.tobytes(), JobHeader(2, 2, "RGB", "f32"))
        assert ei.value.code == "bad_pixels" and ei.value.status == 422
    pixels.check_finite(np.zeros((2, 2, 3), np.float32).tobytes(), JobHeader(2, 2, "RGB", "f32"))
