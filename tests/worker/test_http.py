"""Security and bad input against a real worker: every refusal has the error shape and a truthful
status, keep-alive survives refusals, and the worker keeps serving."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import stat
import struct
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lorair_desktop.bridge import BridgeError, JobRequest, WorkerClient
from lorair_desktop.bridge.runtime import runtime_file
from lorair_desktop.worker.config import Limits, WorkerConfig

from .conftest import WorkerProc, framed, inproc_worker, job_header, raw

JOB = {"Content-Type": "application/x-lorair-job"}


def assert_error(status: int, data: object, want_status: int, want_code: str) -> None:
    assert status == want_status, data
    assert isinstance(data, dict) and set(data) == {"error"}, data
    err = data["error"]
    assert set(err) == {"code", "message", "hint"} and err["code"] == want_code, err
    assert err["message"] and "Traceback" not in err["message"]


def still_serving(client: WorkerClient) -> None:
    assert client.health()["ok"] is True
    assert client.info().model.state == "ready"


# ---- auth and origin --------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_runtime_file_is_private(worker_proc: WorkerProc) -> None:
    path = runtime_file(worker_proc.runtime)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_health_needs_no_token_but_nothing_else_answers_without(client: WorkerClient) -> None:
    status, data, _ = raw(client, "GET", "/v1/health", token=None)
    assert status == 200 and data["ok"] is True and data["protocol"] == 1 and "token" not in str(data)
    for method, path in [
        ("GET", "/v1/info"),
        ("GET", "/v1/jobs/abc"),
        ("POST", "/v1/jobs"),
        ("POST", "/v1/analyze"),
        ("POST", "/v1/model"),
        ("GET", "/v1/jobs/abc/result"),
    ]:
        status, data, _ = raw(client, method, path, token=None)
        assert_error(status, data, 401, "unauthorized")


@pytest.mark.parametrize("token", ["wrong", "", "Bearer", "x" * 200])
def test_wrong_token_refused(client: WorkerClient, token: str) -> None:
    status, data, _ = raw(client, "GET", "/v1/info", token=token)
    assert_error(status, data, 401, "unauthorized")
    status, data, _ = raw(client, "GET", "/v1/info", token=None, headers={"Authorization": f"Basic {token}"})
    assert_error(status, data, 401, "unauthorized")


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.nip.io", "192.168.1.2:8080", ""])
def test_foreign_host_refused_even_with_token(client: WorkerClient, host: str) -> None:
    status, data, _ = raw(client, "GET", "/v1/info", host=host)
    assert_error(status, data, 403, "forbidden")
    status, data, _ = raw(client, "GET", "/v1/health", host=host, token=None)  # DNS rebinding probe
    assert_error(status, data, 403, "forbidden")


def test_missing_host_refused(client: WorkerClient) -> None:
    status, data, _ = raw(client, "GET", "/v1/info", host=None)
    assert_error(status, data, 403, "forbidden")


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1234", "127.0.0.1", "[::1]:5"])
def test_loopback_hosts_accepted(client: WorkerClient, host: str) -> None:
    assert raw(client, "GET", "/v1/info", host=host)[0] == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_browser_requests_refused(client: WorkerClient, headers: dict[str, str]) -> None:
    status, data, _ = raw(client, "GET", "/v1/info", headers=headers)
    assert_error(status, data, 403, "forbidden")
    body = framed(job_header(2, 2), bytes(16))
    status, data, _ = raw(client, "POST", "/v1/jobs", body, headers={**JOB, **headers})
    assert_error(status, data, 403, "forbidden")


def test_no_cors(client: WorkerClient) -> None:
    conn = http.client.HTTPConnection(client.host, client.port, timeout=10)
    conn.request(
        "OPTIONS", "/v1/jobs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 403
    assert not [h for h in resp.getheaders() if h[0].lower().startswith("access-control")]
    conn.close()


# ---- bad input --------------------------------------------------------------------------------


def submit_raw(client: WorkerClient, body: bytes, **kw: object) -> tuple[int, object]:
    status, data, _ = raw(client, "POST", "/v1/jobs", body, headers=JOB, **kw)  # type: ignore[arg-type]
    return status, data


BAD_BODIES = [
    ("malformed JSON", struct.pack(">I", 5) + b"{nope" + bytes(16), 400, "bad_request"),
    ("JSON not an object", framed([1, 2], b""), 400, "bad_request"),  # type: ignore[arg-type]
    ("JSON length past the body", struct.pack(">I", 1000) + b"{}", 400, "bad_request"),
    ("JSON length zero", struct.pack(">I", 0), 400, "bad_request"),
    ("body shorter than 4 bytes", b"\x00\x00", 400, "bad_request"),
    ("body one byte short", framed(job_header(2, 2), bytes(15)), 400, "bad_request"),
    ("body one byte long", framed(job_header(2, 2), bytes(17)), 400, "bad_request"),
    ("mask missing", framed(job_header(2, 2, has_mask=True), bytes(16)), 400, "bad_request"),
    ("zero width", framed(job_header(0, 2), b""), 400, "bad_request"),
    ("negative height", framed(job_header(2, -2), b""), 400, "bad_request"),
    ("huge dimensions", framed(job_header(100000, 100000), b""), 413, "image_too_large"),
    ("unknown order", framed(job_header(2, 2, "ARGB"), bytes(16)), 400, "bad_request"),
    ("unknown sample", framed(job_header(2, 2, "RGBA", "f16"), bytes(8)), 400, "bad_request"),
    ("unknown key", framed({**job_header(2, 2), "gamma": 2.2}, bytes(16)), 400, "bad_request"),
    (
        "unknown expert",
        framed(job_header(2, 2, experts={"mode": "manual", "weights": {"sharpen": 1}}), bytes(16)),
        422,
        "bad_experts",
    ),
    (
        "expert weight too big",
        framed(job_header(2, 2, experts={"mode": "manual", "weights": {"noise": 9}}), bytes(16)),
        422,
        "bad_experts",
    ),
    (
        "NaN pixels",
        framed(job_header(1, 1, "RGB", "f32"), np.array([0, np.nan, 0], "<f4").tobytes()),
        422,
        "bad_pixels",
    ),
    (
        "inf pixels",
        framed(job_header(1, 1, "RGB", "f32"), np.array([0, 0, -np.inf], "<f4").tobytes()),
        422,
        "bad_pixels",
    ),
    ("non-UTF-8 JSON", struct.pack(">I", 2) + b"\xff\xfe", 400, "bad_request"),
    ("model not a string", framed(job_header(2, 2, model=42), bytes(16)), 400, "bad_request"),
]


@pytest.mark.parametrize(("why", "body", "status", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_job_bodies(client: WorkerClient, why: str, body: bytes, status: int, code: str) -> None:
    got, data = submit_raw(client, body)
    assert_error(got, data, status, code)
    assert client.info().queue["queued"] == 0
    # the same body to analyze is refused the same way
    got, data, _ = raw(client, "POST", "/v1/analyze", body, headers=JOB)
    assert_error(got, data, status, code)


def test_length_mismatch_message_names_the_numbers(client: WorkerClient) -> None:
    status, data = submit_raw(client, framed(job_header(3, 2, "BGRA", "u16"), bytes(47)))
    assert status == 400
    msg = data["error"]["message"]  # type: ignore[index]
    assert "48 pixels" in msg and "0 mask" in msg


def test_refusals_keep_the_connection_usable(client: WorkerClient) -> None:
    conn = http.client.HTTPConnection(client.host, client.port, timeout=10)
    try:
        assert raw(client, "POST", "/v1/jobs", framed(job_header(2, 2), bytes(15)), JOB, conn=conn)[0] == 400
        assert (
            raw(client, "POST", "/v1/jobs", framed(job_header(2, 2), bytes(16)), JOB, token="bad", conn=conn)[0] == 401
        )
        assert raw(client, "GET", "/v1/info", b"unexpected body", conn=conn)[0] == 200
        assert raw(client, "GET", "/v1/nowhere", conn=conn)[0] == 404
        assert raw(client, "GET", "/v1/info", conn=conn)[0] == 200
    finally:
        conn.close()


def test_http_level_errors(client: WorkerClient) -> None:
    assert_error(*raw(client, "GET", "/v1/nowhere")[:2], 404, "not_found")
    assert_error(*raw(client, "PUT", "/v1/jobs")[:2], 405, "method_not_allowed")
    assert_error(*raw(client, "DELETE", "/v1/info")[:2], 405, "method_not_allowed")
    assert_error(*raw(client, "POST", "/v1/jobs", headers={"Content-Length": "abc"})[:2], 400, "bad_request")
    assert_error(*raw(client, "POST", "/v1/jobs", headers={"Content-Length": str(1 << 40)})[:2], 413, "body_too_large")
    assert_error(*raw(client, "GET", "/v1/info", headers={"X-LoRAIR-Protocol": "99"})[:2], 400, "protocol_mismatch")
    assert_error(*raw(client, "GET", "/v1/jobs/abc?wait=nan")[:2], 404, "job_not_found")
    # chunked upload: no Content-Length
    conn = http.client.HTTPConnection(client.host, client.port, timeout=10)
    conn.request(
        "POST",
        "/v1/jobs",
        body=iter([b"abc"]),
        headers={"Authorization": f"Bearer {client.token}", "Transfer-Encoding": "chunked"},
    )
    resp = conn.getresponse()
    assert resp.status == 411
    conn.close()


def test_malformed_http_gets_the_error_shape(client: WorkerClient) -> None:
    for request in [
        b"GARBAGE\r\n\r\n",
        b"GET /v1/info HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
        b"GET /v1/info HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n",
    ]:
        with socket.create_connection((client.host, client.port), timeout=10) as s:
            s.sendall(request)
            reply = b""
            while chunk := s.recv(65536):  # the worker closes after a malformed request
                reply += chunk
        assert reply.startswith(b"HTTP/1."), reply[:100]
        status = int(reply.split(b" ")[1])
        assert 400 <= status < 500 or (status == 505 and b"9.9" in request), reply[:200]
        assert b'"error"' in reply and b"<html" not in reply.lower()
    still_serving(client)


def test_unknown_and_foreign_job_ids(client: WorkerClient) -> None:
    for job_id in ["nope", "0" * 24, "../info", "%00", "a" * 500]:
        for method, suffix in [("GET", ""), ("GET", "/result"), ("POST", "/cancel"), ("DELETE", "")]:
            status, data, _ = raw(client, method, f"/v1/jobs/{job_id}{suffix}")
            assert status in (404, 405), (job_id, suffix, status)
            assert data["error"]["code"] in ("job_not_found", "not_found", "method_not_allowed")
    with pytest.raises(BridgeError) as ei:
        client.result("f" * 24)
    assert ei.value.code == "job_not_found" and ei.value.status == 404


def test_switching_to_an_unknown_model_keeps_the_current_one(client: WorkerClient) -> None:
    before = client.info().model
    with pytest.raises(BridgeError) as ei:
        client.set_model("no-such-model")
    assert ei.value.code == "model_not_found" and ei.value.status == 404 and "valid presets" in ei.value.hint
    assert client.info().model == before  # a typo does not unload a working model
    with pytest.raises(BridgeError) as ei:  # nor does a job naming a missing model
        client.restore(JobRequest(bytes(16), 2, 2, model="no-such-model"))
    assert ei.value.code == "model_not_found"
    assert client.info().model == before
    same = client.set_model(before.name)  # switching to the current model is a cheap reload
    assert same.state == "ready" and same.experts == ("noise", "blur", "jpeg", "rain", "haze", "low-light")
    still_serving(client)


def test_a_worker_without_a_usable_model_reports_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default preset without trained weights: the worker starts and says why it cannot restore.
    In-process, with a resources folder that surely has no weights."""
    from lorair_desktop.core.config import resources_dir

    res = tmp_path / "resources"
    shutil.copytree(resources_dir() / "model_configs", res / "model_configs")
    monkeypatch.setenv("LORAIR_RESOURCES", str(res))
    with inproc_worker(WorkerConfig(model="lorair-compact", device="cpu", runtime_dir=tmp_path / "rt")) as client:
        info = client.info()
        assert info.model.state == "error" and info.model.error is not None
        assert info.model.error.code == "model_not_trained" and "lorair train" in info.model.error.hint
        assert info.models[0]["name"] == "lorair-compact" and info.models[0]["trained"] is False
        for call in (client.submit, client.analyze):
            with pytest.raises(BridgeError) as ei:
                call(JobRequest(bytes(16), 2, 2))
            assert ei.value.code == "model_not_trained" and ei.value.status == 503 and ei.value.hint
        assert client.health()["ok"]


def test_stalled_upload_times_out_and_worker_goes_on(small_model_path: Path, tmp_path: Path) -> None:
    limits = replace(Limits(), io_timeout_s=0.5)
    cfg = WorkerConfig(model=str(small_model_path), device="cpu", runtime_dir=tmp_path / "rt", limits=limits)
    with inproc_worker(cfg) as client:
        with socket.create_connection((client.host, client.port), timeout=10) as s:
            body = framed(job_header(32, 32), bytes(32 * 32 * 4))
            s.sendall(
                b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
                + client.token.encode()
                + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
                + body[:-100]
            )
            t0 = time.monotonic()
            reply = b""
            while chunk := s.recv(4096):  # the worker gives up on the stalled body and closes
                reply += chunk
            assert time.monotonic() - t0 < 5
        assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply
        assert client.info().queue["kept"] == 0
        assert client.health()["ok"]
