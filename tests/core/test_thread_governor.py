"""ThreadGovernor: torch's CPU thread count follows what other programs use of the cores."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import torch

from lorair_desktop.core import Restorer
from lorair_desktop.core.cpu import ThreadGovernor, busy_cpu_seconds


class Machine:
    """A fake machine: the clock, all programs' busy CPU seconds, and this process's own."""

    def __init__(self) -> None:
        self.t = self.busy = self.own = 0.0

    def run(self, seconds: float, ours: float, others: float) -> None:
        """`seconds` pass with `ours` and `others` cores busy."""
        self.t += seconds
        self.own += ours * seconds
        self.busy += (ours + others) * seconds

    def governor(self, max_threads: int, applied: list[int]) -> ThreadGovernor:
        return ThreadGovernor(max_threads, 0.2, lambda: self.busy, lambda: self.own, lambda: self.t, applied.append)


def test_threads_follow_the_other_programs_load() -> None:
    m, applied = Machine(), []
    g = m.governor(2, applied)
    assert applied == [2]  # a new governor starts at its ceiling, whatever torch was left at
    m.run(0.5, ours=2, others=0.1)
    assert g.update() == 2 and applied == [2]  # a little background load: keep both threads
    m.run(0.5, ours=1.2, others=1.0)  # another program takes a core
    assert g.update() == 1 and applied == [2, 1] and abs(g.others - 1.0) < 1e-9
    m.run(0.1, ours=1, others=0)
    assert g.update() == 1 and applied == [2, 1]  # under the interval: no new decision yet
    m.run(0.4, ours=1, others=0)  # it left (the reading covers the whole 0.5 s)
    assert g.update() == 2 and applied == [2, 1, 2]
    four = m.governor(4, applied := [])
    for others, want in ((0.4, 4), (0.9, 3), (1.6, 2), (3.5, 1), (0.0, 4)):
        m.run(1.0, ours=1, others=others)
        assert four.update() == want, others


def test_a_thread_count_set_from_outside_is_the_new_ceiling() -> None:
    """The owner's torch.set_num_threads (a setting, a single-threaded reference) is never undone:
    an idle machine does not raise torch above it, and a later raise lifts the ceiling again."""
    m, applied, torch_threads = Machine(), [], [0]

    def apply(n: int) -> None:
        applied.append(n)
        torch_threads[0] = n

    g = ThreadGovernor(2, 0.2, lambda: m.busy, lambda: m.own, lambda: m.t, apply, lambda: torch_threads[0])
    m.run(0.5, ours=1.2, others=1.0)
    assert g.update() == 1 and applied == [2, 1]  # busy: one thread
    torch_threads[0] = 1  # the owner pins one thread (here: the count the governor had set anyway)
    m.run(0.5, ours=1, others=0)
    assert g.update() == 2 and applied == [2, 1, 2]  # not an outside change: idle again, both threads
    torch_threads[0] = 1  # now a real outside change
    for _ in range(3):
        m.run(0.5, ours=1, others=0)
        assert g.update() == 1 and g.max_threads == 1  # idle, yet kept at the owner's one thread
    assert applied == [2, 1, 2]
    torch_threads[0] = 2  # the owner allows two again
    m.run(0.5, ours=1.2, others=1.0)
    assert g.update() == 1 and g.max_threads == 2  # governed from the new ceiling


def test_unknown_load_keeps_every_thread() -> None:
    applied: list[int] = []
    t = iter(range(100))
    g = ThreadGovernor(2, 0.2, lambda: -1.0, lambda: 0.0, lambda: float(next(t)), applied.append)
    assert g.update() == 2 and g.update() == 2 and applied == [2]


def test_real_readings_see_a_busy_neighbour() -> None:
    assert busy_cpu_seconds() > 0
    hog = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<3: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        g = ThreadGovernor(2, 0.5, apply=lambda n: None)
        time.sleep(1.0)
        g.update()
        assert g.others > 0.6, g.others  # one core spinning, seen from outside
    finally:
        hog.kill()
        hog.wait()


def test_restore_runs_tiles_with_the_governed_thread_count(small_model) -> None:
    m = Machine()
    r = Restorer(small_model, device="cpu")
    seen: list[int] = []
    forward = r._forward

    def spy(*a):  # type: ignore[no-untyped-def]
        seen.append(torch.get_num_threads())
        m.run(0.3, ours=1, others=1.5)  # a busy neighbour during every tile
        return forward(*a)

    r._forward = spy  # type: ignore[method-assign]
    before = torch.get_num_threads()
    n = max(2, before)
    r.governor = ThreadGovernor(n, 0.2, lambda: m.busy, lambda: m.own, lambda: m.t)
    img = np.random.default_rng(0).random((200, 200, 3), dtype=np.float32)
    try:
        out = r.restore(img, tile=64, overlap=8)
    finally:
        torch.set_num_threads(before)
    assert out.tiles == len(seen) >= 4
    # 1.5 cores taken by others: one thread fewer, from the second tile on (the first has no reading yet)
    assert seen[0] == n and set(seen[1:]) == {n - 1}
    assert r.governor.threads == n - 1  # kept until the next reading, e.g. before the next restore
    # the governed restore is the same image as an ungoverned one
    plain = Restorer(small_model, device="cpu")
    plain.governor = None
    ref = plain.restore(img, tile=64, overlap=8).image
    assert np.abs(out.image - ref).max() < 1e-4


def test_restorers_share_one_governor(small_model) -> None:
    a, b = Restorer(small_model, device="cpu"), Restorer(small_model, device="cpu")
    assert a.governor is b.governor is not None
