"""lorair_desktop.atomic: a file is replaced whole or left as it was."""

from pathlib import Path

import pytest

from lorair_desktop.atomic import replacing, write_text


def test_write_text_replaces_the_file_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "settings.json"
    target.write_text("old", encoding="utf-8")
    write_text(target, "névé\n")
    assert target.read_text(encoding="utf-8") == "névé\n"
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_half_written_one(tmp_path: Path) -> None:
    target = tmp_path / "photo.png"
    target.write_bytes(b"the user's photo")
    with pytest.raises(RuntimeError, match="disk full"), replacing(target) as tmp:
        tmp.write_bytes(b"half a new fi")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"the user's photo"
    assert [p.name for p in tmp_path.iterdir()] == ["photo.png"]


def test_a_block_that_writes_nothing_fails_without_touching_the_file(tmp_path: Path) -> None:
    target = tmp_path / "card.md"
    target.write_text("kept", encoding="utf-8")
    with pytest.raises(FileNotFoundError), replacing(target):
        pass  # the writer produced no file: the rename fails, the original stays
    assert target.read_text(encoding="utf-8") == "kept"


def test_each_write_gets_its_own_hidden_temporary_name(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    with replacing(target) as a, replacing(target) as b:
        assert a != b and a.parent == b.parent == tmp_path
        assert a.name.startswith(".run.json.") and a.suffix == ".tmp"
        a.write_text("first", encoding="utf-8")
        b.write_text("second", encoding="utf-8")
    assert target.read_text(encoding="utf-8") == "first"  # the outer block ends last
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
