"""A test-only Krita plugin: drives the installed LoRA-IR plugin inside real Krita, then quits.

Copied by the tests into the pykrita folder as `lorair_test_harness` (never shipped). It runs after
Krita's first window opens, steps through the scenarios below on Krita's own event loop (the plugin
polls the worker with a timer, so nothing here may block), and writes what it saw as JSON to
$LORAIR_HARNESS_OUT. It reaches the plugin only as a user would: through Krita's action, Krita's
documents and the message boxes the plugin shows.
"""

from __future__ import annotations

import base64
import json
import os
import random
import struct
import time
import traceback

from krita import Extension, Krita, Selection
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QApplication, QCheckBox, QComboBox, QLabel, QMessageBox, QProgressBar, QPushButton, QSlider

ACTION = "lorair_restore_selection"
W, H = 128, 96
SELECT = (40, 30, 44, 32)  # x, y, w, h of the selection before feathering
FEATHER = 6
HDR_BLOCK = (2, 2, 4, 4)  # x, y, w, h of the linear scenario's highlight (values above 1)
OUT = os.environ.get("LORAIR_HARNESS_OUT", "/tmp/lorair-harness.json")

results: dict = {"log": []}


def b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def test_pixels(seed: int) -> bytes:
    """BGRA u8: smooth ramps plus seeded noise, alpha mostly opaque with a translucent band."""
    rng = random.Random(seed)
    out = bytearray()
    for y in range(H):
        for x in range(W):
            n = rng.randint(-40, 40)
            b, g, r = (x * 2 + n) % 256, (y * 2 - n) % 256, (x + y + n) % 256
            out += bytes((b, g, r, 160 if x < 8 else 255))
    return bytes(out)


def error_boxes() -> list[dict]:
    """The plugin's visible error boxes (closed once read)."""
    seen = []
    for w in QApplication.topLevelWidgets():
        if isinstance(w, QMessageBox) and w.objectName() == "lorair-error" and w.isVisible():
            seen.append({"text": w.text(), "hint": w.informativeText()})
            w.close()
    return seen


def layer_names(doc) -> list[str]:
    return [n.name() for n in doc.rootNode().childNodes()]


def new_doc(name: str, model: str = "RGBA", depth: str = "U8"):
    app = Krita.instance()
    doc = app.createDocument(W, H, name, model, depth, "", 72.0)
    app.activeWindow().addView(doc)
    app.setActiveDocument(doc)
    doc.setActiveNode(doc.rootNode().childNodes()[0])
    return doc


def trigger_and_wait(doc, timeout: float = 180.0):
    """Trigger the plugin's action, then yield until a layer appears or an error box shows."""
    before = len(doc.rootNode().childNodes()) if doc is not None else 0
    Krita.instance().action(ACTION).trigger()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        yield
        boxes = error_boxes()
        if boxes:
            results["log"].append(f"error box: {boxes}")
            yield from settle()
            return {"errors": boxes}
        if doc is not None and len(doc.rootNode().childNodes()) > before:
            yield from settle()
            return {"errors": error_boxes()}
    return {"errors": [], "timeout": True}


def activate(doc, node, timeout: float = 10.0):
    """The GUI applies setActiveNode through its node manager, so wait until it took."""
    end = time.monotonic() + timeout
    doc.setActiveNode(node)
    while time.monotonic() < end:
        yield
        active = doc.activeNode()
        if active is not None and active.uniqueId() == node.uniqueId():
            return
        doc.setActiveNode(node)
    raise RuntimeError(f"Krita did not make {node.name()!r} the active layer")


def settle(seconds: float = 0.5):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        yield


