"""Speed and memory of the full-size Setting I model with tiling (for `lorair bench`).

`bench_setting1()` restores a synthetic photo of the given size (24 MP by default, 3:2) through the
normal Restorer path (route once, merge the experts once, run in tiles) and reports seconds per
megapixel and the process's peak resident memory during the restore. Without installed weights
it uses random ones: the cost of the network does not depend on the values of its weights.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from .config import load_config
from .cpu import peak_rss_bytes, reset_peak_rss
from .errors import LoraIRError
from .inference import DEFAULT_OVERLAP, Restorer
from .model import LoRAIR

__all__ = ["bench_setting1", "format_bench"]


def _load(preset: str | Path) -> tuple[LoRAIR, str]:
    from .checkpoint import load_model

    try:
        return load_model(preset), "installed weights"
    except LoraIRError:
        torch.manual_seed(0)
        return LoRAIR(load_config(preset)).eval(), "random weights (timing only)"


def bench_setting1(
    megapixels: float = 24.0,
    *,
    preset: str | Path = "lorair-setting1",
    model: LoRAIR | None = None,
    device: str = "cpu",
    precision: str = "auto",
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Restore a `megapixels` synthetic image with `preset` (or `model`) and time it.

    Returns sizes, tile plan, route/restore seconds, seconds per megapixel (restore only: routing is a
    fixed cost per image) and peak RSS in MB (plus peak device memory on CUDA).
    """
    if threads:
        torch.set_num_threads(threads)
    rss = psutil.Process(os.getpid()).memory_info().rss
    t0 = time.perf_counter()
    weights = "given model"
    if model is None:
        model, weights = _load(preset)
    load_s = time.perf_counter() - t0
    restorer = Restorer(model, device=device, precision=precision)
    w = max(16, round(math.sqrt(megapixels * 1e6 * 1.5)))
    h = max(16, round(w / 1.5))
    # Smooth colour field + fine noise: a photo-like input (content does not change the cost).
    rng = np.random.default_rng(0)
    img = rng.random((h, w, 3), dtype=np.float32)
    img *= 0.2
    img += np.linspace(0.2, 0.7, w, dtype=np.float32)[None, :, None]
    if restorer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(restorer.device)
    reset_peak_rss()  # the restore's own peak, not the model build's (Linux; elsewhere the lifetime peak)
    res = restorer.restore(img, tile=tile, overlap=overlap, progress=progress)
    mp = h * w / 1e6
    out: dict[str, Any] = {
        "model": model.cfg.name,
        "weights": weights,
        "device": str(restorer.device),
        "dtype": res.dtype,
        "threads": torch.get_num_threads(),
        "height": h,
        "width": w,
        "megapixels": round(mp, 3),
        "tiles": res.tiles,
        "tile_size": res.tile_size,
        "load_s": round(load_s, 2),
        "route_s": round(res.timings["route_s"], 3),
        "restore_s": round(res.timings["restore_s"], 3),
        "s_per_mp": round(res.timings["restore_s"] / mp, 3),
        "baseline_rss_mb": round(rss / 2**20, 1),
        "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
    }
    if restorer.device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(restorer.device) / 2**20, 1)
    return out


def format_bench(r: dict[str, Any]) -> str:
    line = (f"{r['model']} ({r['weights']}) on {r['device']} {r['dtype']}, {r['threads']} threads: "
            f"{r['width']}x{r['height']} ({r['megapixels']} MP) in {r['tiles']} tiles of {r['tile_size']} px; "
            f"route {r['route_s']:.2f} s, restore {r['restore_s']:.1f} s = {r['s_per_mp']:.2f} s/MP; "
            f"peak RSS {r['peak_rss_mb']:.0f} MB (before loading {r['baseline_rss_mb']:.0f} MB)")
    if "peak_cuda_mb" in r:
        line += f", peak CUDA {r['peak_cuda_mb']:.0f} MB"
    return line
