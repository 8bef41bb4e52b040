"""Fixtures for the offscreen app tests: a QApplication, small seeded images, isolated settings."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from .worker_cmd import worker_command

__all__ = ["worker_command"]  # test_session imports it from here


@pytest.fixture(scope="session")
def qapp():
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(["lorair-desktop-tests"])
    yield app


def process_until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Run the Qt event loop until `cond()` holds; False on timeout."""
    from PySide6.QtCore import QCoreApplication, QEventLoop

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def make_photo(width: int = 96, height: int = 64, seed: int = 0, alpha: bool = False) -> np.ndarray:
    """A float RGB(A) test picture: smooth gradients plus seeded noise, so every pixel differs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([xx / width, yy / height, 0.5 + 0.3 * np.sin(xx / 7 + yy / 5)], axis=2)
    rgb = np.clip(rgb + rng.normal(0, 0.06, rgb.shape), 0, 1).astype(np.float32)
    if alpha:
        a = np.clip(0.3 + xx / width, 0, 1)[..., None].astype(np.float32)
        return np.concatenate([rgb, a], axis=2)
    return rgb


@pytest.fixture
def photo_path(tmp_path: Path) -> Path:
    from lorair_desktop import imageio

    path = tmp_path / "photo.png"
    imageio.write_image(path, make_photo())
    return path


@pytest.fixture
def settings(tmp_path: Path):
    from lorair_desktop.app.settings import Settings

    return Settings(path=tmp_path / "config" / "settings.json")


@dataclass
class WorkerEnv:
    runtime_dir: Path
    command: list[str]
    proc: subprocess.Popen | None

    def connect_config(self, autostart: bool = True):  # -> ConnectConfig
        from lorair_desktop.app.worker_link import ConnectConfig

        return ConnectConfig(
            start_command=self.command, runtime_dir=self.runtime_dir, autostart=autostart, start_timeout=120.0
        )

    def client(self):  # -> WorkerClient
        from lorair_desktop.bridge import WorkerClient

        return WorkerClient.connect(autostart=False, runtime_dir=self.runtime_dir)


def start_worker(runtime_dir: Path, command: list[str], log_path: Path) -> subprocess.Popen:
    from lorair_desktop.bridge.runtime import read_runtime, runtime_file

    env = {**os.environ, "LORAIR_RUNTIME_DIR": str(runtime_dir)}
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(command, env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        rt = read_runtime(runtime_file(runtime_dir))
        if rt is not None and rt.pid == proc.pid:
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"the test worker exited: {log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the test worker did not start within 180 s")


def stop_worker(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="session")
def worker(small_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real worker with the small model for the app tests, in a private runtime folder."""
    rdir = tmp_path_factory.mktemp("runtime")
    cmd = worker_command(small_model_path)
    proc = start_worker(rdir, cmd, rdir.parent / "worker-test.log")
    yield WorkerEnv(rdir, cmd, proc)
    stop_worker(proc)


@pytest.fixture
def window(qapp, settings, worker: WorkerEnv):
    """A main window connected to the test worker; closed (and its thread stopped) afterwards."""
    from lorair_desktop.app.main_window import MainWindow

    w = MainWindow(settings, worker.connect_config(), autoconnect=False)
    w.resize(1100, 760)
    w.show()
    w.reconnect()
    assert process_until(lambda: w.link.info is not None and w.link.info.model.state == "ready", 120), (
        w.message_bar.text
    )
    yield w
    w.ask_unsaved = lambda: "discard"  # type: ignore[method-assign]
    w.close()
