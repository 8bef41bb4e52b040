"""Pixel helpers shared by the canvas, the restore path and batch: numpy only (plus the Qt views).

Documents keep their pixels in the file's own depth (uint8 or uint16), so undo is bit-exact and an
8-bit photo costs 3 bytes a pixel, not 12.
"""

from __future__ import annotations

import os

import numpy as np

# qimage2ndarray picks a Qt binding at import; without this it tries PyQt5 first.
os.environ.setdefault("QT_DRIVER", "PySide6")
import qimage2ndarray
from PySide6.QtGui import QImage

SAMPLE_OF_DTYPE = {np.dtype(np.uint8): "u8", np.dtype(np.uint16): "u16", np.dtype(np.float32): "f32"}
DTYPE_OF_BITS = {8: np.uint8, 16: np.uint16}


def max_value(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def from_float(a: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float [0, 1] -> the integer depth, rounding to nearest (exact for values read as k / max)."""
    dtype = DTYPE_OF_BITS[bit_depth]
    return (np.clip(a, 0.0, 1.0) * max_value(np.dtype(dtype)) + 0.5).astype(dtype)


def to_float(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) / np.float32(max_value(a.dtype))


def to_u8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        # Rounded division by 257 maps 0..65535 onto 0..255 exactly at both ends.
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def new_rgba_image(width: int, height: int) -> QImage:
    img = QImage(width, height, QImage.Format.Format_RGBA8888)
    img.fill(0)
    return img


def write_display(img: QImage, rgb: np.ndarray, alpha: np.ndarray | None, x: int = 0, y: int = 0) -> None:
    """Write an (h, w, 3) patch (+ alpha) of any depth into an RGBA8888 QImage at (x, y), in place."""
    view = qimage2ndarray.byte_view(img)  # (H, W, 4) uint8, R G B A in memory for RGBA8888
    h, w = rgb.shape[:2]
    view[y : y + h, x : x + w, :3] = to_u8(rgb)
    view[y : y + h, x : x + w, 3] = 255 if alpha is None else to_u8(alpha)


def gray_view(img: QImage) -> np.ndarray:
    """(H, W) uint8 view of a Grayscale8 QImage (rows may be padded, the view hides it)."""
    return qimage2ndarray.raw_view(img)


def rgba_array(img: QImage) -> np.ndarray:
    """A copy of any QImage as (H, W, 4) uint8 RGBA (for tests and screenshots)."""
    conv = img.convertToFormat(QImage.Format.Format_RGBA8888)
    return qimage2ndarray.byte_view(conv).copy()


def to_qimage(pixels: np.ndarray) -> QImage:
    """(H, W, 3|4) uint8 or uint16 pixels as a QImage holding its own copy, at their depth: RGBA8888 or
    RGBA64 (Qt's 16-bit format, so a 16-bit photo reaches another program's paste at 16 bits)."""
    h, w = pixels.shape[:2]
    deep = pixels.dtype == np.uint16
    rgba = np.empty((h, w, 4), pixels.dtype)
    rgba[..., :3] = pixels[..., :3]
    rgba[..., 3] = pixels[..., 3] if pixels.shape[2] == 4 else np.iinfo(pixels.dtype).max
    if pixels.shape[2] == 4:
        fmt = QImage.Format.Format_RGBA64 if deep else QImage.Format.Format_RGBA8888
    else:  # no alpha channel: a paste elsewhere gets an opaque image, not one with an alpha to ignore
        fmt = QImage.Format.Format_RGBX64 if deep else QImage.Format.Format_RGBX8888
    img = QImage(w, h, fmt)
    view = qimage2ndarray.raw_view(img) if deep else qimage2ndarray.byte_view(img)
    if deep:  # raw_view of RGBA64 is (H, W) uint64: see it as 4 uint16 per pixel (native order)
        view = view.view(np.uint16).reshape(h, w, 4)
    view[...] = rgba
    return img


_QF = QImage.Format
# formats of 32 bits a pixel or less that hold more than 8 bits a channel
_DEEP_NARROW = frozenset((_QF.Format_Grayscale16, _QF.Format_RGB30, _QF.Format_BGR30, _QF.Format_A2RGB30_Premultiplied,
                          _QF.Format_A2BGR30_Premultiplied))


def from_qimage(img: QImage) -> np.ndarray:
    """Any QImage as (H, W, 3|4) pixels: uint16 where its format holds more than 8 bits a channel, else
    uint8; alpha only where the image has an alpha channel."""
    # RGBA64, RGBX64, RGBA16FPx4, RGBA32FPx4 (16 or more bits a channel), 16-bit grey, 10-bit RGB
    deep = img.depth() > 32 or img.format() in _DEEP_NARROW
    # the converted image must outlive the copy out of its view (a view does not keep it alive)
    conv = img.convertToFormat(QImage.Format.Format_RGBA64 if deep else QImage.Format.Format_RGBA8888)
    if deep:
        a = qimage2ndarray.raw_view(conv).view(np.uint16).reshape(conv.height(), conv.width(), 4).copy()
    else:
        a = qimage2ndarray.byte_view(conv).copy()
    # screenshots arrive as ARGB32 with every pixel opaque: that alpha carries nothing
    opaque = not img.hasAlphaChannel() or bool((a[..., 3] == np.iinfo(a.dtype).max).all())
    return np.ascontiguousarray(a[..., :3]) if opaque else a
