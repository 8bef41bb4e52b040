"""Selection masks: shapes, add/subtract, all/none/invert, feather, outline, bounding box."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF

from lorair_desktop.app.selection import Mode, Selection, Shape, bbox, feather, outline_path, rasterize

pytestmark = pytest.mark.usefixtures("qapp")


def pts(*xy: float) -> list[QPointF]:
    return [QPointF(xy[i], xy[i + 1]) for i in range(0, len(xy), 2)]


def test_rect_covers_whole_pixels() -> None:
    m = rasterize(40, 30, Shape.RECT, pts(5, 4, 15, 12))
    assert m.shape == (30, 40) and m.dtype == np.uint8
    assert (m[4:12, 5:15] == 255).all()
    assert m.sum() == 255 * 8 * 10


def test_ellipse_and_lasso_are_antialiased_shapes() -> None:
    e = rasterize(40, 40, Shape.ELLIPSE, pts(0, 0, 40, 40))
    assert e[20, 20] == 255 and e[0, 0] == 0 and e[1, 1] == 0
    assert np.count_nonzero((e > 0) & (e < 255)) > 0  # soft edge
    area = np.count_nonzero(e >= 128)
    assert abs(area - np.pi * 20 * 20) < 40
    tri = rasterize(40, 40, Shape.LASSO, pts(0, 0, 40, 0, 0, 40))
    assert tri[2, 2] == 255 and tri[38, 38] == 0
    assert abs(np.count_nonzero(tri >= 128) - 800) < 40
    assert not rasterize(40, 40, Shape.LASSO, pts(1, 1, 5, 5)).any()  # two points: no area


def test_add_subtract_replace_invert() -> None:
    s = Selection(50, 40)
    assert s.empty and s.soft_mask(5) is None
    s.add_shape(Shape.RECT, pts(0, 0, 20, 20), Mode.REPLACE)
    s.add_shape(Shape.RECT, pts(30, 0, 40, 10), Mode.ADD)
    assert s.mask[5, 5] == 255 and s.mask[5, 35] == 255 and s.mask[5, 25] == 0
    s.add_shape(Shape.RECT, pts(0, 0, 10, 10), Mode.SUBTRACT)
    assert s.mask[5, 5] == 0 and s.mask[15, 15] == 255
    s.invert()
    assert s.mask[5, 5] == 255 and s.mask[15, 15] == 0
    s.add_shape(Shape.RECT, pts(1, 1, 3, 3), Mode.REPLACE)
    assert bbox(s.mask) == (1, 1, 3, 3)
    s.add_shape(Shape.RECT, pts(0, 0, 50, 40), Mode.SUBTRACT)
    assert s.empty  # subtracting everything deselects
    s.select_all()
    assert (s.mask == 255).all()
    s.invert()
    assert s.empty
    s.add_shape(Shape.RECT, pts(0, 0, 5, 5), Mode.SUBTRACT)
    assert s.empty


def test_feather_softens_symmetrically_and_keeps_image_edges() -> None:
    s = Selection(80, 60)
    s.add_shape(Shape.RECT, pts(20, 10, 60, 50), Mode.REPLACE)
    hard = s.soft_mask(0)
    assert np.array_equal(hard, s.mask)
    soft = s.soft_mask(8)
    assert soft[30, 40] == 255  # the middle stays fully selected
    assert 100 < soft[30, 20] < 155  # the edge is about half
    assert 0 < soft[30, 14] < soft[30, 17] < soft[30, 20]  # a ramp outward
    assert soft[30, 2] == 0
    b = bbox(soft)
    assert b[0] < 20 and b[2] > 60
    full = Selection(30, 30)
    full.select_all()
    assert (full.soft_mask(10) == 255).all()  # replicate border: no darkened frame
    assert np.array_equal(feather(np.zeros((5, 5), np.uint8), 3), np.zeros((5, 5), np.uint8))


def test_outline_follows_the_mask() -> None:
    s = Selection(30, 30)
    s.add_shape(Shape.RECT, pts(5, 5, 15, 25), Mode.REPLACE)
    r = outline_path(s.mask).boundingRect()
    # The outline runs through the centres of the boundary pixels (5..14 x 5..24).
    assert (r.left(), r.top(), r.right(), r.bottom()) == (5.5, 5.5, 14.5, 24.5)
    s.select_all()
    r = outline_path(s.mask).boundingRect()
    assert (r.left(), r.top(), r.right(), r.bottom()) == (0.5, 0.5, 29.5, 29.5)
