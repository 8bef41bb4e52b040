"""Freed tensor memory is reused, not faulted in again for every op (core.cpu.keep_freed_memory).

glibc's own default is adaptive (its thresholds move with the frees it has seen), so only the tuned
steady state is asserted: after a warm-up, a chain of tile-sized ops touches no fresh pages."""

import platform
import subprocess
import sys

import pytest

# A fresh interpreter: the heap of a long test session is in no known state.
_PROBE = """
import resource, torch
from lorair_desktop.core.cpu import keep_freed_memory
SIZES = [2.25, 4.5, 9, 18, 4.5, 9, 2.25, 18, 9]  # MiB: activations of one 384-px tile, in op order

def faults(rounds):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        live = []
        for mb in SIZES:  # each op's output is allocated and its input freed two ops later
            live.append(torch.ones(int(mb * 2**18)))
            if len(live) > 2:
                live.pop(0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

tuned = keep_freed_memory()
faults(3)
print(tuned, faults(10))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc allocator only")
def test_tile_sized_ops_reuse_freed_memory_without_page_faults() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True)
    tuned, faults = out.stdout.split()
    assert tuned == "True"
    touched = int(10 * sum([2.25, 4.5, 9, 18, 4.5, 9, 2.25, 18, 9]) * 256)  # 4 KiB pages written
    assert int(faults) < touched // 20  # measured 0 of ~196k