def restore_doc(name: str):
    """A document with the test picture, a marker layer (an undoable step made before the restore)
    and a feathered selection; the picture's layer is active."""
    doc = new_doc(name)
    bg = doc.rootNode().childNodes()[0]
    bg.setPixelData(test_pixels(1), 0, 0, W, H)
    marker = doc.createNode("marker", "paintlayer")
    doc.rootNode().addChildNode(marker, bg)
    yield from activate(doc, bg)
    sel = Selection()
    sel.select(*SELECT, 255)
    sel.feather(FEATHER)
    doc.setSelection(sel)
    doc.waitForDone()
    yield from settle(0.3)
    s = doc.selection()
    inp = {"pixels": b64(bg.pixelData(0, 0, W, H)), "mask": b64(s.pixelData(0, 0, W, H)),
           "selection": [s.x(), s.y(), s.width(), s.height()], "layers": layer_names(doc),
           "active": doc.activeNode().name()}
    return doc, bg, inp


def sc_no_document():
    out = yield from trigger_and_wait(None, timeout=20)
    out["shortcut"] = Krita.instance().action(ACTION).shortcut().toString()
    return out


def sc_autostart():
    """No worker yet: the plugin starts one with the command `lorair plugins install` recorded."""
    os.environ["LORAIR_RUNTIME_DIR"] = os.environ["LORAIR_HARNESS_AUTOSTART_RUNTIME"]
    os.environ.pop("LORAIR_WORKER_CMD", None)
    doc, _bg, inp = yield from restore_doc("autostart")
    out = yield from trigger_and_wait(doc, timeout=300)
    new = [n for n in doc.rootNode().childNodes() if n.name().startswith("LoRA-IR")]
    out.update({"input": inp, "layers": layer_names(doc),
                "new_layer": b64(new[0].pixelData(0, 0, W, H)) if new else None})
    return out


def sc_restore():
    """A feathered selection restored into a new layer, then undone (one step) and redone."""
    app = Krita.instance()
    doc, bg, inp = yield from restore_doc("restore")
    out = yield from trigger_and_wait(doc)
    doc.waitForDone()
    new = [n for n in doc.rootNode().childNodes() if n.name().startswith("LoRA-IR")]
    out.update({
        "input": inp,
        "layers": layer_names(doc),
        "original_after": b64(bg.pixelData(0, 0, W, H)),
        "new_layer": b64(new[0].pixelData(0, 0, W, H)) if new else None,
        "new_layer_depth": [new[0].colorModel(), new[0].colorDepth()] if new else None,
        "active": doc.activeNode().name() if doc.activeNode() else None,
    })
    app.action("edit_undo").trigger()
    doc.waitForDone()
    yield from settle(0.5)
    out["layers_after_undo"] = layer_names(doc)
    out["original_after_undo"] = b64(bg.pixelData(0, 0, W, H))
    app.action("edit_redo").trigger()
    doc.waitForDone()
    yield from settle(0.5)
    redone = [n for n in doc.rootNode().childNodes() if n.name().startswith("LoRA-IR")]
    out["layers_after_redo"] = layer_names(doc)
    out["new_layer_after_redo"] = b64(redone[0].pixelData(0, 0, W, H)) if redone else None
    return out


def sc_empty_selection():
    doc, _bg, _inp = yield from restore_doc("empty-selection")
    doc.setSelection(Selection())
    yield from settle(0.3)
    before = layer_names(doc)
    out = yield from trigger_and_wait(doc, timeout=20)
    out.update({"layers_before": before, "layers": layer_names(doc)})
    return out


def sc_unsupported():
    lab = new_doc("lab", "LABA", "U16")
    before = layer_names(lab)
    out = yield from trigger_and_wait(lab, timeout=20)
    out.update({"layers_before": before, "layers": layer_names(lab)})
    return out


def restore_whole(doc, bg, out):
    """Trigger on the whole canvas; `out` gains the new layer's pixels and colour space, and the
    source layer's pixels afterwards."""
    before = len(doc.rootNode().childNodes())
    out.update((yield from trigger_and_wait(doc)))
    new = [n for n in doc.rootNode().childNodes()[before - 1:] if n.name().startswith("LoRA-IR")]
    out["new_layer"] = b64(new[0].pixelData(0, 0, W, H)) if new else None
    out["new_depth"] = [new[0].colorModel(), new[0].colorDepth()] if new else None
    out["original_after"] = b64(bg.pixelData(0, 0, W, H))
    return out


