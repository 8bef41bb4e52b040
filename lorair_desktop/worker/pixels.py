"""Host pixel layouts <-> the core's float RGB, and the soft-mask blend. numpy only.

u8/u16 map k -> k / max and back with rounding to nearest, so untouched pixels come back bit-exact;
f32 is taken as is (it must be finite). Alpha never goes through the model: it is copied.
`for_model`/`from_model` put linear light into the sRGB encoding the model knows, and carry the part
of float values outside 0..1 around it.
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


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 on [0, 1]: linear light -> the gamma-encoded values photos (and the model) use."""
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, x * np.float32(12.92),
                    np.float32(1.055) * np.power(x, np.float32(1 / 2.4)) - np.float32(0.055)).astype(np.float32)


def srgb_decode(encoded: np.ndarray) -> np.ndarray:
    """The inverse of `srgb_encode` on [0, 1]."""
    v = np.clip(encoded, 0.0, 1.0)
    return np.where(v <= 0.04045, v / np.float32(12.92),
                    np.power((v + np.float32(0.055)) / np.float32(1.055), np.float32(2.4))).astype(np.float32)


def for_model(rgb: np.ndarray, transfer: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(what the model restores: [0, 1], sRGB-encoded; the part of float values outside [0, 1], or
    None when there is none). The model only knows [0, 1]: an HDR highlight is restored at 1 and its
    excess added back by `from_model`, instead of being clipped away."""
    inside = np.clip(rgb, 0.0, 1.0)
    spill = rgb - inside
    x = srgb_encode(inside) if transfer == "linear" else inside
    return x, (spill if spill.any() else None)


def from_model(restored: np.ndarray, transfer: str, spill: np.ndarray | None) -> np.ndarray:
    """The model's output back in the host's transfer, with `for_model`'s spill added back."""
    out = srgb_decode(restored) if transfer == "linear" else restored
    return out if spill is None else out + spill


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
