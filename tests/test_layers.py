"""ARCHITECTURE.md's dependency rules, checked by importing each layer in a fresh interpreter."""

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys, importlib
importlib.import_module({module!r})
mods = set(sys.modules)
print(json.dumps(sorted(m for m in mods if m.split('.')[0] in {forbidden!r})))
"""

RULES = [
    ("lorair_desktop.core", ["PySide6", "PyQt5", "PyQt6", "http.server", "lorair_desktop.bridge",
                             "lorair_desktop.worker",
                             "lorair_desktop.app"]),
    ("lorair_desktop.bridge", ["numpy", "torch", "PySide6", "PyQt5", "PIL", "cv2", "platformdirs"]),
    ("lorair_desktop.bridge.hostkit", ["numpy", "torch", "PySide6", "PyQt5", "PIL", "cv2", "platformdirs"]),
    ("lorair_desktop.imageio", ["torch", "PySide6"]),
]


@pytest.mark.parametrize(("module", "forbidden"), RULES)
def test_layer_does_not_import(module: str, forbidden: list[str]) -> None:
    tops = sorted({f.split(".")[0] for f in forbidden})
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module, forbidden=tops)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    bad = [f for f in forbidden if f in loaded or any(m.startswith(f + ".") for m in loaded)]
    assert not bad, f"{module} imports {bad}"
