"""Whole sessions: a GUI process that never imports torch (and its screenshot), a worker that is
missing or cannot start, and a worker killed in the middle of a restore."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtGui import QImage

from lorair_desktop.app.main_window import MainWindow
from lorair_desktop.app.pixels import rgba_array
from lorair_desktop.app.worker_link import ConnectConfig, LinkState
from lorair_desktop.bridge import client as bridge_client
from lorair_desktop.bridge.runtime import read_runtime, runtime_file

from .conftest import WorkerEnv, process_until, worker_command
from .test_window import EXT, write

HERE = Path(__file__).parent


def test_gui_session_never_imports_torch_and_its_screenshot_is_real(worker: WorkerEnv, tmp_path: Path) -> None:
    image = write(tmp_path / f"photo{EXT}", 160, 120, seed=7)
    shot = tmp_path / "app-screenshot.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "gui_session.py"),
            "--image",
            str(image),
            "--screenshot",
            str(shot),
            "--runtime-dir",
            str(worker.runtime_dir),
            "--size",
            "1100x720",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    r = json.loads(lines[-1][7:])
    assert r["connected"] and r["opened"] and r["restored"], r
    assert not r["torch_before"] and not r["torch_loaded"], "the GUI process imported torch"
    assert r["message"] == "", r["message"]
    assert "idle" in r["worker_status"]

    img = QImage(str(shot))
    assert (img.width(), img.height()) == tuple(r["window"]) == (1100, 720)
    px = rgba_array(img)[..., :3].astype(np.int32)
    assert px.std() > 20  # not blank
    assert len(np.unique(px.reshape(-1, 3) @ np.array([65536, 256, 1]))) > 500  # a photo, not flat widgets
    out = os.environ.get("LORAIR_SCREENSHOT_OUT")  # to refresh the README copy
    if out:
        shutil.copy(shot, out)


def test_missing_worker_is_reported_in_the_window(qapp, settings, tmp_path: Path) -> None:
    cfg = ConnectConfig(start_command=[str(tmp_path / "no-such-lorair"), "worker"], runtime_dir=tmp_path / "rt")
    w = MainWindow(settings, cfg, autoconnect=False)
    w.show()
    try:
        w.reconnect()
        assert process_until(lambda: w.message_bar.isVisible(), 30)
        assert w.link.state is LinkState.OFFLINE
        assert "Cannot use the LoRA-IR worker" in w.message_bar.text and "no-such-lorair" in w.message_bar.text
        assert w.message_bar.hint.text()  # what to do
        assert w.message_bar.action_button.text() == "Reconnect"
        assert "not connected" in w.worker_label.text()
        assert not w.panel.restore_button.isEnabled()
        w.link.connect_worker(ConnectConfig(autostart=False, runtime_dir=tmp_path / "rt"))
        assert process_until(lambda: not w.link.pending("connect"), 30)
        assert "not running" in w.message_bar.text and "lorair worker" in w.message_bar.hint.text()
    finally:
        w.close()


def _stop(rdir: Path) -> None:
    rt = read_runtime(runtime_file(rdir))
    if rt is not None:
        os.kill(rt.pid, signal.SIGTERM)
    for proc in list(bridge_client._children):
        proc.wait(60)
    bridge_client._reap()


def test_worker_killed_mid_restore_then_retry_starts_a_new_one(qapp, settings, small_model_path, tmp_path) -> None:
    rdir = tmp_path / "rt"
    w = MainWindow(
        settings, ConnectConfig(start_command=worker_command(small_model_path, 2), runtime_dir=rdir), autoconnect=False
    )
    w.show()
    try:
        w.reconnect()  # no worker in this folder: the app starts one
        assert process_until(lambda: w.link.info is not None and w.link.info.model.state == "ready", 180), (
            w.message_bar.text
        )
        first_pid = w.link.info.pid
        # 100 small tiles: the worker is still at work when the app acts on its first progress report,
        # even where the machine is so loaded that the app reads its messages late
        assert w.open_file(write(tmp_path / f"k{EXT}", 640, 640, seed=8))
        orig = w.doc.pixels.copy()
        w.panel.tile_spin.setValue(64)
        killed: list = []

        def kill(op: object, st: object) -> None:
            if not killed and st.tiles > 1:
                os.kill(first_pid, signal.SIGKILL)
                killed.append(1)

        w.link.progress.connect(kill)
        w.controller.restore()
        assert process_until(lambda: not w.controller.busy, 60)
        w.link.progress.disconnect(kill)
        assert killed
        assert w.message_bar.kind == "error" and "stopped" in w.message_bar.text, w.message_bar.text
        assert w.message_bar.hint.text() and w.message_bar.action_button.text() == "Retry"
        assert np.array_equal(w.doc.pixels, orig) and not w.doc.dirty  # the user's work is intact
        assert w.link.state is LinkState.ASLEEP and "starts on demand" in w.worker_label.text()
        assert w.panel.restore_button.isEnabled()

        got: list = []
        w.controller.restored.connect(got.append)
        w.panel.tile_spin.setValue(0)  # Auto: the retry need not crawl through small tiles
        w.message_bar.action_button.click()  # Retry: the bridge starts a fresh worker on demand
        assert process_until(lambda: bool(got) or (not w.controller.busy and w.message_bar.isVisible()), 240)
        assert got, w.message_bar.text
        second_pid = read_runtime(runtime_file(rdir)).pid
        assert w.doc.dirty and second_pid != first_pid
        assert process_until(lambda: w.link.info.pid == second_pid and w.link.state is LinkState.IDLE, 30)

        w.restart_worker()  # Worker ▸ Restart (also what a device change does): stop, start anew
        assert process_until(lambda: not w.link.pending("restart"), 180)
        assert w.link.info.pid not in (first_pid, second_pid), w.message_bar.text
        assert w.link.state is LinkState.IDLE
    finally:
        w.ask_unsaved = lambda: "discard"  # type: ignore[method-assign]
        w.close()
        _stop(rdir)


def test_main_parses_its_arguments() -> None:
    from lorair_desktop.app.main import build_parser
    from lorair_desktop.app.worker_link import split_command

    a = build_parser().parse_args(["photo.jpg", "--worker-cmd", "lorair worker --idle-exit 3", "--device", "cpu"])
    assert (a.file, a.device) == ("photo.jpg", "cpu")
    assert split_command(a.worker_cmd) == ["lorair", "worker", "--idle-exit", "3"]
    assert ConnectConfig(start_command=["w"], device="cuda").command() == ["w", "--device", "cuda"]
    assert ConnectConfig(start_command=["w"]).command() == ["w"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--device", "tpu"])


def test_the_app_imports_neither_torch_nor_the_worker_or_core() -> None:
    probe = (
        "import sys, json; import lorair_desktop.app.main_window, lorair_desktop.app.main; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' "
        "or m.startswith(('lorair_desktop.core', 'lorair_desktop.worker')))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
