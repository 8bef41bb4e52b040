"""Grafting a trained router (with its prototype priors) from one checkpoint into another."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lorair_desktop.core import LoRAIR, save_checkpoint
from lorair_desktop.core.checkpoint import load_checkpoint, read_manifest, sha256_file, weights_dir
from lorair_desktop.training import graft_router as G
from tests.conftest import make_random_model


def _saved(model: LoRAIR, path: Path, half: bool = False) -> Path:
    save_checkpoint(model, path, half=half)
    return path


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


def test_graft_takes_the_router_and_prototypes_and_keeps_the_network(tmp_path: Path) -> None:
    donor, target = make_random_model(seed=1), make_random_model(seed=2)
    donor.prior_prototypes = torch.randn(donor.cfg.num_experts, donor.cfg.net.prior_dim)
    src, tgt = _saved(donor, tmp_path / "donor.safetensors"), _saved(target, tmp_path / "target.safetensors")
    before = tgt.read_bytes()
    out = tmp_path / "out" / "grafted.safetensors"
    assert G.main([str(src), str(tgt), "-o", str(out)]) == 0
    assert tgt.read_bytes() == before  # -o leaves the target as it was
    got = load_checkpoint(out)
    assert _same(got.router.state_dict(), donor.router.state_dict())
    assert _same(got.net.state_dict(), target.net.state_dict())
    assert not _same(got.router.state_dict(), target.router.state_dict())  # the seeds differ: a real change
    assert got.prior_prototypes is not None and torch.equal(got.prior_prototypes, donor.prior_prototypes)
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["router_source_sha256"] == sha256_file(src)
    assert G.main([str(src), str(tgt), "-o", str(out)]) == 2  # never over an existing file


def test_graft_in_place_keeps_fp16_and_the_manifest_true(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    target, donor = make_random_model(seed=2), make_random_model(seed=1)  # before the presets are hidden
    root = tmp_path / "res"
    (root / "weights").mkdir(parents=True)
    monkeypatch.setenv("LORAIR_RESOURCES", str(root))
    target.prior_prototypes = torch.randn(target.cfg.num_experts, target.cfg.net.prior_dim)
    tgt = _saved(target, weights_dir() / "mine.safetensors", half=True)
    (weights_dir() / "manifest.json").write_text(json.dumps({"models": {"mine": {
        "file": tgt.name, "sha256": sha256_file(tgt), "bytes": tgt.stat().st_size, "config": "lorair-compact"}}}))
    src = _saved(donor, tmp_path / "donor.safetensors")  # no prototypes
    assert G.main([str(src), str(tgt)]) == 0
    assert "no prototype priors" in capsys.readouterr().err
    got = load_checkpoint(tgt)
    # the target's prototypes were measured on its old router: they must not stay with the new one
    assert got.prior_prototypes is None
    with safe_open(str(tgt), framework="pt") as f:
        assert "F32" not in {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (not a dict)
    entry = read_manifest()["mine"]
    assert entry["sha256"] == sha256_file(tgt) and entry["bytes"] == tgt.stat().st_size


@pytest.mark.parametrize("change", ["router", "experts"])
def test_graft_refuses_a_router_that_cannot_serve_the_target(tmp_path: Path, change: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_random_model().cfg
    if change == "router":
        router = dataclasses.replace(cfg.router, head_hidden=cfg.router.head_hidden // 2)
        other = dataclasses.replace(cfg, router=router)
    else:
        other = dataclasses.replace(cfg, experts=tuple(reversed(cfg.experts)))
    src = _saved(LoRAIR(other), tmp_path / "donor.safetensors")
    tgt = _saved(make_random_model(seed=2), tmp_path / "target.safetensors")
    before = tgt.read_bytes()
    assert G.main([str(src), str(tgt)]) == 2
    err = capsys.readouterr().err
    assert "cannot serve" in err and ("router configs differ" in err if change == "router" else "experts" in err)
    assert tgt.read_bytes() == before


def test_the_shipped_models_share_one_router() -> None:
    """lorair-lite and lorair-compact serve one router (README: a router run on one is grafted into
    the other), with the prototypes measured on it."""
    models = {name: load_checkpoint(weights_dir() / e["file"]) for name, e in read_manifest().items()
              if name in ("lorair-lite", "lorair-compact")}
    lite, compact = models["lorair-lite"], models["lorair-compact"]
    assert _same(lite.router.state_dict(), compact.router.state_dict())
    assert torch.equal(lite.prior_prototypes, compact.prior_prototypes)
