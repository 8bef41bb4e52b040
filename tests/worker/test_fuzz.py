"""Property-based fuzz of job headers, bodies and raw HTTP: never a 5xx, never a traceback, never a
dead worker. Bounded example counts keep it to seconds."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorair_desktop.bridge import WorkerClient
from lorair_desktop.bridge.protocol import ORDERS, SAMPLES, pixel_bytes

from .conftest import raw

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
side = st.one_of(st.integers(1, 6), st.integers(-2, 0), st.integers(10**5, 10**9), junk)
experts = st.one_of(
    st.just({"mode": "auto"}),
    st.fixed_dictionaries(
        {
            "mode": st.just("manual"),
            "weights": st.dictionaries(
                st.sampled_from(["noise", "blur", "rain", "bogus", ""]), st.one_of(st.floats(-1, 3), junk), max_size=3
            ),
        },
        optional={"keep_router": st.one_of(st.booleans(), junk)},
    ),
    junk,
)
header = st.fixed_dictionaries(
    {
        "width": side,
        "height": side,
        "order": st.one_of(st.sampled_from(sorted(ORDERS)), junk),
        "sample": st.one_of(st.sampled_from(sorted(SAMPLES)), junk),
    },
    optional={
        "has_mask": st.one_of(st.booleans(), junk),
        "experts": experts,
        "tile": st.one_of(st.none(), side),
        "overlap": st.one_of(st.none(), side),
        "model": st.one_of(st.none(), st.just("no-such"), junk),
        "extra": junk,
    },
)


def expected_len(h: dict[str, Any]) -> int:
    """The body length a valid header implies (0 when the header is not even well-typed)."""
    w, ht = h["width"], h["height"]
    order, sample = h["order"], h["sample"]
    if (
        type(w) is not int
        or type(ht) is not int
        or not (isinstance(order, str) and order in ORDERS)
        or not (isinstance(sample, str) and sample in SAMPLES)
    ):
        return 0
    return pixel_bytes(w, ht, order, sample) + (w * ht if h.get("has_mask") is True else 0)


def check(status: int, data: Any, body: bytes) -> None:
    assert status < 500, (status, body[:300])
    assert b"Traceback" not in body
    if status >= 400:
        assert isinstance(data, dict) and set(data["error"]) == {"code", "message", "hint"}, body[:300]


@FUZZ
@given(
    h=header,
    delta=st.sampled_from([0, 0, 0, -1, 1, -7]),
    fill=st.binary(min_size=1, max_size=1),
    path=st.sampled_from(["/v1/jobs", "/v1/analyze"]),
)
def test_fuzz_job_headers(client: WorkerClient, h: dict[str, Any], delta: int, fill: bytes, path: str) -> None:
    n = expected_len(h)
    if not 0 <= n + delta <= 4096:
        delta = 0 if 0 <= n <= 4096 else -n  # keep bodies small: refusal must come from the header
    payload = fill * max(0, n + delta)
    body = struct.pack(">I", len(js := json.dumps(h).encode())) + js + payload
    status, data, raw_body = raw(client, "POST", path, body, headers={"Content-Type": "application/x-lorair-job"})
    check(status, data, raw_body)
    if status == 202:
        client.cancel(data["id"])
        client.delete(data["id"])


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=64),
        st.builds(lambda n, b: struct.pack(">I", n) + b, st.integers(0, 2**32 - 1), st.binary(max_size=64)),
    ),
    length=st.one_of(st.none(), st.sampled_from(["-1", "abc", "99999999999999", "1e3", "+5", "0x10", "5 5"])),
)
def test_fuzz_raw_bodies(client: WorkerClient, body: bytes, length: str | None) -> None:
    headers = {"Content-Type": "application/x-lorair-job"}
    if length is not None:
        headers["Content-Length"] = length
        body = b""  # an invalid or over-limit length: refused at once, without waiting for a body
    status, data, raw_body = raw(client, "POST", "/v1/jobs", body, headers=headers)
    check(status, data, raw_body)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS", "PATCH"]),
    path=st.one_of(
        st.sampled_from(
            [
                "/v1/info",
                "/v1/health",
                "/v1/jobs",
                "/v1/model",
                "/v1/jobs/x/result",
                "/v1/jobs/x/cancel",
                "/v1/jobs/x?wait=0.01&after=1",
                "/",
                "//v1/info",
                "/v1/jobs/x?wait=inf",
                "/v1/jobs/x?wait=a&wait=b",
                "/v1/info?" + "a=1&" * 20,
            ]
        ),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(lambda s: "/" + s),
    ),
    token=st.sampled_from(["default", None, "x"]),
    json_body=st.one_of(st.none(), st.just(b'{"model": 5}'), st.just(b"[]"), st.binary(max_size=20)),
)
def test_fuzz_routes(client: WorkerClient, method: str, path: str, token: str | None, json_body: bytes | None) -> None:
    if "/model" in path and (json_body is None or json_body.startswith(b"{")):
        json_body = b'{"model": ""}'  # never a real switch: the shared worker keeps its model
    if method == "HEAD":
        conn_reply = _raw_socket(client, f"HEAD {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        assert conn_reply.startswith(b"HTTP/1.1 4"), conn_reply[:100]
        return
    status, data, body = raw(client, method, path, json_body or b"", token=token)
    check(status, data, body)


def _raw_socket(client: WorkerClient, request: bytes) -> bytes:
    with socket.create_connection((client.host, client.port), timeout=10) as s:
        s.sendall(request)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    return reply


def test_worker_alive_after_fuzz(client: WorkerClient) -> None:
    info = client.info()
    assert info.model.state == "ready"
    assert client.health()["ok"]
