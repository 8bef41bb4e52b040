"""The CPU precision that restores fastest on this machine: measured once, then remembered.

bf16 halves the bytes this memory-bound network moves, but whether a CPU's bf16 kernels win depends
on the chip: a 1 MP restore took 0.80x the fp32 time on a 2-core AVX-512-BF16 AMD EPYC, and
0.8-1.5x on an AMX Xeon. So ``precision="auto"`` on a CPU with bf16 instructions times both on one
tile of the real network, interleaved (a neighbour's load then hits both alike), and takes bf16 only
when it is clearly faster. The verdict is kept per CPU, torch version, thread count and network
shape (`NetConfig.layout`) in the user cache; ``LORAIR_CPU_PRECISION=fp32|bf16`` decides without measuring.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import platformdirs
import torch
from torch import nn

from ..atomic import write_text
from . import native
from .cpu import bf16_fast, cpu_info

log = logging.getLogger(__name__)

ENV = "LORAIR_CPU_PRECISION"
MARGIN = 0.9  # bf16 must take at most this share of the fp32 time: its results differ slightly (~60 dB)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

Timings = dict[str, float]  # "fp32"/"bf16" -> median seconds of one forward


def cache_file() -> Path:
    return Path(platformdirs.user_cache_dir("lorair-desktop")) / "cpu-precision.json"


def machine_key(layout: str) -> str:
    """What the verdict depends on: the chip, its bf16 instructions, torch, threads, network shape,
    and whether the fused kernels run (they speed up both precisions, but not alike)."""
    name, flags = cpu_info()
    wide = ",".join(sorted({"amx_bf16", "avx512_bf16", "avx512f"} & flags))
    fused = " fused" if native.library() is not None else ""
    return f"{name} [{wide}] torch {torch.__version__} threads {torch.get_num_threads()}{fused} {layout}"


@torch.inference_mode()
def time_precisions(
    net: nn.Module, prior_dim: int, channels_last: bool = True, tile: int = 256, rounds: int = 3
) -> Timings:
    """Median seconds of one forward of ``net`` on a ``tile``² input (in the memory format the
    restorer uses) in fp32 and under bf16 autocast, interleaved, after one warm-up of each (bf16
    kernels are set up on first use)."""
    x = torch.rand(1, 3, tile, tile)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    prior = torch.zeros(1, prior_dim)

    def fp32() -> None:
        net(x, prior)

    def bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(x, prior)

    samples: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(rounds + 1):
        for name, fn in (("fp32", fp32), ("bf16", bf16)):
            t0 = time.perf_counter()
            fn()
            if r:
                samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # absent or damaged: measure again and rewrite it


def _write(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(data, indent=1))  # a second process never reads half a file
    except OSError as exc:  # a read-only cache only costs the measurement next time
        log.warning("cannot keep the precision verdict in %s: %s", path, exc)


def fastest_cpu_dtype(
    net: nn.Module,
    prior_dim: int,
    layout: str,
    channels_last: bool = True,
    measure: Callable[[nn.Module, int, bool], Timings] = time_precisions,
    path: Path | None = None,
) -> torch.dtype:
    """fp32 or bf16 for ``precision="auto"`` on this CPU (see the module docstring)."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced:
        if forced not in _DTYPES:
            log.warning("%s=%r ignored: use fp32 or bf16", ENV, forced)
        else:
            return _DTYPES[forced]
    if not bf16_fast(torch.device("cpu")):
        return torch.float32
    path = path or cache_file()
    key = machine_key(layout)
    cache = _read(path)
    entry = cache.get(key)
    if not (isinstance(entry, dict) and entry.get("precision") in _DTYPES):
        t = measure(net, prior_dim, channels_last)
        entry = {"precision": "bf16" if t["bf16"] <= MARGIN * t["fp32"] else "fp32",
                 "fp32_s": t["fp32"], "bf16_s": t["bf16"], "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
        log.info("CPU precision for %s: %s (fp32 %.3f s, bf16 %.3f s per tile)", key, entry["precision"],
                 t["fp32"], t["bf16"])
        _write(path, {**cache, key: entry})
    return _DTYPES[entry["precision"]]
