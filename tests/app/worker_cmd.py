"""The command that starts a test worker, for the fixtures (conftest.py) and for gui_session.py, which
runs as a script: standard library only, no pytest."""

from __future__ import annotations

import sys
from pathlib import Path


def worker_command(model: Path | str, idle_minutes: float = 5) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lorair_desktop.cli",
        "worker",
        "--port",
        "0",
        "--model",
        str(model),
        "--idle-exit",
        str(idle_minutes),
    ]
