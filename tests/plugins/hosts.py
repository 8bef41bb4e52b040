"""Preparing the real hosts for the plugin tests: Debian's Krita 5 (run under Xvfb) and GIMP 3 in a
Debian 13 chroot. Each is installed on first use (root and apt needed) and reused afterwards.

The chroot is cached under $LORAIR_TEST_CACHE (default ~/.cache/lorair-desktop); it is built in a
side folder and renamed when complete, so an interrupted build is never mistaken for a good one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
GIMP_CONSOLE = "usr/bin/gimp-console-3.0"
GIMP_SUITE = "trixie"  # Debian 13: the first Debian with GIMP 3


def cache_dir() -> Path:
    return Path(os.environ.get("LORAIR_TEST_CACHE") or Path.home() / ".cache" / "lorair-desktop")


def _need_root(what: str) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{what} is missing and installing it needs root and apt-get")


def _run(cmd: Sequence[str], what: str, timeout: float, env: Mapping[str, str] | None = None) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **APT_ENV, **(env or {})})
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        pytest.fail(f"{what} failed ({' '.join(cmd)}; exit {proc.returncode}):\n{tail}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise installs between test runs sharing a machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def apt_install(packages: Sequence[str], what: str) -> None:
    _need_root(what)
    with _locked(cache_dir() / "apt.lock"):
        _run(["apt-get", "update", "-q"], "apt-get update", 600)
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], f"installing {what}", 1200)


KRITA_PACKAGES = ("krita", "python3-pyqt5", "python3-sip", "xvfb", "xauth")  # PyQt5 is only a Recommends


def _installed(package: str) -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.endswith("installed") and "not-installed" not in proc.stdout


def ensure_krita() -> None:
    """Debian 12's Krita 5.1 (system Python 3.11 + PyQt5) and Xvfb for its GUI."""
    if shutil.which("dpkg-query") is None:
        if shutil.which("krita") and shutil.which("xvfb-run"):
            return  # not Debian: trust what is there
        pytest.skip("Krita and Xvfb are missing and this is not a Debian system")
    missing = [p for p in KRITA_PACKAGES if not _installed(p)]
    if missing:
        apt_install(missing, "Krita and Xvfb")


def ensure_gimp_chroot() -> Path:
    """A Debian 13 minbase chroot with GIMP 3 (≈1.5 GB); built once, then reused."""
    root = cache_dir() / "gimp3-chroot"
    if (root / GIMP_CONSOLE).is_file():
        return root
    if shutil.which("debootstrap") is None:
        apt_install(["debootstrap"], "debootstrap")
    _need_root("The GIMP 3 chroot")
    with _locked(cache_dir() / "gimp3-chroot.lock"):
        if (root / GIMP_CONSOLE).is_file():
            return root  # another run built it while we waited
        partial = root.with_name(root.name + ".partial")
        if partial.exists():
            _umount(partial / "proc")
            shutil.rmtree(partial)
        _run(["debootstrap", "--variant=minbase", GIMP_SUITE, str(partial)], "debootstrap of Debian 13", 1800)
        _run(["chroot", str(partial), "apt-get", "update", "-q"], "apt-get update in the chroot", 600)
        _run(["chroot", str(partial), "apt-get", "install", "-y", "-q", "gimp"], "installing GIMP 3 in the chroot",
             1800)
        if root.exists():
            shutil.rmtree(root)
        partial.rename(root)
    return root


def _umount(path: Path) -> None:
    if os.path.ismount(path) and subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def proc_mounted(root: Path) -> Iterator[None]:
    """GIMP needs /proc; the mount never outlives the run."""
    target = root / "proc"
    mounted_here = not os.path.ismount(target)
    if mounted_here:
        subprocess.run(["mount", "-t", "proc", "proc", str(target)], check=True)
    try:
        yield
    finally:
        if mounted_here:
            _umount(target)


def run_group(cmd: Sequence[str], env: Mapping[str, str], timeout: float, log: Path,
              cwd: Path | None = None) -> int:
    """Run a host program in its own process group, killing the whole group on timeout or exit
    (Krita's Xvfb, GIMP's plug-in processes), so nothing outlives the test."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(cmd), env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return -1
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
                time.sleep(0.5)
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    keep = [ln for ln in text.splitlines() if "krita.lib.resources" not in ln and ln.strip()]
    return "\n".join(keep)[-chars:]
