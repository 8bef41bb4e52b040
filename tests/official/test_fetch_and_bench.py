"""`lorair models fetch` end to end (manifest sources -> local server -> verify -> convert -> install)
and the Setting I benchmark function on a tiny model of the same architecture."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from lorair_desktop.cli import main
from lorair_desktop.core.checkpoint import load_model, read_manifest, read_sources, resolve_model
from lorair_desktop.core.config import resources_dir
from lorair_desktop.errors import ModelNotTrained

from .conftest import small_preset, write_official
from .httpserver import Served


def test_shipped_manifest_knows_where_setting1_lives() -> None:
    src = read_sources()["lorair-setting1"]
    assert src["converter"] == "official-lorair"
    for role, name in (("router", "setting1_router.pth"), ("ir", "setting1_ir.pth")):
        f = src["files"][role]
        assert f["url"] == f"https://huggingface.co/shallowdream204/LoRA-IR/resolve/main/{name}"
        assert f["sha256"] is None or len(f["sha256"]) == 64


@pytest.fixture
def resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_tower: str) -> Path:
    """A private copy of resources/ with a tiny Setting I preset, so the real manifest stays untouched."""
    res = tmp_path / "resources"
    shutil.copytree(resources_dir() / "model_configs", res / "model_configs")
    (res / "weights").mkdir()
    (res / "model_configs" / "tiny-setting1.json").write_text(json.dumps(small_preset()))
    monkeypatch.setenv("LORAIR_RESOURCES", str(res))
    return res


def _sources(server: Served, files: dict[str, Path], sha: bool) -> dict:
    out = {}
    for role, p in files.items():
        server.files[f"/{p.name}"] = p.read_bytes()
        out[role] = {"url": f"{server.base}/{p.name}", "file": p.name,
                     "sha256": hashlib.sha256(p.read_bytes()).hexdigest() if sha else None}
    return {"tiny-setting1": {"converter": "official-lorair", "files": out}}


def test_fetch_installs_a_model_that_loads(server: Served, resources: Path, tmp_path: Path, capsys) -> None:
    rp, ip = write_official(tmp_path / "release", seed=4)
    manifest = resources / "weights" / "manifest.json"
    manifest.write_text(json.dumps({"models": {}, "sources": _sources(server, {"router": rp, "ir": ip}, sha=False)}))
    with pytest.raises(ModelNotTrained) as err:
        resolve_model("tiny-setting1")
    assert "lorair models fetch tiny-setting1" in err.value.hint
    cache = tmp_path / "cache"
    # Unknown sha256: refused before anything is downloaded.
    assert main(["models", "fetch", "tiny-setting1", "--cache", str(cache)]) == 2
    assert "--no-verify" in capsys.readouterr().err and server.ranges == []
    # With sha256s recorded, it downloads, verifies, converts and installs.
    manifest.write_text(json.dumps({"models": {}, "sources": _sources(server, {"router": rp, "ir": ip}, sha=True)}))
    assert main(["models", "fetch", "tiny-setting1", "--cache", str(cache), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    entry = read_manifest()["tiny-setting1"]
    assert entry["file"] == "tiny-setting1.safetensors" and entry["sha256"] == info["sha256"]
    assert entry["router_sha256"] == hashlib.sha256(rp.read_bytes()).hexdigest()
    assert not any((cache / "tiny-setting1").iterdir())  # release files removed after conversion
    assert "sources" in json.loads(manifest.read_text())  # other manifest sections survive
    model = load_model("tiny-setting1")  # verifies the sha256 recorded in the manifest
    assert model.experts == ("snow", "rain-fog", "raindrop")
    assert main(["models", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "tiny-setting1")
    assert row["weights"].endswith("tiny-setting1.safetensors")


def test_fetch_unknown_model_and_missing_name(resources: Path, capsys) -> None:
    assert main(["models", "fetch", "no-such-model"]) == 2
    assert "no download is known" in capsys.readouterr().err
    assert main(["models", "fetch"]) == 2
    assert "needs a model name" in capsys.readouterr().err


def test_bench_setting1_runs_on_a_tiny_model(small_preset_path: Path) -> None:
    from lorair_desktop.core.bench_official import bench_setting1, format_bench

    calls: list[tuple[int, int]] = []
    r = bench_setting1(0.02, preset=small_preset_path, tile=64, overlap=16, progress=lambda d, t: calls.append((d, t)))
    assert r["megapixels"] == pytest.approx(0.02, rel=0.05) and r["tiles"] == len(calls) > 1
    assert r["s_per_mp"] > 0 and r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0
    assert r["weights"].startswith("random") and "s/MP" in format_bench(r)
