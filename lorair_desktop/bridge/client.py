"""The client every host uses to talk to the worker. Standard library only.

    client = WorkerClient.connect()          # finds the worker, starts it when absent
    result = client.restore(JobRequest(pixels, w, h, "BGRA", "u8", mask=mask),
                            on_progress=lambda st: ..., should_cancel=lambda: ...)
    result.pixels, result.header.applied_weights

Every failure is a `BridgeError` whose message says what happened and whose hint says what to do.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .protocol import (
    E_BAD_REQUEST,
    E_BAD_RESPONSE,
    E_CANCELLED,
    E_JOB_NOT_FOUND,
    E_NOT_RUNNING,
    E_PROTOCOL,
    E_START_FAILED,
    E_TIMEOUT,
    E_WORKER_GONE,
    ENSEMBLES,
    JOB_CONTENT_TYPE,
    ORDERS,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    SAMPLES,
    SERVICE,
    AnalyzeResult,
    BridgeError,
    ExpertSpec,
    JobHeader,
    JobStatus,
    ModelInfo,
    ResultHeader,
    SubmitReply,
    WorkerInfo,
    decode_json,
    encode_json,
    frame_prefix,
    pixel_bytes,
    read_prefix_length,
)
from .runtime import (
    ENV_RUNTIME_DIR,
    EXIT_ALREADY_RUNNING,
    ensure_private_dir,
    log_file,
    pid_alive,
    read_runtime,
    runtime_dir,
    runtime_file,
)

log = logging.getLogger(__name__)

ENV_WORKER_CMD = "LORAIR_WORKER_CMD"
DEFAULT_TIMEOUT = 30.0
DEFAULT_START_TIMEOUT = 120.0  # a cold start imports torch and loads the model
_LOG_ROTATE_BYTES = 1 << 20
_children: list[subprocess.Popen] = []  # workers we started; polled so they never linger as zombies

Buffer = bytes | bytearray | memoryview


def default_start_command() -> list[str]:
    """`$LORAIR_WORKER_CMD` (split like a shell would) or this interpreter running `lorair worker`."""
    env = os.environ.get(ENV_WORKER_CMD)
    if env:
        return shlex.split(env, posix=os.name == "posix")
    return [sys.executable, "-m", "lorair_desktop.cli", "worker", "--idle-exit", "10"]


def _as_bytes_view(data: Any, what: str) -> memoryview:
    try:
        view = memoryview(data)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except (TypeError, ValueError) as exc:
        raise BridgeError(
            E_BAD_REQUEST,
            f"{what} must be a contiguous bytes-like object ({exc})",
            "pass bytes, bytearray or a memoryview of contiguous memory",
        ) from None


@dataclass
class JobRequest:
    """Pixels in the host's own layout plus what to do with them (see `protocol`)."""

    pixels: Buffer
    width: int
    height: int
    order: str = "RGBA"
    sample: str = "u8"
    mask: Buffer | None = None
    experts: ExpertSpec = field(default_factory=ExpertSpec)
    model: str | None = None
    tile: int | None = None
    overlap: int | None = None
    ensemble: int = 1
    transfer: str = "srgb"  # "linear" for linear-light pixels (see protocol)

    def header(self) -> JobHeader:
        return JobHeader(
            self.width,
            self.height,
            self.order,
            self.sample,
            self.mask is not None,
            self.model,
            self.experts,
            self.tile,
            self.overlap,
            self.ensemble,
            self.transfer,
        )

    def body_parts(self) -> list[memoryview | bytes]:
        """Checked here so a wrong buffer is reported before anything is sent."""
        if self.order not in ORDERS or self.sample not in SAMPLES:
            raise BridgeError(
                E_BAD_REQUEST,
                f"unsupported pixel layout {self.order}/{self.sample}",
                f"use order {'/'.join(ORDERS)} and sample {'/'.join(SAMPLES)}",
            )
        if self.width < 1 or self.height < 1:
            raise BridgeError(
                E_BAD_REQUEST,
                f"the image is empty ({self.width}x{self.height})",
                "select a region of at least one pixel",
            )
        if isinstance(self.ensemble, bool) or self.ensemble not in ENSEMBLES:
            raise BridgeError(
                E_BAD_REQUEST,
                f"{self.ensemble!r} passes are not offered",
                f"choose {', '.join(map(str, ENSEMBLES))} passes",
            )
        px = _as_bytes_view(self.pixels, "pixels")
        want = pixel_bytes(self.width, self.height, self.order, self.sample)
        if len(px) != want:
            raise BridgeError(
                E_BAD_REQUEST,
                f"pixels hold {len(px)} bytes, but {self.width}x{self.height} {self.order} {self.sample} needs {want}",
                "check the layout and size",
            )
        parts: list[memoryview | bytes] = [frame_prefix(self.header().to_dict()), px]
        if self.mask is not None:
            mk = _as_bytes_view(self.mask, "mask")
            if len(mk) != self.width * self.height:
                raise BridgeError(
                    E_BAD_REQUEST,
                    f"the mask holds {len(mk)} bytes, but needs {self.width * self.height} (one byte per pixel)",
                )
            parts.append(mk)
        return parts


