"""One import point for Qt: Krita 6 embeds PyQt6, Krita 5 PyQt5. Use only scoped enum names
(`Qt.AlignmentFlag.AlignLeft`), which both accept.

Whichever binding Krita has already loaded wins: importing the other one into the same process
would load a second Qt and crash.
"""

from __future__ import annotations

import sys

if "PyQt6.QtCore" in sys.modules or "PyQt5.QtCore" not in sys.modules:
    try:
        from PyQt6 import QtCore, QtGui, QtWidgets  # type: ignore[import-not-found]

        QT_MAJOR = 6
    except ImportError:
        from PyQt5 import QtCore, QtGui, QtWidgets  # type: ignore[import-not-found,no-redef]

        QT_MAJOR = 5
else:
    from PyQt5 import QtCore, QtGui, QtWidgets  # type: ignore[import-not-found,no-redef]

    QT_MAJOR = 5

__all__ = ["QT_MAJOR", "QtCore", "QtGui", "QtWidgets"]