def sc_grey(depth):
    """A Grayscale/Alpha image (an old black-and-white photo), restored whole (no selection)."""
    doc = new_doc("grey-" + depth, "GRAYA", "U8")
    bg = doc.rootNode().childNodes()[0]
    bgra = test_pixels(3)
    bg.setPixelData(bytes(b for i in range(0, len(bgra), 4) for b in (bgra[i + 1], bgra[i + 3])), 0, 0, W, H)
    if depth != "U8":
        doc.setColorSpace("GRAYA", depth, bg.colorProfile())
        doc.waitForDone()
    yield from activate(doc, bg)
    out = {"input": b64(bg.pixelData(0, 0, W, H)), "depth": [bg.colorModel(), bg.colorDepth()]}
    return (yield from restore_whole(doc, bg, out))


def sc_worker_missing():
    """No worker in the runtime folder, and its start command does not exist."""
    os.environ["LORAIR_RUNTIME_DIR"] = os.environ["LORAIR_HARNESS_EMPTY_RUNTIME"]
    os.environ["LORAIR_WORKER_CMD"] = "/nonexistent/lorair-worker"
    doc, bg, _inp = yield from restore_doc("no-worker")
    before = layer_names(doc)
    pixels_before = bytes(bg.pixelData(0, 0, W, H))
    out = yield from trigger_and_wait(doc, timeout=60)
    out.update({"layers_before": before, "layers": layer_names(doc),
                "unchanged": bytes(bg.pixelData(0, 0, W, H)) == pixels_before})
    return out


def scenarios():
    """Each scenario in its own document; one failing is recorded and the others still run."""
    plan = [("no_document", sc_no_document), ("restore", sc_restore), ("docker", sc_docker),
            ("depth_U16", lambda: sc_depth("U16")), ("depth_F16", lambda: sc_depth("F16")),
            ("depth_F32", lambda: sc_depth("F32")), ("linear_F32", sc_linear),
            ("grey_U8", lambda: sc_grey("U8")), ("grey_U16", lambda: sc_grey("U16")),
            ("empty_selection", sc_empty_selection), ("unsupported", sc_unsupported),
            ("autostart", sc_autostart), ("worker_missing", sc_worker_missing)]  # these two change the env
    for name, fn in plan:
        try:
            results[name] = yield from fn()
        except Exception:
            results[name] = {"harness_error": traceback.format_exc()}
        error_boxes()  # none may leak into the next scenario


