"""The wire types: strict from/to dict, framing, errors, and client-side request checks."""

from __future__ import annotations

import struct

import pytest

from lorair_desktop.bridge import BridgeError, ExpertSpec, JobHeader, JobRequest, JobStatus, WorkerInfo
from lorair_desktop.bridge.protocol import (
    MAX_JSON_HEADER,
    ErrorInfo,
    ModelInfo,
    ResultHeader,
    frame_prefix,
    pixel_bytes,
    split_frame,
)


def test_job_header_round_trip() -> None:
    h = JobHeader(640, 480, "BGRA", "u16", True, "lorair-compact", ExpertSpec.manual({"noise": 0.8}, True), 256, 32, 8)
    assert JobHeader.from_dict(h.to_dict()) == h
    assert h.pixel_bytes == 640 * 480 * 4 * 2
    assert h.mask_bytes == 640 * 480
    assert JobHeader.from_dict({"width": 2, "height": 3, "order": "RGB", "sample": "f32"}).payload_bytes == 72
    linear = JobHeader(4, 4, "RGBA", "f32", transfer="linear")
    assert JobHeader.from_dict(linear.to_dict()) == linear and linear.to_dict()["transfer"] == "linear"
    assert "transfer" not in h.to_dict() and h.transfer == "srgb"  # a worker from before the key still reads it


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"width": 0}, "header.width is 0"),
        ({"height": -1}, "header.height is -1"),
        ({"width": 2.5}, "must be an integer"),
        ({"width": True}, "must be an integer"),
        ({"order": "ARGB"}, "'ARGB' is not supported"),
        ({"sample": "u32"}, "'u32' is not supported"),
        ({"has_mask": "yes"}, "true or false"),
        ({"tile": 8}, "header.tile is 8"),
        ({"overlap": -3}, "header.overlap is -3"),
        ({"colour": 1}, "unknown key(s) 'colour'"),
        ({"experts": {"mode": "magic"}}, "experts.mode"),
        ({"experts": {"mode": "auto", "weights": {}}}, "unknown key(s) 'weights'"),
        ({"experts": {"mode": "manual"}}, "missing key(s) 'weights'"),
        ({"model": ""}, "header.model"),
        ({"ensemble": 3}, "header.ensemble 3 is not supported"),
        ({"ensemble": True}, "use one of 1, 2, 4, 8"),
        ({"ensemble": "8"}, "header.ensemble '8'"),
        ({"transfer": "gamma22"}, "header.transfer 'gamma22' is not supported"),
    ],
)
def test_job_header_rejects_with_reason(patch: dict, fragment: str) -> None:
    d = {"width": 4, "height": 4, "order": "RGBA", "sample": "u8", **patch}
    with pytest.raises(BridgeError) as ei:
        JobHeader.from_dict(d)
    assert ei.value.code == "bad_request" and ei.value.status == 400
    assert fragment in ei.value.message + ei.value.hint


def test_the_wire_and_the_model_core_agree_on_ensembles() -> None:
    from lorair_desktop.bridge.protocol import ENSEMBLES
    from lorair_desktop.core.inference import ENSEMBLES as CORE

    assert ENSEMBLES == CORE


def test_missing_keys_and_valid_keys_listed() -> None:
    with pytest.raises(BridgeError) as ei:
        JobHeader.from_dict({"width": 4, "height": 4, "order": "RGBA"})
    assert "missing key(s) 'sample'" in ei.value.message
    with pytest.raises(BridgeError) as ei:
        JobHeader.from_dict({"width": 4, "height": 4, "order": "RGBA", "sample": "u8", "x": 1})
    assert "valid keys: width, height, order, sample, has_mask" in ei.value.hint


