"""Jobs and the scheduler: a bounded FIFO of restores served by one inference thread per device.

Analyses jump the queue (they are fast); model switches wait their turn behind queued restores.
Every state change bumps the job's `rev` and wakes long-polling readers.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..bridge.protocol import (
    E_CANCELLED,
    E_INTERNAL,
    E_JOB_NOT_FOUND,
    E_NOT_DONE,
    E_OUT_OF_MEMORY,
    E_QUEUE_FULL,
    E_RESULT_GONE,
    E_TIMEOUT,
    E_UNAVAILABLE,
    AnalyzeResult,
    BridgeError,
    ErrorInfo,
    JobHeader,
    JobStatus,
    ModelInfo,
    ResultHeader,
)
from ..core import LoraIRError
from ..core.cpu import release_freed_memory
from ..core.errors import Cancelled
from ..core.routing import validate_overrides
from . import pixels
from .config import Limits
from .errors import status_for
from .models import ModelManager

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    id: str
    header: JobHeader
    payload: bytearray | None  # pixels then mask; dropped once the job has run
    submitted: float = field(default_factory=time.monotonic)
    state: str = "queued"
    tile: int = 0
    tiles: int = 0
    done: float = 0.0  # tiles done, fractional within a tile of several passes
    started: float | None = None
    finished: float | None = None
    error: ErrorInfo | None = None
    result_header: dict[str, Any] | None = None
    result_pixels: bytes | None = None
    result_dropped: bool = False
    forget: bool = False  # DELETE arrived while running: drop it when it ends
    rev: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class _Op:
    """A synchronous request served by the inference thread (analyze or model switch)."""

    kind: str  # "analyze" | "switch"
    run: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    abandoned: bool = False


# A job's freed buffers stay with the worker for the next job (faulting hundreds of MB in again costs
# a 1 MP restore ~40 %: 0.51 against 0.37 s) and go back to the OS once it has been idle this long.
RELEASE_AFTER_S = 2.0


class Scheduler:
    def __init__(self, models: ModelManager, limits: Limits) -> None:
        self.models = models
        self.limits = limits
        self.cond = threading.Condition()
        self._queue: deque[Job | _Op] = deque()  # restores and switches, FIFO
        self._urgent: deque[_Op] = deque()  # analyses
        self._jobs: dict[str, Job] = {}
        self._result_bytes = 0
        self.running: Job | None = None
        self._current: Job | _Op | None = None  # whatever the inference thread works on (loads too)
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)
        self.last_active = time.monotonic()
        self._holding = False  # freed image buffers kept for the next job (see _loop)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, model: str) -> None:
        """Start the inference thread; its first task is loading `model`."""
        self._queue.append(_Op("switch", lambda: self.models.load(model)))
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel everything: queued jobs at once, the running one between tiles; then end the thread."""
        shutting = ErrorInfo(
            E_CANCELLED,
            "the job was cancelled because the worker is shutting down",
            "start the worker again and resubmit",
        )
        with self.cond:
            self._stopping = True
            for item in list(self._queue) + list(self._urgent):
                if isinstance(item, Job):
                    self._finish(item, "cancelled", shutting)
                else:
                    item.error = BridgeError(E_UNAVAILABLE, "the worker is shutting down", "", 503)
                    item.done.set()
            self._queue.clear()
            self._urgent.clear()
            if self.running is not None:
                self.running.cancel.set()
            self.cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def busy(self) -> bool:
        with self.cond:
            return self._current is not None or bool(self._queue) or bool(self._urgent)

    def counts(self) -> dict[str, int]:
        with self.cond:
            queued = sum(isinstance(x, Job) for x in self._queue)
            return {
                "queued": queued,
                "capacity": self.limits.queue_size,
                "running": int(self.running is not None),
                "kept": len(self._jobs),
            }

    # ---- requests --------------------------------------------------------------------------

    def _admit(self, nbytes: int) -> None:
        """Refuse work the queue cannot hold (call with self.cond held)."""
        if self._stopping:
            raise BridgeError(E_UNAVAILABLE, "the worker is shutting down", "start it again and resubmit", 503)
        waiting = [x for x in self._queue if isinstance(x, Job)]
        if len(waiting) >= self.limits.queue_size:
            raise BridgeError(
                E_QUEUE_FULL,
                f"the worker's queue is full ({len(waiting)} jobs waiting)",
                "wait for running jobs to finish, or cancel some, then try again",
                429,
            )
        held = sum(len(x.payload or b"") for x in waiting)
        if held + nbytes > self.limits.max_queued_bytes:
            raise BridgeError(
                E_QUEUE_FULL,
                f"the waiting jobs already hold {held >> 20} MiB of pixels",
                "wait for running jobs to finish, then try again",
                429,
            )

    def admit(self, nbytes: int) -> None:
        """Checked before a job's body is read, so a full queue does not cost the upload's memory."""
        with self.cond:
            self._admit(nbytes)

    def submit(self, header: JobHeader, payload: bytearray) -> Job:
        with self.cond:
            self._expire()
            self._admit(len(payload))
            job = Job(secrets.token_hex(12), header, payload)
            self._jobs[job.id] = job
            self._queue.append(job)
            self.cond.notify_all()
            return job

    def _sync(self, kind: str, run: Callable[[], Any], urgent: bool) -> Any:
        op = _Op(kind, run)
        with self.cond:
            if self._stopping:
                raise BridgeError(E_UNAVAILABLE, "the worker is shutting down", "", 503)
            if urgent and len(self._urgent) >= self.limits.pending_analyses:
                raise BridgeError(E_QUEUE_FULL, "too many analyses are waiting", "try again in a moment", 429)
            (self._urgent if urgent else self._queue).append(op)
            self.cond.notify_all()
        if not op.done.wait(self.limits.sync_timeout_s):
            with self.cond:
                op.abandoned = True
            raise BridgeError(
                E_TIMEOUT,
                f"the worker did not get to this {kind} within {self.limits.sync_timeout_s:.0f} s",
                "it is busy; try again later",
                504,
            )
        if op.error is not None:
            raise op.error
        return op.result

    def analyze(self, header: JobHeader, payload: bytearray) -> AnalyzeResult:
        return self._sync("analyze", lambda: self._run_analyze(header, payload), urgent=True)

    def switch(self, name: str) -> ModelInfo:
        def run() -> ModelInfo:
            self.models.load(name)  # a LoraIRError becomes the answer's error (see _run_op)
            return self.models.info()

        return self._sync("switch", run, urgent=False)

    def get(self, job_id: str) -> Job:
        with self.cond:
            job = self._jobs.get(job_id)
            if job is None:
                raise BridgeError(
                    E_JOB_NOT_FOUND,
                    f"no job '{job_id[:64]}' on this worker",
                    "it was deleted, finished more than "
                    f"{self.limits.result_ttl_s:.0f} s ago, or the worker restarted; submit again",
                    404,
                )
            return job

    def status(self, job: Job) -> JobStatus:
        with self.cond:
            now = time.monotonic()
            pos = None
            if job.state == "queued":
                pos = sum(isinstance(x, Job) for x in itertools.islice(self._queue, self._index(job)))
            eta = None
            if job.state == "running" and job.started is not None and job.done > 0:
                eta = (now - job.started) * (job.tiles - job.done) / job.done
            end = job.finished if job.finished is not None else now
            return JobStatus(
                job.id,
                job.state,
                job.done / job.tiles if job.tiles else 0.0,
                job.tile,
                job.tiles,
                pos,
                eta,
                end - job.submitted,
                job.rev,
                job.error,
            )

    def _index(self, job: Job) -> int:
        try:
            return self._queue.index(job)
        except ValueError:
            return 0

    def wait(self, job: Job, after: int, timeout: float) -> JobStatus:
        """Long poll: returns when job.rev > after, or after `timeout` seconds. Not woken by a
        shutdown as such: the job's own cancellation follows and is what the client must see."""
        with self.cond:
            self.cond.wait_for(lambda: job.rev > after, timeout=max(0.0, timeout))
        return self.status(job)

    def cancel(self, job_id: str) -> JobStatus:
        job = self.get(job_id)
        with self.cond:
            self._stop(job, "the job was cancelled")
        return self.status(job)

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        with self.cond:
            self._stop(job, "the job was deleted")
            if job.state == "running":
                job.forget = True
            else:
                self._drop(job)

    def result(self, job_id: str) -> tuple[dict[str, Any], bytes]:
        job = self.get(job_id)
        with self.cond:
            if job.state in ("queued", "running"):
                raise BridgeError(
                    E_NOT_DONE,
                    f"job '{job.id}' is still {job.state}",
                    "poll GET /v1/jobs/{id} until its state is done",
                    409,
                )
            if job.state != "done":
                err = job.error or ErrorInfo(E_INTERNAL, "the job failed")
                raise BridgeError(err.code, err.message, err.hint, status_for(err.code))
            if job.result_pixels is None or job.result_header is None:
                raise BridgeError(
                    E_RESULT_GONE,
                    f"the result of job '{job.id}' was dropped to free memory",
                    "fetch results soon after they finish, or submit again",
                    410,
                )
            return job.result_header, job.result_pixels

    # ---- bookkeeping (call with self.cond held) --------------------------------------------

    def _stop(self, job: Job, why: str) -> None:
        """A queued job ends as cancelled now; a running one is asked to stop (between tiles)."""
        if job.state == "queued":
            self._queue.remove(job)
            self._finish(job, "cancelled", ErrorInfo(E_CANCELLED, why, ""))
        elif job.state == "running":
            job.cancel.set()

    def _finish(self, job: Job, state: str, error: ErrorInfo | None = None) -> None:
        job.state, job.error, job.finished = state, error, time.monotonic()
        job.payload = None
        job.rev += 1
        if job.forget:
            self._drop(job)
        self.cond.notify_all()

    def _drop(self, job: Job) -> None:
        if job.result_pixels is not None:
            self._result_bytes -= len(job.result_pixels)
            job.result_pixels = None
        self._jobs.pop(job.id, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for job in list(self._jobs.values()):
            if job.finished is not None and now - job.finished > self.limits.result_ttl_s:
                self._drop(job)
        if self._result_bytes > self.limits.max_result_bytes:
            done = sorted(
                (j for j in self._jobs.values() if j.result_pixels is not None), key=lambda j: j.finished or 0.0
            )
            for job in done:
                if self._result_bytes <= self.limits.max_result_bytes:
                    break
                self._result_bytes -= len(job.result_pixels or b"")
                job.result_pixels, job.result_dropped = None, True

    # ---- the inference thread --------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self._stopping and not self._urgent and not self._queue:
                    self.cond.wait(timeout=min(1.0, RELEASE_AFTER_S))
                    self._expire()
                    if self._holding and time.monotonic() - self.last_active >= RELEASE_AFTER_S:
                        release_freed_memory()
                        self._holding = False
                if self._stopping:
                    return
                item = self._urgent.popleft() if self._urgent else self._queue.popleft()
                self._current = item
                if isinstance(item, Job):
                    item.state, item.started = "running", time.monotonic()
                    item.rev += 1
                    self.running = item
                    self.cond.notify_all()
            try:
                if isinstance(item, Job):
                    self._run_job(item)
                elif not item.abandoned:
                    self._run_op(item)
            finally:
                with self.cond:
                    self.running = self._current = None
                    self.last_active = time.monotonic()
                    self._expire()
                    self._holding = self._holding or isinstance(item, Job)
                    self.cond.notify_all()

    def _run_op(self, op: _Op) -> None:
        try:
            op.result = op.run()
        except LoraIRError as exc:
            op.error = BridgeError(exc.code, exc.message, exc.hint, status_for(exc.code))
        except BridgeError as exc:
            op.error = exc
        except Exception as exc:
            log.exception("%s failed", op.kind)
            op.error = _internal(exc)
        finally:
            op.done.set()

    def _decode(self, header: JobHeader, payload: bytearray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        view = memoryview(payload)
        arr = pixels.as_array(view[: header.pixel_bytes], header.width, header.height, header.order, header.sample)
        mask = None
        if header.has_mask:
            mask = np.frombuffer(view[header.pixel_bytes :], np.uint8).reshape(header.height, header.width)
        return arr, pixels.to_float_rgb(arr, header.order, header.sample), mask

    def _run_analyze(self, header: JobHeader, payload: bytearray) -> AnalyzeResult:
        restorer = self.models.require(header.model)
        t0 = time.perf_counter()
        _, rgb, _ = self._decode(header, payload)
        t1 = time.perf_counter()
        a = restorer.analyze(pixels.for_model(rgb, header.transfer)[0])
        t2 = time.perf_counter()
        return AnalyzeResult(
            self.models.name,
            tuple(restorer.experts),
            a.weights_dict(),
            a.top_expert,
            {"decode_s": t1 - t0, "route_s": t2 - t1},
        )

    def _run_job(self, job: Job) -> None:
        h = job.header
        try:
            restorer = self.models.require(h.model)
            overrides = h.experts.overrides()
            if overrides is not None:
                validate_overrides(overrides, restorer.experts)
            assert job.payload is not None
            t0 = time.perf_counter()
            arr, rgb, mask = self._decode(h, job.payload)
            t1 = time.perf_counter()

            def progress(done: float, total: int) -> None:
                with self.cond:
                    job.done, job.tile, job.tiles = done, int(done), total
                    job.rev += 1
                    self.cond.notify_all()

            kwargs: dict[str, Any] = {}
            if h.tile is not None:
                kwargs["tile"] = h.tile
            if h.overlap is not None:
                kwargs["overlap"] = h.overlap
            model_in, spill = pixels.for_model(rgb, h.transfer)
            res = restorer.restore(
                model_in, overrides, h.experts.keep_router, progress=progress, cancel=job.cancel.is_set,
                ensemble=h.ensemble, **kwargs
            )
            t2 = time.perf_counter()
            restored = pixels.from_model(res.image, h.transfer, spill)
            out = pixels.from_float_rgb(restored, arr, h.order, h.sample, mask, rgb)
            t3 = time.perf_counter()
            timings = {
                "queue_s": (job.started or 0.0) - job.submitted,
                "decode_s": t1 - t0,
                **res.timings,
                "encode_s": t3 - t2,
            }
            header = ResultHeader(
                h.width,
                h.height,
                h.order,
                h.sample,
                res.router_weights,
                res.applied_weights,
                timings,
                res.tiles,
                res.tile_size,
                str(restorer.device),
                res.dtype,
                self.models.name,
                res.ensemble,
            )
            with self.cond:
                job.result_header, job.result_pixels = header.to_dict(), out
                self._result_bytes += len(out)
                self._finish(job, "done")
        except Cancelled:
            why = "the worker is shutting down" if self._stopping else "it was asked to"
            self._end(job, "cancelled", ErrorInfo(E_CANCELLED, f"the job was cancelled ({why})", ""))
        except LoraIRError as exc:
            self._end(job, "failed", ErrorInfo(exc.code, exc.message, exc.hint))
        except (MemoryError, torch.OutOfMemoryError) as exc:
            log.warning("job %s ran out of memory: %s", job.id, exc)
            self.models._free()
            self._end(
                job,
                "failed",
                ErrorInfo(
                    E_OUT_OF_MEMORY,
                    "the device ran out of memory for this image",
                    "restore a smaller region, or set a smaller tile size",
                ),
            )
        except Exception as exc:
            log.exception("job %s failed", job.id)
            err = _internal(exc)
            self._end(job, "failed", ErrorInfo(err.code, err.message, err.hint))

    def _end(self, job: Job, state: str, error: ErrorInfo) -> None:
        with self.cond:
            self._finish(job, state, error)
        log.info("job %s %s: %s", job.id, state, error.message)


def _internal(exc: BaseException) -> BridgeError:
    return BridgeError(
        E_INTERNAL,
        f"the worker failed unexpectedly ({type(exc).__name__}: {exc})"[:400],
        "see the worker's log; please report it with the log attached",
        500,
    )
