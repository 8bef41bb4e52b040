"""`lorair-desktop [FILE] [--worker-cmd CMD] [--device DEV]`: the desktop app's entry point."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from .settings import DEVICES, Settings
from .worker_link import ConnectConfig, split_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lorair-desktop", description="LoRA-IR Desktop: restore photos")
    p.add_argument("file", nargs="?", help="an image to open")
    p.add_argument(
        "--worker-cmd",
        metavar="CMD",
        help="command that starts the worker when none runs (default: `lorair worker`); "
        "also read from $LORAIR_WORKER_CMD",
    )
    p.add_argument("--device", choices=DEVICES, help="device for a worker this app starts (saved as the default)")
    p.add_argument("--runtime-dir", type=Path, help=argparse.SUPPRESS)  # tests, side-by-side workers
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    for h in logging.getLogger().handlers:  # the log view shows INFO; the terminal only problems
        h.setLevel(logging.WARNING)

    from PySide6.QtCore import Qt, QTimer
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    from .main_window import APP_NAME, MainWindow

    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName(APP_NAME)
    app.setOrganizationName("LoRA-IR")
    app.setStyle("Fusion")
    settings = Settings.load()
    if args.device:
        settings.device = args.device
        settings.save()
    config = ConnectConfig(
        start_command=split_command(args.worker_cmd), device=settings.device, runtime_dir=args.runtime_dir
    )
    window = MainWindow(settings, config)
    window.show()
    if args.file:
        window.open_file(args.file)
    # Ctrl+C / SIGTERM from a terminal close the window the normal way (unsaved changes are asked
    # about). Python only runs signal handlers between bytecodes, so a timer wakes it up.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: QTimer.singleShot(0, app.closeAllWindows))
    wake = QTimer()
    wake.start(250)
    wake.timeout.connect(lambda: None)
    return app.exec()


if __name__ == "__main__":
    raise SystemExit(main())
