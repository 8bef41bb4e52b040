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
from lorair_desktop.training.evaluate import to_markdown


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
    junk = resources / "junk.json"  # an --eval that is no evaluation: a clear error, not a traceback
    junk.write_text('{"rows": 3}')
    assert E.main([str(trained_run / "model.safetensors"), "--name", "lorair-test-tiny", "--eval", str(junk)]) == 2
    assert "is not a `lorair eval` report" in capsys.readouterr().err


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


def test_export_cli_meta(trained_run: Path, resources: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = resources / "weights" / "lorair-test-tiny.safetensors"
    assert E.main([str(trained_run / "model.safetensors"), "--name", "lorair-test-tiny", "--no-card",
                   "--meta", "note=session 20", "--meta", "experts_source_sha256={}"]) == 0
    meta = read_checkpoint(weights)[2]
    assert meta["note"] == "session 20" and meta["experts_source_sha256"] == "{}"
    for bad in ("no-equals-sign", "config={}", "=x"):
        with pytest.raises(SystemExit) as exc:
            E.main([str(trained_run / "model.safetensors"), "--name", "lorair-test-tiny", "--meta", bad])
        assert exc.value.code == 2
        assert "KEY=VALUE" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# refreshing a shipped card in place (training.card_update)


def _shipped_card(trained_run: Path, resources: Path, tmp_path: Path) -> tuple[Path, str]:
    """An exported card grown by hand: a note above the table, a whole-photo subsection with a
    note below its table, a training history."""
    res = E.export_model(trained_run / "model.safetensors", "lorair-test-tiny")
    card = E.write_model_card(trained_run, trained_run / "eval", tmp_path / "card.md", res)
    table = to_markdown(json.loads((trained_run / "eval" / "eval.json").read_text())).split("\n\n")[0]
    text = card.read_text().replace(
        "## Validation\n\n", "## Validation\n\nHAND NOTE above the table.\n\n"
    ).replace(
        "\n## Status", f"\n### Whole photos\n\nWHOLE PARAGRAPH.\n\n{table}\n\nWHOLE NOTE below.\n\n## Status"
    ).replace("\n## Hardware", "\n## Training history\n\n- session 1: the first run.\n\n## Hardware")
    card.write_text(text)
    return card, text


def test_card_update_keeps_the_hand_kept_text(trained_run: Path, resources: Path, tmp_path: Path) -> None:
    from lorair_desktop.training.card_update import update_model_card

    card, before = _shipped_card(trained_run, resources, tmp_path)
    ev = json.loads((trained_run / "eval" / "eval.json").read_text())
    row = ev["rows"][0]
    row["model"]["psnr"] = row["input"]["psnr"] + 12.3456  # a new measurement, easy to find
    for t in ev["targets"]:
        t["met"] = True
    ev["compare"] = {"rows": []}  # a --compare report: its comparison is not a card table
    new_eval = tmp_path / "new" / "eval.json"
    new_eval.parent.mkdir()
    new_eval.write_text(json.dumps(ev))
    done = update_model_card(card, crops_eval=new_eval, whole_eval=new_eval.parent, history="session 2: more steps.")
    after = card.read_text()
    assert len(done) == 3, done
    for kept in ("HAND NOTE above the table.", "WHOLE PARAGRAPH.", "WHOLE NOTE below.", "## Data", "## Recipe",
                 "- session 1: the first run.\n- session 2: more steps.\n\n## Hardware"):
        assert kept in after, kept
    assert after.count(f"| {row['row']} |") == 2 and after.count("+12.35 |") == 2  # both tables re-measured
    assert "All measured targets met." in after and "Targets not reached yet" not in after
    assert after.count("| target | measured |") == 1 and after.count("## Status") == 1
    # the same entry is not added twice; an unchanged evaluation leaves the card as it was
    once = card.read_text()
    update_model_card(card, crops_eval=new_eval, history="- session 2: more steps.")
    assert card.read_text() == once
    # and the first evaluation brings the first card back, word for word, with the new history entry
    update_model_card(card, crops_eval=trained_run / "eval", whole_eval=trained_run / "eval")
    first = "- session 1: the first run.\n"
    assert card.read_text() == before.replace(first, first + "- session 2: more steps.\n")


def test_card_update_weights_name_merged_experts(trained_run: Path, resources: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from lorair_desktop.training import card_update as U
    from lorair_desktop.training.merge_experts import merge_experts

    card, _ = _shipped_card(trained_run, resources, tmp_path)
    merged = tmp_path / "merged.safetensors"
    merge_experts(trained_run / "model.safetensors", trained_run / "model.safetensors", ["noise"], merged)
    res = E.export_model(merged, "lorair-test-tiny")  # export keeps the merged experts' record
    assert U.main([str(card), "--weights", "lorair-test-tiny"]) == 0
    assert "weights lorair-test-tiny.safetensors" in capsys.readouterr().out
    text = card.read_text()
    assert f"sha256 `{res['sha256']}`" in text
    assert (f"from a run checkpoint with sha256 `{sha256_file(merged)}`; the noise expert from a run checkpoint "
            f"with sha256 `{sha256_file(trained_run / 'model.safetensors')}`") in text
    blended = tmp_path / "blended.safetensors"  # two runs of one expert averaged: the card says so
    merge_experts(merged, trained_run / "model.safetensors", ["haze"], blended, blend=0.5)
    E.export_model(blended, "lorair-test-tiny")
    assert U.main([str(card), "--weights", "lorair-test-tiny"]) == 0
    run_sha = sha256_file(trained_run / "model.safetensors")
    assert (f"; the haze expert blended (0.5 of its own adapters, 0.5 of those of a run checkpoint with sha256 "
            f"`{run_sha}`); the noise expert from a run checkpoint with sha256 `{run_sha}`\n") in card.read_text()
    card.write_text(text)
    # a card without the parts to refresh, or a file that is no evaluation: a clear error, the card untouched
    bare = tmp_path / "bare.md"
    bare.write_text("# notes\n")
    assert U.main([str(bare), "--eval", str(trained_run / "eval")]) == 2
    assert "has no '## Validation' heading" in capsys.readouterr().err and bare.read_text() == "# notes\n"
    (tmp_path / "junk.json").write_text("[1, 2]")
    assert U.main([str(card), "--whole", str(tmp_path / "junk.json")]) == 2
    assert "is not a `lorair eval` report" in capsys.readouterr().err and card.read_text() == text
    assert U.main([str(card), "--weights", "no-such-model"]) == 2
    with pytest.raises(SystemExit):
        U.main([str(card)])  # nothing to refresh
    # a history entry as long as the card's real ones, given as text or in a file
    long_entry = "Session 3: " + "a long account of the run, " * 60
    assert U.main([str(card), "--history", long_entry]) == 0
    entry_file = tmp_path / "entry.md"
    entry_file.write_text("- Session 4: from a file.\n")
    assert U.main([str(card), "--history-file", str(entry_file)]) == 0
    assert f"- {long_entry.strip()}\n- Session 4: from a file.\n\n## Hardware" in card.read_text()
    with pytest.raises(SystemExit):
        U.main([str(card), "--history-file", str(tmp_path / "missing.md")])
    assert "cannot read --history-file" in capsys.readouterr().err
