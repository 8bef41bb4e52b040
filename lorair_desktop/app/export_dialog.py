"""Export options: format, JPEG/WebP quality, PNG/TIFF bit depth. The file name is asked after."""

from __future__ import annotations

from PySide6.QtWidgets import QComboBox, QDialog, QDialogButtonBox, QFormLayout, QSpinBox, QWidget

from ..imageio import WRITE_TYPES
from .document import SaveOptions

EXPORT_FORMATS = {t.label: t.suffixes[0] for t in WRITE_TYPES}
SIXTEEN_BIT = {t.label for t in WRITE_TYPES if t.sixteen_bit}
LOSSY = {t.label for t in WRITE_TYPES if t.lossy}


class ExportDialog(QDialog):
    def __init__(self, bit_depth: int, quality: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export")
        form = QFormLayout(self)
        self.format_combo = QComboBox()
        self.format_combo.addItems(list(EXPORT_FORMATS))
        self.quality_spin = QSpinBox()
        self.quality_spin.setRange(1, 100)
        self.quality_spin.setValue(quality)
        self.depth_combo = QComboBox()
        self.depth_combo.addItems(["8-bit", "16-bit"])
        self.depth_combo.setCurrentIndex(1 if bit_depth == 16 else 0)
        form.addRow("Format", self.format_combo)
        form.addRow("Quality", self.quality_spin)
        form.addRow("Bit depth", self.depth_combo)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self.format_combo.currentTextChanged.connect(self._format_changed)
        self._format_changed(self.format_combo.currentText())

    def _format_changed(self, fmt: str) -> None:
        self.quality_spin.setEnabled(fmt in LOSSY)
        self.depth_combo.setEnabled(fmt in SIXTEEN_BIT)

    @property
    def suffix(self) -> str:
        return EXPORT_FORMATS[self.format_combo.currentText()]

    def options(self) -> SaveOptions:
        fmt = self.format_combo.currentText()
        depth = 16 if fmt in SIXTEEN_BIT and self.depth_combo.currentIndex() == 1 else 8
        return SaveOptions(quality=self.quality_spin.value(), bit_depth=depth)
