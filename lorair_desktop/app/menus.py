"""The main window's actions, menus, toolbar and status bar, with their standard shortcuts.

A mixin of `MainWindow`: it only builds widgets and wires them to the window's own methods.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QDoubleSpinBox, QLabel, QMainWindow, QMessageBox, QStyle, QToolBar

from . import icons
from .canvas import Tool
from .settings import DEVICES

APP_NAME = "LoRA-IR Desktop"


class WindowMenus(QMainWindow):
    def _action(
        self,
        text: str,
        slot: Callable[..., object],
        shortcut: QKeySequence.StandardKey | str | list | None = None,
        checkable: bool = False,
        tip: str = "",
    ) -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            keys = shortcut if isinstance(shortcut, list) else [shortcut]
            a.setShortcuts([QKeySequence(k) for k in keys])
        a.setCheckable(checkable)
        if tip:
            a.setStatusTip(tip)
        a.triggered.connect(slot)
        self.addAction(a)  # shortcuts work even with the menu bar hidden
        return a

    def _build_actions(self) -> None:
        sk = QKeySequence.StandardKey
        st = self.style()
        self.act_open = self._action("&Open…", self.open_dialog, sk.Open, tip="Open a photo")
        self.act_open.setIcon(st.standardIcon(QStyle.StandardPixmap.SP_DialogOpenButton))
        self.act_save = self._action("&Save", self.save, sk.Save, tip="Save over the file (asks nothing: explicit)")
        self.act_save.setIcon(st.standardIcon(QStyle.StandardPixmap.SP_DialogSaveButton))
        self.act_save_as = self._action("Save &As…", self.save_as, sk.SaveAs)
        self.act_export = self._action("&Export…", self.export, "Ctrl+Shift+E", tip="Write a copy in another format")
        self.act_batch = self._action("&Batch Restore…", self.show_batch, "Ctrl+B")
        self.act_close = self._action("&Close Image", self.close_image, sk.Close)
        self.act_quit = self._action("&Quit", self.close, sk.Quit)
        self.act_undo = self._action("&Undo", self.undo, sk.Undo)
        self.act_undo.setIcon(st.standardIcon(QStyle.StandardPixmap.SP_ArrowBack))
        self.act_redo = self._action("&Redo", self.redo, ["Ctrl+Shift+Z", "Ctrl+Y"])
        self.act_redo.setIcon(st.standardIcon(QStyle.StandardPixmap.SP_ArrowForward))
        self.act_copy = self._action("&Copy", self.copy_image, sk.Copy,
                                     tip="Copy the selection (or the whole image) as it is now, at its depth")
        self.act_paste = self._action("&Paste as New Image", self.paste_image, sk.Paste,
                                      tip="Open the image on the clipboard (a screenshot, a copy from an editor)")
        self.act_select_all = self._action("Select &All", self.select_all, sk.SelectAll)
        self.act_select_none = self._action("&Deselect", self.select_none, ["Ctrl+D", "Ctrl+Shift+A"])
        self.act_invert = self._action("&Invert Selection", self.invert_selection, "Ctrl+Shift+I")
        self.tool_group = QActionGroup(self)
        self.tool_actions: dict[Tool, QAction] = {}
        for tool, text, key, icon in (
            (Tool.RECT, "&Rectangle Select", "M", icons.rect_icon()),
            (Tool.ELLIPSE, "&Ellipse Select", "E", icons.ellipse_icon()),
            (Tool.LASSO, "&Lasso Select", "L", icons.lasso_icon()),
            (Tool.PAN, "&Hand (Pan)", "H", icons.pan_icon()),
        ):
            a = self._action(
                text,
                lambda _=False, t=tool: self.set_tool(t),
                key,
                checkable=True,
                tip=f"{text.replace('&', '')} ({key}); Shift adds, Alt subtracts",
            )
            a.setIcon(icon)
            self.tool_group.addAction(a)
            self.tool_actions[tool] = a
        self.tool_actions[Tool.RECT].setChecked(True)
        self.act_zoom_in = self._action("Zoom &In", self.canvas.zoom_in, [sk.ZoomIn, "Ctrl+="])
        self.act_zoom_out = self._action("Zoom &Out", self.canvas.zoom_out, sk.ZoomOut)
        self.act_fit = self._action("&Fit in Window", self.canvas.fit, "Ctrl+0")
        self.act_fit.setIcon(icons.fit_icon())
        self.act_actual = self._action("&Actual Pixels (100 %)", self.canvas.actual_size, "Ctrl+1")
        self.act_actual.setIcon(icons.actual_size_icon())
        self.act_split = self._action(
            "Before/After &Split",
            self.canvas.set_split,
            "Y",
            checkable=True,
            tip="Compare the original and the result side by side; drag the divider",
        )
        self.act_split.setIcon(icons.compare_icon())
        self.act_before = self._action(
            "Show &Original",
            self.canvas.set_show_before,
            "\\",
            checkable=True,
            tip="Quick toggle: show the image as it was opened",
        )
        self.act_analyze = self._action(
            "&Analyze", self.controller.analyze, "Ctrl+Shift+R", tip="Show which degradations the router sees"
        )
        self.act_restore = self._action(
            "&Restore", self.controller.restore, "Ctrl+R", tip="Restore the selection (or the whole image)"
        )
        self.act_cancel = self._action("&Cancel", self.controller.cancel, "Esc")
        self.act_reconnect = self._action("Re&connect", self.reconnect)
        self.act_restart = self._action(
            "Re&start Worker", self.restart_worker, tip="Stop the worker and start it again with the current settings"
        )
        self.device_group = QActionGroup(self)
        self.device_actions: dict[str, QAction] = {}
        for dev in DEVICES:
            label = {"auto": "Automatic", "cpu": "CPU", "cuda": "CUDA (NVIDIA)", "mps": "MPS (Apple)"}[dev]
            a = self._action(label, lambda _=False, d=dev: self.set_device(d), checkable=True)
            self.device_group.addAction(a)
            self.device_actions[dev] = a
        self.device_actions[self.settings.device].setChecked(True)
        self.act_shortcuts = self._action("&Keyboard Shortcuts", self.show_shortcuts, "F1")
        self.act_about = self._action("&About", self.show_about)

    def _build_menus(self) -> None:
        mb = self.menuBar()
        m = mb.addMenu("&File")
        m.addAction(self.act_open)
        self.recent_menu = m.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        m.addSeparator()
        for a in (self.act_save, self.act_save_as, self.act_export):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.act_batch)
        m.addSeparator()
        m.addAction(self.act_close)
        m.addAction(self.act_quit)
        m = mb.addMenu("&Edit")
        m.addAction(self.act_undo)
        m.addAction(self.act_redo)
        m.addSeparator()
        m.addAction(self.act_copy)
        m.addAction(self.act_paste)
        m = mb.addMenu("&Select")
        for a in (self.act_select_all, self.act_select_none, self.act_invert):
            m.addAction(a)
        m.addSeparator()
        for a in self.tool_actions.values():
            m.addAction(a)
        m = mb.addMenu("&View")
        for a in (self.act_zoom_in, self.act_zoom_out, self.act_fit, self.act_actual):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.act_split)
        m.addAction(self.act_before)
        m.addSeparator()
        m.addAction(self.panel_dock.toggleViewAction())
        m.addAction(self.log_dock.toggleViewAction())
        m = mb.addMenu("&Restore")
        for a in (self.act_analyze, self.act_restore, self.act_cancel):
            m.addAction(a)
        m = mb.addMenu("&Worker")
        m.addAction(self.act_reconnect)
        m.addAction(self.act_restart)
        dm = m.addMenu("&Device")
        for a in self.device_actions.values():
            dm.addAction(a)
        m = mb.addMenu("&Help")
        m.addAction(self.act_shortcuts)
        m.addAction(self.act_about)

    def _build_toolbar(self) -> None:
        tb = QToolBar("Tools")
        tb.setObjectName("tools")
        tb.setMovable(False)
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        for a in (self.act_open, self.act_save):
            tb.addAction(a)
        tb.addSeparator()
        tb.addAction(self.act_undo)
        tb.addAction(self.act_redo)
        tb.addSeparator()
        for a in self.tool_actions.values():
            tb.addAction(a)
        tb.addWidget(QLabel("  Feather "))
        self.feather_spin = QDoubleSpinBox()
        self.feather_spin.setRange(0.0, 250.0)
        self.feather_spin.setDecimals(1)
        self.feather_spin.setSuffix(" px")
        self.feather_spin.setValue(self.settings.feather)
        self.feather_spin.setToolTip("Soft edge of the selection: the result blends in over this radius")
        self.feather_spin.valueChanged.connect(self._feather_changed)
        tb.addWidget(self.feather_spin)
        tb.addSeparator()
        tb.addAction(self.act_split)
        tb.addAction(self.act_fit)
        tb.addAction(self.act_actual)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, tb)

    def _build_status_bar(self) -> None:
        sb = self.statusBar()
        self.image_label = QLabel("")
        self.pos_label = QLabel("")
        self.zoom_label = QLabel("")
        self.worker_icon = QLabel()
        self.worker_label = QLabel("Worker: not connected")
        for w in (self.pos_label, self.image_label, self.zoom_label, self.worker_icon, self.worker_label):
            sb.addPermanentWidget(w)

    def show_shortcuts(self) -> None:
        rows = []
        for a in self.actions():
            if a.shortcut().isEmpty():
                continue
            keys = ", ".join(s.toString(QKeySequence.SequenceFormat.NativeText) for s in a.shortcuts())
            rows.append(f"<tr><td>{a.text().replace('&', '')}</td><td><b>{keys}</b></td></tr>")
        extra = (
            "<tr><td>Zoom</td><td><b>mouse wheel</b></td></tr><tr><td>Pan</td><td><b>Space + drag, "
            "middle drag</b></td></tr><tr><td>Add / subtract selection</td><td><b>Shift / Alt + drag"
            "</b></td></tr>"
        )
        QMessageBox.information(self, "Keyboard shortcuts", f"<table>{''.join(rows)}{extra}</table>")

    def show_about(self) -> None:
        QMessageBox.about(
            self,
            f"About {APP_NAME}",
            f"<b>{APP_NAME}</b><br>All-in-one image restoration "
            "(LoRA-IR): a degradation-guided router mixes LoRA experts of one restoration network.",
        )
