"""Round-trip overhead of a restore through the worker versus the same restore in-process.

`bench_roundtrip()` returns a dict (printed by `lorair bench` or `python -m lorair_desktop.worker.bench`);
it measures, it does not assert. Both sides get the same image, model, device, tile plan and a
full-size warm-up. "In-process" is what a host without the worker would run: convert its pixels to
float, `Restorer.restore`, convert back; `ratio_core` compares with the bare `restore` call instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..bridge import ORDERS, JobRequest, WorkerClient
from ..bridge.runtime import read_runtime, runtime_file
from ..core import DEFAULT_MODEL, LoraIRError, Restorer, load_model, save_checkpoint
from ..core.config import load_config
from ..core.model import LoRAIR
from . import pixels

TARGET_RATIO = 1.05


def _model_path(model: str | None, tmp: Path) -> tuple[str, str]:
    """(name or path to load, what the weights are). Untrained presets get seeded random weights:
    the timing does not depend on the values."""
    name = model or DEFAULT_MODEL
    try:
        load_model(name)
        return name, "checkpoint" if Path(name).suffix == ".safetensors" else "installed"
    except LoraIRError:
        if Path(name).suffix == ".safetensors":
            raise
    import torch

    torch.manual_seed(0)
    path = tmp / f"{name}-random.safetensors"
    save_checkpoint(LoRAIR(load_config(name)).eval(), path)
    return str(path), "random (no trained weights installed)"


def _start_worker(
    model: str, device: str, rdir: Path, threads: int | None, timeout: float
) -> tuple[subprocess.Popen, WorkerClient]:
    cmd = [
        sys.executable,
        "-m",
        "lorair_desktop.worker",
        "--model",
        model,
        "--device",
        device,
        "--max-pixels",
        str(200_000_000),
        "--log-level",
        "WARNING",
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, LORAIR_RUNTIME_DIR=str(rdir))
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the benchmark worker exited with code {proc.returncode}")
        info = read_runtime(runtime_file(rdir))
        if info is not None and info.pid == proc.pid:
            client = WorkerClient(info.host, info.port, info.token, timeout=600.0)
            state = client.info().model.state
            if state == "ready":
                return proc, client
            if state == "error":
                raise RuntimeError(f"the benchmark worker cannot load its model: {client.info().model.error}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the benchmark worker did not start within {timeout:.0f} s")


def bench_roundtrip(
    megapixels: float = 4.0,
    model: str | None = None,
    device: str = "auto",
    order: str = "RGBA",
    sample: str = "u8",
    repeats: int = 1,
    tile: int | None = None,
    threads: int | None = None,
    start_timeout: float = 300.0,
) -> dict[str, Any]:
    """Time `repeats` restores of a `megapixels` image both ways (after a full-size warm-up each)."""
    side = max(16, round(math.sqrt(megapixels * 1e6)))
    channels = ORDERS[order]
    rng = np.random.default_rng(0)
    if sample == "f32":
        host = rng.random((side, side, channels), dtype=np.float32)
    else:
        top = 255 if sample == "u8" else 65535
        host = rng.integers(0, top + 1, (side, side, channels)).astype(pixels.DTYPES[sample])
    data = host.tobytes()
    with tempfile.TemporaryDirectory(prefix="lorair-bench-") as tmpdir:
        tmp = Path(tmpdir)
        name, weights = _model_path(model, tmp)
        restorer = Restorer(load_model(name), device=device)
        dev = str(restorer.device)
        if threads and restorer.device.type == "cpu":
            import torch

            torch.set_num_threads(threads)
        proc, client = _start_worker(name, dev, tmp / "rt", threads, start_timeout)
        try:
            request = JobRequest(data, side, side, order, sample, tile=tile)

            def in_process() -> tuple[float, float, Any]:
                t0 = time.perf_counter()
                arr = pixels.as_array(data, side, side, order, sample)
                rgb = pixels.to_float_rgb(arr, order, sample)
                res = restorer.restore(rgb, tile=tile)
                pixels.from_float_rgb(res.image, arr, order, sample)
                return time.perf_counter() - t0, res.timings["total_s"], res

            served: list[float] = []

            def via_worker() -> float:
                t0 = time.perf_counter()
                got = client.restore(request, poll=0.5)
                dt = time.perf_counter() - t0
                served.append(sum(got.header.timings[k] for k in ("queue_s", "decode_s", "total_s", "encode_s")))
                return dt

            in_process()  # warm-up at full size: kernel selection and allocator growth
            via_worker()
            inproc, core, worker = [], [], []
            for _ in range(max(1, repeats)):
                w = via_worker()
                t, c, res = in_process()
                worker.append(w)
                inproc.append(t)
                core.append(c)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    inproc_s, core_s, worker_s = statistics.median(inproc), statistics.median(core), statistics.median(worker)
    # What the worker spent itself (queue + convert + restore) vs the whole round trip: the rest is
    # transport and framing, a figure that does not depend on how busy the machine's cores are.
    server_s = statistics.median(served[1:])
    return {
        "benchmark": "worker round trip vs in-process",
        "megapixels": round(side * side / 1e6, 3),
        "width": side,
        "height": side,
        "layout": f"{order}/{sample}",
        "device": dev,
        "dtype": res.dtype,
        "tiles": res.tiles,
        "tile_size": res.tile_size,
        "weights": weights,
        "repeats": max(1, repeats),
        "inprocess_s": round(inproc_s, 4),
        "inprocess_core_s": round(core_s, 4),
        "worker_s": round(worker_s, 4),
        "worker_internal_s": round(server_s, 4),
        "transport_s": round(worker_s - server_s, 4),
        "overhead_s": round(worker_s - inproc_s, 4),
        "ratio": round(worker_s / inproc_s, 4),
        "ratio_core": round(worker_s / core_s, 4),
        "target_ratio": TARGET_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lorair_desktop.worker.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--megapixels", type=float, default=4.0)
    ap.add_argument("--model", default=None, help="preset or .safetensors (default: the default preset)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--order", default="RGBA", choices=tuple(ORDERS))
    ap.add_argument("--sample", default="u8", choices=("u8", "u16", "f32"))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    result = bench_roundtrip(
        args.megapixels, args.model, args.device, args.order, args.sample, args.repeats, args.tile, args.threads
    )
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
