"""`bridge` is copied into Krita's and GIMP's Python: it must import only the standard library,
and work when vendored under another package name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import lorair_desktop.bridge

BRIDGE = Path(lorair_desktop.bridge.__file__).parent

CHECK = """
import json, sys
before = set(sys.modules)
import {mod}
import {mod}.hostkit
c = {mod}.WorkerClient, {mod}.JobRequest, {mod}.BridgeError, {mod}.PROTOCOL_VERSION, {mod}.hostkit.Plugin
new = sorted(set(sys.modules) - before)
print(json.dumps(new))
"""


def _foreign(modules: list[str], own: str) -> list[str]:
    return [m for m in modules if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != own]


def test_bridge_imports_only_stdlib_in_fresh_interpreter() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(mod="lorair_desktop.bridge")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=BRIDGE.parents[1],
    )
    new = json.loads(out.stdout)
    assert "lorair_desktop.bridge.client" in new and "lorair_desktop.bridge.hostkit" in new
    assert _foreign(new, "lorair_desktop") == []
    assert not [m for m in new if m.startswith("lorair_desktop.") and not m.startswith("lorair_desktop.bridge")]


def test_bridge_works_vendored_under_another_name(tmp_path: Path) -> None:
    shutil.copytree(BRIDGE, tmp_path / "vendored_bridge", ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run(
        [sys.executable, "-E", "-s", "-c", CHECK.format(mod="vendored_bridge")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=tmp_path,
    )
    new = json.loads(out.stdout)
    assert "vendored_bridge.hostkit" in new
    assert _foreign(new, "vendored_bridge") == []
