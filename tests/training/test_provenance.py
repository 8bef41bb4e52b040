"""The record of which run each expert's adapters came from: validated wherever it is read, and
carried through training for the experts a run leaves as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorair_desktop.core import save_checkpoint
from lorair_desktop.core.checkpoint import load_checkpoint, read_metadata, sha256_file
from lorair_desktop.errors import LoraIRError
from lorair_desktop.training import merge_experts as M
from lorair_desktop.training.provenance import BLEND_KEY, SOURCES_KEY, Provenance
from tests.conftest import make_random_model
from tests.training.test_train_run import train

SHA = "ab" * 32
EXPERTS = ("noise", "haze")


@pytest.mark.parametrize(("meta", "why"), [
    ({SOURCES_KEY: "{not json"}, "is not JSON"),
    ({SOURCES_KEY: '["noise"]'}, "is not a mapping"),
    ({SOURCES_KEY: json.dumps({"jpeg": SHA})}, "names jpeg, not an expert of this model"),
    ({SOURCES_KEY: json.dumps({"noise": "abc"})}, "the source of noise is not a sha256"),
    ({SOURCES_KEY: json.dumps({"noise": SHA}), BLEND_KEY: json.dumps({"haze": 0.5})}, "haze is blended but has no"),
    ({SOURCES_KEY: json.dumps({"noise": SHA}), BLEND_KEY: json.dumps({"noise": 1.5})}, "not between 0 and 1"),
    ({SOURCES_KEY: json.dumps({"noise": SHA}), BLEND_KEY: json.dumps({"noise": True})}, "not between 0 and 1"),
])
def test_a_malformed_record_is_refused(meta: dict[str, str], why: str) -> None:
    with pytest.raises(LoraIRError, match="merged-experts record is malformed") as exc:
        Provenance.from_meta(meta, "x.safetensors", EXPERTS)
    assert why in str(exc.value)


def test_a_record_round_trips_and_narrows() -> None:
    record = Provenance().with_source(["noise"], SHA).with_source(["haze"], "cd" * 32, blend=0.25)
    back = Provenance.from_meta(record.to_meta(), "x", EXPERTS)
    assert back == record and back.blends == {"haze": 0.25}
    assert back.only(["noise"]) == Provenance({"noise": SHA}, {})
    assert back.with_source(["haze"], SHA).blends == {}  # taken whole again: no longer a blend
    assert Provenance().to_meta() == {}


def test_merge_refuses_a_target_with_a_malformed_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_random_model(seed=3)
    tgt, src = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_checkpoint(model, tgt, meta={SOURCES_KEY: '{"noise": 7}'})
    save_checkpoint(model, src)
    before = tgt.read_bytes()
    assert M.main([str(tgt), str(src), "--experts", "haze"]) == 2
    err = capsys.readouterr().err
    assert "a.safetensors: its merged-experts record is malformed (the source of noise is not a sha256: 7)" in err
    assert "Traceback" not in err and tgt.read_bytes() == before


def test_training_carries_the_record_of_the_experts_it_leaves(tiny_config: Path, photo_folder: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A run started from a merged checkpoint keeps, in its own checkpoint, where the experts it does
    not train came from; an expert it trains becomes its own (the record of it is dropped)."""
    train(tiny_config, photo_folder, tmp_path / "start", "base", 2)
    start = tmp_path / "start" / "model.safetensors"
    merged = tmp_path / "merged.safetensors"
    M.merge_experts(start, start, ["noise", "haze"], merged, blend=0.5)
    donor = sha256_file(start)
    train(tiny_config, photo_folder, tmp_path / "noise", "experts", 2, "--init-from", str(merged), "--tasks", "noise")
    meta = read_metadata(tmp_path / "noise" / "model.safetensors")
    assert Provenance.from_meta(meta, "run") == Provenance({"haze": donor}, {"haze": 0.5})
    train(tiny_config, photo_folder, tmp_path / "both", "experts", 2, "--init-from", str(merged))
    meta = read_metadata(tmp_path / "both" / "model.safetensors")
    assert SOURCES_KEY not in meta and BLEND_KEY not in meta
    # a run from a checkpoint whose record is malformed stops before it trains
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(load_checkpoint(start), bad, meta={SOURCES_KEY: "nope"})
    with pytest.raises(AssertionError):
        train(tiny_config, photo_folder, tmp_path / "bad", "experts", 2, "--init-from", str(bad))
    assert "bad.safetensors: its merged-experts record is malformed" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "model.safetensors").exists()
