"""Small tool icons drawn with QPainter: the project ships no icon theme, and drawn icons follow the
palette (light or dark) instead of going missing on systems without one."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap
from PySide6.QtWidgets import QApplication

SIZE = 24


def _icon(draw: Callable[[QPainter, QColor], None]) -> QIcon:
    app = QApplication.instance()
    color = app.palette().windowText().color() if isinstance(app, QApplication) else QColor(220, 220, 220)
    pm = QPixmap(SIZE, SIZE)
    pm.fill(Qt.GlobalColor.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    draw(p, color)
    p.end()
    return QIcon(pm)


def _dashed(p: QPainter, color: QColor) -> None:
    pen = QPen(color, 1.6, Qt.PenStyle.CustomDashLine)
    pen.setDashPattern([2.5, 1.8])
    p.setPen(pen)
    p.setBrush(Qt.BrushStyle.NoBrush)


def rect_icon() -> QIcon:
    return _icon(lambda p, c: (_dashed(p, c), p.drawRect(QRectF(4, 6, 16, 12))))


def ellipse_icon() -> QIcon:
    return _icon(lambda p, c: (_dashed(p, c), p.drawEllipse(QRectF(3, 5, 18, 14))))


def lasso_icon() -> QIcon:
    def draw(p: QPainter, c: QColor) -> None:
        _dashed(p, c)
        path = QPainterPath(QPointF(6, 15))
        path.cubicTo(1, 6, 16, 1, 20, 8)
        path.cubicTo(23, 14, 14, 18, 9, 16)
        p.drawPath(path)
        p.setPen(QPen(c, 1.6))
        p.drawLine(QPointF(8, 16), QPointF(7, 22))

    return _icon(draw)


def pan_icon() -> QIcon:
    def draw(p: QPainter, c: QColor) -> None:
        p.setPen(QPen(c, 1.8))
        p.drawLine(QPointF(12, 3), QPointF(12, 21))
        p.drawLine(QPointF(3, 12), QPointF(21, 12))
        p.setBrush(c)
        for tip, a, b in (
            ((12, 2), (9, 6), (15, 6)),
            ((12, 22), (9, 18), (15, 18)),
            ((2, 12), (6, 9), (6, 15)),
            ((22, 12), (18, 9), (18, 15)),
        ):
            p.drawPolygon([QPointF(*tip), QPointF(*a), QPointF(*b)])

    return _icon(draw)


def compare_icon() -> QIcon:
    def draw(p: QPainter, c: QColor) -> None:
        p.setPen(QPen(c, 1.6))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(QRectF(3, 5, 18, 14))
        p.fillRect(QRectF(3, 5, 9, 14), c)
        p.drawLine(QPointF(12, 2), QPointF(12, 22))

    return _icon(draw)


def fit_icon() -> QIcon:
    def draw(p: QPainter, c: QColor) -> None:
        p.setPen(QPen(c, 1.8))
        for x, y, dx, dy in ((3, 3, 1, 1), (21, 3, -1, 1), (3, 21, 1, -1), (21, 21, -1, -1)):
            p.drawLine(QPointF(x, y), QPointF(x + 6 * dx, y))
            p.drawLine(QPointF(x, y), QPointF(x, y + 6 * dy))

    return _icon(draw)


def actual_size_icon() -> QIcon:
    def draw(p: QPainter, c: QColor) -> None:
        p.setPen(c)
        f = p.font()
        f.setPixelSize(11)
        f.setBold(True)
        p.setFont(f)
        p.drawText(QRectF(0, 0, SIZE, SIZE), Qt.AlignmentFlag.AlignCenter, "1:1")

    return _icon(draw)


def dot_icon(color: QColor) -> QIcon:
    def draw(p: QPainter, _c: QColor) -> None:
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(color)
        p.drawEllipse(QRectF(7, 7, 10, 10))

    return _icon(draw)
