"""Helpers of the plugin tests: a real worker process, installing plugins, the reference blend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lorair_desktop.bridge import ExpertSpec, JobRequest, WorkerClient

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 180.0


@dataclass
class RunningWorker:
    runtime_dir: Path
    proc: subprocess.Popen
    log: Path

    def client(self) -> WorkerClient:
        return WorkerClient.connect(autostart=False, runtime_dir=self.runtime_dir, timeout=120.0)

    def restore(self, pixels: bytes, width: int, height: int, order: str, mask: bytes | None,
                experts: ExpertSpec | None = None, ensemble: int = 1) -> bytes:
        """What the worker answers when called directly, as the reference for the hosts' layers."""
        req = JobRequest(pixels, width, height, order, "u8", mask=mask, experts=experts or ExpertSpec.auto(),
                         ensemble=ensemble)
        return self.client().restore(req).pixels


def start_worker(model: Path, runtime_dir: Path, log: Path) -> RunningWorker:
    env = {**os.environ, "LORAIR_RUNTIME_DIR": str(runtime_dir), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lorair_desktop.cli", "worker", "--port", "0", "--model", str(model),
           "--device", "cpu"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True)
    worker = RunningWorker(runtime_dir, proc, log)
    end = time.monotonic() + START_TIMEOUT
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"the worker exited at start ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            info = worker.client().info()
            if info.model.state == "ready":
                return worker
        except Exception:  # not up yet
            pass
        time.sleep(0.3)
    stop_worker(worker)
    pytest.fail(f"the worker did not become ready: {log.read_text()[-2000:]}")


def stop_worker(worker: RunningWorker) -> None:
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGTERM)
        try:
            worker.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait()


def kill_runtime_worker(runtime_dir: Path) -> None:
    """Stop a worker that a plugin started (found through its runtime file)."""
    try:
        pid = json.loads((runtime_dir / "worker.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def install_plugin(host: str, dest: Path, *extra: str) -> Path:
    """Install through the real command line, as a user would."""
    cmd = [sys.executable, "-m", "lorair_desktop.cli", "plugins", "install", host, "--dest", str(dest), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dest


def region(sel: tuple[int, int, int, int], margin: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Selection bounds plus margin, clipped to the canvas: what the plugins must send."""
    x, y, w, h = sel
    x0, y0 = max(0, x - margin), max(0, y - margin)
    x1, y1 = min(width, x + w + margin), min(height, y + h + margin)
    return x0, y0, x1 - x0, y1 - y0


def blend_reference(original: np.ndarray, restored: np.ndarray, mask: np.ndarray, colour: slice) -> np.ndarray:
    """The selection blend computed here, independently of the worker: in + m/255 * (restored - in),
    alpha from the input. `colour` picks the colour channels of the layout."""
    out = original.copy()
    m = mask.astype(np.float64)[..., None] / 255.0
    src = original[..., colour].astype(np.float64)
    out[..., colour] = np.clip(np.rint(src + m * (restored[..., colour].astype(np.float64) - src)), 0, 255)
    return out.astype(np.uint8)
