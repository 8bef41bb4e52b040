"""`lorair data`: list / verify (fetch is covered by test_photos through fetch_photos)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorair_desktop.cli import main
from lorair_desktop.training.photos import load_manifest


def test_list_a_folder(photo_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list", "--data", str(photo_folder), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8 and {r["split"] for r in rows} == {"train", "val"}
    assert all(r["width"] == 160 and r["megapixels"] == pytest.approx(0.03, abs=0.01) for r in rows)
    assert main(["data", "list", "--data", str(photo_folder), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "val: 2 images" in out and "train:" not in out.splitlines()[-1]


def test_list_and_verify_the_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "none"
    assert main(["data", "list", "--dest", str(empty), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    entries = load_manifest()
    assert [r["name"] for r in rows] == [e.name for e in entries]
    assert not any(r["present"] for r in rows) and all(len(r["sha256"]) == 64 for r in rows)
    assert main(["data", "list", "--dest", str(empty)]) == 0
    assert f"{len(entries)} missing" in capsys.readouterr().out
    assert main(["data", "verify", "--dest", str(empty)]) == 1
    assert "lorair data fetch" in capsys.readouterr().out
