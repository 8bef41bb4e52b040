"""The main window: canvas in the centre, the restore panel docked right, the log docked below, menus
and a toolbar with standard shortcuts, and a status bar with the image, the zoom and the worker.

Dialogs that ask the user something go through small `ask_*` methods, so tests (and scripts) can
answer them without a modal loop.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QByteArray, Qt, QTimer
from PySide6.QtGui import QCloseEvent, QColor, QDragEnterEvent, QDropEvent, QGuiApplication, QImage
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from .. import imageio
from ..bridge.runtime import log_file
from ..errors import LoraIRError
from . import icons
from .batch import BatchDialog
from .canvas import Canvas, Tool
from .controller import RestoreController
from .document import Document, ImageMeta, SaveOptions
from .export_dialog import ExportDialog
from .log_view import FileTail, LogView
from .menus import APP_NAME, WindowMenus
from .message_bar import MessageBar
from .pixels import from_qimage, max_value, to_qimage
from .restore_panel import RestorePanel
from .selection import Selection, bbox
from .settings import Settings
from .worker_link import ConnectConfig, LinkState, WorkerLink

log = logging.getLogger("lorair_desktop.app")

OPEN_FILTER = f"Images ({' '.join('*' + s for s in sorted(imageio.READ_SUFFIXES))});;All files (*)"
SAVE_FILTER = ";;".join(f"{t.label} ({' '.join('*' + s for s in t.suffixes)})" for t in imageio.WRITE_TYPES)
STATE_COLORS = {
    LinkState.IDLE: QColor(80, 200, 120),
    LinkState.BUSY: QColor(240, 180, 60),
    LinkState.CONNECTING: QColor(240, 180, 60),
    LinkState.ASLEEP: QColor(150, 150, 150),
    LinkState.OFFLINE: QColor(220, 80, 80),
}


class MainWindow(WindowMenus):
    def __init__(
        self,
        settings: Settings,
        connect: ConnectConfig | None = None,
        autoconnect: bool = True,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.connect_config = connect or ConnectConfig(device=settings.device)
        self.doc: Document | None = None
        self.selection: Selection | None = None
        self.setWindowTitle(APP_NAME)
        self.setAcceptDrops(True)
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)

        # Centre: message strip over the canvas.
        centre = QWidget()
        cl = QVBoxLayout(centre)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.setSpacing(0)
        self.message_bar = MessageBar()
        self.canvas = Canvas()
        cl.addWidget(self.message_bar)
        cl.addWidget(self.canvas, 1)
        self.setCentralWidget(centre)

        # Right: the restore panel.
        self.panel = RestorePanel()
        self.panel.margin_spin.setValue(settings.margin)
        self.panel.tile_spin.setValue(settings.tile)
        self.panel.set_ensemble(settings.ensemble)
        self.panel.auto_analyze.setChecked(settings.auto_analyze)
        scroll = QScrollArea()
        scroll.setWidget(self.panel)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.panel_dock = QDockWidget("Restore", self)
        self.panel_dock.setObjectName("restore-dock")
        self.panel_dock.setWidget(scroll)
        self.panel_dock.setMinimumWidth(300)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.panel_dock)

        # Bottom: the log (app, bridge and the worker's own log file).
        self.log_view = LogView()
        self.log_dock = QDockWidget("Log", self)
        self.log_dock.setObjectName("log-dock")
        self.log_dock.setWidget(self.log_view)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.log_dock)
        self.log_view.attach(logging.getLogger("lorair_desktop"))
        self._worker_log = FileTail(log_file(self.connect_config.runtime_dir))
        self._log_timer = QTimer(self)
        self._log_timer.setInterval(1000)
        self._log_timer.timeout.connect(self._tail_worker_log)
        self._log_timer.start()

        # Worker link and the restore flow.
        self.link = WorkerLink(self)
        self.controller = RestoreController(
            self.link,
            self.panel,
            lambda: (self.doc, self.selection),
            lambda: self.feather_spin.value(),
            reconnect=self.reconnect,
            parent=self,
        )
        self.controller.message.connect(self.show_message)
        self.controller.status.connect(lambda text: self.statusBar().showMessage(text, 8000))
        self.link.state_changed.connect(self._update_worker_status)
        self.link.info_changed.connect(lambda _info: self._update_worker_status(self.link.state))
        self.link.state_changed.connect(lambda _s: self._update_actions())

        self._build_status_bar()
        self._build_actions()
        self._build_menus()
        self._build_toolbar()
        self.canvas.selection_changed.connect(self.controller.schedule_auto_analyze)
        self.canvas.selection_changed.connect(self._update_actions)
        self.canvas.zoom_changed.connect(lambda z: self.zoom_label.setText(f"{z * 100:.0f} %"))
        self.canvas.cursor_moved.connect(self._cursor_moved)
        self.canvas.file_dropped.connect(self.open_file)
        self.canvas.image_dropped.connect(self.open_image_data)
        self.canvas.compare_changed.connect(self._sync_compare_actions)
        for w in (self.panel.margin_spin, self.panel.tile_spin):
            w.valueChanged.connect(self._save_panel_settings)
        self.panel.auto_analyze.toggled.connect(self._save_panel_settings)
        self.panel.passes_combo.currentIndexChanged.connect(self._save_panel_settings)
        # The restore dock runs the full height; the log shares the bottom with the canvas only.
        self.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
        self.setCorner(Qt.Corner.TopRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
        self.resize(1280, 820)
        self.resizeDocks([self.log_dock], [130], Qt.Orientation.Vertical)
        self.resizeDocks([self.panel_dock], [330], Qt.Orientation.Horizontal)
        self._restore_window_state()
        self._update_actions()
        self._update_worker_status(LinkState.OFFLINE)
        if autoconnect:
            QTimer.singleShot(0, self.reconnect)

    # --- building ---------------------------------------------------------------------------------
    # --- documents ---------------------------------------------------------------------------------
    def open_dialog(self) -> None:
        if not self.maybe_discard():
            return
        path, _ = QFileDialog.getOpenFileName(self, "Open image", self.settings.last_folder, OPEN_FILTER)
        if path:
            self.open_file(path, ask=False)

    def open_file(self, path: str | Path, ask: bool = True) -> bool:
        """Open an image; on failure the current image stays as it was and the window says why."""
        if self.controller.busy:
            self.show_message("warning", "A restore is running.", "Cancel it (Esc) before opening another image.")
            return False
        if ask and not self.maybe_discard():
            return False
        path = Path(path)
        try:
            doc = Document.open(path)
        except LoraIRError as exc:
            self.show_message("error", f"Cannot open {path.name}: {exc.message}", exc.hint)
            return False
        except (OSError, ValueError, MemoryError) as exc:
            self.show_message("error", f"Cannot open {path.name}: {exc}", "Check that the file is a readable image.")
            return False
        self.set_document(doc)
        if doc.meta.caveat:
            self.show_message("warning", f"{doc.meta.caveat}.",
                              "Saving writes the result to a new file; the original stays as it is.")
        self.settings.last_folder = str(path.parent)
        self.settings.add_recent(path)
        self.settings.save()
        log.info(
            "opened %s (%d×%d, %d-bit%s)",
            path,
            doc.width,
            doc.height,
            doc.meta.bit_depth,
            ", alpha" if doc.has_alpha else "",
        )
        return True

    def set_document(self, doc: Document | None) -> None:
        self.doc = doc
        self.selection = Selection(doc.width, doc.height) if doc else None
        if doc is not None:
            doc.history_changed.connect(self._update_actions)
        self.canvas.set_document(doc, self.selection)
        self.message_bar.dismiss()
        self._update_image_label()
        self._update_actions()

    def _update_image_label(self) -> None:
        doc = self.doc
        if doc is None:
            self.image_label.setText("")
        else:
            depth = f"{doc.meta.extra.get('bits_per_sample', doc.meta.bit_depth)}-bit"
            fmt = doc.meta.source_format or (doc.path.suffix[1:].upper() if doc.path else "")
            icc = " · ICC" if doc.meta.icc_profile else ""
            colour = ("Grey" if doc.meta.grey else "RGB") + (" + alpha" if doc.has_alpha else "")
            colour += f" (from {doc.meta.converted})" if doc.meta.converted else ""
            pages = f" · page 1 of {doc.meta.frames}" if doc.meta.frames > 1 else ""
            self.image_label.setText(f"{doc.width} × {doc.height} · {depth} {colour} · {fmt}{icc}{pages}")

    def close_image(self) -> None:
        if self.maybe_discard():
            self.set_document(None)

    def maybe_discard(self) -> bool:
        """True if the current image may be replaced (it is clean, saved now, or the user discards)."""
        if self.doc is None or not self.doc.dirty:
            return True
        choice = self.ask_unsaved()
        if choice == "save":
            return self.save()
        return choice == "discard"

    def ask_unsaved(self) -> str:
        """'save' | 'discard' | 'cancel'."""
        btn = QMessageBox.question(
            self,
            APP_NAME,
            f"{self.doc.title if self.doc else 'The image'} has unsaved changes. Save them?",
            QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Save,
        )
        return {QMessageBox.StandardButton.Save: "save", QMessageBox.StandardButton.Discard: "discard"}.get(
            btn, "cancel"
        )

    def ask_save_path(self, title: str, suggested: Path) -> Path | None:
        path, _ = QFileDialog.getSaveFileName(self, title, str(suggested), SAVE_FILTER)
        return Path(path) if path else None

    def save(self) -> bool:
        doc = self.doc
        if doc is None:
            return False
        if doc.path is None or doc.path.suffix.lower() not in imageio.WRITE_FORMATS or doc.meta.caveat:
            return self.save_as()
        return self._write(doc.path, SaveOptions(quality=self.settings.jpeg_quality), as_copy=False)

    def save_as(self) -> bool:
        doc = self.doc
        if doc is None:
            return False
        suggested = doc.path.with_suffix(".png") if doc.path else Path(self.settings.last_folder) / "restored.png"
        if doc.path and doc.path.suffix.lower() in imageio.WRITE_FORMATS:
            suggested = doc.path.with_name(f"{doc.path.stem}-restored{doc.path.suffix}")
        path = self.ask_save_path("Save image as", suggested)
        return path is not None and self._write(path, SaveOptions(quality=self.settings.jpeg_quality), as_copy=False)

    def export(self) -> bool:
        if self.doc is None:
            return False
        dlg = ExportDialog(self.doc.meta.bit_depth, self.settings.jpeg_quality, self)
        if dlg.exec() != ExportDialog.DialogCode.Accepted:
            return False
        base = self.doc.path or Path(self.settings.last_folder) / "image"
        path = self.ask_save_path("Export", base.with_name(f"{base.stem}-restored{dlg.suffix}"))
        if path is None:
            return False
        self.settings.jpeg_quality = dlg.options().quality
        return self.export_to(path, dlg.options())

    def export_to(self, path: Path, options: SaveOptions) -> bool:
        return self._write(path, options, as_copy=True)

    def _write(self, path: Path, options: SaveOptions, as_copy: bool) -> bool:
        assert self.doc is not None
        if path.suffix.lower() not in imageio.WRITE_FORMATS:
            self.show_message(
                "error",
                f"Cannot write '{path.suffix or path.name}' files.",
                f"Use one of {', '.join(sorted(imageio.WRITE_FORMATS))}.",
            )
            return False
        doc = self.doc
        if doc.meta.caveat and doc.path is not None and path.resolve() == doc.path.resolve():
            self.show_message("error", f"{doc.meta.caveat}: saving the result over it would lose what it holds.",
                              "Choose another file name.")
            return False
        try:
            self.doc.save(path, options, as_copy=as_copy)
        except LoraIRError as exc:
            self.show_message("error", f"Cannot save {path.name}: {exc.message}", exc.hint)
            return False
        except OSError as exc:
            self.show_message(
                "error",
                f"Cannot save {path.name}: {exc.strerror or exc}",
                "Check that the folder exists and is writable, and that the disk has space.",
            )
            return False
        log.info("%s %s", "exported" if as_copy else "saved", path)
        self.statusBar().showMessage(f"{'Exported' if as_copy else 'Saved'} {path}", 8000)
        if not as_copy:
            self.settings.add_recent(path)
            self.settings.save()
            self._update_image_label()  # the document now belongs to this file: one page, its format
        self._update_actions()
        return True

    # --- editing -----------------------------------------------------------------------------------
    def undo(self) -> None:
        if self.doc is not None and not self.controller.busy:
            self.doc.undo()

    def redo(self) -> None:
        if self.doc is not None and not self.controller.busy:
            self.doc.redo()

    def copy_image(self) -> bool:
        """The selection's bounding box as it is now (pixels outside a non-rectangular selection made
        transparent, as editors copy it), or the whole image, onto the clipboard at the document's depth."""
        doc = self.doc
        if doc is None:
            return False
        mask = self.selection.mask if self.selection is not None else None
        box = bbox(mask) if mask is not None else None
        x, y, x1, y1 = box if box is not None else (0, 0, doc.width, doc.height)
        w, h = x1 - x, y1 - y
        pixels = doc.pixels[y : y + h, x : x + w]
        if mask is not None and (mask[y : y + h, x : x + w] < 255).any():
            cover = mask[y : y + h, x : x + w].astype(np.uint32) * int(max_value(pixels.dtype)) // 255
            alpha = pixels[..., 3] if doc.has_alpha else np.full((h, w), max_value(pixels.dtype), pixels.dtype)
            pixels = np.dstack([pixels[..., :3], np.minimum(alpha, cover).astype(pixels.dtype)])
        QGuiApplication.clipboard().setImage(to_qimage(pixels))
        self.statusBar().showMessage(f"Copied {w}×{h} px", 4000)
        return True

    def paste_image(self) -> bool:
        """The clipboard's image as a new, untitled image (see open_image_data)."""
        img = QGuiApplication.clipboard().image()
        if img.isNull() or img.width() < 1 or img.height() < 1:
            self.show_message("warning", "The clipboard holds no image.",
                              "Copy an image in another program first (or take a screenshot).")
            return False
        return self.open_image_data(img, "clipboard")

    def open_image_data(self, img: QImage, source: str = "dropped image") -> bool:
        """Pixels with no file behind them (pasted, or dropped from a browser) as a new, untitled image
        (Save asks for a name); the current one is kept unless it may be replaced (maybe_discard)."""
        if self.controller.busy:
            self.show_message("warning", "A restore is running.", "Cancel it (Esc) before opening another image.")
            return False
        if not self.maybe_discard():
            return False
        pixels = from_qimage(img)
        bits = 16 if pixels.dtype == np.uint16 else 8
        self.set_document(Document(pixels, ImageMeta(bits, source_format=source)))
        log.info("opened a %d×%d image from the %s (%d-bit)", img.width(), img.height(), source, bits)
        return True

    def select_all(self) -> None:
        if self.selection is not None:
            self.selection.select_all()
            self.canvas.selection_updated()

    def select_none(self) -> None:
        if self.selection is not None:
            self.selection.clear()
            self.canvas.selection_updated()

    def invert_selection(self) -> None:
        if self.selection is not None:
            self.selection.invert()
            self.canvas.selection_updated()

    def set_tool(self, tool: Tool) -> None:
        self.canvas.tool = tool
        self.tool_actions[tool].setChecked(True)

    def _feather_changed(self, value: float) -> None:
        self.settings.feather = float(value)
        self.settings.save()
        self.controller.schedule_auto_analyze()

    def _save_panel_settings(self) -> None:
        self.settings.margin = self.panel.margin
        self.settings.tile = self.panel.tile
        self.settings.ensemble = self.panel.ensemble
        self.settings.auto_analyze = self.panel.auto_analyze.isChecked()
        self.settings.save()

    # --- worker ------------------------------------------------------------------------------------
    def reconnect(self) -> None:
        self.message_bar.dismiss()
        self.connect_config.device = self.settings.device
        self.link.connect_worker(self.connect_config)

    def restart_worker(self) -> None:
        if self.controller.busy:
            self.show_message("warning", "The worker is busy.", "Cancel the restore first (Esc).")
            return
        self.message_bar.dismiss()
        self.connect_config.device = self.settings.device
        self.link.restart_worker(self.connect_config)

    def set_device(self, device: str) -> None:
        self.device_actions[device].setChecked(True)
        if device == self.settings.device:
            return
        self.settings.device = device
        self.settings.save()
        info = self.link.info
        if info is not None and device != "auto" and not info.device.startswith(device):
            self.show_message(
                "info", f"Restarting the worker on {device.upper()}…", "The model loads again on the new device."
            )
            self.restart_worker()

    def _update_worker_status(self, state: LinkState) -> None:
        info = self.link.info
        if state is LinkState.CONNECTING:
            text = "Worker: starting…"
        elif state is LinkState.OFFLINE:
            text = "Worker: not connected"
        elif state is LinkState.ASLEEP:
            text = "Worker: stopped when idle · starts on demand"
        elif info is not None:
            model = Path(info.model.name).name if info.model.name else "no model"
            doing = {"loading": "loading the model", "error": "model failed"}.get(info.model.state)
            doing = doing or ("busy" if state is LinkState.BUSY else "idle")
            text = f"Worker: {info.device.upper()} · {model} · {doing}"
        else:
            text = f"Worker: {state.value}"
        self.worker_label.setText(text)
        self.worker_icon.setPixmap(icons.dot_icon(STATE_COLORS[state]).pixmap(16, 16))
        if info is not None:
            self.worker_label.setToolTip(
                f"LoRA-IR worker {info.version}, pid {info.pid}\nDevice: {info.device} ({info.device_name})\n"
                f"Model: {info.model.name} ({info.model.state})\n"
                f"Limit: {int(info.limits.get('max_pixels', 0)) / 1e6:.0f} MP per job"
            )

    def _tail_worker_log(self) -> None:
        lines = self._worker_log.read_new()
        stamp = time.strftime("%H:%M:%S")
        for line in lines:
            level = logging.ERROR if "ERROR" in line else logging.WARNING if "WARNING" in line else logging.INFO
            self.log_view.append_line(f"{stamp} worker  {line}", level)

    # --- messages and state ------------------------------------------------------------------------
    def show_message(self, kind: str, message: str, hint: str = "", action: object = None) -> None:
        self.message_bar.show_message(kind, message, hint, action)  # type: ignore[arg-type]
        level = {"error": logging.ERROR, "warning": logging.WARNING}.get(kind, logging.INFO)
        log.log(level, "%s%s", message, f" — {hint}" if hint else "")

    def _update_actions(self) -> None:
        has = self.doc is not None
        busy = self.controller.busy
        for a in (
            self.act_save_as,
            self.act_export,
            self.act_close,
            self.act_copy,
            self.act_select_all,
            self.act_invert,
            self.act_select_none,
            self.act_split,
            self.act_before,
            self.act_fit,
            self.act_actual,
            self.act_zoom_in,
            self.act_zoom_out,
        ):
            a.setEnabled(has)
        self.act_save.setEnabled(has and (self.doc.dirty or self.doc.path is None))
        self.act_undo.setEnabled(has and self.doc.history.can_undo() and not busy)
        self.act_redo.setEnabled(has and self.doc.history.can_redo() and not busy)
        self.act_undo.setText(
            f"&Undo {self.doc.history.undo_label()}" if has and self.doc.history.can_undo() else "&Undo"
        )
        self.act_redo.setText(
            f"&Redo {self.doc.history.redo_label()}" if has and self.doc.history.can_redo() else "&Redo"
        )
        self.act_cancel.setEnabled(busy)
        self.setWindowTitle(f"{self.doc.title}[*] — {APP_NAME}" if has else APP_NAME)
        self.setWindowModified(bool(has and self.doc.dirty))

    def _sync_compare_actions(self) -> None:
        self.act_split.setChecked(self.canvas.split)
        self.act_before.setChecked(self.canvas.show_before)

    def _cursor_moved(self, x: int, y: int) -> None:
        self.pos_label.setText(f"{x}, {y}" if x >= 0 else "")

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for f in self.settings.recent_files:
            a = self.recent_menu.addAction(f)
            a.triggered.connect(lambda _=False, f=f: self.open_file(f))
        if not self.settings.recent_files:
            self.recent_menu.addAction("(none)").setEnabled(False)
        else:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear Recent", self._clear_recent)

    def _clear_recent(self) -> None:
        self.settings.recent_files = []
        self.settings.save()

    def show_batch(self) -> None:
        if self.controller.batch_dialog is None:
            dlg = BatchDialog(self.settings.batch_input or self.settings.last_folder, self.settings.batch_output, self)
            dlg.start_requested.connect(self._start_batch)
            dlg.cancel_requested.connect(self.controller.cancel)
            self.controller.batch_dialog = dlg
        self.controller.batch_dialog.show()
        self.controller.batch_dialog.raise_()

    def _start_batch(self, job: object) -> None:
        dlg = self.controller.batch_dialog
        if dlg is not None:
            self.settings.batch_input = dlg.input_edit.text()
            self.settings.batch_output = dlg.output_edit.text()
            self.settings.save()
        self.controller.start_batch(job)  # type: ignore[arg-type]

    # --- window ------------------------------------------------------------------------------------
    def _restore_window_state(self) -> None:
        if self.settings.window_geometry:
            self.restoreGeometry(QByteArray.fromBase64(self.settings.window_geometry.encode()))
        if self.settings.window_state:
            self.restoreState(QByteArray.fromBase64(self.settings.window_state.encode()))

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        self.canvas.dragEnterEvent(event)

    def dropEvent(self, event: QDropEvent) -> None:
        self.canvas.dropEvent(event)

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self.maybe_discard():
            event.ignore()
            return
        self.controller.cancel()
        self.settings.window_geometry = bytes(self.saveGeometry().toBase64()).decode()
        self.settings.window_state = bytes(self.saveState().toBase64()).decode()
        self.settings.save()
        self._log_timer.stop()
        self.link.shutdown()
        self.log_view.detach(logging.getLogger("lorair_desktop"))
        if self.controller.batch_dialog is not None:
            self.controller.batch_dialog.close()
        event.accept()
