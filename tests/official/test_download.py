"""core.download against a local HTTP server on 127.0.0.1: a good file, a truncated one that resumes,
a wrong sha256, an unknown sha256, a server without Range support, HTTP errors and no network."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from lorair_desktop.core.download import DownloadError, download, part_path

from .httpserver import Served


def _blob(n: int = 3 * 2**20 + 12345, seed: int = 0) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_good_file_with_progress(server: Served, tmp_path: Path) -> None:
    data = _blob()
    server.files["/w.pth"] = data
    seen: list[tuple[int, int | None]] = []
    dest = download(f"{server.base}/w.pth", tmp_path / "w.pth", _sha(data), progress=lambda d, t: seen.append((d, t)))
    assert dest.read_bytes() == data and not part_path(dest).exists()
    assert seen[0] == (0, len(data)) and seen[-1] == (len(data), len(data))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # Already there and verified: nothing is fetched again.
    n = len(server.ranges)
    assert download(f"{server.base}/w.pth", dest, _sha(data)) == dest and len(server.ranges) == n


def test_truncated_download_fails_then_resumes(server: Served, tmp_path: Path) -> None:
    data = _blob(seed=1)
    server.files["/ir.pth"] = data
    server.cut["/ir.pth"] = 1_500_000
    dest = tmp_path / "ir.pth"
    with pytest.raises(DownloadError) as err:
        download(f"{server.base}/ir.pth", dest, _sha(data))
    assert "resumes" in err.value.hint and not dest.exists()
    kept = part_path(dest).stat().st_size
    assert 0 < kept <= 1_500_000
    server.cut.clear()  # the network is back
    download(f"{server.base}/ir.pth", dest, _sha(data))
    assert dest.read_bytes() == data
    assert server.ranges[-1] == f"bytes={kept}-"  # resumed, not restarted


def test_wrong_sha256_removes_the_file(server: Served, tmp_path: Path) -> None:
    server.files["/r.pth"] = _blob(1000)
    dest = tmp_path / "r.pth"
    with pytest.raises(DownloadError) as err:
        download(f"{server.base}/r.pth", dest, "0" * 64)
    assert "checksum mismatch" in err.value.message
    assert not dest.exists() and not part_path(dest).exists()


def test_unknown_sha256_is_refused_unless_allowed(server: Served, tmp_path: Path) -> None:
    data = _blob(2000)
    server.files["/r.pth"] = data
    dest = tmp_path / "r.pth"
    with pytest.raises(DownloadError) as err:
        download(f"{server.base}/r.pth", dest, None)
    assert "--no-verify" in err.value.hint and server.ranges == []  # refused before any request
    download(f"{server.base}/r.pth", dest, None, allow_unverified=True)
    assert dest.read_bytes() == data


def test_server_without_range_support_restarts_cleanly(server: Served, tmp_path: Path) -> None:
    data = _blob(500_000, seed=2)
    server.files["/x.pth"] = data
    server.no_range.add("/x.pth")
    dest = tmp_path / "x.pth"
    part_path(dest).write_bytes(b"stale bytes from elsewhere")
    download(f"{server.base}/x.pth", dest, _sha(data))
    assert dest.read_bytes() == data


def test_complete_part_is_accepted_on_416(server: Served, tmp_path: Path) -> None:
    data = _blob(4000, seed=3)
    server.files["/y.pth"] = data
    dest = tmp_path / "y.pth"
    part_path(dest).write_bytes(data)  # an earlier run got every byte but stopped before renaming
    download(f"{server.base}/y.pth", dest, _sha(data))
    assert dest.read_bytes() == data and server.ranges == [f"bytes={len(data)}-"]


def test_http_error_and_no_network_are_clear(server: Served, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as err:
        download(f"{server.base}/missing.pth", tmp_path / "m.pth", "0" * 64)
    assert "HTTP 404" in err.value.message
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(DownloadError) as err:
        download(f"http://127.0.0.1:{port}/w.pth", tmp_path / "w.pth", "0" * 64, timeout=5)
    assert err.value.message.startswith("cannot reach 127.0.0.1")
    assert "import-official" in err.value.hint
