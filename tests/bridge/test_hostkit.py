"""`bridge.hostkit`: the logic the Krita and GIMP plugins share (each plugin's own tests cover how
it uses it inside a fake host; tests/plugins/test_*_real.py inside the real ones)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lorair_desktop.bridge import BridgeError, ExpertSpec, JobRequest, JobResult, JobStatus, ResultHeader, hostkit
from lorair_desktop.bridge.hostkit import PluginError, Rect

PLUGIN = hostkit.Plugin("krita", "Krita", "plugin", deselect="Select > Deselect", bug_hint="Report it.")


@pytest.mark.parametrize("text, spec", [
    ("auto", {"mode": "auto"}),
    ("", {"mode": "auto"}),
    (" noise=0.8, jpeg=0.3 ", {"mode": "manual", "weights": {"noise": 0.8, "jpeg": 0.3}, "keep_router": False}),
    ("auto,rain=0", {"mode": "manual", "weights": {"rain": 0.0}, "keep_router": True}),
])
def test_parse_experts(text: str, spec: dict[str, Any]) -> None:
    assert hostkit.parse_experts(text).to_dict() == spec


@pytest.mark.parametrize("text", ["noise", "noise=lots", "noise=3", "=0.5", "noise=-1"])
def test_parse_experts_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(PluginError, match="Cannot read the expert weight"):
        hostkit.parse_experts(text)


def test_experts_text_round_trips() -> None:
    assert hostkit.experts_text(True, {"noise": 1.0}) == "auto"
    text = hostkit.experts_text(False, {"noise": 0.8, "blur": 0.0})
    assert text == "noise=0.80,blur=0.00"
    assert hostkit.parse_experts(text).weights == {"noise": 0.8, "blur": 0.0}


def test_expert_spec_clamps_to_the_models_experts() -> None:
    assert hostkit.expert_spec(True, {"noise": 1.0}, ["noise"]) == ExpertSpec.auto()
    spec = hostkit.expert_spec(False, {"noise": 0.8, "jpeg": 5.0, "stale": 1.0}, ["noise", "blur", "jpeg"])
    assert spec.to_dict() == {"mode": "manual", "weights": {"noise": 0.8, "blur": 0.0, "jpeg": hostkit.MAX_WEIGHT},
                              "keep_router": False}
    assert hostkit.expert_spec(False, {"noise": 0.5}, []).weights == {"noise": 0.5}  # no model seen yet


def test_max_weight_is_the_model_cores() -> None:
    # Read from the source: importing the core would import torch.
    source = (Path(hostkit.__file__).parents[1] / "core" / "routing.py").read_text(encoding="utf-8")
    assert f"\nMAX_WEIGHT = {hostkit.MAX_WEIGHT}\n" in source


def test_region() -> None:
    bounds = Rect(0, 0, 50, 40)
    assert PLUGIN.restore_region(bounds, None, 32) == bounds
    assert PLUGIN.restore_region(bounds, Rect(10, 10, 5, 5), 4) == Rect(6, 6, 13, 13)
    assert PLUGIN.restore_region(bounds, Rect(0, 30, 50, 10), 8) == Rect(0, 22, 50, 18)
    assert PLUGIN.restore_region(bounds, Rect(20, 20, 2, 2), 10_000) == bounds  # margin capped at MAX_MARGIN
    assert PLUGIN.restore_region(bounds, Rect(20, 20, 2, 2), -5) == Rect(20, 20, 2, 2)
    for sel in (Rect(5, 5, 0, 0), Rect(100, 100, 4, 4)):
        with pytest.raises(PluginError, match="does not cover") as err:
            PLUGIN.restore_region(bounds, sel, 4)
        assert "Select > Deselect" in err.value.hint


def test_layer_names() -> None:
    name = hostkit.layer_name
    assert name({"noise": 0.82, "jpeg": 0.18, "rain": 0.0}) == "LoRA-IR: noise 0.82, jpeg 0.18"
    assert name({}) == "LoRA-IR: base network"
    assert name({c: 0.2 for c in "abcde"}) == "LoRA-IR: a 0.20, b 0.20, c 0.20, d 0.20, …"


def test_model_label() -> None:
    assert hostkit.model_label("lorair-compact") == "lorair-compact"
    assert hostkit.model_label("C:\\models\\small.safetensors") == "small"


def test_progress_text() -> None:
    assert hostkit.progress_text(None) == ("Connecting to the LoRA-IR worker…", None)
    assert hostkit.progress_text(JobStatus("j", "queued", 0.0, 0, 0, 1, None, 0.0, 1)) == (
        "Queued (position 2)…", 0.0)
    assert hostkit.progress_text(JobStatus("j", "running", 0.5, 1, 2, None, 3.0, 0.1, 2)) == (
        "Restoring: tile 1 of 2, about 3 s left", 0.5)
    assert hostkit.progress_text(JobStatus("j", "running", 0.0, 0, 0, None, None, 0.1, 2)) == ("Running…", 0.0)


def test_errors_are_explained_with_a_hint() -> None:
    assert PLUGIN.explain(PluginError("A.", "B.")) == ("A.", "B.")
    assert str(PluginError("A.", "B.")) == "A. B."
    exc = BridgeError("worker_gone", "the worker stopped", "try again")
    assert PLUGIN.explain(exc) == ("The worker stopped.", "Try again.")
    assert PLUGIN.error_text(exc) == "The worker stopped. Try again."
    assert PLUGIN.explain(RuntimeError("boom")) == ("Unexpected error: RuntimeError: boom", "Report it.")
    assert hostkit.is_cancelled(BridgeError("cancelled", "cancelled")) and not hostkit.is_cancelled(exc)


def test_worker_command_comes_from_the_install_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAIR_WORKER_CMD", raising=False)
    path = tmp_path / hostkit.RECORD
    path.write_text(json.dumps({"host": "krita", "worker_command": ["python", "-m", "x"]}))
    record = hostkit.install_record(path)
    assert PLUGIN.worker_command(record) == ["python", "-m", "x"]
    monkeypatch.setenv("LORAIR_WORKER_CMD", "my-worker --flag")
    assert PLUGIN.worker_command(record) is None  # the bridge then reads the variable itself
    monkeypatch.delenv("LORAIR_WORKER_CMD")
    with pytest.raises(PluginError, match="does not know how to start") as err:
        PLUGIN.worker_command({})
    assert "`lorair plugins install krita`, then restart Krita" in err.value.hint
    assert hostkit.install_record(tmp_path / "absent.json") == {}
    path.write_text("[1, 2]")
    assert hostkit.install_record(path) == {}
    assert hostkit.install_record() == {}  # the source tree's bridge has no record next to it


class _Client:
    def __init__(self, width: int) -> None:
        self.width = width

    def restore(self, request: JobRequest, on_progress: Any = None, should_cancel: Any = None) -> JobResult:
        header = ResultHeader(self.width, request.height, request.order, request.sample, {}, {}, {}, 1, 256,
                              "cpu", "float32", "small")
        return JobResult(header, bytes(self.width * request.height * 4))


def test_restore_refuses_an_answer_that_does_not_fit() -> None:
    request = JobRequest(bytes(3 * 2 * 4), 3, 2, "RGBA", "u8")
    assert PLUGIN.restore(_Client(3), request).header.width == 3
    with pytest.raises(PluginError, match="another size") as err:
        PLUGIN.restore(_Client(4), request)
    assert "the plugin and the worker" in err.value.hint


def test_pass_choices_are_the_wire_set_and_bad_counts_are_refused() -> None:
    from lorair_desktop.bridge.protocol import ENSEMBLES

    choices = hostkit.pass_choices()
    assert [n for n, _ in choices] == list(ENSEMBLES) and choices[0][1] == "1 (fastest)"
    assert len({label for _, label in choices}) == len(choices)
    assert hostkit.check_passes(8) == 8
    for bad in (3, True, "4", 0):
        with pytest.raises(PluginError, match="passes are not offered"):
            hostkit.check_passes(bad)
