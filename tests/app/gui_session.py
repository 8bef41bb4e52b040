"""A whole GUI session in a fresh interpreter: connect to a real worker, open an image, select, analyze,
restore, show the before/after split, grab the window. Prints one `RESULT {json}` line.

Used by test_session.py (the torch-free check and the screenshot) and to make the README screenshot:

    python tests/app/gui_session.py --model lorair-compact --image photo.png \\
        --screenshot resources/samples/app-screenshot.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--screenshot", type=Path, required=True)
    p.add_argument("--runtime-dir", type=Path, help="runtime folder of a running worker (default: start one)")
    p.add_argument("--model", default="lorair-compact", help="model for a worker this script starts")
    p.add_argument("--ellipse", default="0.2,0.15,0.75,0.85", help="selection as fractions x0,y0,x1,y1")
    p.add_argument("--size", default="1280x820")
    args = p.parse_args()

    from PySide6.QtCore import QCoreApplication, QEventLoop, QPointF
    from PySide6.QtWidgets import QApplication
    from worker_cmd import worker_command  # next to this script, which Python puts on sys.path

    from lorair_desktop.app.main_window import MainWindow
    from lorair_desktop.app.selection import Mode, Shape
    from lorair_desktop.app.settings import Settings
    from lorair_desktop.app.worker_link import ConnectConfig

    def wait(cond, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not cond():
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
            time.sleep(0.005)
        return cond()

    app = QApplication.instance() or QApplication(["lorair-desktop"])
    app.setStyle("Fusion")
    tmp = Path(tempfile.mkdtemp(prefix="lorair-gui-"))
    rdir = args.runtime_dir or tmp / "runtime"
    cmd = worker_command(args.model, idle_minutes=1)
    window = MainWindow(
        Settings(path=tmp / "settings.json"), ConnectConfig(start_command=cmd, runtime_dir=rdir), autoconnect=False
    )
    w, h = (int(v) for v in args.size.split("x"))
    window.resize(w, h)
    window.show()
    result: dict = {"torch_before": "torch" in sys.modules}
    restored: list = []
    window.controller.restored.connect(restored.append)
    try:
        window.reconnect()
        info = lambda: window.link.info  # noqa: E731
        result["connected"] = wait(lambda: info() is not None and info().model.state == "ready", 180)
        result["opened"] = window.open_file(args.image)
        doc = window.doc
        if result["connected"] and doc is not None:
            x0, y0, x1, y1 = (float(v) for v in args.ellipse.split(","))
            window.selection.add_shape(
                Shape.ELLIPSE,
                [QPointF(x0 * doc.width, y0 * doc.height), QPointF(x1 * doc.width, y1 * doc.height)],
                Mode.REPLACE,
            )
            window.canvas.selection_updated()
            window.controller.analyze()
            wait(lambda: not window.link.pending("analyze"), 60)
            window.controller.restore()
            wait(lambda: bool(restored) or not window.controller.busy, 300)
            result["restored"] = bool(restored) and doc.dirty
            window.canvas.set_split(True)
            window.canvas.split_pos = 0.5
        wait(lambda: False, 0.3)  # let the layout settle before the grab
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        result["saved"] = window.grab().save(str(args.screenshot))
        result["window"] = [window.width(), window.height()]
        result["message"] = window.message_bar.text
        result["worker_status"] = window.worker_label.text()
        result["torch_loaded"] = "torch" in sys.modules
    finally:
        window.ask_unsaved = lambda: "discard"  # type: ignore[method-assign]
        window.close()
        if args.runtime_dir is None:
            stop_own_worker(rdir)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def stop_own_worker(rdir: Path) -> None:
    """The worker this script started: stop it now rather than leave it to its idle timer."""
    import signal

    from lorair_desktop.bridge import client
    from lorair_desktop.bridge.runtime import read_runtime, runtime_file

    rt = read_runtime(runtime_file(rdir))
    if rt is None:
        return
    os.kill(rt.pid, signal.SIGTERM)
    for proc in list(client._children):  # our child: wait for it (and reap it)
        proc.wait(60)


if __name__ == "__main__":
    raise SystemExit(main())
