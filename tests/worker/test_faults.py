"""Faults against real worker processes: cancel mid-job, clients that vanish mid-upload or
mid-download, a full queue, SIGTERM and SIGKILL mid-job, restart on demand, idle exit, one worker
per runtime folder."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from shutil import which as shutil_which
from typing import Any

import numpy as np
import pytest

from lorair_desktop.bridge import BridgeError, JobRequest, JobStatus, WorkerClient
from lorair_desktop.bridge.protocol import frame_prefix
from lorair_desktop.bridge.runtime import read_runtime, runtime_file

from .conftest import SMALL_H, SMALL_W, WorkerProc, job_header, wait_state

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals")

# Thousands of 16-px tiles: seconds of work that stops within one tile when cancelled.
BIG = 768
BIG_JOB = {"tile": 16, "overlap": 2}


def big_request(seed: int = 0) -> JobRequest:
    img = np.random.default_rng(seed).integers(0, 256, (BIG, BIG, 4), dtype=np.uint8)
    return JobRequest(img.tobytes(), BIG, BIG, "RGBA", "u8", **BIG_JOB)


def small_request(seed: int = 1) -> JobRequest:
    img = np.random.default_rng(seed).integers(0, 256, (SMALL_H, SMALL_W, 4), dtype=np.uint8)
    return JobRequest(img.tobytes(), SMALL_W, SMALL_H)


def wait_tiles(client: WorkerClient, job_id: str, n: int = 2) -> JobStatus:
    deadline = time.monotonic() + 60
    rev = -1
    while time.monotonic() < deadline:
        st = client.status(job_id, wait=1.0, after=rev)
        rev = st.rev
        if st.state == "running" and st.tile >= n:
            return st
        assert st.state in ("queued", "running"), st
    raise AssertionError("the job never got going")


def test_cancel_mid_job_and_queued_job(client: WorkerClient) -> None:
    running = client.submit(big_request())
    queued = client.submit(small_request())
    st = client.status(queued)
    assert st.state == "queued" and st.queue_position == 0
    first = wait_tiles(client, running)
    assert first.tiles > 1000 and first.eta_s is not None and 0 < first.progress < 1

    st = client.cancel(queued)  # a queued job is cancelled at once
    assert st.state == "cancelled"
    client.cancel(running)
    st = wait_state(client, running, {"cancelled", "done", "failed"})
    assert st.state == "cancelled" and st.tile < st.tiles, st
    assert st.error is not None and st.error.code == "cancelled"
    again = client.cancel(running)  # idempotent
    assert again.state == "cancelled" and again.tile == st.tile
    with pytest.raises(BridgeError) as ei:
        client.result(running)
    assert ei.value.code == "cancelled" and ei.value.status == 409
    # the worker goes on serving
    assert client.restore(small_request()).header.tiles == 1


def test_restore_honours_should_cancel(client: WorkerClient) -> None:
    kept = client.info().queue["kept"]
    seen: list[JobStatus] = []
    with pytest.raises(BridgeError) as ei:
        client.restore(big_request(2), on_progress=seen.append, should_cancel=lambda: bool(seen) and seen[-1].tile >= 1)
    assert ei.value.code == "cancelled"
    assert seen[-1].state == "cancelled" and seen[-1].tile < seen[-1].tiles
    assert client.info().queue["kept"] == kept  # restore() removed its job


UPLOADER = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", {port}))
head = ("POST /v1/jobs HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nAuthorization: Bearer {token}\\r\\n"
        "Content-Type: application/x-lorair-job\\r\\nContent-Length: {length}\\r\\n\\r\\n").encode()
s.sendall(head + bytes.fromhex("{prefix}") + bytes({half}))
print("sent", flush=True)
time.sleep(60)
"""


def test_client_killed_mid_upload(client: WorkerClient) -> None:
    kept = client.info().queue["kept"]
    prefix = frame_prefix(job_header(256, 256))
    length = len(prefix) + 256 * 256 * 4
    code = UPLOADER.format(port=client.port, token=client.token, length=length, prefix=prefix.hex(), half=256 * 256 * 2)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "sent"
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    time.sleep(0.2)
    info = client.info()
    assert info.queue["kept"] == kept and info.queue["queued"] == 0  # no half job was created
    assert client.restore(small_request()).header.width == SMALL_W


