"""Signals as a request to stop cleanly (standard library only).

Used by ``lorair train`` (finish the step, save a checkpoint) and the worker (cancel what runs,
tell the clients, remove the runtime file): the first Ctrl-C (SIGINT), SIGTERM or hang-up (SIGHUP:
the terminal closed; SIGBREAK on Windows) sets an event instead of killing the process; a second one
aborts at once with KeyboardInterrupt. A signal the process was started ignoring (``nohup`` ignores
SIGHUP) stays ignored.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_NAMES = ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK")


@contextmanager
def stop_on_signal(
    stop: threading.Event | None = None, announce: Callable[[str], None] | None = None
) -> Iterator[threading.Event]:
    """`stop` (or a new event), set by the first signal, which `announce` is told the name of; the
    previous handlers come back on exit. Off the main thread, where Python cannot install handlers
    (tests, an embedding program), the event is returned unhooked: its owner sets it."""
    stop = stop or threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    found = (getattr(signal, n, None) for n in _NAMES)
    sigs = [s for s in found if s is not None and signal.getsignal(s) != signal.SIG_IGN]
    previous = {s: signal.getsignal(s) for s in sigs}

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():  # the second time: the user means it
            raise KeyboardInterrupt
        stop.set()
        if announce is not None:
            announce(signal.Signals(signum).name)

    for s in sigs:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s in sigs:
            signal.signal(s, previous[s])
