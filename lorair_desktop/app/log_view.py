"""The log dock: Python logging records of the app (bridge and worker messages included) shown in
the window, thread-safe through a queued signal."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QPlainTextEdit, QWidget

MAX_LINES = 5000


class _Emitter(QObject):
    record = Signal(str, int)


class QtLogHandler(logging.Handler):
    """Forwards records to the GUI thread; Qt queues the signal when emitted from a worker thread."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.emitter = _Emitter()

    def emit(self, record: logging.LogRecord) -> None:
        # RuntimeError: the view is gone while a thread still logs at exit.
        with contextlib.suppress(RuntimeError):
            self.emitter.record.emit(self.format(record), record.levelno)


class LogView(QPlainTextEdit):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(MAX_LINES)
        self.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.handler = QtLogHandler()
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
        self.handler.emitter.record.connect(self.append_line)

    def append_line(self, text: str, level: int = logging.INFO) -> None:
        if level >= logging.ERROR:
            text = f'<span style="color:#e06c6c">{_escape(text)}</span>'
        elif level >= logging.WARNING:
            text = f'<span style="color:#d7b65a">{_escape(text)}</span>'
        else:
            text = _escape(text)
        self.appendHtml(f"<pre style='margin:0'>{text}</pre>")

    def attach(self, logger: logging.Logger) -> None:
        logger.addHandler(self.handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)

    def detach(self, logger: logging.Logger) -> None:
        logger.removeHandler(self.handler)


class FileTail:
    """New lines of a growing text file (the worker's log), read from where the last call stopped.
    Starts at the file's current end: the view shows this session, not last week's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = self._size()

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def read_new(self, limit: int = 1 << 16) -> list[str]:
        size = self._size()
        if size < self.pos:  # rotated or truncated: start over
            self.pos = 0
        if size == self.pos:
            return []
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read(min(limit, size - self.pos))
        except OSError:
            return []
        cut = data.rfind(b"\n") + 1  # only whole lines; the rest comes next time
        if cut == 0:
            return []
        self.pos += cut
        return data[:cut].decode("utf-8", errors="replace").splitlines()


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
