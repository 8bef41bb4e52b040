"""Process memory helpers in core.cpu: freed tensor memory is kept for reuse (keep_freed_memory)
and given back once the work is done (release_freed_memory), and the peak resident memory is read
per process and can be reset (peak_rss_bytes, reset_peak_rss)."""

import platform
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc allocator only")

# A fresh interpreter per case: glibc's thresholds adapt to the frees a process has seen, so only a
# new process is in a known state. mallinfo2 says where a block came from and what the heap keeps.
_PROBE = """
import ctypes, sys, torch
from lorair_desktop.core.cpu import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else None
before = libc.mallinfo2()
t = torch.ones(int(sys.argv[2]) * 2**18)  # MiB: 20 = one activation of a 384-px tile, 63 of a 992-px one
during = libc.mallinfo2()
del t
after = libc.mallinfo2()
print(tuned, during.hblkhd - before.hblkhd, after.fordblks)
"""


def _probe(mode: str, mib: int) -> tuple[str, int, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode, str(mib)], capture_output=True, text=True, timeout=120,
                         check=True)
    tuned, mapped, kept = out.stdout.split()
    return tuned, int(mapped), int(kept)


@glibc_only
@pytest.mark.parametrize("size", [20, 64])  # below and above glibc's 32 MiB ceiling for its mmap threshold
def test_tile_sized_blocks_come_from_the_heap_and_stay_there_once_freed(size: int) -> None:
    mib = 2**20
    _, mapped, kept = _probe("default", size)
    assert mapped >= size * mib and kept < size * mib  # glibc's default: mmap()ed, and unmapped on free
    tuned, mapped, kept = _probe("tuned", size)
    assert tuned == "True"
    assert mapped == 0 and kept >= size * mib  # heap block, kept for the next op: no fresh page faults


@glibc_only
def test_released_memory_leaves_the_process() -> None:
    probe = """
import torch
from lorair_desktop.core.cpu import keep_freed_memory, release_freed_memory

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

keep_freed_memory()
big = torch.ones(100 * 2**18)  # 100 MiB on the heap, every page touched
pin = torch.ones(1024)  # a live block above it: the heap cannot simply shrink from its top
del big
kept = rss()
print(release_freed_memory(), kept - rss(), pin.numel())
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    released, given_back, _ = out.stdout.split()
    assert released == "True" and int(given_back) >= 90 * 2**20


def test_peak_rss_follows_an_allocation_and_resets() -> None:
    probe = """
import torch
from lorair_desktop.core.cpu import peak_rss_bytes, reset_peak_rss
base = peak_rss_bytes()
t = torch.ones(64 * 2**18)  # 64 MiB, every page touched
grown = peak_rss_bytes()
del t
print(base, grown, reset_peak_rss(), peak_rss_bytes())
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    base, grown, reset, after = out.stdout.split()
    assert int(grown) - int(base) >= 60 * 2**20
    if sys.platform == "linux":
        assert reset == "True" and int(after) < int(grown) - 60 * 2**20  # the freed block no longer counts
