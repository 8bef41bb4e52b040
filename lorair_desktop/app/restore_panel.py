"""The restore panel (right dock): model picker, Analyze with a bar chart of the router's weights, one
slider per expert with an Auto toggle, Advanced (context margin, tile size), Restore with progress,
time left and Cancel.

Expert names always come from the worker's info: the panel is rebuilt by `set_experts`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPaintEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..bridge import hostkit

ROW_H = 18  # chart row height
SLIDER_STEPS = 100  # slider resolution: weights move in steps of 0.01
ROUTER_COLOR = QColor(74, 144, 226)
APPLIED_COLOR = QColor(245, 166, 35)


PROGRESS_STEPS = 1000  # the bar's resolution: passes within a tile move it too


def format_seconds(s: float) -> str:
    s = max(0, round(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


class Eta:
    """Time left from the pace of the tiles done so far (the first tile also pays for warm-up, so
    the estimate improves as tiles finish)."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def seconds_left(self, done: int, total: int) -> float | None:
        if done <= 0 or total <= 0:
            return None
        elapsed = time.monotonic() - self.start
        return elapsed / done * (total - done)


class WeightChart(QWidget):
    """Horizontal bars: the router's weight per expert, and the weight applied by the last run."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.experts: list[str] = []
        self.router: dict[str, float] = {}
        self.applied: dict[str, float] = {}
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_data(self, experts: list[str], router: Mapping[str, float], applied: Mapping[str, float]) -> None:
        self.experts, self.router, self.applied = list(experts), dict(router), dict(applied)
        self.setFixedHeight(self.sizeHint().height())
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(240, 22 + ROW_H * max(1, len(self.experts)))

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm = p.fontMetrics()
        text = self.palette().windowText().color()
        if not self.experts:
            p.setPen(text)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Connect to the worker to see the experts")
            return
        label_w = max(fm.horizontalAdvance(e) for e in self.experts) + 8
        value_w = fm.horizontalAdvance("0.00") + 6
        bar_x, bar_w = label_w, max(10, self.width() - label_w - value_w)
        for i, name in enumerate(self.experts):
            y = 4 + i * ROW_H
            p.setPen(text)
            p.drawText(QRectF(0, y, label_w - 6, 16), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, name)
            p.fillRect(QRectF(bar_x, y + 2, bar_w, 12), QColor(128, 128, 128, 50))
            r = self.router.get(name)
            if r is not None:
                p.fillRect(QRectF(bar_x, y + 2, bar_w * min(1.0, r), 8), ROUTER_COLOR)
            a = self.applied.get(name)
            if a is not None:
                p.fillRect(QRectF(bar_x, y + 10, bar_w * min(1.0, a), 4), APPLIED_COLOR)
            shown = a if a is not None else r
            if shown is not None:
                p.setPen(text)
                p.drawText(QRectF(bar_x + bar_w + 4, y, value_w, 16), Qt.AlignmentFlag.AlignVCenter, f"{shown:.2f}")
        y = 4 + len(self.experts) * ROW_H
        for j, (label, color) in enumerate((("router", ROUTER_COLOR), ("applied", APPLIED_COLOR))):
            x = bar_x + j * 80
            p.fillRect(QRectF(x, y + 5, 10, 8), color)
            p.setPen(text)
            p.drawText(QRectF(x + 14, y, 70, 16), Qt.AlignmentFlag.AlignVCenter, label)


class ExpertRow:
    """One expert: a slider (0..1 in 0.01 steps) kept in step with a spin box."""

    def __init__(self, name: str, grid: QGridLayout, row: int) -> None:
        self.name = name
        self.label = QLabel(name)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.spin = QDoubleSpinBox()
        self.spin.setRange(0.0, 1.0)
        self.spin.setDecimals(2)
        self.spin.setSingleStep(0.05)
        self.spin.setToolTip(f"Weight of the {name} expert")
        self.slider.setAccessibleName(f"{name} weight")
        self.slider.valueChanged.connect(lambda v: self.spin.setValue(v / SLIDER_STEPS))
        self.spin.valueChanged.connect(lambda v: self.slider.setValue(round(v * SLIDER_STEPS)))
        grid.addWidget(self.label, row, 0)
        grid.addWidget(self.slider, row, 1)
        grid.addWidget(self.spin, row, 2)

    @property
    def value(self) -> float:
        return round(self.spin.value(), 2)

    def set_value(self, v: float) -> None:
        self.spin.setValue(round(float(v), 2))

    def set_enabled(self, on: bool) -> None:
        for w in (self.slider, self.spin):
            w.setEnabled(on)

    def widgets(self) -> tuple[QWidget, ...]:
        return self.label, self.slider, self.spin


class RestorePanel(QWidget):
    analyze_requested = Signal()
    restore_requested = Signal()
    cancel_requested = Signal()
    model_selected = Signal(str)
    options_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.experts: list[str] = []
        self.router_weights: dict[str, float] = {}
        self.applied_weights: dict[str, float] = {}
        self.rows: list[ExpertRow] = []
        self._eta = Eta()
        self._busy = False
        self._connected = False

        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.setSpacing(6)

        model_box = QGroupBox("Model")
        ml = QVBoxLayout(model_box)
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The restoration model the worker runs")
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        self.model_info.setStyleSheet("color: palette(mid);")
        ml.addWidget(self.model_combo)
        ml.addWidget(self.model_info)
        lay.addWidget(model_box)

        analyze_box = QGroupBox("Degradation analysis")
        al = QVBoxLayout(analyze_box)
        row = QHBoxLayout()
        self.analyze_button = QPushButton("Analyze")
        self.analyze_button.setToolTip("Ask the router which degradations the selection shows (Ctrl+Shift+A)")
        self.analyze_button.clicked.connect(self.analyze_requested)
        self.auto_analyze = QCheckBox("on selection change")
        row.addWidget(self.analyze_button)
        row.addWidget(self.auto_analyze)
        row.addStretch(1)
        al.addLayout(row)
        self.chart = WeightChart()
        al.addWidget(self.chart)
        lay.addWidget(analyze_box)

        experts_box = QGroupBox("Experts")
        el = QVBoxLayout(experts_box)
        self.auto_check = QCheckBox("Auto (use the router's weights)")
        self.auto_check.setChecked(True)
        self.auto_check.toggled.connect(self._auto_toggled)
        el.addWidget(self.auto_check)
        self.grid = QGridLayout()
        self.grid.setColumnStretch(1, 1)
        self.grid.setVerticalSpacing(2)
        el.addLayout(self.grid)
        self.applied_label = QLabel("")
        self.applied_label.setWordWrap(True)
        el.addWidget(self.applied_label)
        lay.addWidget(experts_box)

        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_toggle.setStyleSheet("QToolButton { border: none; }")
        self.advanced_toggle.toggled.connect(self._advanced_toggled)
        lay.addWidget(self.advanced_toggle)
        self.advanced = QWidget()
        fl = QFormLayout(self.advanced)
        fl.setContentsMargins(12, 0, 0, 0)
        self.margin_spin = QSpinBox()
        self.margin_spin.setRange(0, 512)
        self.margin_spin.setSuffix(" px")
        self.margin_spin.setToolTip("Pixels of context around the selection the network sees")
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 4096)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setSpecialValueText("Auto")
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setToolTip("Tile size for large regions (Auto lets the worker choose from memory)")
        self.passes_combo = QComboBox()
        for n, label in hostkit.pass_choices():
            self.passes_combo.addItem(label, n)
        self.passes_combo.setToolTip(hostkit.PASSES_TIP)
        for w in (self.margin_spin, self.tile_spin):
            w.valueChanged.connect(self.options_changed)
        self.passes_combo.currentIndexChanged.connect(self.options_changed)
        fl.addRow("Context margin", self.margin_spin)
        fl.addRow("Tile size", self.tile_spin)
        fl.addRow("Passes", self.passes_combo)
        self.advanced.setVisible(False)
        lay.addWidget(self.advanced)

        run_box = QWidget()
        rl = QVBoxLayout(run_box)
        rl.setContentsMargins(0, 6, 0, 0)
        self.restore_button = QPushButton("Restore")
        self.restore_button.setToolTip("Restore the selection, or the whole image without one (Ctrl+R)")
        self.restore_button.setMinimumHeight(32)
        self.restore_button.setStyleSheet(
            "QPushButton { background: palette(highlight); color: palette(highlighted-text); font-weight: 600; }"
            "QPushButton:disabled { background: palette(button); color: palette(mid); }"
        )
        self.restore_button.setDefault(True)
        self.restore_button.clicked.connect(self.restore_requested)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("Idle")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_requested)
        pr = QHBoxLayout()
        pr.addWidget(self.progress, 1)
        pr.addWidget(self.cancel_button)
        rl.addWidget(self.restore_button)
        rl.addLayout(pr)
        lay.addWidget(run_box)
        lay.addStretch(1)
        self._update_enabled()

    # --- models and experts ----------------------------------------------------------------------
    def set_models(self, models: list[tuple[str, str, str]], current: str) -> None:
        """`models`: (label, value, tooltip); `value` (a preset name or a checkpoint path) is what the
        worker is sent."""
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for label, value, tip in models:
            self.model_combo.addItem(label, value)
            self.model_combo.setItemData(self.model_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        values = [m[1] for m in models]
        if current in values:
            self.model_combo.setCurrentIndex(values.index(current))
        self.model_combo.blockSignals(False)

    def set_model_note(self, text: str) -> None:
        self.model_info.setText(text)
        self.model_info.setVisible(bool(text))

    @property
    def model(self) -> str:
        return str(self.model_combo.currentData() or "")

    def _model_changed(self, _index: int) -> None:
        if self.model:
            self.model_selected.emit(self.model)

    def set_experts(self, names: list[str]) -> None:
        """Rebuild the sliders for a model's experts (keeps values of experts that stay)."""
        if names == self.experts:
            return
        old = {r.name: r.value for r in self.rows}
        for r in self.rows:
            for w in r.widgets():
                self.grid.removeWidget(w)
                w.deleteLater()
        self.experts = list(names)
        self.rows = [ExpertRow(n, self.grid, i) for i, n in enumerate(names)]
        self.router_weights = {k: v for k, v in self.router_weights.items() if k in names}
        self.applied_weights = {k: v for k, v in self.applied_weights.items() if k in names}
        auto = self.auto_check.isChecked()
        for r in self.rows:
            r.set_value((self.router_weights if auto else old).get(r.name, 0.0))
        self._refresh_chart()
        self._update_enabled()

    def set_router_weights(self, weights: Mapping[str, float]) -> None:
        self.router_weights = {k: float(v) for k, v in weights.items()}
        if self.auto_check.isChecked():
            self._show_values(self.router_weights)
        self._refresh_chart()

    def set_applied_weights(self, router: Mapping[str, float], applied: Mapping[str, float]) -> None:
        self.router_weights = {k: float(v) for k, v in router.items()}
        self.applied_weights = {k: float(v) for k, v in applied.items()}
        if self.auto_check.isChecked():
            self._show_values(self.router_weights)
        parts = [f"{k} {v:.2f}" for k, v in sorted(applied.items(), key=lambda kv: -kv[1]) if v > 0.005]
        self.applied_label.setText("Applied: " + (", ".join(parts) if parts else "none (identity)"))
        self._refresh_chart()

    def _refresh_chart(self) -> None:
        self.chart.set_data(self.experts, self.router_weights, self.applied_weights)

    def _show_values(self, weights: Mapping[str, float]) -> None:
        for r in self.rows:
            r.set_value(weights.get(r.name, 0.0))

    def _auto_toggled(self, auto: bool) -> None:
        if not auto and self.router_weights:
            self._show_values(self.router_weights)  # manual starts from what the router said
        self._update_enabled()
        self.options_changed.emit()

    def experts_spec(self) -> dict:
        """The bridge's experts spec for the current panel state."""
        if self.auto_check.isChecked():
            return {"mode": "auto"}
        return {"mode": "manual", "weights": {r.name: r.value for r in self.rows}, "keep_router": False}

    # --- advanced --------------------------------------------------------------------------------
    def _advanced_toggled(self, on: bool) -> None:
        self.advanced.setVisible(on)
        self.advanced_toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    @property
    def margin(self) -> int:
        return self.margin_spin.value()

    @property
    def tile(self) -> int:
        return self.tile_spin.value()

    @property
    def ensemble(self) -> int:
        return int(self.passes_combo.currentData() or 1)

    def set_ensemble(self, n: int) -> None:
        self.passes_combo.setCurrentIndex(max(0, self.passes_combo.findData(n)))

    # --- run state -------------------------------------------------------------------------------
    def set_connected(self, on: bool) -> None:
        self._connected = on
        self._update_enabled()

    def set_busy(self, busy: bool, text: str = "") -> None:
        self._busy = busy
        if busy:
            self._eta = Eta()
            self.progress.setRange(0, 0)  # indeterminate until the first tile report
            self.progress.setFormat(text or "Starting…")
        else:
            self.progress.setRange(0, 1)
            self.progress.setValue(1 if text == "Done" else 0)
            self.progress.setFormat(text or "Idle")
        self._update_enabled()

    def set_progress(self, done: int, total: int, eta_s: float | None = None, fraction: float | None = None) -> None:
        """Tile `done` of `total`; `eta_s` is the worker's estimate (else one from the pace so far);
        `fraction` of the whole, where it runs ahead of whole tiles (a tile of several passes)."""
        if not self._busy or total <= 0:
            return
        part = done / total if fraction is None else min(1.0, max(fraction, done / total))
        self.progress.setRange(0, PROGRESS_STEPS)
        self.progress.setValue(round(part * PROGRESS_STEPS))
        left = eta_s if eta_s is not None else self._eta.seconds_left(done, total)
        eta = f" · about {format_seconds(left)} left" if left is not None and done < total else ""
        self.progress.setFormat(f"Tile {done} of {total}{eta}")

    def _update_enabled(self) -> None:
        ready = self._connected and not self._busy
        self.restore_button.setEnabled(ready)
        self.analyze_button.setEnabled(ready)
        self.model_combo.setEnabled(ready)
        self.cancel_button.setEnabled(self._busy)
        manual = not self.auto_check.isChecked()
        for r in self.rows:
            r.set_enabled(manual and not self._busy)
