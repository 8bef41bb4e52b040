"""Where the worker's runtime file lives, and reading/writing it. Standard library only.

One source of truth for clients and the worker. The directory is, in order:
  1. ``$LORAIR_RUNTIME_DIR`` when set;
  2. Linux/BSD: ``$XDG_RUNTIME_DIR/lorair-desktop`` when that variable names a directory, else the
     per-user state directory ``${XDG_STATE_HOME:-~/.local/state}/lorair-desktop`` (not a shared
     /tmp path, where another user could create the folder first);
  3. macOS: ``~/Library/Caches/TemporaryItems/lorair-desktop`` (platformdirs' runtime dir);
  4. Windows: ``%LOCALAPPDATA%\\lorair-desktop\\Temp``.
The folder is made private (0700 on POSIX). The file ``worker.json`` there holds
``{"port", "token", "pid", "version", "protocol", "host"}`` with mode 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .protocol import E_FORBIDDEN, BridgeError

APP_NAME = "lorair-desktop"
RUNTIME_FILE = "worker.json"
LOG_FILE = "worker.log"
ENV_RUNTIME_DIR = "LORAIR_RUNTIME_DIR"
EXIT_ALREADY_RUNNING = 3  # a worker's exit code when another one already serves its runtime folder


def runtime_dir() -> Path:
    env = os.environ.get(ENV_RUNTIME_DIR)
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        return Path(base) / APP_NAME / "Temp"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "TemporaryItems" / APP_NAME
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        return Path(xdg) / APP_NAME
    state = os.environ.get("XDG_STATE_HOME") or str(home / ".local" / "state")
    return Path(state) / APP_NAME


def runtime_file(directory: Path | None = None) -> Path:
    return (directory or runtime_dir()) / RUNTIME_FILE


def log_file(directory: Path | None = None) -> Path:
    return (directory or runtime_dir()) / LOG_FILE


def ensure_private_dir(directory: Path) -> Path:
    """Create the folder (0700) or check that an existing one is ours and private."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name == "posix":
        st = directory.stat()
        if st.st_uid != os.getuid():
            raise BridgeError(
                E_FORBIDDEN,
                f"the runtime folder {directory} belongs to another user",
                f"remove it or point {ENV_RUNTIME_DIR} to a folder of your own",
            )
        if st.st_mode & 0o077:
            os.chmod(directory, 0o700)
    return directory


@dataclass(frozen=True)
class RuntimeInfo:
    port: int
    token: str
    pid: int
    version: str
    protocol: int
    host: str = "127.0.0.1"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_runtime(path: Path | None = None) -> RuntimeInfo | None:
    """The runtime file's content, or None when it is absent or unreadable (a stale/partial file)."""
    path = path or runtime_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return RuntimeInfo(
            port=int(data["port"]),
            token=str(data["token"]),
            pid=int(data["pid"]),
            version=str(data.get("version", "")),
            protocol=int(data.get("protocol", 0)),
            host=str(data.get("host", "127.0.0.1")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_runtime(info: RuntimeInfo, path: Path | None = None) -> Path:
    """Write atomically with mode 0600: readers never see a half-written or world-readable file."""
    path = path or runtime_file()
    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(info.to_dict(), f)
    os.replace(tmp, path)
    return path


def remove_runtime(pid: int, path: Path | None = None) -> None:
    """Remove the file only if it is still ours (a newer worker may have replaced it)."""
    path = path or runtime_file()
    info = read_runtime(path)
    if info is not None and info.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def pid_alive(pid: int) -> bool:
    """Best effort: False only when the process surely does not exist."""
    if pid <= 0:
        return False
    if os.name != "posix":
        return True  # no cheap stdlib check on Windows; the health ping decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
