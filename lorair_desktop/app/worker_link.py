"""The GUI's side of the bridge: every `WorkerClient` call runs on one QThread, never the UI thread.

`WorkerLink` lives on the GUI thread and forwards requests through queued signals to `_Backend` on
its thread; answers come back as signals. Cancel is a `threading.Event` the backend polls between
progress reports (the backend's thread is busy inside `restore`, so a queued slot would come too
late). Every failure arrives as `failed(op, BridgeError)` so the window can show message and hint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from PySide6.QtCore import QCoreApplication, QObject, QThread, QTimer, Signal, Slot

from ..bridge import BridgeError, JobRequest, WorkerClient, WorkerInfo, default_start_command
from ..bridge.protocol import (
    E_CANCELLED,
    E_INTERNAL,
    E_NOT_RUNNING,
    E_START_FAILED,
    E_TIMEOUT,
    E_WORKER_GONE,
)
from ..bridge.runtime import pid_alive, read_runtime, runtime_file

log = logging.getLogger("lorair_desktop.app.worker")

GONE_CODES = frozenset({E_NOT_RUNNING, E_WORKER_GONE, E_TIMEOUT, E_START_FAILED})
STOP_TIMEOUT_S = 60.0  # a stopping worker first finishes cancelling its job


class LinkState(Enum):
    OFFLINE = "offline"  # never connected, or the last connect failed
    CONNECTING = "connecting"
    IDLE = "idle"
    BUSY = "busy"
    ASLEEP = "asleep"  # the worker exited when idle; the next request starts it again


@dataclass
class ConnectConfig:
    start_command: list[str] | None = None  # None: the bridge's default (`lorair worker`)
    device: str = "auto"
    autostart: bool = True
    runtime_dir: Path | None = None
    start_timeout: float = 120.0

    def command(self) -> list[str]:
        cmd = list(self.start_command or default_start_command())
        if self.device != "auto" and "--device" not in cmd:
            cmd += ["--device", self.device]
        return cmd


@dataclass
class Op:
    """One request to the worker; `token` lets the window match answers to what it asked."""

    kind: str  # "analyze" | "restore" | "batch" | "model" | "connect" | "restart"
    token: int = 0
    request: JobRequest | None = None
    payload: Any = None
    context: Any = None  # the window's own data for the answer; never read by the backend


def as_bridge_error(exc: BaseException) -> BridgeError:
    if isinstance(exc, BridgeError):
        return exc
    code = getattr(exc, "code", None)
    if isinstance(code, str):  # a LoraIRError from imageio (batch): same message + hint shape
        return BridgeError(code, getattr(exc, "message", str(exc)), getattr(exc, "hint", ""))
    return BridgeError(E_INTERNAL, f"unexpected error: {exc!r}", "see the log view (View ▸ Log) for details")


class _Backend(QObject):
    connected = Signal(object)  # WorkerInfo
    finished = Signal(object, object)  # Op, result (AnalyzeResult | JobResult | WorkerInfo | summary)
    failed = Signal(object, object)  # Op, BridgeError
    progress = Signal(object, object)  # Op, JobStatus
    batch_progress = Signal(object, object)  # Op, BatchProgress

    def __init__(self, cancel: threading.Event) -> None:
        super().__init__()
        self.cancel = cancel
        self.client: WorkerClient | None = None
        self.config = ConnectConfig()

    def _client(self) -> WorkerClient:
        if self.client is None:
            self._connect()
        assert self.client is not None
        return self.client

    def _connect(self) -> WorkerInfo:
        c = self.config
        log.info("looking for the worker%s", f" (device {c.device})" if c.device != "auto" else "")
        self.client = WorkerClient.connect(
            autostart=c.autostart,
            start_command=c.command(),
            start_timeout=c.start_timeout,
            runtime_dir=c.runtime_dir,
        )
        info = self.client.info()
        log.info(
            "connected to worker %s (pid %d) on %s, model %s (%s)",
            info.version,
            info.pid,
            info.device,
            info.model.name,
            info.model.state,
        )
        self.connected.emit(info)
        return info

    @Slot(object)
    def run(self, op: Op) -> None:
        try:
            result = self._run(op)
        except BaseException as exc:
            err = as_bridge_error(exc)
            if err.code == E_INTERNAL:
                log.exception("%s failed", op.kind)
            elif err.code != E_CANCELLED:
                log.error("%s failed: %s", op.kind, err)
            self.failed.emit(op, err)
        else:
            self.finished.emit(op, result)

    def _run(self, op: Op) -> Any:
        if op.kind == "connect":
            self.config = op.payload
            self.client = None
            return self._connect()
        if op.kind == "restart":
            self._stop_worker()
            self.config = op.payload
            self.client = None
            return self._connect()
        if op.kind == "info":
            info = self._client().info()
            self.connected.emit(info)
            return info
        if op.kind == "model":
            model = self._client().set_model(op.payload)
            if model.state == "error" and model.error is not None:
                raise model.error.to_exception()
            info = self._client().info()
            self.connected.emit(info)
            return info
        if op.kind == "analyze":
            return self._client().analyze(op.request)
        if op.kind == "restore":
            return self._client().restore(
                op.request,
                on_progress=lambda st: self.progress.emit(op, st),
                should_cancel=self.cancel.is_set,
            )
        if op.kind == "batch":
            from .batch import run_batch

            return run_batch(
                self._client(),
                op.payload,
                on_progress=lambda p: self.batch_progress.emit(op, p),
                should_cancel=self.cancel.is_set,
            )
        raise ValueError(f"unknown operation {op.kind}")

    def _stop_worker(self) -> None:
        """Ask the running worker to exit (SIGTERM: it cancels its job and removes its runtime file),
        so the next connect starts one with the new settings."""
        path = runtime_file(self.config.runtime_dir)
        info = read_runtime(path)
        if info is None or not pid_alive(info.pid):
            return
        log.info("stopping the worker (pid %d) to restart it", info.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if _exited(info.pid):
                return
            time.sleep(0.1)
        raise BridgeError(
            E_START_FAILED,
            f"the worker (pid {info.pid}) did not stop within {STOP_TIMEOUT_S:.0f} s",
            "stop it by hand, then use Worker ▸ Reconnect",
        )


def _exited(pid: int) -> bool:
    """True once the process is gone. A worker this app started is our child: reap it here, or it
    lingers as a zombie that `pid_alive` still sees."""
    if os.name == "posix":
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return True
        except ChildProcessError:
            pass  # not our child: another host started it
    return not pid_alive(pid)


class WorkerLink(QObject):
    """Requests go out with a token; `finished`/`failed` come back with the same `Op`."""

    state_changed = Signal(object)  # LinkState
    info_changed = Signal(object)  # WorkerInfo
    finished = Signal(object, object)
    failed = Signal(object, object)
    progress = Signal(object, object)
    batch_progress = Signal(object, object)
    _submit = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.cancel_event = threading.Event()
        self.info: WorkerInfo | None = None
        self.state = LinkState.OFFLINE
        self.config = ConnectConfig()
        self._pending: list[Op] = []
        self._token = 0
        self._alive = False  # the last word from the worker was good
        self._asleep = False
        self._thread = QThread()
        self._thread.setObjectName("lorair-worker-link")
        self._backend = _Backend(self.cancel_event)
        self._backend.moveToThread(self._thread)
        self._submit.connect(self._backend.run)
        self._backend.connected.connect(self._on_info)
        self._backend.finished.connect(self._on_finished)
        self._backend.failed.connect(self._on_failed)
        self._backend.progress.connect(self.progress)
        self._backend.batch_progress.connect(self.batch_progress)
        self._thread.start()
        # Watch the runtime file, not the HTTP port: a ping would count as activity and keep an
        # idle worker from ever exiting.
        self._watch = QTimer(self)
        self._watch.setInterval(2000)
        self._watch.timeout.connect(self._check_alive)
        self._watch.start()
        app = QCoreApplication.instance()
        if app is not None:  # also when the app quits without closing the window
            app.aboutToQuit.connect(self.shutdown)

    # --- requests --------------------------------------------------------------------------------
    def _send(self, kind: str, request: JobRequest | None = None, payload: Any = None, context: Any = None) -> Op:
        self._token += 1
        op = Op(kind, self._token, request, payload, context)
        if kind in ("restore", "batch"):
            self.cancel_event.clear()
        self._pending.append(op)
        self._update_state()
        self._submit.emit(op)
        return op

    def connect_worker(self, config: ConnectConfig) -> Op:
        self.config = config
        return self._send("connect", payload=config)

    def restart_worker(self, config: ConnectConfig) -> Op:
        self.config = config
        return self._send("restart", payload=config)

    def refresh_info(self) -> Op:
        return self._send("info")

    def set_model(self, name: str) -> Op:
        return self._send("model", payload=name)

    def analyze(self, request: JobRequest, context: Any = None) -> Op:
        return self._send("analyze", request, context=context)

    def restore(self, request: JobRequest, context: Any = None) -> Op:
        return self._send("restore", request, context=context)

    def run_batch(self, job: Any) -> Op:
        return self._send("batch", payload=job)

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def busy(self) -> bool:
        return any(op.kind in ("restore", "batch", "analyze", "model") for op in self._pending)

    def pending(self, kind: str) -> bool:
        return any(op.kind == kind for op in self._pending)

    # --- answers ---------------------------------------------------------------------------------
    def _on_info(self, info: WorkerInfo) -> None:
        self.info = info
        self._alive, self._asleep = True, False
        self.info_changed.emit(info)
        self._update_state()

    def _on_finished(self, op: Op, result: Any) -> None:
        was_down = self._asleep or not self._alive
        self._alive, self._asleep = True, False  # an answer means a worker is up
        self._done(op)
        self.finished.emit(op, result)
        if was_down and op.kind in ("analyze", "restore", "batch"):
            self.refresh_info()  # the bridge started a new worker: learn its pid and device

    def _on_failed(self, op: Op, err: BridgeError) -> None:
        if op.kind in ("connect", "restart"):
            self._alive = False
        elif err.code in GONE_CODES:
            # With autostart the next request starts a new worker, so Restore stays available.
            if self.config.autostart:
                self._asleep = True
            else:
                self._alive = False
        self._done(op)
        self.failed.emit(op, err)

    def _done(self, op: Op) -> None:
        with contextlib.suppress(ValueError):
            self._pending.remove(op)
        self._update_state()

    def _update_state(self) -> None:
        if any(op.kind in ("connect", "restart") for op in self._pending):
            state = LinkState.CONNECTING
        elif self.busy:
            state = LinkState.BUSY
        elif self._asleep:
            state = LinkState.ASLEEP
        else:
            state = LinkState.IDLE if self._alive else LinkState.OFFLINE
        if state is not self.state:
            self.state = state
            self.state_changed.emit(state)

    def _check_alive(self) -> None:
        if self.state is not LinkState.IDLE or self.info is None:
            return
        rt = read_runtime(runtime_file(self.config.runtime_dir))
        if rt is None or not pid_alive(rt.pid):
            log.info("the worker (pid %d) has stopped; it starts again on the next request", self.info.pid)
            self._asleep = True
            self._update_state()
        elif rt.pid != self.info.pid and not self.pending("info"):
            self.refresh_info()  # another host restarted it: show the new one's device and model

    # --- lifetime --------------------------------------------------------------------------------
    def shutdown(self, wait_ms: int = 15000) -> None:
        """Cancel what runs and stop the thread (the worker process itself stays for other hosts and
        exits on its own when idle)."""
        if not self._thread.isRunning():
            return
        self._watch.stop()
        self.cancel_event.set()
        self._thread.quit()
        if not self._thread.wait(wait_ms):
            log.warning("the worker link is still busy (a worker start?); leaving it to finish")
            _orphans.append(self._thread)  # never let Python delete a running QThread


_orphans: list[QThread] = []


def split_command(cmd: str | Sequence[str] | None) -> list[str] | None:
    if cmd is None or isinstance(cmd, list):
        return cmd
    if isinstance(cmd, str):
        import shlex

        return shlex.split(cmd, posix=os.name == "posix") or None
    return list(cmd)