@dataclass(frozen=True)
class JobResult:
    header: ResultHeader
    pixels: bytes  # same layout as the request


def _proto_mismatch(theirs: Any, version: str = "") -> BridgeError:
    who = f"the worker (LoRA-IR Desktop {version})" if version else "the worker"
    return BridgeError(
        E_PROTOCOL,
        f"{who} speaks protocol {theirs}, this client speaks {PROTOCOL_VERSION}",
        "update the plugin (`lorair plugins install …`) or the worker so both come from "
        "the same LoRA-IR Desktop version, then restart the worker",
    )


class WorkerClient:
    """A connection to one worker. Thread-safe: each call opens its own HTTP connection."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        pid: int | None = None,
        autostart: bool = False,
        start_command: Sequence[str] | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        runtime_dir: Path | None = None,
    ) -> None:
        self.host, self.port, self.token, self.timeout, self.pid = host, port, token, timeout, pid
        self._autostart = autostart
        self._start_command = list(start_command) if start_command else None
        self._start_timeout = start_timeout
        self._runtime_dir = runtime_dir

    def __repr__(self) -> str:
        return f"WorkerClient({self.host}:{self.port}, pid={self.pid})"

    # ---- finding and starting the worker ---------------------------------------------------

    @classmethod
    def connect(
        cls,
        autostart: bool = True,
        start_command: Sequence[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        runtime_dir: Path | str | None = None,
    ) -> WorkerClient:
        """The running worker (from its runtime file), or a freshly started one when `autostart`.

        `start_command` defaults to `default_start_command()`; a worker started here inherits
        `runtime_dir` through `$LORAIR_RUNTIME_DIR`.
        """
        rdir = Path(runtime_dir) if runtime_dir is not None else None
        opts = {
            "autostart": autostart,
            "start_command": start_command,
            "start_timeout": start_timeout,
            "runtime_dir": rdir,
        }
        _reap()
        client = cls._existing(rdir, timeout, opts)
        if client is not None:
            return client
        if not autostart:
            raise BridgeError(
                E_NOT_RUNNING,
                "the LoRA-IR worker is not running",
                "start it with `lorair worker`, or enable starting it automatically",
            )
        return cls._start(rdir, timeout, opts)

    @classmethod
    def _existing(cls, rdir: Path | None, timeout: float, opts: dict[str, Any]) -> WorkerClient | None:
        info = read_runtime(runtime_file(rdir))
        if info is None or not pid_alive(info.pid):
            return None
        client = cls(info.host, info.port, info.token, timeout, pid=info.pid, **opts)
        try:
            health = client.health(timeout=min(timeout, 5.0))
        except BridgeError as exc:
            if exc.code in (E_NOT_RUNNING, E_TIMEOUT, E_WORKER_GONE, E_BAD_RESPONSE):
                return None  # a stale file: the worker died without removing it
            raise
        if health.get("pid") != info.pid:
            return None  # another program reuses the port of a dead worker
        if health.get("protocol") != PROTOCOL_VERSION:
            raise _proto_mismatch(health.get("protocol"), info.version)
        return client

    @classmethod
    def _start(cls, rdir: Path | None, timeout: float, opts: dict[str, Any]) -> WorkerClient:
        directory = ensure_private_dir(rdir or runtime_dir())
        cmd = list(opts["start_command"] or default_start_command())
        logpath = log_file(directory)
        with contextlib.suppress(OSError):
            if logpath.stat().st_size > _LOG_ROTATE_BYTES:
                os.replace(logpath, logpath.with_suffix(".log.1"))
        env = dict(os.environ)
        env[ENV_RUNTIME_DIR] = str(directory)
        kwargs: dict[str, Any] = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True  # outlives the host; it ends itself when idle
        else:
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0) | getattr(
                subprocess, "CREATE_NEW_PROCESS_GROUP", 0
            )
        log.info("starting the worker: %s", " ".join(cmd))
        try:
            with open(logpath, "ab") as logf:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env, close_fds=True, **kwargs
                )
        except OSError as exc:
            raise BridgeError(
                E_START_FAILED,
                f"cannot start the worker with `{' '.join(cmd)}`: {exc}",
                f"set the worker command in the plugin settings or in ${ENV_WORKER_CMD}",
            ) from None
        _children.append(proc)
        deadline = time.monotonic() + opts["start_timeout"]
        exited_at: float | None = None
        while time.monotonic() < deadline:
            client = cls._existing(directory, timeout, opts)
            if client is not None:
                return client
            if proc.poll() is not None and proc.returncode != EXIT_ALREADY_RUNNING:
                # Another host's worker may have won a start race just now: give it a moment.
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > 3.0:
                    raise BridgeError(
                        E_START_FAILED,
                        f"the worker exited at start (code {proc.returncode}): {_tail(logpath)}",
                        f"see {logpath}",
                    )
            time.sleep(0.1)
        with contextlib.suppress(OSError):
            proc.terminate()  # do not leave a half-started worker behind
        raise BridgeError(
            E_START_FAILED,
            f"the worker did not come up within {opts['start_timeout']:.0f} s",
            f"see {logpath}; a first start can be slow while the model loads",
        )

    def _reconnect(self) -> None:
        fresh = WorkerClient.connect(
            self._autostart, self._start_command, self.timeout, self._start_timeout, self._runtime_dir
        )
        self.host, self.port, self.token, self.pid = fresh.host, fresh.port, fresh.token, fresh.pid

    def _retrying(self, fn: Callable[[], Any]) -> Any:
        """Run a request; if the worker is gone before it was delivered, start it again once."""
        try:
            return fn()
        except BridgeError as exc:
            if exc.code != E_NOT_RUNNING or not self._autostart:
                raise
        self._reconnect()
        return fn()

    # ---- HTTP ------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        parts: Sequence[Buffer] = (),
        content_type: str = "application/json",
        timeout: float | None = None,
        auth: bool = True,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        t = self.timeout if timeout is None else timeout
        conn = http.client.HTTPConnection(self.host, self.port, timeout=t)
        sent = False
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            if auth:
                conn.putheader("Authorization", f"Bearer {self.token}")
            conn.putheader(PROTOCOL_HEADER, str(PROTOCOL_VERSION))
            length = sum(len(memoryview(p)) for p in parts)
            if parts or method in ("POST", "PUT"):
                conn.putheader("Content-Type", content_type)
                conn.putheader("Content-Length", str(length))
            conn.endheaders()
            sent = True
            try:
                for p in parts:
                    conn.send(p)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the worker refused early; its error answer may still be readable below
            return conn, conn.getresponse()
        except BaseException as exc:
            conn.close()
            raise self._net_error(exc, t, sent) from None

    def _net_error(self, exc: BaseException, timeout: float, sent: bool) -> BaseException:
        where = f"{self.host}:{self.port}"
        if isinstance(exc, BridgeError | KeyboardInterrupt):
            return exc
        if isinstance(exc, ConnectionRefusedError) or (
            not sent and isinstance(exc, OSError) and not isinstance(exc, TimeoutError)
        ):
            return BridgeError(
                E_NOT_RUNNING,
                f"cannot reach the LoRA-IR worker at {where} ({exc})",
                "start it with `lorair worker`, or let the plugin start it",
            )
        if isinstance(exc, TimeoutError | socket.timeout):
            return BridgeError(
                E_TIMEOUT,
                f"the LoRA-IR worker at {where} did not answer within {timeout:.0f} s",
                "it may be busy with a large image; try again or raise the timeout",
            )
        if isinstance(exc, OSError | http.client.HTTPException):
            return BridgeError(
                E_WORKER_GONE,
                f"the connection to the LoRA-IR worker broke ({exc!r})",
                f"the worker may have stopped or crashed; see {log_file(self._runtime_dir)} "
                "and try again (it restarts on demand)",
            )
        return exc

    def _read_exact(self, resp: http.client.HTTPResponse, n: int, timeout: float) -> bytes:
        try:
            data = resp.read(n)
        except BaseException as exc:
            raise self._net_error(exc, timeout, True) from None
        if len(data) != n:
            raise BridgeError(
                E_WORKER_GONE, "the worker's answer was cut off", "the worker may have stopped; try again"
            )
        return data

    def _answer(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, t: float) -> Any:
        """Read a JSON answer; an error status becomes its BridgeError."""
        try:
            length = int(resp.getheader("Content-Length") or -1)
            raw = self._read_exact(resp, length, t) if length >= 0 else resp.read()
        except BaseException as exc:
            raise self._net_error(exc, t, True) from None
        finally:
            conn.close()
        try:
            data = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if resp.status >= 400:
            raise BridgeError.from_dict(data, resp.status)
        if data is None:
            raise BridgeError(
                E_BAD_RESPONSE,
                f"the worker answered HTTP {resp.status} with something that is not JSON",
                "another program may be using the worker's port",
            )
        return data

    def _json(self, method: str, path: str, data: Any = None, timeout: float | None = None, auth: bool = True) -> Any:
        parts = [encode_json(data)] if data is not None else []
        t = self.timeout if timeout is None else timeout
        conn, resp = self._send(method, path, parts, timeout=t, auth=auth)
        return self._answer(conn, resp, t)

    def _decode(self, fn: Callable[[Any], Any], data: Any) -> Any:
        try:
            return fn(data)
        except (BridgeError, KeyError, TypeError, ValueError) as exc:
            raise BridgeError(
                E_BAD_RESPONSE,
                f"the worker's answer has an unexpected shape: {exc}",
                "the worker and this client may come from different versions",
            ) from None

    # ---- API -------------------------------------------------------------------------------

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        data = self._json("GET", "/v1/health", timeout=timeout, auth=False)
        if not isinstance(data, dict) or data.get("service") != SERVICE:
            raise BridgeError(
                E_BAD_RESPONSE,
                f"{self.host}:{self.port} is not a LoRA-IR worker",
                "another program uses that port; restart the worker",
            )
        return data

    def info(self) -> WorkerInfo:
        data = self._retrying(lambda: self._json("GET", "/v1/info"))
        if isinstance(data, dict) and data.get("protocol") != PROTOCOL_VERSION:
            raise _proto_mismatch(data.get("protocol"), str(data.get("version", "")))
        return self._decode(WorkerInfo.from_dict, data)

    def set_model(self, name: str, timeout: float = 300.0) -> ModelInfo:
        """Switch the worker's model (waits until it has loaded, behind any queued jobs)."""
        data = self._retrying(lambda: self._json("POST", "/v1/model", {"model": name}, timeout=timeout))
        return self._decode(ModelInfo.from_dict, data)

    def _post_framed(self, path: str, request: JobRequest, timeout: float | None = None) -> Any:
        parts = request.body_parts()
        t = self.timeout if timeout is None else timeout
        conn, resp = self._send("POST", path, parts, JOB_CONTENT_TYPE, timeout=t)
        return self._answer(conn, resp, t)

    def analyze(self, request: JobRequest, timeout: float | None = None) -> AnalyzeResult:
        """Router weights and the top expert for the image, without restoring it."""
        data = self._retrying(lambda: self._post_framed("/v1/analyze", request, timeout))
        return self._decode(AnalyzeResult.from_dict, data)

    def submit(self, request: JobRequest) -> str:
        """Queue a restore; returns the job id."""
        data = self._retrying(lambda: self._post_framed("/v1/jobs", request))
        return self._decode(SubmitReply.from_dict, data).id

    def status(self, job_id: str, wait: float = 0.0, after: int = -1) -> JobStatus:
        """The job's state. With `wait` > 0, held until it changes past revision `after` (long poll)."""
        path = f"/v1/jobs/{quote(job_id, safe='')}"
        if wait > 0:
            path += f"?wait={wait:.3f}&after={after}"
        data = self._json("GET", path, timeout=self.timeout + wait)
        return self._decode(JobStatus.from_dict, data)

    def cancel(self, job_id: str) -> JobStatus:
        """Ask the job to stop (idempotent); a running job stops between tiles."""
        data = self._json("POST", f"/v1/jobs/{quote(job_id, safe='')}/cancel")
        return self._decode(JobStatus.from_dict, data)

    def delete(self, job_id: str) -> None:
        """Forget the job and free its result on the worker."""
        self._json("DELETE", f"/v1/jobs/{quote(job_id, safe='')}")

    def result(self, job_id: str) -> JobResult:
        t = self.timeout
        conn, resp = self._send("GET", f"/v1/jobs/{quote(job_id, safe='')}/result", timeout=t)
        if resp.status != 200:
            self._answer(conn, resp, t)  # raises the error
            raise BridgeError(E_BAD_RESPONSE, f"the worker answered HTTP {resp.status} without pixels")
        try:
            total = int(resp.getheader("Content-Length") or -1)
            n = read_prefix_length(self._read_exact(resp, 4, t))
            header = self._decode(ResultHeader.from_dict, decode_json(self._read_exact(resp, n, t), "result"))
            size = header.pixel_bytes
            if total != 4 + n + size:
                raise BridgeError(
                    E_BAD_RESPONSE,
                    f"the result holds {total - 4 - n} pixel bytes, expected {size}",
                    "the worker and this client may come from different versions",
                )
            pixels = self._read_exact(resp, size, t)
        finally:
            conn.close()
        return JobResult(header, pixels)

    def restore(
        self,
        request: JobRequest,
        on_progress: Callable[[JobStatus], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        poll: float = 0.1,
    ) -> JobResult:
        """Submit, follow progress, fetch the result. Raises BridgeError(code="cancelled") on cancel.

        `poll` bounds how long a progress wait is held, i.e. how often `should_cancel` is asked; a
        finished job is noticed at once (long poll), not at the next tick.
        """
        job_id = self.submit(request)
        rev, cancel_sent = -1, False
        try:
            while True:
                if should_cancel is not None and not cancel_sent and should_cancel():
                    self.cancel(job_id)
                    cancel_sent = True
                st = self.status(job_id, wait=max(poll, 0.01), after=rev)
                if st.rev != rev and on_progress is not None:
                    on_progress(st)
                rev = st.rev
                if st.final:
                    break
            if st.state == "done" and not cancel_sent:
                return self.result(job_id)
            if st.state in ("cancelled", "done"):
                raise BridgeError(E_CANCELLED, "the restore was cancelled", "")
            err = st.error
            raise (err.to_exception() if err else BridgeError(E_BAD_RESPONSE, "the job failed without a reason"))
        except BridgeError as exc:
            if exc.code in (E_NOT_RUNNING, E_WORKER_GONE, E_JOB_NOT_FOUND):
                raise BridgeError(
                    E_WORKER_GONE,
                    "the LoRA-IR worker stopped while working on this image (it may have crashed or run out of memory)",
                    f"see {log_file(self._runtime_dir)}; try again, the worker restarts on demand",
                    exc.status,
                ) from None
            raise
        finally:
            with contextlib.suppress(BridgeError):
                self.delete(job_id)


def _reap() -> None:
    for proc in list(_children):
        if proc.poll() is not None:
            _children.remove(proc)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
