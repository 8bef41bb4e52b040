"""A real worker process (small seeded model, CPU) and helpers to talk to it raw or through the client."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lorair_desktop.bridge import JobRequest, WorkerClient
from lorair_desktop.bridge.protocol import frame_prefix
from lorair_desktop.bridge.runtime import read_runtime, runtime_file

START_TIMEOUT = 90.0
SMALL_H, SMALL_W = 24, 40  # the shape most tests use: one shape means one warm-up per process


def worker_command(model: Path, *extra: str) -> list[str]:
    # One thread: the tests' images are tiny, and on a shared 2-core box thread hand-offs cost more
    # than they gain (measured: 0.06 s vs 0.9 s per 24x40 restore under load).
    # --idle-exit: a safety net, so a worker outlives a killed test run by minutes, not forever.
    return [
        sys.executable,
        "-m",
        "lorair_desktop.worker",
        "--model",
        str(model),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--log-level",
        "DEBUG",
        "--idle-exit",
        "3",
        *extra,
    ]


class WorkerProc:
    """A worker subprocess in its own runtime folder; always killed at teardown."""

    def __init__(self, model: Path, runtime: Path, *extra: str, prefix: tuple[str, ...] = ()) -> None:
        self.runtime = runtime
        self.log_path = runtime.parent / f"{runtime.name}.log"
        env = dict(os.environ, LORAIR_RUNTIME_DIR=str(runtime), PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*prefix, *worker_command(model, *extra)], env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> WorkerClient:
        """Until the runtime file is there and the model is loaded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker exited ({self.proc.returncode}):\n{self.log()}"
            info = read_runtime(runtime_file(self.runtime))
            if info is not None and info.pid == self.pid:
                client = WorkerClient(info.host, info.port, info.token, timeout=30.0, runtime_dir=self.runtime)
                state = client.info().model.state
                if state == "ready":
                    return client
                assert state == "loading", client.info()
            time.sleep(0.1)
        raise AssertionError(f"worker not ready in {timeout} s:\n{self.log()}")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture
def spawn(small_model_path: Path, tmp_path: Path) -> Iterator[Any]:
    """Start extra workers for one test; all are stopped afterwards."""
    procs: list[WorkerProc] = []

    def start(*extra: str, name: str = "rt", prefix: tuple[str, ...] = ()) -> WorkerProc:
        w = WorkerProc(small_model_path, tmp_path / f"{name}{len(procs)}", *extra, prefix=prefix)
        procs.append(w)
        return w

    yield start
    for w in procs:
        w.stop()


@pytest.fixture(scope="session")
def worker_proc(small_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProc]:
    w = WorkerProc(small_model_path, tmp_path_factory.mktemp("shared") / "runtime")
    try:
        client = w.wait_ready()
        # Warm-up: the first inference pays one-off costs (allocator, kernels) that tests should not time.
        client.restore(JobRequest(bytes(SMALL_H * SMALL_W * 4), SMALL_W, SMALL_H))
        yield w
    finally:
        code = w.stop()
        assert code == 0, f"worker exited with {code}:\n{w.log()}"


@pytest.fixture
def client(worker_proc: WorkerProc) -> WorkerClient:
    info = read_runtime(runtime_file(worker_proc.runtime))
    assert info is not None
    return WorkerClient(info.host, info.port, info.token, timeout=30.0, runtime_dir=worker_proc.runtime)


@pytest.fixture(scope="session")
def restorer(small_model_path: Path) -> Any:
    from lorair_desktop.core import Restorer, load_model

    r = Restorer(load_model(small_model_path), device="cpu")
    with one_thread():
        r.restore(np.zeros((SMALL_H, SMALL_W, 3), np.float32))  # warm-up, as for the worker
    return r


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run in-process references single-threaded like the test worker, without changing the session."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def raw(
    client: WorkerClient,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    token: str | None = "default",
    host: str | None = "default",
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, Any, bytes]:
    """One request with full control of the headers -> (status, parsed JSON or None, raw body)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection(client.host, client.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", f"127.0.0.1:{client.port}" if host == "default" else host)
        if token is not None:
            conn.putheader("Authorization", f"Bearer {client.token if token == 'default' else token}")
        hdrs = {"Content-Length": str(len(body))} if body or method == "POST" else {}
        hdrs.update(headers or {})
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        data = resp.read()
        try:
            parsed = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            parsed = None
        return resp.status, parsed, data
    finally:
        if own:
            conn.close()


def framed(header: dict[str, Any], payload: bytes) -> bytes:
    return frame_prefix(header) + payload


def job_header(w: int, h: int, order: str = "RGBA", sample: str = "u8", **kw: Any) -> dict[str, Any]:
    return {"width": w, "height": h, "order": order, "sample": sample, **kw}


def wait_state(client: WorkerClient, job_id: str, states: set[str], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    rev = -1
    while time.monotonic() < deadline:
        st = client.status(job_id, wait=0.5, after=rev)
        rev = st.rev
        if st.state in states:
            return st
    raise AssertionError(f"job {job_id} never reached {states}")


@contextlib.contextmanager
def inproc_worker(cfg: Any) -> Iterator[WorkerClient]:
    """serve() on a thread of the test process: cheap (torch is already imported), stopped by an event."""
    import threading

    from lorair_desktop.worker.main import serve

    assert cfg.runtime_dir is not None
    stop = threading.Event()
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(serve(cfg, stop)), name="inproc-worker")
    t.start()
    try:
        path = runtime_file(cfg.runtime_dir)
        deadline = time.monotonic() + 30
        while (info := read_runtime(path)) is None:
            assert t.is_alive() and time.monotonic() < deadline, "in-process worker did not start"
            time.sleep(0.05)
        client = WorkerClient(info.host, info.port, info.token, timeout=30.0, runtime_dir=cfg.runtime_dir)
        while client.info().model.state == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        yield client
    finally:
        stop.set()
        t.join(60)
    assert codes == [0] and not runtime_file(cfg.runtime_dir).exists()
