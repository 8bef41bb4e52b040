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


# glibc mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit


@functools.cache
def keep_freed_memory(trim_mb: int = 128) -> bool:
    """Let glibc keep freed tensor memory for reuse instead of returning it to the OS at every free.

    Each op of a tiled restore allocates a multi-megabyte tensor. By default glibc serves those with
    fresh mmap()s and unmaps them on free, so every op pays a page fault per 4 KiB (measured: ~1.1 M
    faults and ~15 % of a 1 MP restore). Raising the mmap and trim thresholds makes freed blocks
    reusable; the peak footprint is unchanged. One arena for all threads: a restore on a worker
    thread otherwise gets its own arena, whose heaps glibc keeps giving back (measured: ~160-430 k
    faults per three 1 MP restores on a thread vs ~0 on the main thread, 10-20 % slower). Call it
    before threads start (threads that already allocated keep their arena). Returns False where
    this is not glibc (macOS, Windows, musl): nothing to do there.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
        ok = libc.mallopt(_M_ARENA_MAX, 1) == 1 and ok
        return bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_mb * 2**20) == 1 and ok)
    except (OSError, AttributeError):
        return False


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux: VmHWM, which (unlike ru_maxrss) does not carry a
    forked parent's peak across exec and can be reset (reset_peak_rss); elsewhere ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        import resource
        import sys

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def reset_peak_rss() -> bool:
    """Start peak_rss_bytes() afresh from the current footprint (Linux); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False
