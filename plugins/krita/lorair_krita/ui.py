"""The docker panel and the timer that polls the controller. Qt only (through `qt_compat`): Krita
itself is reached through the controller's host."""

from __future__ import annotations

from collections.abc import Callable

from .qt_compat import QtCore, QtWidgets
from .restore import Controller, Settings, Status, hostkit

POLL_MS = 100
_SLIDER_STEPS = 100  # slider units per 1.0 of weight


class Plugin:
    """One per Krita session: the action and every docker panel share the controller and its timer."""

    def __init__(self, controller: Controller, save: Callable[[Settings], None]) -> None:
        self.controller = controller
        self._save = save
        self.panels: list[Panel] = []
        self.timer = QtCore.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.tick)

    @property
    def settings(self) -> Settings:
        return self.controller.settings

    def settings_changed(self) -> None:
        self._save(self.controller.settings)

    def _run(self) -> None:
        if self.controller.active:
            self.timer.start()
        self._show(self.controller.status)

    def restore(self) -> None:
        self.controller.restore()
        self._run()

    def analyze(self) -> None:
        self.controller.analyze()
        self._run()

    def cancel(self) -> None:
        self.controller.cancel()
        self._show(self.controller.status)

    def refresh_worker(self, model: str | None = None) -> None:
        self.controller.refresh_worker(model)
        self._run()

    def tick(self) -> None:
        status = self.controller.tick()
        if not self.controller.active:
            self.timer.stop()
            self._save(self.controller.settings)  # the expert list may have changed
        self._show(status)

    def _show(self, status: Status) -> None:
        for panel in list(self.panels):
            panel.show_status(status)


