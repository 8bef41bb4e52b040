"""Client failures turn into BridgeErrors a user can act on (no worker process needed: fake servers)."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from lorair_desktop.bridge import BridgeError, JobRequest, WorkerClient
from lorair_desktop.bridge.runtime import RuntimeInfo, write_runtime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fake(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    reply: ClassVar[dict[str, tuple[int, Any]]] = {}

    def do_GET(self) -> None:
        status, data = self.reply.get(self.path.split("?")[0], (404, {"detail": "nope"}))
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(replies: dict[str, tuple[int, Any]]) -> ThreadingHTTPServer:
        handler = type("H", (Fake,), {"reply": replies})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_connection_refused_is_worker_not_running() -> None:
    client = WorkerClient("127.0.0.1", free_port(), "t")
    with pytest.raises(BridgeError) as ei:
        client.info()
    assert ei.value.code == "worker_not_running" and "lorair worker" in ei.value.hint


def test_timeout_is_reported() -> None:
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        client = WorkerClient("127.0.0.1", s.getsockname()[1], "t", timeout=0.3)
        with pytest.raises(BridgeError) as ei:
            client.info()
    assert ei.value.code == "timeout" and "did not answer" in ei.value.message


def test_error_shape_and_non_worker_answers(fake: Any) -> None:
    srv = fake(
        {
            "/v1/info": (429, {"error": {"code": "queue_full", "message": "full", "hint": "wait"}}),
            "/v1/health": (200, {"hello": "world"}),
            "/v1/jobs/x": (200, b"<html>not json</html>"),
        }
    )
    client = WorkerClient("127.0.0.1", srv.server_address[1], "t")
    with pytest.raises(BridgeError) as ei:
        client.info()
    assert (ei.value.code, ei.value.message, ei.value.hint, ei.value.status) == ("queue_full", "full", "wait", 429)
    with pytest.raises(BridgeError) as ei:
        client.health()
    assert ei.value.code == "bad_response" and "not a LoRA-IR worker" in ei.value.message
    with pytest.raises(BridgeError) as ei:
        client.status("x")
    assert ei.value.code == "bad_response"
    with pytest.raises(BridgeError) as ei:
        client.result("y")  # 404 without the error shape
    assert ei.value.code == "bad_response" and ei.value.status == 404


def test_protocol_mismatch_on_connect(fake: Any, tmp_path: Path) -> None:
    srv = fake({"/v1/health": (200, {"ok": True, "service": "lorair-worker", "protocol": 99, "pid": os.getpid()})})
    write_runtime(RuntimeInfo(srv.server_address[1], "t", os.getpid(), "9.0", 99), tmp_path / "worker.json")
    with pytest.raises(BridgeError) as ei:
        WorkerClient.connect(autostart=False, runtime_dir=tmp_path)
    assert ei.value.code == "protocol_mismatch" and "protocol 99" in ei.value.message
    assert "same LoRA-IR Desktop version" in ei.value.hint


def test_stale_runtime_file_and_no_autostart(fake: Any, tmp_path: Path) -> None:
    # the file names a live pid but its port answers as another process: treated as absent
    srv = fake({"/v1/health": (200, {"ok": True, "service": "lorair-worker", "protocol": 1, "pid": 1})})
    write_runtime(RuntimeInfo(srv.server_address[1], "t", os.getpid(), "0.1", 1), tmp_path / "worker.json")
    with pytest.raises(BridgeError) as ei:
        WorkerClient.connect(autostart=False, runtime_dir=tmp_path)
    assert ei.value.code == "worker_not_running"
    write_runtime(RuntimeInfo(free_port(), "t", 2**22 + 12345, "0.1", 1), tmp_path / "worker.json")  # dead pid
    with pytest.raises(BridgeError) as ei:
        WorkerClient.connect(autostart=False, runtime_dir=tmp_path)
    assert ei.value.code == "worker_not_running"


def test_start_failures_are_explained(tmp_path: Path) -> None:
    with pytest.raises(BridgeError) as ei:
        WorkerClient.connect(start_command=[str(tmp_path / "no-such-program")], runtime_dir=tmp_path)
    assert ei.value.code == "worker_start_failed" and "LORAIR_WORKER_CMD" in ei.value.hint
    crash = [sys.executable, "-c", "import sys; print('no CUDA here', file=sys.stderr); sys.exit(2)"]
    with pytest.raises(BridgeError) as ei:
        WorkerClient.connect(start_command=crash, runtime_dir=tmp_path, start_timeout=20)
    assert ei.value.code == "worker_start_failed"
    assert "code 2" in ei.value.message and "no CUDA here" in ei.value.message
    assert str(tmp_path / "worker.log") in ei.value.hint


def test_env_start_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from lorair_desktop.bridge import default_start_command

    monkeypatch.delenv("LORAIR_WORKER_CMD", raising=False)
    assert default_start_command() == [sys.executable, "-m", "lorair_desktop.cli", "worker", "--idle-exit", "10"]
    monkeypatch.setenv("LORAIR_WORKER_CMD", "'/opt/my python/bin/python' -m lorair_desktop.cli worker --device cpu")
    assert default_start_command()[0] == "/opt/my python/bin/python"
    assert default_start_command()[-2:] == ["--device", "cpu"]


def test_bad_request_is_refused_before_sending() -> None:
    client = WorkerClient("127.0.0.1", free_port(), "t")  # nothing listens: the check comes first
    with pytest.raises(BridgeError) as ei:
        client.submit(JobRequest(b"\x00" * 5, 2, 2))
    assert ei.value.code == "bad_request"


def test_lost_start_race_waits_for_the_winner(fake: Any, tmp_path: Path) -> None:
    """Two hosts start a worker at once: the loser exits 'already running' and its client waits for
    the winner's runtime file, however slow the winner is to come up."""
    srv = fake({"/v1/health": (200, {"ok": True, "service": "lorair-worker", "protocol": 1, "pid": os.getpid()})})
    loser = [sys.executable, "-c", "import sys; sys.exit(3)"]
    timer = threading.Timer(
        3.5,
        lambda: write_runtime(
            RuntimeInfo(srv.server_address[1], "tok", os.getpid(), "0.1", 1), tmp_path / "worker.json"
        ),
    )
    timer.start()
    try:
        client = WorkerClient.connect(start_command=loser, runtime_dir=tmp_path, start_timeout=20)
    finally:
        timer.cancel()
    assert (client.port, client.token) == (srv.server_address[1], "tok")
