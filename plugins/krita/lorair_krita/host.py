"""Every call into Krita's API lives here: reading the active layer and its selection, adding the
result layer, messages, settings, and the Extension (action) and docker registration."""

from __future__ import annotations

from typing import Any

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita

from .qt_compat import QtCore, QtGui, QtWidgets
from .restore import Controller, PluginError, Rect, Settings, Target

ACTION_ID = "lorair_restore_selection"
ACTION_TEXT = "Restore selection (LoRA-IR)"
ACTION_SHORTCUT = "Ctrl+Alt+Shift+R"  # unused by Krita 5.1 and its bundled shortcut schemes
DOCKER_ID = "lorair_docker"
SETTINGS_GROUP = "lorair"
ERROR_OBJECT_NAME = "lorair-error"  # lets scripts (and the real-Krita tests) find the message box

# Layers whose own pixels are read; other layer kinds are read through their projection (what they
# show). Masks have no colour pixels to restore.
_PAINT = "paintlayer"
_MASKS = {"transparencymask", "filtermask", "selectionmask", "colorizemask", "transformmask"}


class KritaHost:
    """The `restore.Host` the controller uses, on Krita's UI thread."""

    def target(self) -> Target:
        doc = Krita.instance().activeDocument()
        if doc is None:
            raise PluginError("No image is open.", "Open or create an image, select the area to restore, "
                              "and try again.")
        node = doc.activeNode()
        if node is None:
            raise PluginError("No layer is active.", "Click a layer in the Layers docker.")
        if node.type() in _MASKS:
            raise PluginError(f"“{node.name()}” is a mask, not a layer.", "Select the layer to restore.")
        sel = doc.selection()
        selection = None if sel is None else Rect(sel.x(), sel.y(), sel.width(), sel.height())
        return Target(handle=(doc, node, sel), canvas=Rect(0, 0, doc.width(), doc.height()),
                      selection=selection, color_model=node.colorModel(), depth=node.colorDepth(),
                      name=node.name(), profile=node.colorProfile())

    def read(self, target: Target, rect: Rect) -> tuple[bytes, bytes | None]:
        _doc, node, sel = target.handle
        if node.type() == _PAINT:
            raw = node.pixelData(rect.x, rect.y, rect.w, rect.h)
        else:
            raw = node.projectionPixelData(rect.x, rect.y, rect.w, rect.h)
        mask = None if sel is None else bytes(sel.pixelData(rect.x, rect.y, rect.w, rect.h))
        return bytes(raw), mask

    def still_open(self, target: Target) -> bool:
        doc = target.handle[0]
        return any(d == doc for d in Krita.instance().documents())

    def add_layer(self, target: Target, rect: Rect, pixels: bytes, name: str) -> None:
        doc, node, _sel = target.handle
        layer = doc.createNode(name, "paintlayer")
        space = (node.colorModel(), node.colorDepth(), node.colorProfile())
        if (layer.colorModel(), layer.colorDepth(), layer.colorProfile()) != space:
            layer.setColorSpace(*space)  # a layer whose space differs from the image's
            if (layer.colorModel(), layer.colorDepth()) != space[:2]:
                raise PluginError("Krita could not create a layer in the source layer's colour space; "
                                  "nothing was changed.", "Convert the layer to the image's colour space.")
        # Fill the layer *before* it joins the image: adding it is then Krita's single undoable step,
        # and a failure before that point leaves the document untouched.
        layer.setPixelData(pixels, rect.x, rect.y, rect.w, rect.h)
        parent = node.parentNode() or doc.rootNode()
        if not parent.addChildNode(layer, node):
            raise PluginError("Krita refused to add the restored layer; nothing was changed.")
        doc.setActiveNode(layer)
        doc.refreshProjection()

    def show_error(self, message: str, hint: str) -> None:
        # Non-modal, so it never stalls the event loop that polls the worker.
        window = Krita.instance().activeWindow()
        parent = window.qwindow() if window is not None else None
        box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Icon.Warning, "LoRA-IR", message,
                                    QtWidgets.QMessageBox.StandardButton.Ok, parent)
        box.setObjectName(ERROR_OBJECT_NAME)
        box.setInformativeText(hint)
        box.setAttribute(QtCore.Qt.WidgetAttribute.WA_DeleteOnClose)
        box.show()

    def notify(self, message: str) -> None:
        window = Krita.instance().activeWindow()
        view = window.activeView() if window is not None else None
        if view is not None and hasattr(view, "showFloatingMessage"):
            view.showFloatingMessage(message, QtGui.QIcon(), 4000, 1)

    def load_settings(self) -> Settings:
        return Settings.from_json(Krita.instance().readSetting(SETTINGS_GROUP, "settings", ""))

    def save_settings(self, settings: Settings) -> None:
        Krita.instance().writeSetting(SETTINGS_GROUP, "settings", settings.to_json())


class LoraIRExtension(Extension):
    """Adds Tools > Scripts > Restore selection (LoRA-IR) to every window."""

    def __init__(self, parent: Any, plugin: Any) -> None:
        super().__init__(parent)
        self.plugin = plugin

    def setup(self) -> None:
        pass

    def createActions(self, window: Any) -> None:  # Krita calls it by this name
        action = window.createAction(ACTION_ID, ACTION_TEXT, "tools/scripts")
        if action.shortcut().isEmpty():  # the user's own shortcut (Krita's settings) wins
            action.setShortcut(QtGui.QKeySequence(ACTION_SHORTCUT))
        action.triggered.connect(self.plugin.restore)


class LoraIRDocker(DockWidget):
    """Settings > Dockers > LoRA-IR."""

    plugin: Any = None  # set by `register`; Krita builds dockers without arguments

    def __init__(self) -> None:
        super().__init__()
        from .ui import Panel

        self.setWindowTitle("LoRA-IR")
        self.setWidget(Panel(LoraIRDocker.plugin))

    def canvasChanged(self, canvas: Any) -> None:  # Krita calls it by this name
        pass


def register() -> None:
    """Called once when Krita loads the plugin."""
    from .ui import Plugin

    app = Krita.instance()
    host = KritaHost()
    plugin = Plugin(Controller(host, host.load_settings()), save=host.save_settings)
    LoraIRDocker.plugin = plugin
    app.addExtension(LoraIRExtension(app, plugin))
    # PyQt6's sip wants the scoped enum name, PyQt5's accepts both.
    right = getattr(DockWidgetFactoryBase, "DockPosition", DockWidgetFactoryBase).DockRight
    app.addDockWidgetFactory(DockWidgetFactory(DOCKER_ID, right, LoraIRDocker))
