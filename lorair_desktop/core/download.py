"""Resumable, verified downloads with the standard library only (urllib + hashlib).

`download(url, dest, sha256)` streams into `<dest>.part`, resumes a part left by an earlier try with
an HTTP Range request, reports progress, and only renames the part to `dest` once the byte count
matches the server's length and the sha256 matches the expected one. An unknown sha256 is refused
unless the caller accepts unverified files. Every failure is a DownloadError saying what to do.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .errors import LoraIRError

ProgressFn = Callable[[int, int | None], None]  # (bytes done, total bytes or None when unknown)
CHUNK = 1 << 20
USER_AGENT = "lorair-desktop (+https://github.com/shallowdream204/LoRA-IR weights fetcher)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_OFFLINE_HINT = ("check the internet connection (or HTTPS_PROXY); without a network, download the files on "
                 "another machine and convert them with `lorair import-official --router R.pth --ir IR.pth`")


class DownloadError(LoraIRError):
    code = "download_failed"


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(
    url: str,
    dest: Path,
    sha256: str | None,
    *,
    progress: ProgressFn | None = None,
    allow_unverified: bool = False,
    timeout: float = 30.0,
) -> Path:
    """Download `url` to `dest`, resuming `<dest>.part` if present; returns `dest`."""
    dest = Path(dest)
    name = dest.name
    if sha256 is None and not allow_unverified:
        raise DownloadError(f"the sha256 of {name} is not known, so its integrity cannot be checked",
                            "pass --no-verify to accept it unverified, or download it yourself and use "
                            "`lorair import-official`")
    expected = sha256.lower() if sha256 else None
    if dest.is_file():
        if expected is None:
            return dest  # only a complete, length-checked file is ever renamed to dest
        if _sha256(dest) == expected:
            return dest
        dest.unlink()  # a stale or damaged copy: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    for attempt in range(2):  # the second try starts over when the server cannot resume the part
        offset = part.stat().st_size if part.is_file() else 0
        try:
            done, total = _fetch(url, part, offset, progress, timeout)
        except _Restart:
            part.unlink(missing_ok=True)
            if attempt:
                raise DownloadError(f"{url} keeps refusing to resume {name}",
                                    "delete the .part file and retry") from None
            continue
        break
    if total is not None and done != total:
        raise DownloadError(f"the download of {name} stopped at {done:,} of {total:,} bytes",
                            "run the same command again: it resumes where it stopped")
    if expected is not None:
        got = _sha256(part)
        if got != expected:
            part.unlink(missing_ok=True)  # a wrong file cannot be resumed into a right one
            raise DownloadError(f"checksum mismatch for {name}: expected sha256 {expected[:12]}…, got {got[:12]}…",
                                "the server sent another file (or it was damaged); the partial file was removed, "
                                "try again later or report it")
    part.replace(dest)
    return dest


class _Restart(Exception):
    """The server ignored or rejected our Range request in a way that needs a fresh start."""


def _fetch(url: str, part: Path, offset: int, progress: ProgressFn | None, timeout: float) -> tuple[int, int | None]:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # range not satisfiable: the part may already be whole
            m = re.fullmatch(r"bytes \*/(\d+)", exc.headers.get("Content-Range", "") or "")
            if m and int(m.group(1)) == offset:
                return offset, offset
            raise _Restart from exc
        raise DownloadError(f"{url} answered HTTP {exc.code} {exc.reason}",
                            "the file may have moved; check the model's download page") from exc
    except OSError as exc:  # URLError, timeouts, refused/reset connections
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {urllib.request.urlparse(url).netloc or url}: {reason}",
                            _OFFLINE_HINT) from exc
    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        body_len = int(length) if length and length.isdigit() else None
        if offset and status == 206:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise _Restart
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
        elif status == 200:
            offset, mode = 0, "wb"  # no resume support (or nothing to resume): from the start
            total = body_len
        else:
            raise DownloadError(f"{url} answered HTTP {status} to a download request")
        done = offset
        if progress is not None:
            progress(done, total)
        try:
            f = open(part, mode)  # noqa: SIM115 - closed below; write errors are told apart from network ones
        except OSError as exc:
            raise DownloadError(f"cannot write {part}: {exc}", "check the folder's permissions and free space") from exc
        with f:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (http.client.IncompleteRead, OSError) as exc:  # dropped, reset or timed out
                    raise DownloadError(
                        f"the connection dropped after {done:,} bytes of {part.name.removesuffix('.part')}",
                        "run the same command again: it resumes where it stopped") from exc
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as exc:
                    raise DownloadError(f"cannot write {part}: {exc}", "free some disk space and retry") from exc
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    return done, total
