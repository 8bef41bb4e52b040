"""Every pixel layout through the worker equals the in-process core result for the same input and weights.

The reference side converts with its own numpy code (not the worker's), so a layout bug on either
side shows up as a mismatch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lorair_desktop.bridge import ExpertSpec, JobRequest, WorkerClient

from .conftest import SMALL_H, SMALL_W, one_thread

ORDERS = ("RGBA", "BGRA", "RGB")
SAMPLES = ("u8", "u16", "f32")
DT = {"u8": np.dtype("u1"), "u16": np.dtype("<u2"), "f32": np.dtype("<f4")}


def host_image(order: str, sample: str, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = 3 if order == "RGB" else 4
    if sample == "f32":
        return rng.random((h, w, c), dtype=np.float32)
    top = np.iinfo(DT[sample]).max
    return rng.integers(0, top + 1, (h, w, c), dtype=np.int64).astype(DT[sample])


def reference(
    restorer: Any, img: np.ndarray, order: str, sample: str, mask: np.ndarray | None = None, **kw: Any
) -> tuple[np.ndarray, Any]:
    """What a host would get by calling the core in-process, converting by hand."""
    top = 1.0 if sample == "f32" else float(np.iinfo(DT[sample]).max)
    ch = [2, 1, 0] if order == "BGRA" else [0, 1, 2]
    rgb = img[..., ch].astype(np.float32) / np.float32(top)
    with one_thread():
        res = restorer.restore(rgb, **kw)
    out_rgb = res.image
    if mask is not None:
        m = mask.astype(np.float32)[..., None] / np.float32(255)
        out_rgb = rgb + m * (res.image - rgb)
    out = img.copy()
    out[..., ch] = out_rgb if sample == "f32" else np.rint(np.clip(out_rgb, 0, 1) * top)
    return out, res


def compare(got: bytes, want: np.ndarray, sample: str) -> None:
    arr = np.frombuffer(got, want.dtype).reshape(want.shape)
    if sample == "f32":
        np.testing.assert_allclose(arr, want, rtol=0, atol=1e-5)
    else:
        diff = np.abs(arr.astype(np.int64) - want.astype(np.int64))
        where = np.argwhere(diff)[:5].tolist()
        msg = f"{sample}: max diff {diff.max()}, {int((diff != 0).sum())} of {diff.size} differ, e.g. at {where}"
        assert diff.max() <= 1, msg  # a float ulp may flip a rounding, nothing more
        assert (diff == 0).mean() > 0.999, msg
    if want.shape[2] == 4:
        assert np.array_equal(arr[..., 3], want[..., 3])  # alpha passed through bit-exact


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("sample", SAMPLES)
def test_every_layout_matches_in_process(client: WorkerClient, restorer: Any, order: str, sample: str) -> None:
    h, w = SMALL_H, SMALL_W
    img = host_image(order, sample, h, w, seed=ORDERS.index(order) * 3 + SAMPLES.index(sample))
    got = client.restore(JobRequest(img.tobytes(), w, h, order, sample))
    want, res = reference(restorer, img, order, sample)
    assert (got.header.width, got.header.height, got.header.order, got.header.sample) == (w, h, order, sample)
    assert got.header.router_weights == pytest.approx(res.router_weights, abs=1e-6)
    assert got.header.applied_weights == pytest.approx(res.applied_weights, abs=1e-6)
    assert got.header.device == "cpu" and got.header.tiles == 1
    compare(got.pixels, want, sample)


def test_mask_manual_experts_and_tiles_match_in_process(client: WorkerClient, restorer: Any) -> None:
    h, w = 80, 96
    img = host_image("BGRA", "u16", h, w, seed=7)
    mask = np.zeros((h, w), np.uint8)
    mask[10:70, 20:90] = 255
    mask[30:50, :] = 128  # a soft band
    spec = ExpertSpec.manual({"noise": 0.7, "blur": 0.3}, keep_router=True)
    got = client.restore(
        JobRequest(img.tobytes(), w, h, "BGRA", "u16", mask=mask.tobytes(), experts=spec, tile=48, overlap=8)
    )
    want, res = reference(
        restorer, img, "BGRA", "u16", mask, overrides={"noise": 0.7, "blur": 0.3}, keep_router=True, tile=48, overlap=8
    )
    assert got.header.tiles == res.tiles > 1
    assert got.header.applied_weights["noise"] == pytest.approx(0.7)
    assert got.header.applied_weights == pytest.approx(res.applied_weights, abs=1e-6)
    compare(got.pixels, want, "u16")
    out = np.frombuffer(got.pixels, np.uint16).reshape(h, w, 4)
    assert np.array_equal(out[mask == 0], img[mask == 0])  # outside the selection: untouched, bit-exact


def test_self_ensemble_through_the_worker_matches_in_process(client: WorkerClient, restorer: Any) -> None:
    h, w = 64, 80
    img = host_image("RGBA", "u8", h, w, seed=11)
    spec = ExpertSpec.manual({"noise": 1.0})
    got = client.restore(JobRequest(img.tobytes(), w, h, "RGBA", "u8", experts=spec, ensemble=4))
    want, res = reference(restorer, img, "RGBA", "u8", overrides={"noise": 1.0}, ensemble=4)
    assert got.header.ensemble == res.ensemble == 4
    compare(got.pixels, want, "u8")
    single = client.restore(JobRequest(img.tobytes(), w, h, "RGBA", "u8", experts=spec))
    assert single.header.ensemble == 1 and single.pixels != got.pixels


def test_linear_light_is_restored_in_srgb_and_keeps_hdr(client: WorkerClient, restorer: Any) -> None:
    """transfer "linear": the model sees the sRGB encoding, the host gets linear light back, and a value
    above 1 keeps its excess (restored at 1, the rest added back)."""
    h, w = 48, 64
    srgb = host_image("RGB", "f32", h, w, seed=21)
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4).astype(np.float32)
    linear[5:9, 5:9] = (4.0, 2.0, 0.5)
    srgb[5:9, 5:9] = (1.0, 1.0, (1.055 * 0.5 ** (1 / 2.4) - 0.055))
    got = client.restore(JobRequest(linear.tobytes(), w, h, "RGB", "f32", transfer="linear"))
    with one_thread():
        res = restorer.restore(srgb)
    y = res.image
    want = np.where(y <= 0.04045, y / 12.92, ((y + 0.055) / 1.055) ** 2.4).astype(np.float32)
    want[5:9, 5:9, :2] += (3.0, 1.0)
    arr = np.frombuffer(got.pixels, np.float32).reshape(h, w, 3)
    np.testing.assert_allclose(arr, want, rtol=0, atol=2e-5)
    assert arr[5:9, 5:9, 0].min() > 3.0


def test_analyze_matches_in_process(client: WorkerClient, restorer: Any) -> None:
    img = host_image("RGB", "u8", 64, 48, seed=3)
    got = client.analyze(JobRequest(img.tobytes(), 48, 64, "RGB", "u8"))
    with one_thread():
        a = restorer.analyze(img.astype(np.float32) / np.float32(255))
    assert got.router_weights == pytest.approx(a.weights_dict(), abs=1e-6)
    assert got.top_expert == a.top_expert
    assert got.experts == restorer.experts
