"""Export of a trained run: fp16 weights, manifest (sha256), preset, model card; round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lorair_desktop.cli import main
from lorair_desktop.core.checkpoint import load_checkpoint, load_model, read_checkpoint, resolve_model, sha256_file
from lorair_desktop.core.config import resources_dir
from lorair_desktop.errors import ConfigError
from lorair_desktop.training import export as E


@pytest.fixture(scope="module")
def trained_run(tiny_config: Path, photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run through all three stages, plus a quick evaluation of it in run/eval."""
    run = tmp_path_factory.mktemp("run")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--preset", str(tiny_config), "--stage", "all", "--data", str(photo_folder),
                     "--steps", "20", "--batch", "4", "--context", "64", "--crop", "32", "--run-dir", str(run)]) == 0
        assert main(["eval", "--model", str(run / "model.safetensors"), "--data", str(photo_folder), "--quick",
                     "--crop", "64", "--out", str(run / "eval"), "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(n)
    return run


@pytest.fixture
def resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of resources/ (model configs), so exports never touch the repository."""
    root = tmp_path / "resources"
    shutil.copytree(resources_dir() / "model_configs", root / "model_configs")
    monkeypatch.setenv("LORAIR_RESOURCES", str(root))
    return root


def test_export_round_trip(trained_run: Path, resources: Path) -> None:
    src = trained_run / "model.safetensors"
    (resources / "weights").mkdir()
    other = {"sources": {"x": {"files": {}}}, "models": {"keep-me": {"file": "k.safetensors", "sha256": "0" * 64}}}
    (resources / "weights" / "manifest.json").write_text(json.dumps(other))
    res = E.export_model(src, "lorair-test-tiny")
    weights = resources / "weights" / "lorair-test-tiny.safetensors"
    assert Path(res["path"]) == weights and weights.is_file()
    assert res["preset"] == "written" and (resources / "model_configs" / "lorair-test-tiny.json").is_file()
    manifest = json.loads((resources / "weights" / "manifest.json").read_text())
    entry = manifest["models"]["lorair-test-tiny"]
    assert manifest["sources"] == other["sources"] and "keep-me" in manifest["models"]  # the rest is kept
    assert entry == {"file": weights.name, "sha256": sha256_file(weights), "bytes": weights.stat().st_size,
                     "config": "lorair-test-tiny"}
    assert res["fp16_check"]["ok"]
    assert res["fp16_check"]["max_abs"] <= E.FP16_TOLERANCE["max_abs"]
    # fp16 on disk: about half the fp32 run checkpoint
    assert weights.stat().st_size < 0.6 * src.stat().st_size
    _, tensors, meta = read_checkpoint(weights)
    assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
    assert meta["source_sha256"] == sha256_file(src)
    # loads by name through the manifest, with the sha256 verified
    entry2 = resolve_model("lorair-test-tiny")
    assert entry2.weights == weights and entry2.sha256 == entry["sha256"]
    model = load_model("lorair-test-tiny")
    assert model.cfg.name == "lorair-test-tiny" and next(model.parameters()).dtype == torch.float32
    # a second export with the same config reuses the preset; a damaged file is refused on load
    assert E.export_model(src, "lorair-test-tiny")["preset"] == "existing"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(Exception, match="checksum"):
        load_model("lorair-test-tiny")


def test_export_is_reproducible_with_source_date_epoch(
    trained_run: Path, resources: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SOURCE_DATE_EPOCH the same run exports to byte-identical weights; a bad value is refused."""
    weights = resources / "weights" / "lorair-test-tiny.safetensors"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764547200")
    first = E.export_model(trained_run / "model.safetensors", "lorair-test-tiny")["sha256"]
    assert read_checkpoint(weights)[2]["exported"] == "2025-12-01T00:00:00+00:00"
    assert E.export_model(trained_run / "model.safetensors", "lorair-test-tiny")["sha256"] == first
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ConfigError, match="SOURCE_DATE_EPOCH"):
        E.export_model(trained_run / "model.safetensors", "lorair-test-tiny")
    assert sha256_file(weights) == first  # the shipped file is left as it was


def test_export_refuses_a_mismatching_preset(trained_run: Path, resources: Path) -> None:
    with pytest.raises(ConfigError, match="differs from the preset"):
        E.export_model(trained_run / "model.safetensors", "lorair-compact")
    assert not (resources / "weights" / "lorair-compact.safetensors").exists()


def test_model_card(trained_run: Path, resources: Path, tmp_path: Path) -> None:
    res = E.export_model(trained_run / "model.safetensors", "lorair-test-tiny")
    card = E.write_model_card(trained_run, trained_run / "eval", tmp_path / "card.md", res).read_text()
    for needle in ("# Model card: lorair-test-tiny", res["sha256"], "## Data", "## Recipe", "## Hardware",
                   "## Validation", "| noise σ25 |", "| router | router", "20 / 20", "custom folder",
                   "- prototype priors:"):
        assert needle in card, needle
    assert res["prototypes"] and load_checkpoint(Path(res["path"])).prior_prototypes is not None  # from the run
    assert "img" in card  # image names of the run
    assert "## Training history" not in card
    assert "a share under" not in card  # this preset keeps both top-2 shares (lora.min_share 0)
    # without an evaluation the card says so
    assert "Not evaluated yet" in E.write_model_card(trained_run, None, tmp_path / "c2.md").read_text()
    # a maintainer's notes in run.json become the card's training history
    run_json = trained_run / "run.json"
    original = run_json.read_text()
    try:
        run = json.loads(original)
        run["recipe"]["experts"] = {**run["recipe"]["experts"], "full": True, "tasks": "noise,jpeg=2", "mixed": 0.2,
                                    "flat_crops": 0.3}
        h200 = {"device": "cuda", "cpu": "Xeon", "cores": 16, "torch_threads": 16, "gpu": "NVIDIA H200",
                "torch": "2.11"}
        run["recipe"]["base"] = {**run["recipe"]["base"], "time_schedule": True, "minutes": 3.6,
                                 "crops_per_context": 4, "hardware": h200}
        run["config"]["lora"] = {**run["config"]["lora"], "min_share": 0.1}
        run_json.write_text(json.dumps({**run, "notes": ["session 2: base +3000 steps"]}))
        card = E.write_model_card(trained_run, None, tmp_path / "c3.md").read_text()
        assert "## Training history\n\n- session 2: base +3000 steps" in card
        assert "softmax, a share under 10% left out;" in card  # the routing rule, as the config states it
        # a stage trained on chosen tasks (lorair train --tasks) says so in the recipe
        assert ("LoRA experts + base network (full fine-tuning); tasks noise,jpeg=2; 20 % of samples with two "
                "degradations; 30 % of crops without the texture preference |") in card
        assert card.count("; tasks") == 1
        # a stage on a time schedule states its budget, and several crops per context say how many
        base_row = next(line for line in card.splitlines() if line.startswith("| base |"))
        assert "(schedule over 3.6 min)" in base_row and " ×4 / " in base_row, base_row
        # a run that moved between machines names each stage's
        hardware = card.split("## Hardware", 1)[1].split("##", 1)[0]
        assert "- base: cuda: Xeon, 16 cores, 16 torch threads, GPU NVIDIA H200" in hardware, hardware
        assert "- router, experts: " in hardware, hardware
    finally:
        run_json.write_text(original)


def test_export_cli(trained_run: Path, resources: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = E.main([str(trained_run / "model.safetensors"), "--name", "lorair-test-tiny", "--eval",
                 str(trained_run / "eval" / "eval.json"), "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "sha256" in out and "fp16 vs fp32" in out
    assert (resources / "weights" / "lorair-test-tiny.md").is_file()
    assert E.main([str(trained_run / "model.safetensors"), "--name", "lorair-compact"]) == 2


def test_export_measures_prototypes_a_run_lacks(trained_run: Path, resources: Path, photo_folder: Path,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    from lorair_desktop.core.checkpoint import save_checkpoint
    from lorair_desktop.training.dataset import DatasetError, ImageBank

    old = load_checkpoint(trained_run / "model.safetensors")
    old.prior_prototypes = None  # a run from before prototypes existed
    src = tmp_path / "old-run" / "model.safetensors"
    save_checkpoint(old, src)
    monkeypatch.setattr(E, "photo_bank", lambda split: ImageBank.from_folder(photo_folder, split))
    res = E.export_model(src, "lorair-test-tiny")
    assert res["prototypes"] and load_checkpoint(Path(res["path"])).prior_prototypes is not None

    def no_photos(split: str) -> ImageBank:
        raise DatasetError("the training photos are not in /nowhere")

    monkeypatch.setattr(E, "photo_bank", no_photos)  # without photos: exported, with a warning saying so
    res = E.export_model(src, "lorair-test-tiny")
    assert not res["prototypes"] and load_checkpoint(Path(res["path"])).prior_prototypes is None
    assert "will not steer the prior" in caplog.text
