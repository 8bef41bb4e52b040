"""What this CPU (or device) can do fast."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

import torch


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, feature flags) of this CPU from /proc/cpuinfo; elsewhere the platform's processor
    string and no flags."""
    name, flags = "", frozenset[str]()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    if not name:
        import platform

        name = platform.processor() or platform.machine()
    return name, flags


def bf16_fast(device: torch.device | None = None) -> bool:
    """bf16 kernels exist in hardware: AMX or AVX-512 BF16 on x86 CPUs, bf16 support on CUDA."""
    if device is not None and device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device is not None and device.type == "mps":
        return False
    return bool({"amx_bf16", "avx512_bf16"} & cpu_info()[1])


# glibc mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit


@functools.cache
def keep_freed_memory(trim_mb: int = 2048) -> bool:
    """Let glibc keep freed tensor memory for reuse instead of returning it to the OS at every free.

    Each op of a tiled restore allocates a multi-megabyte tensor. By default glibc serves those with
    fresh mmap()s and unmaps them on free, so every op pays a page fault per 4 KiB (measured: ~1.1 M
    faults and ~15 % of a 1 MP restore). Raising the mmap and trim thresholds makes freed blocks
    reusable; the peak footprint is unchanged. The threshold stops at 32 MB, and a 992-px tile's
    full-resolution fp32 tensors are 63 MB: so no mmap() at all (measured on that tile: an add
    15.4 -> 1.3 ms, the whole network 0.46 -> 0.32 s). Nor is the heap's top given back while work
    goes on (a tile's network frees hundreds of MB between ops and would fault them in again: the
    lite network on that tile 0.28-0.32 -> 0.26 s, and steadier); `release_freed_memory` gives it
    back once the work is done. One arena for all threads: a restore on a worker
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
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and ok
        ok = libc.mallopt(_M_ARENA_MAX, 1) == 1 and ok
        return bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_mb * 2**20) == 1 and ok)
    except (OSError, AttributeError):
        return False


def release_freed_memory() -> bool:
    """Give the memory freed since the last call back to the OS (glibc's malloc_trim), e.g. once a
    long-lived process has no more work queued: without mmap() (keep_freed_memory) a finished 24 MP
    restore would otherwise stay resident. False where this is not glibc."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
        return True
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


def busy_cpu_seconds() -> float:
    """CPU seconds all programs have spent busy so far (every core), or -1 where unknown."""
    try:
        import psutil

        t = psutil.cpu_times()
    except (ImportError, OSError, RuntimeError):
        return -1.0
    idle = t.idle + getattr(t, "iowait", 0.0)
    return float(sum(t) - idle)


class ThreadGovernor:
    """Chooses torch's CPU thread count from what *other* programs use of the cores right now.

    With OpenMP's default (spinning) wait, two threads run a tile ~20 % faster than with passive
    waiting, but when another program holds a core the spinning team collapses 2-8x (measured on
    2 cores: 0.72 s/MP alone; 2.4-3.0 s/MP beside one busy loop, where one thread runs at 1.30).
    So: every `interval_s` the governor takes the busy CPU time of the whole machine minus this
    process's own, and gives torch one thread fewer per half core that others take. A thread count
    set from outside meanwhile (the app's setting, `torch.set_num_threads`) is the new ceiling: the
    governor never raises torch above what its owner last asked for.
    """

    def __init__(
        self,
        max_threads: int | None = None,
        interval_s: float = 0.2,
        busy: Callable[[], float] = busy_cpu_seconds,
        own: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
        apply: Callable[[int], None] = torch.set_num_threads,
        current: Callable[[], int] | None = None,
    ) -> None:
        self.max_threads = max(1, max_threads or torch.get_num_threads())
        self.interval_s = interval_s
        self._busy, self._own, self._clock, self._apply = busy, own, clock, apply
        # torch's thread count as it is now; without a real `apply`, whatever the governor last set
        self._current = current or (torch.get_num_threads if apply is torch.set_num_threads else lambda: self.threads)
        self.threads = self.max_threads
        self._apply(self.threads)  # start at the ceiling, whatever torch was left at
        self.others = 0.0  # cores busy with other programs, last reading
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        return self._clock(), self._busy(), self._own()

    def update(self) -> int:
        """Re-decide once `interval_s` has passed since the last reading; returns the thread count."""
        outside = self._current()
        if outside != self.threads:  # set by someone else since: that is the ceiling now
            self.max_threads = self.threads = max(1, outside)
        wall = self._clock() - self._last[0]
        if wall < self.interval_s:  # called before every tile: read the machine's counters only when due
            return self.threads
        now = self._sample()
        wall = now[0] - self._last[0]
        if now[1] >= 0 and self._last[1] >= 0:
            self.others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / wall
            threads = max(1, self.max_threads - max(0, math.ceil(self.others - 0.5)))
            if threads != self.threads:
                self.threads = threads
                self._apply(threads)
        self._last = now
        return self.threads


@functools.cache
def shared_governor() -> ThreadGovernor:
    """The process's one governor (torch's thread count is process-wide): its ceiling is torch's
    thread count at the first call, and then whatever the process sets it to."""
    return ThreadGovernor()
