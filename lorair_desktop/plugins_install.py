"""`lorair plugins install krita|gimp [--dest DIR] [--uninstall]`: put the Krita / GIMP 3 plugin in place.

The plugins run in their host's own Python, so they cannot import `lorair_desktop`. Installing copies
the plugin sources from `plugins/<host>/`, then *vendors* `lorair_desktop.bridge` into the plugin's
package as `vendor/bridge` (one source of truth: the copy is made here, never kept in git), and
writes `vendor/install.json` recording the LoRA-IR version, the protocol version and the command
that starts the worker (this interpreter running `lorair worker`, unless `--worker-command` says
otherwise). Uninstalling removes only folders that carry that record.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import shlex
import shutil
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .bridge import PROTOCOL_VERSION, default_start_command
from .bridge.hostkit import RECORD  # where the vendored bridge looks for it
from .errors import LoraIRError

_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "vendor")


@dataclass(frozen=True)
class PluginSpec:
    host: str
    source: str  # folder under plugins/<host>/ that is copied as a whole
    package: str  # the Python package (inside the copied folder) that receives vendor/
    extra_files: tuple[str, ...]  # files under plugins/<host>/ copied next to `source`
    executable: str = ""  # made executable (GIMP runs plug-ins as programs)
    enable_hint: str = ""


SPECS: dict[str, PluginSpec] = {
    "krita": PluginSpec(
        "krita", "lorair_krita", "lorair_krita", ("lorair_krita.desktop",),
        enable_hint="In Krita: Settings > Configure Krita > Python Plugin Manager, tick "
                    "'LoRA-IR Restore', then restart Krita.",
    ),
    "gimp": PluginSpec(
        "gimp", "lorair-restore", "lorair-restore/lorair_gimp", (),
        executable="lorair-restore/lorair-restore.py",
        enable_hint="Restart GIMP 3; the filter is under Filters > Enhance > LoRA-IR Restore...",
    ),
}


def _version() -> str:
    try:
        return importlib.metadata.version("lorair-desktop")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def default_dest(host: str, platform: str = sys.platform, env: Mapping[str, str] | None = None,
                 home: Path | None = None) -> Path:
    """The per-user plugin folder of Krita 5/6 (`pykrita`) or GIMP 3 (`plug-ins`) on this OS."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    if platform == "win32":
        appdata = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
        return appdata / "krita" / "pykrita" if host == "krita" else appdata / "GIMP" / "3.0" / "plug-ins"
    if platform == "darwin":
        support = home / "Library" / "Application Support"
        return support / "krita" / "pykrita" if host == "krita" else support / "GIMP" / "3.0" / "plug-ins"
    if host == "krita":
        return Path(env.get("XDG_DATA_HOME") or home / ".local" / "share") / "krita" / "pykrita"
    if env.get("GIMP3_DIRECTORY"):  # GIMP's own override of its personal folder
        return Path(env["GIMP3_DIRECTORY"]) / "plug-ins"
    return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "GIMP" / "3.0" / "plug-ins"


def plugins_root() -> Path:
    """`plugins/` of the source tree this package was installed from (an editable install)."""
    root = Path(__file__).resolve().parent.parent / "plugins"
    if not (root / "krita").is_dir() or not (root / "gimp").is_dir():
        raise LoraIRError(f"the plugin sources are not next to this installation ({root} is missing)",
                          "run `lorair plugins install` from a source checkout installed with `pip install -e .`")
    return root


def bridge_source() -> Path:
    return Path(__file__).resolve().parent / "bridge"


def _owned_entries(spec: PluginSpec) -> list[str]:
    return [spec.source, *spec.extra_files]


def install(host: str, dest: Path, worker_command: Sequence[str] | None = None) -> Path:
    """Copy the plugin and vendor the bridge into `dest`; returns the installed plugin folder."""
    spec = SPECS[host]
    src_root = plugins_root() / host
    dest.mkdir(parents=True, exist_ok=True)
    _refuse_foreign(spec, dest)
    # Build the whole plugin in a scratch folder inside dest, then swap it in, so a failed copy
    # never leaves a half-installed plugin that the host would try to load.
    with tempfile.TemporaryDirectory(prefix=".lorair-install-", dir=dest) as tmp:
        stage = Path(tmp)
        shutil.copytree(src_root / spec.source, stage / spec.source, ignore=_SKIP)
        for name in spec.extra_files:
            shutil.copy2(src_root / name, stage / name)
        vendor = stage / spec.package / "vendor"
        vendor.mkdir()
        (vendor / "__init__.py").write_text('"""Copied in by `lorair plugins install`; do not edit."""\n')
        shutil.copytree(bridge_source(), vendor / "bridge", ignore=_SKIP)
        cmd = list(worker_command) if worker_command else default_start_command()
        record = {"app": "lorair-desktop", "version": _version(), "protocol": PROTOCOL_VERSION,
                  "host": host, "worker_command": cmd, "source": str(src_root)}
        (vendor / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if spec.executable:
            exe = stage / spec.executable
            exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        _remove_entries(spec, dest)
        for name in _owned_entries(spec):
            os.replace(stage / name, dest / name)
    return dest / spec.source


def uninstall(host: str, dest: Path) -> list[Path]:
    """Remove what `install` put in `dest`; returns the removed paths (empty when none was there)."""
    spec = SPECS[host]
    if not (dest / spec.package / "vendor" / RECORD).is_file():
        _refuse_foreign(spec, dest)
        return []
    return _remove_entries(spec, dest)


def _refuse_foreign(spec: PluginSpec, dest: Path) -> None:
    """Never overwrite or delete a folder of the same name that another tool put there."""
    folder = dest / spec.source
    if folder.exists() and not (dest / spec.package / "vendor" / RECORD).is_file():
        raise LoraIRError(f"{folder} exists but was not installed by `lorair plugins install`",
                          "move it away (or delete it) and run the command again")


def _remove_entries(spec: PluginSpec, dest: Path) -> list[Path]:
    removed = []
    for name in _owned_entries(spec):
        path = dest / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path)
    return removed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="plugins_command", required=True)
    p = sub.add_parser("install", help="install (or with --uninstall remove) the Krita or GIMP 3 plugin")
    p.add_argument("host", choices=sorted(SPECS), help="which editor")
    p.add_argument("--dest", type=Path, default=None,
                   help="plugin folder (default: the editor's per-user folder on this OS)")
    p.add_argument("--uninstall", action="store_true", help="remove the plugin instead")
    p.add_argument("--worker-command", default=None,
                   help="command line the plugin runs to start the worker (default: this Python "
                        "running `lorair worker`)")


def run(args: argparse.Namespace) -> int:
    host: str = args.host
    dest: Path = (args.dest or default_dest(host)).expanduser()
    if args.uninstall:
        removed = uninstall(host, dest)
        if not removed:
            print(f"nothing to remove: the LoRA-IR {host} plugin is not installed in {dest}")
        for path in removed:
            print(f"removed {path}")
        return 0
    cmd = shlex.split(args.worker_command) if args.worker_command else None
    with contextlib.suppress(OSError):
        dest = dest.resolve()
    folder = install(host, dest, cmd)
    print(f"installed the LoRA-IR {host} plugin in {folder}")
    print(f"worker command: {' '.join(cmd or default_start_command())}")
    print(SPECS[host].enable_hint)
    return 0
