"""Writing a file so that a reader, a crash or a full disk leaves the old file or the new one, never half.

Standard library only: the model core, training, the image files and the app all write through it.
(The bridge keeps its own for the runtime file: it is copied into the plugins and imports nothing else.)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["replacing", "write_text"]


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; when the block ends normally it is flushed to
    disk and renamed over ``path`` in one step; when the block raises, it is removed and ``path`` is
    as it was.

    The temporary name is hidden and unique per call (process id and a random part), so two processes
    saving the same file never write into one temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        _flush(tmp)
        os.replace(tmp, path)  # atomic on one volume, on POSIX and Windows alike
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` as UTF-8 through ``replacing``."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _flush(tmp: Path) -> None:
    """Put the new bytes on disk before the rename, so a power cut cannot leave an empty file under the
    real name. Best effort: some file systems refuse fsync, and the rename is still atomic there."""
    with contextlib.suppress(OSError):
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
