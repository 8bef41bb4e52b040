"""The runtime folder and file: one function for worker and clients, private permissions."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from lorair_desktop.bridge.runtime import (
    RuntimeInfo,
    ensure_private_dir,
    read_runtime,
    remove_runtime,
    runtime_dir,
    write_runtime,
)


def test_env_override_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LORAIR_RUNTIME_DIR", str(tmp_path / "rt"))
    assert runtime_dir() == tmp_path / "rt"


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG rules are for Linux/BSD")
def test_xdg_runtime_then_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LORAIR_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert runtime_dir() == tmp_path / "lorair-desktop"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert runtime_dir() == tmp_path / "state" / "lorair-desktop"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert runtime_dir() == tmp_path / "home" / ".local" / "state" / "lorair-desktop"


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_runtime_file_is_private_and_atomic(tmp_path: Path) -> None:
    d = tmp_path / "rt"
    info = RuntimeInfo(1234, "tok", os.getpid(), "0.1", 1)
    path = write_runtime(info, d / "worker.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert read_runtime(path) == info
    assert [p.name for p in d.iterdir()] == ["worker.json"]  # no temp file left behind
    remove_runtime(os.getpid() + 1, path)  # not ours: kept
    assert path.exists()
    remove_runtime(os.getpid(), path)
    assert not path.exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_open_folder_is_made_private(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    ensure_private_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_damaged_runtime_file_reads_as_absent(tmp_path: Path) -> None:
    p = tmp_path / "worker.json"
    assert read_runtime(p) is None
    p.write_text("{not json")
    assert read_runtime(p) is None
    p.write_text('{"port": "x"}')
    assert read_runtime(p) is None
