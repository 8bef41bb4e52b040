"""What this CPU (or device) can do fast."""

from __future__ import annotations

import functools

import torch


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_fast(device: torch.device | None = None) -> bool:
    """bf16 kernels exist in hardware: AMX or AVX-512 BF16 on x86 CPUs, bf16 support on CUDA."""
    if device is not None and device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device is not None and device.type == "mps":
        return False
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())
