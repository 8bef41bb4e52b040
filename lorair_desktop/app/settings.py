"""User settings persisted as JSON in the platformdirs config folder.

A plain dataclass rather than QSettings: one readable file the user can inspect or delete, and the
same values are easy to set in tests (LORAIR_DESKTOP_CONFIG overrides the path).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import platformdirs

from ..atomic import write_text
from ..bridge.protocol import ENSEMBLES

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
MAX_RECENT = 10


def default_path() -> Path:
    env = os.environ.get("LORAIR_DESKTOP_CONFIG")
    if env:
        return Path(env)
    return Path(platformdirs.user_config_dir("lorair-desktop", appauthor=False)) / "settings.json"


@dataclass
class Settings:
    last_folder: str = ""
    recent_files: list[str] = field(default_factory=list)
    device: str = "auto"
    margin: int = 32  # context pixels sent around a selection
    feather: float = 8.0
    tile: int = 0  # 0 = the worker chooses
    ensemble: int = 1  # self-ensemble passes per restore
    auto_analyze: bool = False
    jpeg_quality: int = 95
    batch_input: str = ""
    batch_output: str = ""
    window_geometry: str = ""  # base64 of QMainWindow.saveGeometry()
    window_state: str = ""  # base64 of QMainWindow.saveState()
    path: Path | None = field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        path = path or default_path()
        s = cls(path=path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return s
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable settings %s: %s", path, exc)
            return s
        known = {f.name: f for f in fields(cls) if f.name != "path"}
        for key, value in data.items() if isinstance(data, dict) else ():
            default = getattr(s, key, None)
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # a hand-edited "feather": 8 is still a float setting
            if key in known and type(value) is type(default):
                setattr(s, key, value)
        if s.device not in DEVICES:
            s.device = "auto"
        if s.ensemble not in ENSEMBLES:
            s.ensemble = 1
        return s

    def save(self) -> None:
        if self.path is None:
            return
        data = asdict(self)
        data.pop("path")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.path, json.dumps(data, indent=2))
        except OSError as exc:  # settings are a convenience: never fail the app over them
            log.warning("could not save settings to %s: %s", self.path, exc)

    def add_recent(self, file: str | Path) -> None:
        f = str(Path(file).resolve())
        self.recent_files = [f, *[r for r in self.recent_files if r != f][: MAX_RECENT - 1]]
