"""The canvas driven by real mouse, wheel, key and drop events (offscreen): selections of every kind
with add/subtract modifiers, zoom and pan, the before/after divider, and how pixels are shown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent, QWheelEvent
from PySide6.QtTest import QTest

from lorair_desktop.app.canvas import Canvas, Tool
from lorair_desktop.app.document import Document, ImageMeta
from lorair_desktop.app.pixels import rgba_array
from lorair_desktop.app.selection import Selection

pytestmark = pytest.mark.usefixtures("qapp")
L = Qt.MouseButton.LeftButton
NO = Qt.KeyboardModifier.NoModifier


def make_doc(w: int = 96, h: int = 64, channels: int = 3, dtype: type = np.uint8) -> Document:
    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max
    px = rng.integers(0, top, (h, w, channels), dtype=dtype, endpoint=True)
    return Document(px, ImageMeta(8 if dtype == np.uint8 else 16))


@pytest.fixture
def canvas() -> Canvas:
    c = Canvas()
    c.resize(400, 300)
    c.show()
    doc = make_doc()
    c.set_document(doc, Selection(doc.width, doc.height))
    yield c
    c.close()


def at(c: Canvas, x: float, y: float) -> QPoint:
    return c.image_to_widget(QPointF(x, y)).toPoint()


def drag(c: Canvas, points: list[tuple[float, float]], mods: Qt.KeyboardModifier = NO) -> None:
    QTest.mousePress(c, L, mods, at(c, *points[0]))
    for p in points[1:]:
        QTest.mouseMove(c, at(c, *p))
    QTest.mouseRelease(c, L, mods, at(c, *points[-1]))


def test_fit_zoom_and_display_pixels(canvas: Canvas) -> None:
    assert canvas.scale == pytest.approx(4.0)
    shown = rgba_array(canvas.display_image)
    assert np.array_equal(shown[..., :3], canvas.doc.pixels) and (shown[..., 3] == 255).all()
    grab = canvas.grab().toImage()
    p = at(canvas, 10.5, 20.5)
    c = grab.pixelColor(p)
    assert (c.red(), c.green(), c.blue()) == tuple(canvas.doc.pixels[20, 10])  # 400 %: real pixels


def test_rectangle_ellipse_lasso_with_modifiers(canvas: Canvas) -> None:
    sel = canvas.selection
    changes = []
    canvas.selection_changed.connect(lambda: changes.append(1))
    canvas.tool = Tool.RECT
    drag(canvas, [(10, 10), (20, 15), (30, 30)])
    assert sel.mask[20, 20] == 255 and sel.mask[5, 5] == 0 and sel.mask[35, 35] == 0
    canvas.tool = Tool.ELLIPSE
    drag(canvas, [(50, 10), (90, 50)], Qt.KeyboardModifier.ShiftModifier)  # add
    assert sel.mask[30, 70] == 255 and sel.mask[20, 20] == 255 and sel.mask[11, 51] == 0
    canvas.tool = Tool.LASSO
    drag(canvas, [(15, 15), (25, 15), (25, 25), (15, 25)], Qt.KeyboardModifier.AltModifier)  # subtract
    assert sel.mask[20, 20] == 0 and sel.mask[12, 12] == 255
    assert len(changes) == 3
    drag(canvas, [(0, 0), (60, 0), (0, 60)])  # a plain lasso replaces
    assert sel.mask[30, 70] == 0 and sel.mask[10, 10] == 255 and sel.mask[50, 50] == 0
    QTest.mouseClick(canvas, L, NO, at(canvas, 40, 40))  # a click deselects
    assert sel.empty


def test_wheel_zoom_keeps_the_point_under_the_cursor_and_pan(canvas: Canvas) -> None:
    anchor = QPointF(at(canvas, 30, 20))
    before = canvas.widget_to_image(anchor)
    ev = QWheelEvent(
        anchor,
        canvas.mapToGlobal(anchor),
        QPoint(0, 0),
        QPoint(0, 120),
        Qt.MouseButton.NoButton,
        NO,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    canvas.wheelEvent(ev)
    assert canvas.scale == pytest.approx(5.0)
    after = canvas.widget_to_image(anchor)
    assert (after.x(), after.y()) == pytest.approx((before.x(), before.y()))
    canvas.actual_size()
    assert canvas.scale == 1.0
    canvas.tool = Tool.PAN
    p0 = canvas.image_to_widget(QPointF(0, 0))
    QTest.mousePress(canvas, L, NO, QPoint(100, 100))
    QTest.mouseMove(canvas, QPoint(130, 90))
    QTest.mouseRelease(canvas, L, NO, QPoint(130, 90))
    p1 = canvas.image_to_widget(QPointF(0, 0))
    assert (p1.x() - p0.x(), p1.y() - p0.y()) == (30, -10)
    assert canvas.selection.empty  # panning never selects
    canvas.fit()
    assert canvas.scale == pytest.approx(4.0)


def test_split_divider_drag_and_before_toggle(canvas: Canvas) -> None:
    doc = canvas.doc
    orig = doc.pixels.copy()
    doc.apply_patch("paint", 0, 0, np.zeros((doc.height, doc.width, 3), np.uint8))
    canvas.set_split(True)
    img = canvas.grab().toImage()
    left, right = at(canvas, 10.5, 30.5), at(canvas, 85.5, 30.5)
    assert img.pixelColor(right).red() == 0 and img.pixelColor(right).green() == 0
    c = img.pixelColor(left)
    assert (c.red(), c.green(), c.blue()) == tuple(orig[30, 10])  # left of the divider: before
    QTest.mousePress(canvas, L, NO, QPoint(200, 150))  # on the divider (the middle)
    QTest.mouseMove(canvas, QPoint(100, 150))
    QTest.mouseRelease(canvas, L, NO, QPoint(100, 150))
    assert canvas.split_pos == pytest.approx(0.25)
    assert canvas.selection.empty  # dragging the divider is not a selection
    canvas.set_split(False)
    canvas.set_show_before(True)
    c = canvas.grab().toImage().pixelColor(right)
    assert (c.red(), c.green(), c.blue()) == tuple(orig[30, 85])


def test_16bit_and_alpha_are_shown_correctly(qapp) -> None:
    c = Canvas()
    c.resize(200, 150)
    c.show()
    doc = make_doc(40, 30, 4, np.uint16)
    doc.pixels[..., 3] = 0
    doc.pixels[:, 20:, 3] = 65535
    c.set_document(doc, Selection(40, 30))
    shown = rgba_array(c.display_image)
    expected = ((doc.pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    assert np.array_equal(shown, expected)
    img = c.grab().toImage()
    transparent = img.pixelColor(at(c, 5.5, 5.5))
    assert transparent.red() in (153, 204) and transparent.red() == transparent.green()  # the checkerboard
    opaque = img.pixelColor(at(c, 30.5, 5.5))
    assert (opaque.red(), opaque.green(), opaque.blue()) == tuple(expected[5, 30, :3])
    c.close()


def test_drop_a_file(canvas: Canvas, tmp_path: Path) -> None:
    got = []
    canvas.file_dropped.connect(got.append)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path / "x.png"))])
    ev = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, L, NO)
    canvas.dropEvent(ev)
    assert got == [str(tmp_path / "x.png")]


def test_drop_an_image_from_a_browser(canvas: Canvas, tmp_path: Path) -> None:
    """A browser drags image data (and a web address, no local file): it arrives as an image."""
    from PySide6.QtGui import QImage

    got: list[QImage] = []
    canvas.image_dropped.connect(got.append)
    files: list[str] = []
    canvas.file_dropped.connect(files.append)
    image = QImage(12, 8, QImage.Format.Format_RGB32)
    image.fill(0xFF336699)
    mime = QMimeData()
    mime.setImageData(image)
    mime.setUrls([QUrl("https://example.org/photo.jpg")])
    canvas.dropEvent(QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, L, NO))
    assert not files and len(got) == 1 and got[0].size() == image.size()
    assert got[0].pixelColor(3, 3).getRgb()[:3] == (0x33, 0x66, 0x99)
    both = QMimeData()  # a local file wins: it keeps its depth, profile and metadata
    both.setImageData(image)
    both.setUrls([QUrl.fromLocalFile(str(tmp_path / "x.png"))])
    canvas.dropEvent(QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, both, L, NO))
    assert files == [str(tmp_path / "x.png")] and len(got) == 1
