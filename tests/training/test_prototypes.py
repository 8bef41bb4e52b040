"""Prototype priors: measured as the router's mean prior per degradation, added to a checkpoint in
place (manifest kept true), shipped with every model."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lorair_desktop.core.checkpoint import load_checkpoint, read_manifest, sha256_file, weights_dir
from lorair_desktop.training import prototypes as P
from lorair_desktop.training.dataset import ImageBank, build_validation_set


def test_prototypes_are_the_mean_prior_of_each_degradation(small_model, photo_folder: Path) -> None:
    bank = ImageBank.from_folder(photo_folder, "train")
    protos = P.measure_prototypes(small_model, bank, crops_per_image=1, seed=3)
    assert protos is not None and protos.shape == (small_model.cfg.num_experts, small_model.cfg.net.prior_dim)
    samples = build_validation_set(bank, small_model.experts, crop_size=P.CROP, crops_per_image=1, seed=3)
    with torch.no_grad():
        for label in (0, len(small_model.experts) - 1):
            x = torch.from_numpy(np.stack([s.degraded.transpose(2, 0, 1) for s in samples if s.label == label]))
            assert torch.allclose(protos[label], small_model.route(x).prior.mean(0), atol=1e-5)


def test_no_prototypes_for_experts_without_a_synthesiser(small_model, photo_folder: Path) -> None:
    custom = copy.deepcopy(small_model)
    custom.cfg = dataclasses.replace(custom.cfg, experts=("noise", "sepia", *custom.experts[2:]))
    assert P.measure_prototypes(custom, ImageBank.from_folder(photo_folder, "train")) is None


def test_adding_prototypes_in_place_updates_the_manifest(small_model_path: Path, photo_folder: Path,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "res"
    (root / "weights").mkdir(parents=True)
    monkeypatch.setenv("LORAIR_RESOURCES", str(root))
    path = weights_dir() / "mine.safetensors"
    shutil.copy(small_model_path, path)
    before = load_checkpoint(path)
    assert before.prior_prototypes is None
    (weights_dir() / "manifest.json").write_text(json.dumps({"models": {"mine": {
        "file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "config": "lorair-compact"}}}))
    assert P.main([str(path), "--data", str(photo_folder)]) == 0
    after = load_checkpoint(path)
    assert after.prior_prototypes is not None
    a, b = before.state_dict(), after.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the weights themselves are untouched
    entry = read_manifest()["mine"]
    assert entry["sha256"] == sha256_file(path) and entry["bytes"] == path.stat().st_size


def test_shipped_models_carry_their_prototypes() -> None:
    shipped = [weights_dir() / e["file"] for e in read_manifest().values()]
    for path in filter(Path.is_file, shipped):
        m = load_checkpoint(path)
        assert m.prior_prototypes is not None, path.name
        assert m.prior_prototypes.shape == (m.cfg.num_experts, m.cfg.net.prior_dim)
