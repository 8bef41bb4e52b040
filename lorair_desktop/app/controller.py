"""The restore flow between the panel, the document and the worker link: build a request from the
selection, send it, show progress, land the answer as a history step, and report every failure
with its hint. The window owns the widgets; this class owns what happens when buttons are pressed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from ..bridge import AnalyzeResult, BridgeError, ExpertSpec, JobRequest, JobResult, JobStatus, WorkerInfo
from ..bridge.protocol import E_CANCELLED
from .batch import BatchDialog, BatchJob, BatchProgress, BatchSummary
from .document import Document
from .region import Region, apply_result, plan_region, result_array
from .restore_panel import RestorePanel
from .selection import Selection
from .worker_link import GONE_CODES, LinkState, Op, WorkerLink

log = logging.getLogger("lorair_desktop.app")

AUTO_ANALYZE_DELAY_MS = 400
MODEL_POLL_MS = 500


@dataclass
class Target:
    """What a request was made for: answers for a document that has since changed are dropped."""

    doc: Document
    region: Region
    history_index: int
    label: str = ""


class RestoreController(QObject):
    message = Signal(str, str, str, object)  # kind, message, hint, (button label, callback) | None
    status = Signal(str)  # a transient status-bar line
    restored = Signal(object)  # JobResult, after it landed in the document

    def __init__(
        self,
        link: WorkerLink,
        panel: RestorePanel,
        target: Callable[[], tuple[Document | None, Selection | None]],
        feather: Callable[[], float],
        reconnect: Callable[[], None] | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.link, self.panel, self._target, self._feather = link, panel, target, feather
        self._reconnect = reconnect
        self.batch_dialog: BatchDialog | None = None
        self._restore_op: Op | None = None
        self._analyze_op: Op | None = None
        self._batch_op: Op | None = None
        self._model_op: Op | None = None
        link.info_changed.connect(self.on_info)
        link.state_changed.connect(self._on_state)
        link.finished.connect(self._on_finished)
        link.failed.connect(self._on_failed)
        link.progress.connect(self._on_progress)
        link.batch_progress.connect(self._on_batch_progress)
        panel.analyze_requested.connect(self.analyze)
        panel.restore_requested.connect(self.restore)
        panel.cancel_requested.connect(self.cancel)
        panel.model_selected.connect(self.select_model)
        self._auto_timer = QTimer(self)
        self._auto_timer.setSingleShot(True)
        self._auto_timer.setInterval(AUTO_ANALYZE_DELAY_MS)
        self._auto_timer.timeout.connect(lambda: self.analyze(quiet=True))

    # --- worker info -----------------------------------------------------------------------------
    def on_info(self, info: WorkerInfo) -> None:
        models: list[tuple[str, str, str]] = []
        for m in info.models:
            name = str(m.get("name", ""))
            note = "" if m.get("trained", True) else " (untrained)"
            models.append((name + note, name, str(m.get("description", ""))))
        current = info.model.name
        if current and current not in [m[1] for m in models]:
            models.insert(0, (Path(current).name, current, current))  # a checkpoint given by path
        self.panel.set_models(models, current)
        self.panel.set_experts(list(info.model.experts))
        trained = next((m.get("trained", True) for m in info.models if m.get("name") == current), True)
        note = (
            "These weights are untrained: results are not meaningful. Train them with `lorair train`."
            if not trained
            else ""
        )
        self.panel.set_model_note(note)
        if info.model.state == "loading":
            # The worker answers while its model still loads: look again shortly.
            QTimer.singleShot(MODEL_POLL_MS, self._poll_model)
        if info.model.state == "error" and info.model.error is not None:
            e = info.model.error
            self.message.emit("error", f"The model {current} could not be loaded: {e.message}", e.hint, None)
        self.panel.set_connected(bool(info.model.experts))

    def _poll_model(self) -> None:
        if self.link.info is not None and self.link.info.model.state == "loading" and not self.link.pending("info"):
            self.link.refresh_info()

    def _on_state(self, state: LinkState) -> None:
        # Restores are allowed when asleep too: the bridge starts the worker again on demand.
        ok = state in (LinkState.IDLE, LinkState.ASLEEP, LinkState.BUSY) and self.link.info is not None
        self.panel.set_connected(ok and bool(self.link.info.model.experts))

    def select_model(self, name: str) -> None:
        info = self.link.info
        if not name or info is None or name == info.model.name:
            return
        log.info("switching the worker's model to %s", name)
        self.panel.set_busy(True, f"Loading {Path(name).name}…")
        self._model_op = self.link.set_model(name)

    # --- requests --------------------------------------------------------------------------------
    def _plan(self, what: str) -> tuple[Document, Region] | None:
        doc, sel = self._target()
        if doc is None:
            self.message.emit("info", f"Open an image to {what}.", "File ▸ Open (Ctrl+O), or drop a photo here.", None)
            return None
        mask = sel.soft_mask(self._feather()) if sel is not None else None
        region = plan_region(doc, mask, self.panel.margin)
        if region is None:
            self.message.emit("warning", "The selection is empty.", "Select an area, or Select ▸ None for all.", None)
            return None
        limit = int(self.link.info.limits.get("max_pixels", 0)) if self.link.info else 0
        if limit and region.pixels > limit:
            self.message.emit(
                "error",
                f"The region is {region.width}×{region.height} = {region.pixels / 1e6:.1f} MP, above the "
                f"worker's limit of {limit / 1e6:.1f} MP.",
                "Select a smaller area, or start the worker with a higher limit (`lorair worker --max-pixels N`).",
                None,
            )
            return None
        return doc, region

    def _request(self, doc: Document, region: Region, with_mask: bool) -> JobRequest:
        tile = self.panel.tile or None
        return JobRequest(
            region.rgb,
            region.width,
            region.height,
            "RGB",  # alpha stays in the app: a restore never changes it
            region.sample,
            mask=region.mask if with_mask else None,
            experts=ExpertSpec.from_dict(self.panel.experts_spec()),
            model=self.panel.model or None,
            tile=tile,
            ensemble=self.panel.ensemble,
            transfer=doc.meta.transfer,
        )

    def analyze(self, quiet: bool = False) -> None:
        if self._analyze_op is not None or self._restore_op is not None:
            return
        planned = None if quiet and self._target()[0] is None else self._plan("analyze")
        if planned is None:
            return
        doc, region = planned
        self.panel.analyze_button.setText("Analyzing…")
        self._analyze_op = self.link.analyze(self._request(doc, region, False), Target(doc, region, doc.history.index))

    def schedule_auto_analyze(self) -> None:
        if self.panel.auto_analyze.isChecked() and self.link.info is not None:
            self._auto_timer.start()

    def restore(self) -> None:
        if self._restore_op is not None:
            return
        planned = self._plan("restore")
        if planned is None:
            return
        doc, region = planned
        spec = self.panel.experts_spec()
        label = "Restore" if spec["mode"] == "auto" else "Restore (manual experts)"
        what = (
            "the whole image"
            if region.mask is None and region.pixels == doc.width * doc.height
            else (f"a {region.width}×{region.height} region")
        )
        log.info("restoring %s (%s, experts %s)", what, region.sample, spec)
        self.panel.set_busy(True, "Waiting for the worker…")
        target = Target(doc, region, doc.history.index, label)
        self._restore_op = self.link.restore(self._request(doc, region, True), target)

    def cancel(self) -> None:
        if self._restore_op is not None or self._batch_op is not None:
            log.info("cancelling")
            self.panel.progress.setFormat("Cancelling…")
            self.link.cancel()

    @property
    def busy(self) -> bool:
        return any(op is not None for op in (self._restore_op, self._batch_op, self._model_op))

    # --- batch -----------------------------------------------------------------------------------
    def start_batch(self, job: BatchJob) -> None:
        if self.busy:
            if self.batch_dialog is not None:
                self.batch_dialog.finish(None, "The worker is busy; try again when it is idle.")
            return
        job.experts = ExpertSpec.from_dict(self.panel.experts_spec())
        job.model = self.panel.model or None
        job.tile = self.panel.tile or None
        job.ensemble = self.panel.ensemble
        log.info("batch: %d images into %s", len(job.files), job.output_dir)
        self.panel.set_busy(True, "Batch…")
        self._batch_op = self.link.run_batch(job)

    def _on_batch_progress(self, op: Op, p: BatchProgress) -> None:
        if self.batch_dialog is not None:
            self.batch_dialog.show_progress(p)
        self.panel.progress.setFormat(f"Batch: image {min(p.index + 1, p.total)} of {p.total}")

    # --- answers ---------------------------------------------------------------------------------
    def _on_progress(self, op: Op, st: JobStatus) -> None:
        if op is not self._restore_op:
            return
        if st.state == "queued":
            pos = st.queue_position or 0
            self.panel.progress.setFormat(f"Queued ({pos} ahead)" if pos else "Queued")
        elif st.tiles > 0:
            self.panel.set_progress(st.tile, st.tiles, st.eta_s, st.progress)

    def _stale(self, t: Target) -> bool:
        doc, _ = self._target()
        return doc is not t.doc or doc.history.index != t.history_index

    def _on_finished(self, op: Op, result: Any) -> None:
        if op is self._analyze_op:
            self._analyze_op = None
            self.panel.analyze_button.setText("Analyze")
            assert isinstance(result, AnalyzeResult)
            self.panel.set_router_weights(result.router_weights)
            self.status.emit(f"Analysis: mostly {result.top_expert}")
            log.info("router weights: %s", _fmt_weights(result.router_weights))
        elif op is self._restore_op:
            self._restore_op = None
            self._land(op.context, result)
        elif op is self._model_op:
            self._model_op = None
            self.panel.set_busy(False, "Model ready")
        elif op is self._batch_op:
            self._batch_op = None
            assert isinstance(result, BatchSummary)
            self.panel.set_busy(False, "Batch done" if not result.cancelled else "Batch cancelled")
            if self.batch_dialog is not None:
                self.batch_dialog.finish(result)
            if result.failed:
                self.message.emit(
                    "warning",
                    f"Batch: {len(result.failed)} of {len(result.failed) + len(result.written)} images failed.",
                    "See the batch window for each file's reason.",
                    None,
                )

    def _land(self, t: Target, res: JobResult) -> None:
        h = res.header
        self.panel.set_applied_weights(h.router_weights, h.applied_weights)
        if self._stale(t):
            self.panel.set_busy(False, "Discarded")
            self.message.emit(
                "warning",
                "The restore finished after the image changed, so it was not applied.",
                "Run Restore again.",
                None,
            )
            return
        try:
            rgb = result_array(t.region, res.pixels)
        except ValueError as exc:
            self.panel.set_busy(False, "Failed")
            self.message.emit(
                "error",
                f"The worker's answer does not fit the region: {exc}",
                "Update the worker and the app to the same version.",
                None,
            )
            return
        apply_result(t.doc, t.region, rgb, t.label)
        total = h.timings.get("total_s", 0.0)
        self.panel.set_busy(False, "Done")
        self.status.emit(f"Restored {t.region.width}×{t.region.height} in {total:.1f} s on {h.device}")
        log.info(
            "restored in %.2f s (%d tile(s) of %d px, %s, %s); applied %s",
            total,
            h.tiles,
            h.tile_size,
            h.device,
            h.dtype,
            _fmt_weights(h.applied_weights),
        )
        self.restored.emit(res)

    def _on_failed(self, op: Op, err: BridgeError) -> None:
        retry: tuple[str, Callable[[], None]] | None = None
        if op is self._analyze_op:
            self._analyze_op = None
            self.panel.analyze_button.setText("Analyze")
            if op.context is not None and self.panel.auto_analyze.isChecked() and err.code in GONE_CODES:
                return  # a background analysis: the next explicit action reports the problem
            retry = ("Retry", self.analyze)
        elif op is self._restore_op:
            self._restore_op = None
            if err.code == E_CANCELLED:
                self.panel.set_busy(False, "Cancelled")
                self.status.emit("Restore cancelled; the image is unchanged.")
                return
            self.panel.set_busy(False, "Failed")
            retry = ("Retry", self.restore)
        elif op is self._batch_op:
            self._batch_op = None
            self.panel.set_busy(False, "Batch failed")
            if self.batch_dialog is not None:
                self.batch_dialog.finish(None, f"{err.message}\n{err.hint}")
        elif op is self._model_op:
            self._model_op = None
            self.panel.set_busy(False, "Model not loaded")
            self.link.refresh_info()  # the combo goes back to the model the worker really has
        elif op.kind in ("connect", "restart"):
            self.panel.set_connected(False)
            action = ("Reconnect", self._reconnect) if self._reconnect else None
            self.message.emit("error", f"Cannot use the LoRA-IR worker: {err.message}", err.hint, action)
            return
        self.message.emit("error", err.message, err.hint, retry)


def _fmt_weights(w: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(w.items(), key=lambda kv: -kv[1]) if v > 0.005) or "none"
