"""precision="auto" on a CPU: bf16 only where this machine runs it clearly faster, decided once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lorair_desktop.core import Restorer
from lorair_desktop.core import precision as P


class Measure:
    """Stands in for the stopwatch only (the network is the real one): fixed timings, counted calls."""

    def __init__(self, fp32: float, bf16: float) -> None:
        self.timings = {"fp32": fp32, "bf16": bf16}
        self.calls = 0

    def __call__(self, net: torch.nn.Module, prior_dim: int, channels_last: bool) -> dict[str, float]:
        self.calls += 1
        return self.timings


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(P.ENV, raising=False)
    monkeypatch.setattr(P, "bf16_fast", lambda device=None: True)  # decide as on a CPU with bf16 instructions


LAYOUT = "width 16 enc 1-1-1-2 middle 2 dec 1-1-1-1"


def _choose(small_model, path: Path, measure: Measure, layout: str = LAYOUT) -> torch.dtype:
    return P.fastest_cpu_dtype(small_model.net, small_model.cfg.net.prior_dim, layout, measure=measure, path=path)


@pytest.mark.usefixtures("measured")
def test_bf16_only_when_clearly_faster_and_measured_once(small_model, tmp_path: Path) -> None:
    fast, slow = Measure(1.0, 0.8), Measure(1.0, 0.95)
    assert _choose(small_model, tmp_path / "a.json", fast) == torch.bfloat16
    assert _choose(small_model, tmp_path / "b.json", slow) == torch.float32  # within the margin: keep fp32
    assert _choose(small_model, tmp_path / "a.json", slow) == torch.bfloat16  # the kept verdict
    assert fast.calls == 1 and slow.calls == 1
    entry = json.loads((tmp_path / "a.json").read_text())[P.machine_key(LAYOUT)]
    assert entry["precision"] == "bf16" and entry["fp32_s"] == 1.0 and entry["bf16_s"] == 0.8
    # another network: a wider one, or the same width without full-resolution blocks
    assert _choose(small_model, tmp_path / "a.json", slow, LAYOUT.replace("16", "32")) == torch.float32
    assert _choose(small_model, tmp_path / "a.json", slow, LAYOUT.replace("enc 1-1", "enc 0-1")) == torch.float32
    assert slow.calls == 3 and len(json.loads((tmp_path / "a.json").read_text())) == 3


@pytest.mark.usefixtures("measured")
def test_damaged_verdict_file_is_measured_again(small_model, tmp_path: Path) -> None:
    path = tmp_path / "cpu-precision.json"
    for junk in ("{not json", "[1, 2]", json.dumps({P.machine_key(LAYOUT): {"precision": "fp8"}})):
        path.write_text(junk)
        m = Measure(1.0, 0.5)
        assert _choose(small_model, path, m) == torch.bfloat16 and m.calls == 1
        assert json.loads(path.read_text())[P.machine_key(LAYOUT)]["precision"] == "bf16"


def test_environment_and_hardware_decide_without_measuring(
    small_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = Measure(1.0, 0.1)
    monkeypatch.setenv(P.ENV, "fp32")
    assert _choose(small_model, tmp_path / "c.json", m) == torch.float32
    monkeypatch.setenv(P.ENV, "bf16")
    assert _choose(small_model, tmp_path / "c.json", m) == torch.bfloat16
    monkeypatch.delenv(P.ENV)
    monkeypatch.setattr(P, "bf16_fast", lambda device=None: False)
    assert _choose(small_model, tmp_path / "c.json", m) == torch.float32
    assert m.calls == 0 and not (tmp_path / "c.json").exists()


@pytest.mark.usefixtures("measured")
def test_restorer_auto_measures_the_real_network(small_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = P.time_precisions(small_model.net, small_model.cfg.net.prior_dim, channels_last=False, tile=64, rounds=1)
    assert set(t) == {"fp32", "bf16"} and all(v > 0 for v in t.values())
    monkeypatch.setattr(P, "cache_file", lambda: tmp_path / "verdict.json")
    r = Restorer(small_model, device="cpu")  # auto
    entry = json.loads((tmp_path / "verdict.json").read_text())[P.machine_key(small_model.cfg.net.layout)]
    assert r.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[entry["precision"]]
    assert Restorer(small_model, device="cpu", precision="fp32").dtype == torch.float32  # asked: no say