def wait_for(cond, timeout: float = 120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not cond():
        yield
    return cond()


def sc_docker():
    """Use the LoRA-IR docker as a user would: by its buttons, check box and sliders."""
    doc, bg, inp = yield from restore_doc("docker")
    docker = next(d for d in Krita.instance().dockers() if d.objectName() == "lorair_docker")
    panel = docker.widget()

    def button(text):
        return next(b for b in panel.findChildren(QPushButton) if b.text() == text)

    def labels():
        return [lb.text() for lb in panel.findChildren(QLabel)]

    out = {"input": inp}
    button("Connect").click()
    out["connected"] = yield from wait_for(lambda: any(t.startswith("Worker: cpu") for t in labels()))
    out["sliders"] = yield from wait_for(lambda: len(panel.findChildren(QSlider)) >= 3)
    yield from activate(doc, bg)
    button("Analyze").click()
    out["analyzed"] = yield from wait_for(lambda: any(t.startswith("Router: mostly") for t in labels()))
    out["bars"] = [b.value() for b in panel.findChildren(QProgressBar) if b.format() == "router %p%"]
    auto = next(c for c in panel.findChildren(QCheckBox) if c.text().startswith("Auto"))
    auto.setChecked(False)
    sliders = panel.findChildren(QSlider)
    out["sliders_enabled"] = all(s.isEnabled() for s in sliders)
    for s in sliders:
        s.setValue(0)
    sliders[0].setValue(80)  # the model's first expert at 0.80, the third at 0.30
    sliders[2].setValue(30)
    passes = next(c for c in panel.findChildren(QComboBox) if c.findData(2) >= 0)
    passes.setCurrentIndex(passes.findData(2))  # Passes: 2
    before = len(doc.rootNode().childNodes())
    button("Restore").click()
    out["restored"] = yield from wait_for(lambda: len(doc.rootNode().childNodes()) > before)
    yield from settle()
    out["errors"] = error_boxes()
    new = doc.activeNode()
    out["layer"] = new.name()
    out["pixels"] = b64(new.pixelData(0, 0, W, H))
    out["labels"] = labels()
    auto.setChecked(True)
    passes.setCurrentIndex(0)
    return out


def sc_depth(depth):
    """Krita converts the 8-bit picture (so channel positions can be checked), then the whole
    canvas (no selection) is restored."""
    app = Krita.instance()
    doc = new_doc("depth-" + depth)
    bg = doc.rootNode().childNodes()[0]
    bg.setPixelData(test_pixels(2), 0, 0, W, H)
    # Keep the sRGB tone curve: Krita's default float profile is linear.
    profiles = [p for p in app.profiles("RGBA", depth) if p.lower().startswith("srgb-elle") and "srgbtrc" in p.lower()]
    doc.setColorSpace("RGBA", depth, profiles[0] if profiles else "")
    doc.waitForDone()
    yield from activate(doc, bg)
    out = {"u8": b64(test_pixels(2)), "profile": bg.colorProfile(), "input": b64(bg.pixelData(0, 0, W, H)),
           "depth": [bg.colorModel(), bg.colorDepth()]}
    return (yield from restore_whole(doc, bg, out))


def sc_linear():
    """32-bit float in Krita's default linear profile (g10), with an HDR highlight painted in, restored
    whole: the plugin tells the worker the values are linear light."""
    app = Krita.instance()
    doc = new_doc("linear-F32")
    bg = doc.rootNode().childNodes()[0]
    bg.setPixelData(test_pixels(2), 0, 0, W, H)
    profiles = [p for p in app.profiles("RGBA", "F32") if p.lower().startswith("srgb-elle") and "g10" in p.lower()]
    doc.setColorSpace("RGBA", "F32", profiles[0] if profiles else "")
    doc.waitForDone()
    bg.setPixelData(struct.pack("<4f", 4.0, 2.5, 1.5, 1.0) * 16, *HDR_BLOCK)  # native order is little here
    yield from activate(doc, bg)
    out = {"u8": b64(test_pixels(2)), "profile": bg.colorProfile(), "input": b64(bg.pixelData(0, 0, W, H)),
           "depth": [bg.colorModel(), bg.colorDepth()]}
    return (yield from restore_whole(doc, bg, out))


def run_all() -> None:
    steps = scenarios()

    def finish(error: str = "") -> None:
        if error:
            results["error"] = error
        with open(OUT, "w") as f:
            json.dump(results, f)
        for d in Krita.instance().documents():
            d.setModified(False)
        Krita.instance().action("file_quit").trigger()

    def step() -> None:
        try:
            next(steps)
        except StopIteration:
            finish()
            return
        except Exception:
            finish(traceback.format_exc())
            return
        QTimer.singleShot(50, step)

    QTimer.singleShot(50, step)


class Harness(Extension):
    def setup(self) -> None:
        Krita.instance().notifier().windowCreated.connect(lambda: QTimer.singleShot(1000, run_all))

    def createActions(self, window) -> None:
        pass


Krita.instance().addExtension(Harness(Krita.instance()))