class Panel(QtWidgets.QWidget):
    """Worker status and model, Analyze (router weights as bars), Auto or per-expert sliders,
    context margin, Restore, progress, Cancel, and the last error inline."""

    def __init__(self, plugin: Plugin) -> None:
        super().__init__()
        self.plugin = plugin
        self._expert_rows: dict[str, tuple[QtWidgets.QSlider, QtWidgets.QLabel, QtWidgets.QProgressBar]] = {}
        self._shown_experts: list[str] = []
        layout = QtWidgets.QVBoxLayout(self)

        row = QtWidgets.QHBoxLayout()
        self.worker_label = QtWidgets.QLabel("Worker: not connected")
        self.worker_label.setWordWrap(True)
        connect = QtWidgets.QPushButton("Connect")
        connect.setToolTip("Find the LoRA-IR worker (starting it if needed) and list its models")
        connect.clicked.connect(lambda: plugin.refresh_worker())
        row.addWidget(self.worker_label, 1)
        row.addWidget(connect)
        layout.addLayout(row)

        self.model_box = QtWidgets.QComboBox()
        self.model_box.setToolTip("The worker's model; choosing one loads it")
        self.model_box.activated.connect(self._model_chosen)
        layout.addWidget(self.model_box)

        self.auto_box = QtWidgets.QCheckBox("Auto: the router chooses the experts")
        self.auto_box.setChecked(plugin.settings.auto)
        self.auto_box.toggled.connect(self._auto_toggled)
        layout.addWidget(self.auto_box)
        self.experts_grid = QtWidgets.QGridLayout()
        layout.addLayout(self.experts_grid)

        margin_row = QtWidgets.QHBoxLayout()
        margin_row.addWidget(QtWidgets.QLabel("Context margin"))
        self.margin = QtWidgets.QSpinBox()
        self.margin.setRange(0, hostkit.MAX_MARGIN)
        self.margin.setSuffix(" px")
        self.margin.setValue(plugin.settings.margin)
        self.margin.valueChanged.connect(self._margin_changed)
        margin_row.addWidget(self.margin)
        layout.addLayout(margin_row)

        passes_row = QtWidgets.QHBoxLayout()
        passes_row.addWidget(QtWidgets.QLabel("Passes"))
        self.passes = QtWidgets.QComboBox()
        for n, label in hostkit.pass_choices():
            self.passes.addItem(label, n)
        self.passes.setCurrentIndex(max(0, self.passes.findData(plugin.settings.passes)))
        self.passes.setToolTip(hostkit.PASSES_TIP)
        self.passes.currentIndexChanged.connect(self._passes_changed)
        passes_row.addWidget(self.passes)
        layout.addLayout(passes_row)

        buttons = QtWidgets.QHBoxLayout()
        self.analyze_button = QtWidgets.QPushButton("Analyze")
        self.analyze_button.setToolTip("Show which degradations the router sees in the selection")
        self.analyze_button.clicked.connect(plugin.analyze)
        self.restore_button = QtWidgets.QPushButton("Restore")
        self.restore_button.setToolTip("Restore the selection into a new layer (Ctrl+Alt+Shift+R)")
        self.restore_button.clicked.connect(plugin.restore)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.clicked.connect(plugin.cancel)
        for b in (self.analyze_button, self.restore_button, self.cancel_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)

        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        layout.addWidget(self.progress)
        self.status_label = QtWidgets.QLabel()
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.error_label = QtWidgets.QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #d9534f;")
        layout.addWidget(self.error_label)
        layout.addStretch(1)

        plugin.panels.append(self)
        self.destroyed.connect(lambda *_: plugin.panels.remove(self) if self in plugin.panels else None)
        self.show_status(plugin.controller.status)

    # ---- user input ------------------------------------------------------------------------------

    def _auto_toggled(self, checked: bool) -> None:
        self.plugin.settings.auto = checked
        self._enable_sliders()
        self.plugin.settings_changed()

    def _margin_changed(self, value: int) -> None:
        self.plugin.settings.margin = int(value)
        self.plugin.settings_changed()

    def _passes_changed(self, index: int) -> None:
        self.plugin.settings.passes = int(self.passes.itemData(index) or 1)
        self.plugin.settings_changed()

    def _model_chosen(self, index: int) -> None:
        name = self.model_box.itemText(index)
        if name and name != self.plugin.controller.status.model:
            self.plugin.refresh_worker(name)

    def _slider_moved(self, name: str, value: int) -> None:
        weight = value / _SLIDER_STEPS
        self.plugin.settings.weights[name] = weight
        self._expert_rows[name][1].setText(f"{weight:.2f}")
        self.plugin.settings_changed()

    # ---- display ---------------------------------------------------------------------------------

    def _rebuild_experts(self, experts: list[str]) -> None:
        while self.experts_grid.count():
            item = self.experts_grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self._expert_rows.clear()
        for i, name in enumerate(experts):
            slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
            slider.setRange(0, int(hostkit.MAX_WEIGHT * _SLIDER_STEPS))
            slider.setValue(round(self.plugin.settings.weights.get(name, 0.0) * _SLIDER_STEPS))
            slider.valueChanged.connect(lambda v, n=name: self._slider_moved(n, v))
            value = QtWidgets.QLabel(f"{self.plugin.settings.weights.get(name, 0.0):.2f}")
            bar = QtWidgets.QProgressBar()  # the router's weight, after Analyze or a restore
            bar.setRange(0, 100)
            bar.setFormat("router %p%")
            bar.setMaximumWidth(110)
            self.experts_grid.addWidget(QtWidgets.QLabel(name), i, 0)
            self.experts_grid.addWidget(slider, i, 1)
            self.experts_grid.addWidget(value, i, 2)
            self.experts_grid.addWidget(bar, i, 3)
            self._expert_rows[name] = (slider, value, bar)
        self._shown_experts = list(experts)
        self._enable_sliders()

    def _enable_sliders(self) -> None:
        for slider, value, _bar in self._expert_rows.values():
            slider.setEnabled(not self.plugin.settings.auto)
            value.setEnabled(not self.plugin.settings.auto)

    def show_status(self, status: Status) -> None:
        experts = self.plugin.settings.experts
        if experts != self._shown_experts:
            self._rebuild_experts(experts)
        for name, (_s, _v, bar) in self._expert_rows.items():
            bar.setValue(round(100 * status.router_weights.get(name, 0.0)))
        self.worker_label.setText(f"Worker: {status.worker}" if status.worker else "Worker: not connected")
        if [self.model_box.itemText(i) for i in range(self.model_box.count())] != status.models:
            self.model_box.clear()
            self.model_box.addItems(status.models)
        if status.model:
            self.model_box.setCurrentText(status.model)
        busy = status.busy
        self.restore_button.setEnabled(not busy)
        self.analyze_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self.progress.setVisible(busy)
        if status.progress is None:
            self.progress.setRange(0, 0)  # busy indicator until tiles are counted
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(round(1000 * status.progress))
        self.status_label.setText(status.text)
        self.error_label.setText(status.error)
        self.error_label.setVisible(bool(status.error))
