"""Checkpoint round trip, sha256 and shape checks; presets without weights; device selection."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorair_desktop.core import checkpoint as ckpt
from lorair_desktop.core.device import inference_dtype, select_device
from lorair_desktop.core.errors import CheckpointError, DeviceError, ModelNotTrained


def test_round_trip_keeps_config_and_weights(small_model, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    sha = ckpt.save_checkpoint(small_model, path)
    assert sha == ckpt.sha256_file(path)
    loaded = ckpt.load_checkpoint(path)
    assert loaded.cfg == small_model.cfg
    a, b = small_model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_half_checkpoint_is_smaller_and_close(small_model, tmp_path: Path) -> None:
    full, half = tmp_path / "f.safetensors", tmp_path / "h.safetensors"
    ckpt.save_checkpoint(small_model, full)
    ckpt.save_checkpoint(small_model, half, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    m = ckpt.load_checkpoint(half)
    x = torch.rand(1, 3, 32, 32)
    prior = torch.randn(1, m.cfg.net.prior_dim)
    with torch.no_grad():
        assert (m.net(x, prior) - small_model.net(x, prior)).abs().max() < 5e-3


def test_shape_mismatch_names_the_key_and_shapes(small_model, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ckpt.save_checkpoint(small_model, path)
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors["net.intro.conv.weight"] = torch.zeros(5, 3, 3, 3)
    del tensors["net.ending.conv.bias"]
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError) as e:
        ckpt.load_checkpoint(path)
    msg = e.value.message
    assert "net.intro.conv.weight" in msg and "(5, 3, 3, 3)" in msg and "(16, 3, 3, 3)" in msg
    assert "net.ending.conv.bias" in msg


@pytest.mark.parametrize("note", ["plain ascii", "non-ASCII →→→→ escaped, the header grows past its padding"])
def test_canonical_header_in_place_or_streamed(tmp_path: Path, note: str) -> None:
    """A file safetensors wrote gets sorted header keys; tensors and metadata are unchanged."""
    tensors = {f"t{i:02d}": torch.full((3, i + 1), float(i)) for i in range(12)}
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path), metadata={"zeta": "1", "alpha": note})
    ckpt.canonicalize_file(path)
    raw = path.read_bytes()
    head = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert list(head) == sorted(head) and head["__metadata__"] == {"alpha": note, "zeta": "1"}
    back = load_file(str(path))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], v) for k, v in tensors.items())


def test_not_a_checkpoint(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        ckpt.load_checkpoint(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="no embedded config"):
        ckpt.load_checkpoint(plain)


def test_manifest_sha256_mismatch_and_missing_weights(small_model, tmp_path: Path, monkeypatch) -> None:
    res = tmp_path / "res"
    (res / "weights").mkdir(parents=True)
    (res / "model_configs").mkdir()
    src = Path(ckpt.__file__).resolve().parents[2] / "resources" / "model_configs"
    (res / "model_configs" / "lorair-compact.json").write_text((src / "lorair-compact.json").read_text())
    (res / "model_configs" / "clip").mkdir()
    monkeypatch.setenv("LORAIR_RESOURCES", str(res))
    with pytest.raises(ModelNotTrained, match="no trained weights"):
        ckpt.load_model("lorair-compact")
    w = res / "weights" / "lorair-compact.safetensors"
    sha = ckpt.save_checkpoint(small_model, w)
    manifest = {"models": {"lorair-compact": {"file": w.name, "sha256": sha, "config": "lorair-compact"}}}
    (res / "weights" / "manifest.json").write_text(json.dumps(manifest))
    assert ckpt.load_model("lorair-compact").cfg.name == "lorair-compact"
    manifest["models"]["lorair-compact"]["sha256"] = "0" * 64
    (res / "weights" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        ckpt.load_model("lorair-compact")


def test_device_selection_with_simulated_availability(monkeypatch) -> None:
    import lorair_desktop.core.device as dev

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "mps_available", lambda: False)
    assert select_device("auto").type == "cpu"
    with pytest.raises(DeviceError, match="no CUDA"):
        select_device("cuda")
    with pytest.raises(DeviceError, match="MPS"):
        select_device("mps")
    with pytest.raises(DeviceError, match="unknown device"):
        select_device("tpu")
    monkeypatch.setattr(dev, "mps_available", lambda: True)
    assert select_device("auto").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto").type == "cuda"
    assert select_device("cuda:1") == torch.device("cuda:1")
    assert inference_dtype(torch.device("cpu")) == torch.float32
    assert inference_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    # "auto" on a CPU is the caller's measured choice (the Restorer's); an explicit precision overrules it
    bf16 = lambda: torch.bfloat16  # noqa: E731
    assert inference_dtype(torch.device("cpu"), "auto", bf16) == torch.bfloat16
    assert inference_dtype(torch.device("cpu"), "fp32", bf16) == torch.float32
