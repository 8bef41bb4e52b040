"""An in-window message strip above the canvas: what happened, what to do, and an optional action
(e.g. Retry). Non-modal, so a worker error never blocks the user's work or hides behind stderr."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QToolButton, QVBoxLayout, QWidget

STYLES = {
    "error": "background:#5c1f1f; color:#ffecec; border-bottom:1px solid #8a3030;",
    "warning": "background:#5a4a16; color:#fff6d8; border-bottom:1px solid #8a7124;",
    "info": "background:#1f3d5c; color:#e8f2ff; border-bottom:1px solid #30598a;",
}


class MessageBar(QFrame):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.kind = ""
        lay = QHBoxLayout(self)
        lay.setContentsMargins(12, 6, 6, 6)
        texts = QVBoxLayout()
        texts.setSpacing(1)
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.title.setStyleSheet("font-weight: 600; background: transparent;")
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("background: transparent;")
        self.hint.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        texts.addWidget(self.title)
        texts.addWidget(self.hint)
        lay.addLayout(texts, 1)
        self.action_button = QPushButton()
        self.action_button.setVisible(False)
        self.action_button.clicked.connect(self._run_action)
        lay.addWidget(self.action_button)
        close = QToolButton()
        close.setText("✕")
        close.setToolTip("Dismiss")
        close.setAutoRaise(True)
        close.clicked.connect(self.dismiss)
        lay.addWidget(close)
        self._action: Callable[[], None] | None = None
        self.setVisible(False)

    def show_message(
        self,
        kind: str,
        message: str,
        hint: str = "",
        action: tuple[str, Callable[[], None]] | None = None,
    ) -> None:
        self.kind = kind
        self.setStyleSheet(f"MessageBar {{{STYLES[kind]}}} QLabel {{color: inherit;}}")
        self.title.setText(message)
        self.hint.setText(hint)
        self.hint.setVisible(bool(hint))
        self._action = action[1] if action else None
        self.action_button.setText(action[0] if action else "")
        self.action_button.setVisible(action is not None)
        self.setVisible(True)

    def dismiss(self) -> None:
        self.kind = ""
        self.setVisible(False)

    def _run_action(self) -> None:
        action = self._action
        self.dismiss()
        if action:
            action()

    @property
    def text(self) -> str:
        return f"{self.title.text()}\n{self.hint.text()}".strip() if self.isVisible() else ""
