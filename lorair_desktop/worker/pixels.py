"""Host pixel layouts <-> the core's float RGB, and the soft-mask blend. numpy only.

u8/u16 map k -> k / max and back with rounding to nearest, so untouched pixels come back bit-exact;
f32 is taken as is (it must be finite). Alpha never goes through the model: it is copied.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..bridge.protocol import ALPHA_ORDERS, E_BAD_PIXELS, ORDERS, BridgeError, JobHeader

DTYPES: dict[str, np.dtype[Any]] = {"u8": np.dtype("u1"), "u16": np.dtype("<u2"), "f32": np.dtype("<f4")}
MAXVAL = {"u8": 255.0, "u16": 65535.0, "f32": 1.0}


def _rgb_view(arr: np.ndarray, order: str) -> np.ndarray:
    """The colour channels as R, G, B (a view: BGRA is read backwards, no copy); grey as one."""
    if order.startswith("GRAY"):
        return arr[..., :1]
    return arr[..., 2::-1] if order == "BGRA" else arr[..., :3]


def as_array(data: memoryview | bytes | bytearray, width: int, height: int, order: str, sample: str) -> np.ndarray:
    """(H, W, C) view of the host's buffer in its own dtype."""
    return np.frombuffer(data, DTYPES[sample], count=width * height * ORDERS[order]).reshape(
        height, width, ORDERS[order]
    )


def check_finite(data: memoryview | bytes | bytearray, header: JobHeader) -> None:
    if header.sample != "f32":
        return
    arr = np.frombuffer(data, DTYPES["f32"], count=header.width * header.height * ORDERS[header.order])
    if not np.isfinite(arr).all():
        raise BridgeError(
            E_BAD_PIXELS,
            "the float pixels hold NaN or infinite values",
            "clamp or fix the image (e.g. a 32-bit float layer with invalid pixels) first",
            422,
        )


def to_float_rgb(arr: np.ndarray, order: str, sample: str) -> np.ndarray:
    """(H, W, 3) float32: u8/u16 scaled to [0, 1]; f32 copied unchanged; grey repeated in all three."""
    rgb = _rgb_view(arr, order).astype(np.float32)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    if sample != "f32":
        rgb /= np.float32(MAXVAL[sample])
    return rgb


def from_float_rgb(
    restored: np.ndarray,
    source: np.ndarray,
    order: str,
    sample: str,
    mask: np.ndarray | None = None,
    source_rgb: np.ndarray | None = None,
) -> bytes:
    """Restored (H, W, 3) float -> bytes in the source's layout (grey: the mean of the three),
    alpha copied from the source.

    With a mask (H, W) uint8, colour = in + m/255 * (restored - in), computed in float on the
    source's own values so m = 0 returns the input exactly.
    """
    rgb = restored
    if mask is not None:
        base = source_rgb if source_rgb is not None else to_float_rgb(source, order, sample)
        m = mask.astype(np.float32)[..., None] / np.float32(255.0)
        rgb = base + m * (restored - base)
    out = np.empty_like(source)
    if order in ALPHA_ORDERS:
        out[..., -1] = source[..., -1]
    dst = _rgb_view(out, order)
    if dst.shape[2] == 1:
        # a grey layer gets the restored colours' mean, written so that three equal values give
        # that value exactly (a float layer's untouched pixels come back bit for bit)
        g = rgb[..., 1:2]
        rgb = g + ((rgb[..., 0:1] - g) + (rgb[..., 2:3] - g)) / np.float32(3.0)
    if sample == "f32":
        dst[...] = rgb
    else:
        top = MAXVAL[sample]
        dst[...] = np.rint(np.clip(rgb, 0.0, 1.0) * np.float32(top))
    return out.tobytes()
