"""`lorair plugins install krita|gimp [--dest DIR] [--uninstall]`."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorair_desktop import plugins_install as pi
from lorair_desktop.bridge import PROTOCOL_VERSION
from lorair_desktop.errors import LoraIRError

from .support import REPO

BRIDGE = REPO / "lorair_desktop" / "bridge"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorair_desktop.cli", "plugins", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize("host, platform, env, expected", [
    ("krita", "linux", {}, "~/.local/share/krita/pykrita"),
    ("krita", "linux", {"XDG_DATA_HOME": "/x/data"}, "/x/data/krita/pykrita"),
    ("gimp", "linux", {}, "~/.config/GIMP/3.0/plug-ins"),
    ("gimp", "linux", {"XDG_CONFIG_HOME": "/x/cfg"}, "/x/cfg/GIMP/3.0/plug-ins"),
    ("gimp", "linux", {"GIMP3_DIRECTORY": "/x/g3"}, "/x/g3/plug-ins"),
    ("krita", "darwin", {}, "~/Library/Application Support/krita/pykrita"),
    ("gimp", "darwin", {}, "~/Library/Application Support/GIMP/3.0/plug-ins"),
    ("krita", "win32", {"APPDATA": "C:/Users/u/AppData/Roaming"}, "C:/Users/u/AppData/Roaming/krita/pykrita"),
    ("gimp", "win32", {"APPDATA": "C:/Users/u/AppData/Roaming"}, "C:/Users/u/AppData/Roaming/GIMP/3.0/plug-ins"),
])
def test_default_folders_per_os(host: str, platform: str, env: dict[str, str], expected: str) -> None:
    home = Path("/home/u")
    got = pi.default_dest(host, platform=platform, env=env, home=home)
    assert got == Path(expected.replace("~", str(home)))


def test_krita_install_vendors_the_bridge_and_records_the_worker_command(tmp_path: Path) -> None:
    proc = cli("install", "krita", "--dest", str(tmp_path), "--worker-command", "/opt/lorair/bin/lorair worker")
    assert proc.returncode == 0, proc.stderr
    assert "Python Plugin Manager" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lorair_krita", "lorair_krita.desktop"]
    assert "X-KDE-Library=lorair_krita" in (tmp_path / "lorair_krita.desktop").read_text()
    vendor = tmp_path / "lorair_krita" / "vendor"
    cmp = filecmp.dircmp(BRIDGE, vendor / "bridge", ignore=["__pycache__"])
    assert cmp.left_only == cmp.right_only == cmp.diff_files == [] and cmp.common_files
    record = json.loads((vendor / "install.json").read_text())
    assert record["protocol"] == PROTOCOL_VERSION and record["host"] == "krita"
    assert record["worker_command"] == ["/opt/lorair/bin/lorair", "worker"]


def test_gimp_install_makes_the_plug_in_executable(tmp_path: Path) -> None:
    assert cli("install", "gimp", "--dest", str(tmp_path)).returncode == 0
    exe = tmp_path / "lorair-restore" / "lorair-restore.py"
    assert os.access(exe, os.X_OK) and exe.read_text().startswith("#!/usr/bin/env python3")
    assert (tmp_path / "lorair-restore" / "lorair_gimp" / "vendor" / "bridge" / "client.py").is_file()


def test_reinstall_replaces_and_uninstall_removes_only_ours(tmp_path: Path) -> None:
    (tmp_path / "someone_elses_plugin").mkdir()
    pi.install("krita", tmp_path, ["a"])
    stale = tmp_path / "lorair_krita" / "stale.py"
    stale.write_text("")
    pi.install("krita", tmp_path, ["b"])
    assert not stale.exists()  # a reinstall is a clean copy
    assert json.loads((tmp_path / "lorair_krita" / "vendor" / "install.json").read_text())["worker_command"] == ["b"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lorair-install")]
    proc = cli("install", "krita", "--dest", str(tmp_path), "--uninstall")
    assert proc.returncode == 0 and "removed" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["someone_elses_plugin"]
    proc = cli("install", "krita", "--dest", str(tmp_path), "--uninstall")
    assert proc.returncode == 0 and "nothing to remove" in proc.stdout


def test_a_foreign_folder_of_the_same_name_is_never_touched(tmp_path: Path) -> None:
    (tmp_path / "lorair-restore").mkdir()
    (tmp_path / "lorair-restore" / "mine.txt").write_text("keep")
    with pytest.raises(LoraIRError, match="not installed by"):
        pi.install("gimp", tmp_path)
    with pytest.raises(LoraIRError, match="not installed by"):
        pi.uninstall("gimp", tmp_path)
    assert (tmp_path / "lorair-restore" / "mine.txt").read_text() == "keep"
    proc = cli("install", "gimp", "--dest", str(tmp_path))
    assert proc.returncode == 2 and "hint:" in proc.stderr


def test_the_vendored_plugins_import_only_the_standard_library(tmp_path: Path) -> None:
    """In a fresh interpreter with no site-packages, the installed logic modules and their vendored
    bridge import (Krita's and GIMP's Python have nothing else)."""
    pi.install("krita", tmp_path / "k")
    pi.install("gimp", tmp_path / "g")
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import lorair_krita.restore as r, lorair_gimp.logic as g\n"
        "assert r.hostkit.__name__ == 'lorair_krita.vendor.bridge.hostkit', r.hostkit\n"
        "assert g.hostkit.__name__ == 'lorair_gimp.vendor.bridge.hostkit', g.hostkit\n"
        "assert r.hostkit.install_record()['host'] == r.PLUGIN.host == 'krita'\n"
        "assert g.hostkit.install_record()['host'] == g.PLUGIN.host == 'gimp'\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'torch', 'PySide6', 'lorair_desktop'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-S", "-I", "-c", code, str(tmp_path / "k"),
                           str(tmp_path / "g" / "lorair-restore")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("folder, package, module", [
    ("krita", "lorair_krita", "restore"),
    ("gimp/lorair-restore", "lorair_gimp", "logic"),
])
def test_a_plugin_copied_without_its_vendored_bridge_says_how_to_fix_it(tmp_path: Path, folder: str, package: str,
                                                                        module: str) -> None:
    """The sources as they are in git, copied by hand: no vendor/ folder."""
    code = f"import sys; sys.path.insert(0, sys.argv[1])\nimport {package}.{module}\n"
    proc = subprocess.run([sys.executable, "-B", "-S", "-I", "-c", code, str(REPO / "plugins" / folder)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "bridge module is missing" in proc.stderr
    assert f"`lorair plugins install {folder.split('/')[0]}`" in proc.stderr
