"""Selections as an 8-bit coverage mask: rectangle, ellipse and lasso shapes combined by replace / add /
subtract, select all / none / invert, and a Gaussian feather applied when the mask is used.

A mask (rather than a vector path) keeps boolean operations exact and cheap for any shape; the outline
shown on the canvas is traced from it. `mask is None` means nothing is selected, which restore treats
as the whole image.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import cv2
import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPainterPath, QPolygonF

from .pixels import gray_view


class Mode(Enum):
    REPLACE = "replace"
    ADD = "add"
    SUBTRACT = "subtract"


class Shape(Enum):
    RECT = "rect"
    ELLIPSE = "ellipse"
    LASSO = "lasso"


def rasterize(width: int, height: int, shape: Shape, points: Sequence[QPointF]) -> np.ndarray:
    """Antialiased coverage (H, W) uint8 of a shape in image coordinates. RECT and ELLIPSE use the box
    spanned by the first and last point; LASSO the closed polygon through all points."""
    img = QImage(width, height, QImage.Format.Format_Grayscale8)
    img.fill(0)
    p = QPainter(img)
    p.setRenderHint(QPainter.RenderHint.Antialiasing, shape is not Shape.RECT)
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor(255, 255, 255))
    if shape is Shape.LASSO:
        if len(points) >= 3:
            p.drawPolygon(QPolygonF(list(points)))
    else:
        box = QRectF(points[0], points[-1]).normalized()
        if shape is Shape.RECT:
            # Snap to whole pixels: a rectangle selection in a photo tool covers pixels fully.
            box = QRectF(round(box.left()), round(box.top()), round(box.width()), round(box.height()))
            p.drawRect(box)
        else:
            p.drawEllipse(box)
    p.end()
    return gray_view(img).copy()


def feather(mask: np.ndarray, radius: float) -> np.ndarray:
    """Soften a hard mask by a Gaussian of sigma = radius / 2 (the edge ramps over about `radius` px
    each side). Only the bounding box plus the blur reach is processed."""
    if radius <= 0:
        return mask
    sigma = radius / 2.0
    reach = int(np.ceil(3 * sigma)) + 1
    box = bbox(mask)
    if box is None:
        return mask
    x0, y0, x1, y1 = box
    h, w = mask.shape
    x0, y0, x1, y1 = max(0, x0 - reach), max(0, y0 - reach), min(w, x1 + reach), min(h, y1 + reach)
    out = np.zeros_like(mask)
    crop = mask[y0:y1, x0:x1].astype(np.float32)
    # Replicate the border: a selection running to the image edge stays fully selected there.
    blurred = cv2.GaussianBlur(crop, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    out[y0:y1, x0:x1] = np.clip(blurred + 0.5, 0, 255).astype(np.uint8)
    return out


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), end-exclusive, of the non-zero pixels; None if there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def outline_path(mask: np.ndarray) -> QPainterPath:
    """The 50 % coverage contour as a path in image coordinates (pixel edges)."""
    path = QPainterPath()
    hard = (mask >= 128).astype(np.uint8)
    # Pad by one so contours touching the image border are still traced on the border.
    contours, _ = cv2.findContours(np.pad(hard, 1), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    for c in contours:
        pts = c[:, 0, :].astype(np.float64) - 0.5  # -1 for the pad, +0.5 to sit on pixel centres
        path.moveTo(*pts[0])
        for x, y in pts[1:]:
            path.lineTo(x, y)
        path.closeSubpath()
    return path


class Selection:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.mask: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return self.mask is None

    def combine(self, shape_mask: np.ndarray, mode: Mode) -> None:
        if mode is Mode.REPLACE or (self.mask is None and mode is Mode.ADD):
            new = shape_mask
        elif mode is Mode.ADD:
            new = np.maximum(self.mask, shape_mask)
        elif self.mask is None:  # subtracting from nothing leaves nothing
            return
        else:
            new = np.minimum(self.mask, 255 - shape_mask)
        self.mask = new if new.any() else None

    def add_shape(self, shape: Shape, points: Sequence[QPointF], mode: Mode) -> None:
        self.combine(rasterize(self.width, self.height, shape, points), mode)

    def select_all(self) -> None:
        self.mask = np.full((self.height, self.width), 255, np.uint8)

    def clear(self) -> None:
        self.mask = None

    def invert(self) -> None:
        if self.mask is not None:
            inv = 255 - self.mask
            self.mask = inv if inv.any() else None

    def soft_mask(self, radius: float) -> np.ndarray | None:
        """The feathered coverage used for a restore; None when nothing is selected."""
        return None if self.mask is None else feather(self.mask, radius)
