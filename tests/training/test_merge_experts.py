"""Putting together experts trained in separate LoRA-only runs from one model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lorair_desktop.core import LoRAIR, save_checkpoint
from lorair_desktop.core.checkpoint import load_checkpoint, sha256_file
from lorair_desktop.training import merge_experts as M
from tests.conftest import make_random_model


def _retrained(model: LoRAIR, experts: list[int], seed: int) -> LoRAIR:
    """`model` with new adapters for `experts` only, as a LoRA-only run of those tasks leaves it."""
    other = make_random_model()
    other.load_state_dict(model.state_dict())
    other.prior_prototypes = model.prior_prototypes
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in other.net.named_parameters():
            if ".lora_" in name:
                p[experts] = torch.randn(p[experts].shape, generator=g) * 0.02
    return other


def _lora(model: LoRAIR, expert: int) -> dict[str, torch.Tensor]:
    return {n: p.detach()[expert].clone() for n, p in model.net.named_parameters() if ".lora_" in n}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_merge_takes_the_named_experts_and_keeps_the_rest(tmp_path: Path) -> None:
    start = make_random_model(seed=3)
    start.prior_prototypes = torch.randn(start.cfg.num_experts, start.cfg.net.prior_dim)
    experts = list(start.cfg.experts)
    a, b = experts.index("noise"), experts.index("haze")
    run_a = _retrained(start, [a], seed=1)  # two runs of disjoint tasks from one model
    run_b = _retrained(start, [b], seed=2)
    tgt, src = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_checkpoint(run_a, tgt)
    save_checkpoint(run_b, src)
    before = tgt.read_bytes()
    out = tmp_path / "merged.safetensors"
    assert M.main([str(tgt), str(src), "--experts", "haze", "-o", str(out)]) == 0
    assert tgt.read_bytes() == before
    got = load_checkpoint(out)
    assert _same(_lora(got, b), _lora(run_b, b)) and not _same(_lora(got, b), _lora(run_a, b))
    assert _same(_lora(got, a), _lora(run_a, a)) and not _same(_lora(got, a), _lora(run_b, a))
    for i in set(range(len(experts))) - {a, b}:
        assert _same(_lora(got, i), _lora(start, i))
    base = {k: v for k, v in got.state_dict().items() if ".lora_" not in k}
    assert _same(base, {k: v for k, v in start.state_dict().items() if ".lora_" not in k})
    assert torch.equal(got.prior_prototypes, start.prior_prototypes)
    with safe_open(str(out), framework="pt") as f:
        assert json.loads(f.metadata()[M.SOURCES_KEY]) == {"haze": sha256_file(src)}
    # the merged model restores as both runs' experts do: a haze mix gives what run B gives
    x, prior = torch.rand(1, 3, 32, 32), torch.randn(1, start.cfg.net.prior_dim)
    mix = torch.zeros(1, len(experts))
    mix[0, b] = 1.0
    with torch.no_grad():
        assert torch.equal(got(x, prior, mix), run_b(x, prior, mix))
        assert not torch.equal(got(x, prior, mix), run_a(x, prior, mix))
    assert M.main([str(tgt), str(src), "--experts", "haze", "-o", str(out)]) == 2  # never over an existing file


def test_merge_refuses_experts_trained_on_another_base(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = make_random_model(seed=3)
    tuned = _retrained(start, [0], seed=1)
    name, weight = next((n, p) for n, p in tuned.net.named_parameters()
                        if n.startswith("ending.") and ".lora_" not in n)
    with torch.no_grad():
        weight.add_(0.01)  # a --full run moved the base network
    tgt, src = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_checkpoint(start, tgt)
    save_checkpoint(tuned, src)
    before = tgt.read_bytes()
    assert M.main([str(tgt), str(src), "--experts", start.cfg.experts[0]]) == 2
    err = capsys.readouterr().err
    assert "trained on another base" in err and name in err and "--no-full" in err
    assert tgt.read_bytes() == before
    assert M.main([str(tgt), str(tgt), "--experts", "fog"]) == 2
    assert "has no expert fog" in capsys.readouterr().err


def test_blend_averages_two_runs_of_the_same_expert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = make_random_model(seed=3)
    experts = list(start.cfg.experts)
    a = experts.index("noise")
    run_1, run_2 = _retrained(start, [a], seed=1), _retrained(start, [a], seed=2)  # two seeds, one expert
    tgt, src = tmp_path / "1.safetensors", tmp_path / "2.safetensors"
    save_checkpoint(run_1, tgt)
    save_checkpoint(run_2, src)
    out = tmp_path / "blend.safetensors"
    assert M.main([str(tgt), str(src), "--experts", "noise", "--blend", "0.25", "-o", str(out)]) == 0
    assert "blended 0.25" in capsys.readouterr().out
    got, one, two = _lora(load_checkpoint(out), a), _lora(run_1, a), _lora(run_2, a)
    for k in got:
        assert torch.allclose(got[k], 0.75 * one[k] + 0.25 * two[k], atol=1e-6), k
    assert not _same(got, one) and not _same(got, two)
    for i in set(range(len(experts))) - {a}:
        assert _same(_lora(load_checkpoint(out), i), _lora(start, i))
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta[M.BLEND_KEY]) == {"noise": 0.25}
    assert json.loads(meta[M.SOURCES_KEY]) == {"noise": sha256_file(src)}
    # taking the expert whole afterwards drops the blend record; a weight outside (0, 1] is refused
    out2 = tmp_path / "whole.safetensors"
    M.merge_experts(out, src, ["noise"], out2)
    with safe_open(str(out2), framework="pt") as f:
        assert M.BLEND_KEY not in f.metadata()
    assert _same(_lora(load_checkpoint(out2), a), two)
    for bad in ("0", "1.5", "-0.2"):
        assert M.main([str(tgt), str(src), "--experts", "noise", "--blend", bad, "-o", str(tmp_path / "x")]) == 2
        assert "outside (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