def test_client_closes_mid_upload_and_mid_download(client: WorkerClient) -> None:
    # mid-upload: declared 1 MB, sent 10 bytes, closed
    with socket.create_connection((client.host, client.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
            + client.token.encode()
            + b"\r\nContent-Length: 1000000\r\n\r\n"
            + b"\x00" * 10
        )
    # mid-download: a ~1.2 MB f32 result, read 100 bytes, hang up
    img = np.random.default_rng(5).random((160, 480, 4), dtype=np.float32)
    job = client.submit(JobRequest(img.tobytes(), 480, 160, "RGBA", "f32"))
    wait_state(client, job, {"done"})
    with socket.create_connection((client.host, client.port), timeout=10) as s:
        s.sendall(
            f"GET /v1/jobs/{job}/result HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: Bearer {client.token}\r\n\r\n".encode()
        )
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    full = client.result(job)  # the result is still there, whole
    assert len(full.pixels) == img.nbytes
    out = np.frombuffer(full.pixels, np.float32).reshape(img.shape)
    assert np.array_equal(out[..., 3], img[..., 3])
    client.delete(job)
    with pytest.raises(BridgeError) as ei:
        client.status(job)
    assert ei.value.code == "job_not_found"
    assert client.health()["ok"]


def test_one_worker_per_runtime_folder(worker_proc: WorkerProc) -> None:
    from lorair_desktop.worker.config import WorkerConfig
    from lorair_desktop.worker.main import EXIT_ALREADY_RUNNING, serve

    before = read_runtime(runtime_file(worker_proc.runtime))
    assert serve(WorkerConfig(runtime_dir=worker_proc.runtime)) == EXIT_ALREADY_RUNNING
    assert read_runtime(runtime_file(worker_proc.runtime)) == before  # untouched


def test_queue_full_then_sigterm_cancels_and_cleans_up(spawn: Any) -> None:
    w: WorkerProc = spawn("--queue-size", "1")
    client = w.wait_ready()
    running = client.submit(big_request(3))
    wait_tiles(client, running, 1)
    queued = client.submit(small_request())
    with pytest.raises(BridgeError) as ei:
        client.submit(small_request())
    assert ei.value.code == "queue_full" and ei.value.status == 429 and ei.value.hint

    final: list[Any] = []

    def follow() -> None:  # a host long-polling the running job while the worker is told to stop
        try:
            final.append(wait_state(client, running, {"cancelled", "done", "failed"}))
        except BaseException as exc:
            final.append(exc)

    t = threading.Thread(target=follow)
    t.start()
    time.sleep(0.3)
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0
    t.join(30)
    st = final[0]
    assert isinstance(st, JobStatus), st  # the cancellation reached the client before the port closed
    assert st.state == "cancelled" and "shutting down" in st.error.message  # type: ignore[union-attr]
    assert not runtime_file(w.runtime).exists()
    log = w.log()
    assert "shutting down" in log and "stopped" in log and "Traceback" not in log
    with pytest.raises(BridgeError) as ei:
        client.status(queued)
    assert ei.value.code == "worker_not_running"


@pytest.mark.skipif(not hasattr(signal, "SIGHUP") or not shutil_which("nohup"), reason="needs SIGHUP and nohup")
def test_a_hang_up_stops_the_worker_unless_started_under_nohup(spawn: Any) -> None:
    """A closed terminal stops a worker started from it cleanly; `nohup lorair worker` keeps running."""
    hung: WorkerProc = spawn()
    kept: WorkerProc = spawn(prefix=("nohup",))
    hung.wait_ready()
    client = kept.wait_ready()
    for w in (hung, kept):
        w.proc.send_signal(signal.SIGHUP)
    assert hung.proc.wait(30) == 0
    assert "SIGHUP: stopping" in hung.log() and not runtime_file(hung.runtime).exists()
    time.sleep(1.0)
    assert kept.proc.poll() is None and client.info().model.state == "ready"


def test_an_idle_worker_gives_a_big_job_s_memory_back(spawn: Any) -> None:
    """Freed buffers stay for the next job, and go back to the OS once the worker has been idle for
    RELEASE_AFTER_S (without mmap for big tensors nothing else would give them back)."""
    import psutil

    from lorair_desktop.worker.jobs import RELEASE_AFTER_S

    w: WorkerProc = spawn()
    client = w.wait_ready()
    proc = psutil.Process(w.pid)
    idle = proc.memory_info().rss
    side = 1500  # float copies of a 2.25 MP image and the network's tiles: some hundreds of MB
    img = np.random.default_rng(0).integers(0, 256, (side, side, 4), dtype=np.uint8)
    client.restore(JobRequest(img.tobytes(), side, side))
    after_job = proc.memory_info().rss
    assert after_job - idle > 100 * 2**20, (idle, after_job)  # kept for a next job
    deadline = time.monotonic() + RELEASE_AFTER_S + 10
    while proc.memory_info().rss - idle > (after_job - idle) / 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.memory_info().rss - idle <= (after_job - idle) / 2, (idle, after_job, proc.memory_info().rss)


def test_sigkill_mid_job_then_restart_on_demand_then_idle_exit(
    small_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rdir = tmp_path / "rt"
    # Through the `lorair` command, as hosts start it; idle exit after 0.05 min = 3 s.
    cmd = (
        f"{shlex.quote(sys.executable)} -m lorair_desktop.cli worker --model {shlex.quote(str(small_model_path))} "
        "--device cpu --threads 1 "
        "--idle-exit 0.05"
    )
    monkeypatch.setenv("LORAIR_WORKER_CMD", cmd)
    pids: list[int] = []
    try:
        client = WorkerClient.connect(runtime_dir=rdir, start_timeout=90)
        assert client.pid is not None
        pids.append(client.pid)
        assert (rdir / "worker.log").exists()

        outcome: list[Any] = []
        progress: list[JobStatus] = []

        def host() -> None:
            try:
                outcome.append(client.restore(big_request(4), on_progress=progress.append))
            except BridgeError as exc:
                outcome.append(exc)

        t = threading.Thread(target=host)
        t.start()
        deadline = time.monotonic() + 60
        while not (progress and progress[-1].tile >= 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(client.pid, signal.SIGKILL)
        t.join(30)
        err = outcome[0]
        assert isinstance(err, BridgeError) and err.code == "worker_gone", err
        assert "stopped while working" in err.message and "worker.log" in err.hint

        again = WorkerClient.connect(runtime_dir=rdir, start_timeout=90)  # stale file -> a fresh worker
        assert again.pid not in (None, client.pid)
        pids.append(again.pid)  # type: ignore[arg-type]
        assert again.restore(small_request()).header.width == SMALL_W

        deadline = time.monotonic() + 30  # now idle: it leaves by itself and cleans up
        while runtime_file(rdir).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not runtime_file(rdir).exists()
        with pytest.raises(BridgeError) as ei:
            WorkerClient.connect(runtime_dir=rdir, autostart=False)
        assert ei.value.code == "worker_not_running"
        assert "idle for" in (rdir / "worker.log").read_text()
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