def test_expert_weights_must_be_finite_numbers() -> None:
    for bad_w in (float("nan"), float("inf"), "0.5", None, True):
        with pytest.raises(BridgeError) as ei:
            ExpertSpec.from_dict({"mode": "manual", "weights": {"noise": bad_w}})
        assert ei.value.code == "bad_experts" and ei.value.status == 422
    spec = ExpertSpec.from_dict({"mode": "manual", "weights": {"noise": 1}, "keep_router": True})
    assert spec.overrides() == {"noise": 1.0} and spec.keep_router
    assert ExpertSpec.auto().overrides() is None


def test_framing_round_trip_and_limits() -> None:
    body = frame_prefix({"a": 1}) + b"\x01\x02"
    data, rest = split_frame(body)
    assert data == {"a": 1} and bytes(rest) == b"\x01\x02"
    with pytest.raises(BridgeError, match="JSON header length"):
        split_frame(struct.pack(">I", MAX_JSON_HEADER + 1) + b"{}")
    with pytest.raises(BridgeError, match="ends inside"):
        split_frame(struct.pack(">I", 10) + b"{}")
    with pytest.raises(BridgeError, match="not valid UTF-8 JSON"):
        split_frame(struct.pack(">I", 3) + b"{x}")
    with pytest.raises(BridgeError, match="NaN is not allowed"):
        split_frame(struct.pack(">I", 11) + b'{"a": NaN }')


def test_error_shape() -> None:
    e = BridgeError("queue_full", "the queue is full", "wait", 429)
    assert e.to_dict() == {"error": {"code": "queue_full", "message": "the queue is full", "hint": "wait"}}
    back = BridgeError.from_dict(e.to_dict(), 429)
    assert (back.code, back.message, back.hint, back.status) == ("queue_full", "the queue is full", "wait", 429)
    odd = BridgeError.from_dict({"detail": "nope"}, 500)
    assert odd.code == "bad_response" and "500" in odd.message


def test_response_types_round_trip() -> None:
    st = JobStatus("abc", "failed", 0.5, 2, 4, None, None, 1.5, 7, ErrorInfo("bad_experts", "m", "h"))
    assert JobStatus.from_dict(st.to_dict()) == st
    rh = ResultHeader(
        2, 2, "RGB", "u8", {"noise": 1.0}, {"noise": 0.5}, {"total_s": 0.1}, 1, 384, "cpu", "float32", "m"
    )
    assert ResultHeader.from_dict(rh.to_dict()) == rh and rh.pixel_bytes == 12
    # a worker from before self-ensembles sends no "ensemble": one pass
    old = {k: v for k, v in rh.to_dict().items() if k != "ensemble"}
    assert ResultHeader.from_dict(old).ensemble == 1
    info = WorkerInfo(
        "0.1",
        1,
        42,
        "cpu",
        "x",
        ModelInfo("m", "ready", ("noise",)),
        [],
        {"max_pixels": 1},
        {"queued": 0, "capacity": 16, "running": 0},
    )
    assert WorkerInfo.from_dict(info.to_dict()) == info


def test_job_request_checks_buffers_before_sending() -> None:
    ok = JobRequest(bytes(4 * 3 * 2), 3, 2, "BGRA", "u8", mask=bytes(6))
    parts = ok.body_parts()
    assert sum(len(memoryview(p)) for p in parts) == len(frame_prefix(ok.header().to_dict())) + 24 + 6
    with pytest.raises(BridgeError, match="needs 24"):
        JobRequest(bytes(23), 3, 2, "RGBA", "u8").body_parts()
    with pytest.raises(BridgeError, match="mask holds 5 bytes"):
        JobRequest(bytes(24), 3, 2, "RGBA", "u8", mask=bytes(5)).body_parts()
    with pytest.raises(BridgeError, match="unsupported pixel layout"):
        JobRequest(bytes(24), 3, 2, "ARGB", "u8").body_parts()
    # Any contiguous buffer works: e.g. an array of floats is sent as its raw bytes.
    import array

    floats = array.array("f", [0.5] * (3 * 2 * 3))
    assert len(JobRequest(floats, 3, 2, "RGB", "f32").body_parts()[1]) == pixel_bytes(3, 2, "RGB", "f32")
