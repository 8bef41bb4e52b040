"""The Krita plugin's logic (`lorair_krita.restore`) against a fake Krita host and fake workers:
fast, no Krita, no Qt. The real host is exercised in test_krita_real.py."""

from __future__ import annotations

import http.server
import json
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lorair_desktop.bridge import BridgeError, JobResult, JobStatus, ResultHeader, default_start_command


@dataclass
class FakeHost:
    """Krita as the controller sees it: one document with one layer and maybe a selection."""

    mod: Any
    depth: str = "U8"
    color_model: str = "RGBA"
    selection: tuple[int, int, int, int] | None = (10, 8, 12, 6)
    canvas: tuple[int, int] = (40, 30)
    open_doc: bool = True
    layers: list[tuple[Any, bytes, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    reads: list[Any] = field(default_factory=list)
    fail_add: bool = False

    def target(self) -> Any:
        if not self.open_doc:
            raise self.mod.PluginError("No image is open.", "Open an image.")
        sel = None if self.selection is None else self.mod.Rect(*self.selection)
        return self.mod.Target("doc", self.mod.Rect(0, 0, *self.canvas), sel, self.color_model, self.depth, "bg")

    def read(self, target: Any, rect: Any) -> tuple[bytes, bytes | None]:
        self.reads.append(rect)
        bpp = {"U8": 4, "U16": 8, "F16": 8, "F32": 16}[self.depth]
        pixels = bytes(i % 251 for i in range(rect.w * rect.h * bpp))
        if self.depth == "F16":
            pixels = struct.pack(f"={rect.w * rect.h * 4}e", *[(i % 7) / 8 for i in range(rect.w * rect.h * 4)])
        mask = None if target.selection is None else bytes([128]) * (rect.w * rect.h)
        return pixels, mask

    def still_open(self, target: Any) -> bool:
        return self.open_doc

    def add_layer(self, target: Any, rect: Any, pixels: bytes, name: str) -> None:
        if self.fail_add:
            raise RuntimeError("Krita refused")
        self.layers.append((rect, pixels, name))

    def show_error(self, message: str, hint: str) -> None:
        self.errors.append((message, hint))

    def notify(self, message: str) -> None:
        self.notices.append(message)


class FakeClient:
    """Answers like WorkerClient: the 'restored' pixels are the input reversed, bytewise."""

    def __init__(self, fail: BaseException | None = None, wrong_size: bool = False,
                 gate: threading.Event | None = None) -> None:
        self.fail, self.wrong_size, self.gate = fail, wrong_size, gate
        self.requests: list[Any] = []

    def restore(self, request: Any, on_progress: Any = None, should_cancel: Any = None) -> JobResult:
        self.requests.append(request)
        if on_progress:
            on_progress(JobStatus("j", "running", 0.5, 1, 2, None, 1.0, 0.1, 3))
        if self.gate is not None:
            while not self.gate.wait(0.01):
                if should_cancel and should_cancel():
                    raise BridgeError("cancelled", "the restore was cancelled")
        if self.fail is not None:
            raise self.fail
        pixels = bytes(memoryview(request.pixels))[::-1]
        w = request.width + (1 if self.wrong_size else 0)
        header = ResultHeader(w, request.height, request.order, request.sample, {"noise": 0.7, "jpeg": 0.3},
                              {"noise": 0.7, "jpeg": 0.3}, {"total": 0.2}, 1, 256, "cpu", "float32", "small")
        return JobResult(header, pixels)

    def info(self) -> Any:
        from lorair_desktop.bridge import ModelInfo, WorkerInfo

        model = ModelInfo("/models/small.safetensors", "ready", ("noise", "blur"))
        return WorkerInfo("0.1.0", 1, 1, "cpu", "AMD EPYC", model, [{"name": "lorair-compact"}], {}, {})

    def set_model(self, name: str) -> Any:
        self.requests.append(("set_model", name))

    def analyze(self, request: Any) -> Any:
        from lorair_desktop.bridge import AnalyzeResult

        return AnalyzeResult("small", ("noise", "jpeg"), {"noise": 0.9, "jpeg": 0.1}, "noise", {})


def make(mod: Any, client: FakeClient | None = None, **host_kw: Any) -> tuple[Any, FakeHost, FakeClient]:
    host = FakeHost(mod, **host_kw)
    client = client or FakeClient()
    settings = mod.Settings(margin=4)
    return mod.Controller(host, settings, connect=lambda s: client), host, client


def run(ctl: Any) -> None:
    assert ctl.wait_idle(10)


def start_held(mod: Any) -> tuple[Any, FakeHost, threading.Event]:
    """A restore started and held by its worker until the returned gate is set."""
    gate = threading.Event()
    ctl, host, _client = make(mod, FakeClient(gate=gate))
    assert ctl.restore()
    return ctl, host, gate


def test_restore_sends_the_selection_with_margin_and_mask_and_adds_one_layer(krita_plugin: Any) -> None:
    ctl, host, client = make(krita_plugin)
    assert ctl.restore()
    assert ctl.status.busy
    run(ctl)
    (req,) = client.requests
    assert host.reads == [krita_plugin.Rect(6, 4, 20, 14)]  # selection (10,8,12,6) + 4 px margin
    assert (req.width, req.height, req.order, req.sample) == (20, 14, "BGRA", "u8")
    assert bytes(req.mask) == bytes([128]) * (20 * 14)
    assert req.experts.to_dict() == {"mode": "auto"}
    ((rect, pixels, name),) = host.layers
    assert rect == krita_plugin.Rect(6, 4, 20, 14)
    assert pixels == bytes(memoryview(req.pixels))[::-1]
    assert name == "LoRA-IR: noise 0.70, jpeg 0.30"
    assert host.errors == [] and not ctl.status.busy and ctl.status.router_weights == {"noise": 0.7, "jpeg": 0.3}
    assert host.notices and "Added layer" in host.notices[0]


def test_no_selection_means_the_whole_canvas_without_a_mask(krita_plugin: Any) -> None:
    ctl, host, client = make(krita_plugin, selection=None)
    ctl.restore()
    run(ctl)
    assert host.reads == [krita_plugin.Rect(0, 0, 40, 30)] and client.requests[0].mask is None


def test_manual_weights_are_sent_for_the_models_experts(krita_plugin: Any) -> None:
    ctl, _host, client = make(krita_plugin)
    ctl.settings.auto = False
    ctl.settings.experts = ["noise", "blur", "jpeg"]
    ctl.settings.weights = {"noise": 0.8, "jpeg": 5.0, "stale": 1.0}
    ctl.restore()
    run(ctl)
    assert client.requests[0].experts.to_dict() == {
        "mode": "manual", "weights": {"noise": 0.8, "blur": 0.0, "jpeg": 2.0}, "keep_router": False}


def test_the_passes_setting_is_sent(krita_plugin: Any) -> None:
    ctl, _host, client = make(krita_plugin)
    assert ctl.settings.passes == 1
    ctl.settings.passes = 8
    ctl.restore()
    run(ctl)
    assert client.requests[0].ensemble == 8


def test_half_float_layers_travel_as_f32_and_come_back_as_half(krita_plugin: Any) -> None:
    ctl, host, client = make(krita_plugin, depth="F16", selection=(0, 0, 3, 2))
    ctl.settings.margin = 0
    ctl.restore()
    run(ctl)
    req = client.requests[0]
    assert (req.order, req.sample) == ("RGBA", "f32") and len(req.pixels) == 3 * 2 * 4 * 4
    sent = struct.unpack("<24f", req.pixels)
    assert sent == tuple((i % 7) / 8 for i in range(24))
    ((_rect, pixels, _name),) = host.layers
    assert len(pixels) == 3 * 2 * 4 * 2  # half again
    expected = struct.unpack("<24f", bytes(memoryview(req.pixels))[::-1])
    assert struct.unpack("=24e", pixels) == pytest.approx(expected, rel=1e-3, abs=1e-3)


@pytest.mark.parametrize("model, depth, layout", [
    ("RGBA", "U8", ("BGRA", "u8")), ("RGBA", "U16", ("BGRA", "u16")), ("RGBA", "F32", ("RGBA", "f32")),
    ("GRAYA", "U8", ("GRAYA", "u8")), ("GRAYA", "U16", ("GRAYA", "u16")), ("GRAYA", "F16", ("GRAYA", "f32")),
])
def test_wire_layouts(krita_plugin: Any, model: str, depth: str, layout: tuple[str, str]) -> None:
    assert krita_plugin.wire_layout(model, depth) == layout


@pytest.mark.parametrize("kw, words", [
    ({"open_doc": False}, "No image is open"),
    ({"color_model": "CMYKA"}, "colour model is CMYKA"),
    ({"color_model": "LABA"}, "colour model is LABA"),
    ({"selection": (5, 5, 0, 0)}, "selection does not cover"),
    ({"selection": (100, 100, 4, 4)}, "selection does not cover"),
])
def test_bad_input_is_a_message_and_nothing_runs(krita_plugin: Any, kw: dict[str, Any], words: str) -> None:
    ctl, host, client = make(krita_plugin, **kw)
    assert ctl.restore() is False
    assert not ctl.active and client.requests == [] and host.layers == []
    ((message, hint),) = host.errors
    assert words in message and hint
    assert words in ctl.status.error


@pytest.mark.parametrize("profile, transfer", [
    ("sRGB-elle-V2-g10.icc", "linear"), ("Rec2020-elle-V4-g10.icc", "linear"), ("scRGB (linear)", "linear"),
    ("Gray-D50-elle-V2-g10.icc", "linear"), ("sRGB-elle-V2-srgbtrc.icc", "srgb"),
    ("sRGB built-in", "srgb"), ("Gray-D50-elle-V2-g22.icc", "srgb"), ("", "srgb"),
])
def test_linear_profiles_are_sent_as_linear_light(krita_plugin: Any, profile: str, transfer: str) -> None:
    assert krita_plugin.transfer_of(profile) == transfer


def test_unsupported_depth(krita_plugin: Any) -> None:
    with pytest.raises(krita_plugin.PluginError, match="cannot read U32"):
        krita_plugin.wire_layout("RGBA", "U32")


@pytest.mark.parametrize("fail, words", [
    (BridgeError("worker_start_failed", "cannot start the worker with `x`", "set the worker command"),
     "Cannot start the worker"),
    (BridgeError("worker_gone", "the LoRA-IR worker stopped while working on this image", "see the log"),
     "The LoRA-IR worker stopped"),
    (BridgeError("bad_experts", "unknown expert 'snow'", "this model's experts: noise"), "Unknown expert"),
    (RuntimeError("boom"), "Unexpected error: RuntimeError: boom"),
])
def test_worker_failures_are_shown_and_leave_no_layer(krita_plugin: Any, fail: BaseException, words: str) -> None:
    ctl, host, _client = make(krita_plugin, FakeClient(fail=fail))
    assert ctl.restore()
    run(ctl)
    assert host.layers == []
    ((message, hint),) = host.errors
    assert words in message and hint


def test_a_result_of_another_size_is_refused(krita_plugin: Any) -> None:
    ctl, host, _client = make(krita_plugin, FakeClient(wrong_size=True))
    ctl.restore()
    run(ctl)
    assert host.layers == [] and "another size" in host.errors[0][0]


def test_a_document_closed_meanwhile_gets_no_layer(krita_plugin: Any) -> None:
    ctl, host, gate = start_held(krita_plugin)
    host.open_doc = False
    gate.set()
    run(ctl)
    assert host.layers == [] and "closed" in host.errors[0][0]


def test_cancel_and_one_job_at_a_time(krita_plugin: Any) -> None:
    ctl, host, _gate = start_held(krita_plugin)
    assert ctl.restore() is False and "already running" in host.errors[0][0]
    ctl.cancel()
    run(ctl)
    assert host.layers == [] and len(host.errors) == 1
    assert ctl.status.text.startswith("Cancelled") and not ctl.status.busy


def test_progress_is_reported_while_running(krita_plugin: Any) -> None:
    ctl, _host, gate = start_held(krita_plugin)
    for _ in range(200):
        if ctl.tick().progress is not None:
            break
        threading.Event().wait(0.01)
    assert ctl.status.progress == 0.5 and "tile 1 of 2" in ctl.status.text
    gate.set()
    run(ctl)


def test_analyze_shows_router_weights_and_learns_the_experts(krita_plugin: Any) -> None:
    ctl, host, _client = make(krita_plugin)
    assert ctl.analyze()
    run(ctl)
    assert ctl.status.router_weights == {"noise": 0.9, "jpeg": 0.1}
    assert ctl.settings.experts == ["noise", "jpeg"] and host.layers == []


def test_settings_round_trip_and_tolerate_garbage(krita_plugin: Any) -> None:
    s = krita_plugin.Settings(auto=False, weights={"noise": 0.5}, experts=["noise"], margin=16, autostart=False)
    assert krita_plugin.Settings.from_json(s.to_json()) == s
    assert krita_plugin.Settings.from_json("not json") == krita_plugin.Settings()
    assert krita_plugin.Settings.from_json('{"margin": 99999}').margin == krita_plugin.MAX_MARGIN
    assert krita_plugin.Settings.from_json('{"margin": 8}').margin == 8
    assert krita_plugin.Settings.from_json('{"passes": 8}').passes == 8
    assert krita_plugin.Settings.from_json('{"passes": 3}').passes == 1  # not offered: the default


def test_the_worker_command_comes_from_the_install_record(krita_plugin: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAIR_WORKER_CMD", raising=False)
    record = krita_plugin.hostkit.install_record()  # next to the vendored bridge
    assert record["host"] == "krita" and record["worker_command"] == default_start_command()
    assert krita_plugin.PLUGIN.worker_command(record) == record["worker_command"]


@pytest.fixture
def foreign_worker(tmp_path: Path) -> Iterator[Path]:
    """A 'worker' of another protocol version: health answers protocol 999."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"ok": True, "service": "lorair-worker", "protocol": 999, "pid": pid}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    import os

    pid = os.getpid()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o700)
    (rt / "worker.json").write_text(json.dumps({"port": server.server_address[1], "token": "t", "pid": pid,
                                                "version": "9.9", "protocol": 999, "host": "127.0.0.1"}))
    try:
        yield rt
    finally:
        server.shutdown()
        server.server_close()


def test_a_worker_of_another_protocol_version_is_a_clear_message(krita_plugin: Any, foreign_worker: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAIR_RUNTIME_DIR", str(foreign_worker))
    host = FakeHost(krita_plugin)
    ctl = krita_plugin.Controller(host, krita_plugin.Settings(autostart=False))
    ctl.restore()
    run(ctl)
    ((message, hint),) = host.errors
    assert "protocol 999" in message and "lorair plugins install" in hint and host.layers == []


def test_refresh_worker_shows_device_and_model_and_learns_the_experts(krita_plugin: Any) -> None:
    ctl, _host, client = make(krita_plugin)
    ctl.refresh_worker("lorair-compact")
    run(ctl)
    assert client.requests == [("set_model", "lorair-compact")]
    assert ctl.status.worker == "cpu (AMD EPYC) · small" and ctl.status.text == "Connected."
    assert ctl.status.models == ["/models/small.safetensors", "lorair-compact"]
    assert ctl.settings.experts == ["noise", "blur"]


def test_a_host_failure_while_adding_the_layer_is_shown(krita_plugin: Any) -> None:
    ctl, host, _client = make(krita_plugin, fail_add=True)
    ctl.restore()
    run(ctl)
    assert host.layers == [] and "Krita refused" in host.errors[0][0] and not ctl.status.busy
