"""The image view: zoom (wheel, fit, 100 %, keys), pan (middle drag, Space + drag, Hand tool), the
selection tools with their outline, and the before/after split with a draggable divider.

It draws an 8-bit RGBA copy of the document (updated per changed region) and never touches the
document's own pixels; selections go into the `Selection` it is given.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from PySide6.QtCore import QPointF, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QBrush,
    QColor,
    QDragEnterEvent,
    QDropEvent,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPaintEvent,
    QPen,
    QPixmap,
    QPolygonF,
    QResizeEvent,
    QTransform,
    QWheelEvent,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

from .document import Document
from .pixels import new_rgba_image, write_display
from .selection import Mode, Selection, Shape, outline_path

MIN_ZOOM, MAX_ZOOM = 0.02, 32.0
ZOOM_STEP = 1.25
DIVIDER_GRAB_PX = 8  # how close to the divider a press must be to drag it


class Tool(Enum):
    RECT = "rect"
    ELLIPSE = "ellipse"
    LASSO = "lasso"
    PAN = "pan"


SHAPE_OF_TOOL = {Tool.RECT: Shape.RECT, Tool.ELLIPSE: Shape.ELLIPSE, Tool.LASSO: Shape.LASSO}


def _checker_brush() -> QBrush:
    pm = QPixmap(16, 16)
    pm.fill(QColor(204, 204, 204))
    p = QPainter(pm)
    p.fillRect(0, 0, 8, 8, QColor(153, 153, 153))
    p.fillRect(8, 8, 8, 8, QColor(153, 153, 153))
    p.end()
    return QBrush(pm)


class Canvas(QWidget):
    selection_changed = Signal()
    zoom_changed = Signal(float)
    cursor_moved = Signal(int, int)  # image pixel under the cursor, (-1, -1) outside
    file_dropped = Signal(str)
    image_dropped = Signal(QImage)  # an image dragged from a browser or another program, no file behind it
    compare_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(True)
        self.setAcceptDrops(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.doc: Document | None = None
        self.selection: Selection | None = None
        self._image = QImage()
        self._before = QImage()
        self._outline = QPainterPath()
        self._scale = 1.0
        self._offset = QPointF(0, 0)  # widget position of image pixel (0, 0)
        self._fit = True  # keep fitting on resize until the user zooms
        self.tool = Tool.RECT
        self.default_mode = Mode.REPLACE
        self.split = False
        self.split_pos = 0.5  # divider as a fraction of the widget width
        self.show_before = False
        self._drag: str | None = None  # "select" | "pan" | "divider"
        self._press = QPointF()
        self._points: list[QPointF] = []  # image coordinates of the shape being drawn
        self._mode = Mode.REPLACE
        self._space = False
        self._checker = _checker_brush()

    def sizeHint(self) -> QSize:
        return QSize(900, 650)

    # --- document --------------------------------------------------------------------------------
    def set_document(self, doc: Document | None, selection: Selection | None) -> None:
        if self.doc is not None:
            self.doc.changed.disconnect(self.refresh_region)
        self.doc, self.selection = doc, selection
        if doc is None:
            self._image = self._before = QImage()
        else:
            self._image = new_rgba_image(doc.width, doc.height)
            write_display(self._image, doc.rgb, doc.alpha)
            self._before = new_rgba_image(doc.width, doc.height)
            o = doc.original
            write_display(self._before, o[..., :3], o[..., 3] if doc.has_alpha else None)
            doc.changed.connect(self.refresh_region)
        self._outline = QPainterPath()
        self.fit()

    def refresh_region(self, rect: QRect) -> None:
        if self.doc is None:
            return
        x, y, w, h = rect.x(), rect.y(), rect.width(), rect.height()
        patch = self.doc.pixels[y : y + h, x : x + w]
        write_display(self._image, patch[..., :3], patch[..., 3] if self.doc.has_alpha else None, x, y)
        self.update()

    def selection_updated(self) -> None:
        """Call after changing the selection from outside (menus); re-traces the outline."""
        m = self.selection.mask if self.selection else None
        self._outline = QPainterPath() if m is None else outline_path(m)
        self.update()
        self.selection_changed.emit()

    @property
    def display_image(self) -> QImage:
        return self._image

    # --- coordinates and zoom --------------------------------------------------------------------
    @property
    def scale(self) -> float:
        return self._scale

    def image_to_widget(self, p: QPointF) -> QPointF:
        return QPointF(p.x() * self._scale + self._offset.x(), p.y() * self._scale + self._offset.y())

    def widget_to_image(self, p: QPointF) -> QPointF:
        return QPointF((p.x() - self._offset.x()) / self._scale, (p.y() - self._offset.y()) / self._scale)

    def fit(self) -> None:
        self._fit = True
        if self._image.isNull() or self.width() < 2 or self.height() < 2:
            return
        s = min((self.width() - 16) / self._image.width(), (self.height() - 16) / self._image.height())
        self._set_zoom(max(MIN_ZOOM, min(s, MAX_ZOOM)), None)

    def actual_size(self) -> None:
        self.zoom_to(1.0)

    def zoom_in(self) -> None:
        self.zoom_to(self._scale * ZOOM_STEP)

    def zoom_out(self) -> None:
        self.zoom_to(self._scale / ZOOM_STEP)

    def zoom_to(self, scale: float, anchor: QPointF | None = None) -> None:
        self._fit = False
        self._set_zoom(max(MIN_ZOOM, min(scale, MAX_ZOOM)), anchor)

    def _set_zoom(self, scale: float, anchor: QPointF | None) -> None:
        if anchor is None:  # keep the image centred (or the view centre fixed)
            if self._fit:
                self._scale = scale
                self._offset = QPointF(
                    (self.width() - self._image.width() * scale) / 2,
                    (self.height() - self._image.height() * scale) / 2,
                )
                self.update()
                self.zoom_changed.emit(self._scale)
                return
            anchor = QPointF(self.width() / 2, self.height() / 2)
        fixed = self.widget_to_image(anchor)
        self._scale = scale
        self._offset = QPointF(anchor.x() - fixed.x() * scale, anchor.y() - fixed.y() * scale)
        self.update()
        self.zoom_changed.emit(self._scale)

    def pan_by(self, dx: float, dy: float) -> None:
        self._fit = False
        self._offset += QPointF(dx, dy)
        self.update()

    def resizeEvent(self, event: QResizeEvent) -> None:
        if self._fit:
            self.fit()
        super().resizeEvent(event)

    def wheelEvent(self, event: QWheelEvent) -> None:
        if self._image.isNull():
            return
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom_to(self._scale * ZOOM_STEP**steps, event.position())

    # --- compare ---------------------------------------------------------------------------------
    def set_split(self, on: bool) -> None:
        self.split = on
        self.update()
        self.compare_changed.emit()

    def set_show_before(self, on: bool) -> None:
        self.show_before = on
        self.update()
        self.compare_changed.emit()

    def _divider_x(self) -> float:
        return self.split_pos * self.width()

    # --- mouse and keys --------------------------------------------------------------------------
    def _mode_for(self, mods: Qt.KeyboardModifier) -> Mode:
        if mods & Qt.KeyboardModifier.AltModifier:
            return Mode.SUBTRACT
        if mods & Qt.KeyboardModifier.ShiftModifier:
            return Mode.ADD
        return self.default_mode

    def mousePressEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        self._press = pos
        if event.button() == Qt.MouseButton.MiddleButton or (
            event.button() == Qt.MouseButton.LeftButton and (self._space or self.tool is Tool.PAN)
        ):
            self._drag = "pan"
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        elif (
            event.button() == Qt.MouseButton.LeftButton
            and self.split
            and abs(pos.x() - self._divider_x()) <= (DIVIDER_GRAB_PX)
        ):
            self._drag = "divider"
        elif event.button() == Qt.MouseButton.LeftButton and self.doc is not None:
            self._drag = "select"
            self._mode = self._mode_for(event.modifiers())
            self._points = [self.widget_to_image(pos)]
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        if self.doc is not None:
            ip = self.widget_to_image(pos)
            inside = 0 <= ip.x() < self.doc.width and 0 <= ip.y() < self.doc.height
            self.cursor_moved.emit(int(ip.x()) if inside else -1, int(ip.y()) if inside else -1)
        if self._drag == "pan":
            d = pos - self._press
            self._press = pos
            self.pan_by(d.x(), d.y())
        elif self._drag == "divider":
            self.split_pos = min(1.0, max(0.0, pos.x() / max(1, self.width())))
            self.update()
        elif self._drag == "select":
            ip = self.widget_to_image(pos)
            if self.tool is Tool.LASSO:
                self._points.append(ip)
            else:
                self._points = [self._points[0], ip]
            self.update()
        elif self.split:
            near = abs(pos.x() - self._divider_x()) <= DIVIDER_GRAB_PX
            self.setCursor(Qt.CursorShape.SplitHCursor if near else Qt.CursorShape.CrossCursor)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        drag, self._drag = self._drag, None
        self.unsetCursor()
        if drag != "select" or self.selection is None:
            return
        ip = self.widget_to_image(event.position())
        if self.tool is Tool.LASSO:
            self._points.append(ip)
        else:
            self._points = [self._points[0], ip]
        moved = (event.position() - self._press).manhattanLength() >= 3
        points, self._points = self._points, []
        if not moved:
            if self._mode is Mode.REPLACE:  # a plain click deselects, as in every photo editor
                self.selection.clear()
                self.selection_updated()
            self.update()
            return
        self.selection.add_shape(SHAPE_OF_TOOL[self.tool], points, self._mode)
        self.selection_updated()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = True
            self.setCursor(Qt.CursorShape.OpenHandCursor)
        elif event.key() == Qt.Key.Key_Escape and self._drag == "select":
            self._drag, self._points = None, []
            self.update()
        else:
            super().keyPressEvent(event)

    def keyReleaseEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = False
            self.unsetCursor()
        else:
            super().keyReleaseEvent(event)

    # --- drag and drop ---------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        mime = event.mimeData()
        if (mime.hasUrls() and any(u.isLocalFile() for u in mime.urls())) or mime.hasImage():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        mime = event.mimeData()
        files = [u.toLocalFile() for u in mime.urls() if u.isLocalFile()]
        if files:  # a file first: it keeps its depth, profile and metadata
            event.acceptProposedAction()
            self.file_dropped.emit(str(Path(files[0])))
        elif mime.hasImage():
            image = mime.imageData()
            if isinstance(image, QImage) and not image.isNull():
                event.acceptProposedAction()
                self.image_dropped.emit(image)

    # --- painting --------------------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(40, 40, 43))
        if self._image.isNull():
            p.setPen(QColor(150, 150, 155))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Open a photo (Ctrl+O) or drop it here")
            return
        target = QRectF(
            self._offset.x(), self._offset.y(), self._image.width() * self._scale, self._image.height() * self._scale
        )
        if self.doc is not None and self.doc.has_alpha:
            p.fillRect(target, self._checker)
        # Downscaled views are filtered; at 100 % and above show the real pixels.
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self._scale < 1.0)
        if self.split:
            dx = self._divider_x()
            p.save()
            p.setClipRect(QRectF(0, 0, dx, self.height()))
            self._draw_image(p, self._before, target)
            p.setClipRect(QRectF(dx, 0, self.width() - dx, self.height()))
            self._draw_image(p, self._image, target)
            p.restore()
        else:
            self._draw_image(p, self._before if self.show_before else self._image, target)
        self._draw_outline(p)
        if self.split:
            self._draw_divider(p)
        elif self.show_before:
            self._label(p, "Before", QPointF(12, 12), Qt.AlignmentFlag.AlignLeft)

    def _draw_image(self, p: QPainter, img: QImage, target: QRectF) -> None:
        visible = target.intersected(QRectF(self.rect()))
        if visible.isEmpty():
            return
        src = QRectF(self.widget_to_image(visible.topLeft()), self.widget_to_image(visible.bottomRight()))
        p.drawImage(visible, img, src)

    def _draw_outline(self, p: QPainter) -> None:
        path = QPainterPath(self._outline)
        preview = self._preview_path()
        t = QTransform(self._scale, 0, 0, self._scale, self._offset.x(), self._offset.y())
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        for pth in (path, preview):
            if pth.isEmpty():
                continue
            mapped = t.map(pth)
            # Two-tone dashes read on any background without an animation timer eating CPU.
            p.setPen(QPen(QColor(255, 255, 255), 1))
            p.drawPath(mapped)
            pen = QPen(QColor(0, 0, 0), 1, Qt.PenStyle.CustomDashLine)
            pen.setDashPattern([4, 4])
            p.setPen(pen)
            p.drawPath(mapped)

    def _preview_path(self) -> QPainterPath:
        path = QPainterPath()
        if self._drag != "select" or len(self._points) < 2:
            return path
        if self.tool is Tool.LASSO:
            path.addPolygon(QPolygonF(self._points))
        elif self.tool is Tool.RECT:
            path.addRect(QRectF(self._points[0], self._points[-1]).normalized())
        else:
            path.addEllipse(QRectF(self._points[0], self._points[-1]).normalized())
        return path

    def _draw_divider(self, p: QPainter) -> None:
        dx = self._divider_x()
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setPen(QPen(QColor(255, 255, 255, 230), 2))
        p.drawLine(QPointF(dx, 0), QPointF(dx, self.height()))
        c = QPointF(dx, self.height() / 2)
        p.setBrush(QColor(255, 255, 255, 230))
        p.setPen(QPen(QColor(0, 0, 0, 120), 1))
        p.drawEllipse(c, 13, 13)
        p.setBrush(QColor(50, 50, 50))
        p.setPen(Qt.PenStyle.NoPen)
        for sgn in (-1, 1):  # two small arrows: the handle moves sideways
            tip = c + QPointF(sgn * 9, 0)
            p.drawPolygon(QPolygonF([tip, c + QPointF(sgn * 3, -5), c + QPointF(sgn * 3, 5)]))
        self._label(p, "Before", QPointF(dx - 12, 12), Qt.AlignmentFlag.AlignRight)
        self._label(p, "After", QPointF(dx + 12, 12), Qt.AlignmentFlag.AlignLeft)

    def _label(self, p: QPainter, text: str, at: QPointF, align: Qt.AlignmentFlag) -> None:
        fm = p.fontMetrics()
        w, h = fm.horizontalAdvance(text) + 14, fm.height() + 6
        x = at.x() - w if align == Qt.AlignmentFlag.AlignRight else at.x()
        box = QRectF(x, at.y(), w, h)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(0, 0, 0, 150))
        p.drawRoundedRect(box, 4, 4)
        p.setPen(QColor(255, 255, 255))
        p.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
