"""One process at a time per lock file, by an OS file lock (standard library only).

The operating system drops the lock when its holder exits, however it exits, so there is no stale
lock to detect and nothing to clean up. Used by the worker (one per runtime folder) and by
``lorair train`` (one per run folder)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def single_instance(lock_file: Path) -> Iterator[bool]:
    """Yields True while this process holds ``lock_file``'s lock, False if another process does."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    f: IO[bytes] = os.fdopen(fd, "r+b")  # held while the block runs
    try:
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        f.close()  # closing releases the lock
