"""Photo manifest and the fetch/verify logic (no apt in the fast tests)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from lorair_desktop.training import photos as P

KNOWN_PACKAGES = {
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
    "mate-backgrounds",
    "plasma-workspace-wallpapers",
}


def test_manifest_structure() -> None:
    raw = json.loads(P.MANIFEST_PATH.read_text(encoding="utf-8"))
    assert set(raw) >= {"version", "packages", "photos"}
    assert set(raw["packages"]) == KNOWN_PACKAGES
    entries = P.load_manifest()
    assert len(entries) == len(raw["photos"]) >= 30
    names = [e.name for e in entries]
    assert len({n.lower() for n in names}) == len(names)
    assert len({e.sha256 for e in entries}) == len(entries)
    for e in entries:
        assert e.package in KNOWN_PACKAGES
        assert e.path.startswith("usr/share/") and e.path.lower().endswith((".jpg", ".jpeg", ".png"))
        assert len(e.sha256) == 64 and int(e.sha256, 16) >= 0
        assert e.size > 10_000
        assert e.width * e.height >= 1_000_000  # at least ~1 MP
        assert e.split in ("train", "val")
    n_val = sum(e.split == "val" for e in entries)
    assert 0.15 <= n_val / len(entries) <= 0.3
    assert set(P.manifest_names("val", entries)) | set(P.manifest_names("train", entries)) == set(names)


def _fake_package(tmp_path: Path) -> tuple[dict[str, Path], list[P.PhotoEntry]]:
    root = tmp_path / "pkgroot"
    entries = []
    for i, (pkg, rel) in enumerate(
        [("pkg-a", "usr/share/backgrounds/one.jpg"), ("pkg-a", "usr/share/backgrounds/two.jpg"), ("pkg-b", "x/3.png")]
    ):
        data = f"photo {i}".encode() * 50
        f = root / pkg / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        entries.append(
            P.PhotoEntry(
                name=f"p{i}{f.suffix}",
                package=pkg,
                path=rel,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                split="val" if i == 0 else "train",
            )
        )
    return {"pkg-a": root / "pkg-a", "pkg-b": root / "pkg-b"}, entries


def test_install_and_verify(tmp_path: Path) -> None:
    roots, entries = _fake_package(tmp_path)
    dest = tmp_path / "photos"
    good, bad = P.verify_photos(dest, entries)
    assert good == [] and len(bad) == 3
    written = P.install_from_extracted(roots, dest, entries)
    assert sorted(p.name for p in written) == ["p0.jpg", "p1.jpg", "p2.png"]
    good, bad = P.verify_photos(dest, entries)
    assert len(good) == 3 and bad == []
    (dest / "p1.jpg").write_bytes(b"damaged")
    good, bad = P.verify_photos(dest, entries)
    assert [e.name for e in bad] == ["p1.jpg"]


def test_checksum_mismatch_raises(tmp_path: Path) -> None:
    roots, entries = _fake_package(tmp_path)
    (roots["pkg-a"] / entries[1].path).write_bytes(b"x" * entries[1].size)
    with pytest.raises(P.PhotoFetchError) as info:
        P.install_from_extracted(roots, tmp_path / "photos", entries)
    assert "checksum mismatch" in str(info.value) and info.value.hint
    assert not (tmp_path / "photos" / "p1.jpg").exists()


def test_missing_file_raises(tmp_path: Path) -> None:
    roots, entries = _fake_package(tmp_path)
    (roots["pkg-b"] / entries[2].path).unlink()
    with pytest.raises(P.PhotoFetchError, match="missing"):
        P.install_from_extracted(roots, tmp_path / "photos", entries)


def _write_manifest(path: Path, entries: list[P.PhotoEntry]) -> Path:
    photos = [e.__dict__ for e in entries]
    path.write_text(json.dumps({"version": 1, "packages": {}, "photos": photos}), encoding="utf-8")
    return path


def _build_deb(path: Path, root: Path) -> None:
    """A minimal .deb (ar archive: debian-binary, control.tar.gz, data.tar.xz) of ``root``."""

    def tar_bytes(mode: str, add: dict[str, bytes] | None = None, tree: Path | None = None) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as tar:
            if tree is not None:
                tar.add(tree, arcname=".")
            for name, data in (add or {}).items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    control = b"Package: fake\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: fake\n"
    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", tar_bytes("w:gz", {"./control": control})),
        ("data.tar.xz", tar_bytes("w:xz", tree=root)),
    ]
    with open(path, "wb") as fh:
        fh.write(b"!<arch>\n")
        for name, data in members:
            header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n"
            fh.write(header.encode("ascii"))
            fh.write(data)
            if len(data) % 2:
                fh.write(b"\n")


@pytest.mark.parametrize("use_dpkg", [True, False])
def test_fetch_from_deb_dir_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_dpkg: bool) -> None:
    if use_dpkg and shutil.which("dpkg") is None:
        pytest.skip("dpkg not installed")
    roots, entries = _fake_package(tmp_path)
    debs = tmp_path / "debs"
    debs.mkdir()
    for pkg, root in roots.items():
        _build_deb(debs / f"{pkg}_1.0_all.deb", root)
    manifest = _write_manifest(tmp_path / "manifest.json", entries)
    real_which = shutil.which
    if not use_dpkg:
        monkeypatch.setattr(P.shutil, "which", lambda cmd: None if cmd == "dpkg" else real_which(cmd))

    def no_apt(package: str, workdir: Path) -> Path:
        raise AssertionError("apt-get must not be called")

    monkeypatch.setattr(P, "download_package", no_apt)
    dest = tmp_path / "cache" / "photos"
    assert P.fetch_photos(dest, deb_dir=debs, manifest=manifest) == dest
    assert P.verify_photos(dest, entries)[1] == []
    assert sorted(p.name for p in dest.iterdir()) == ["p0.jpg", "p1.jpg", "p2.png"]  # temp dir cleaned up
    # second run: everything verified, no package is even opened
    shutil.rmtree(debs)
    assert P.fetch_photos(dest, deb_dir=debs, manifest=manifest) == dest
    # a damaged file is re-fetched (needs the package again)
    (dest / "p2.png").write_bytes(b"bad")
    with pytest.raises(AssertionError, match="apt-get must not be called"):
        P.fetch_photos(dest, deb_dir=debs, manifest=manifest)


def test_no_apt_get_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P.shutil, "which", lambda cmd: None)
    with pytest.raises(P.PhotoFetchError) as info:
        P.download_package("mate-backgrounds", tmp_path)
    assert "apt-get" in str(info.value)
    assert "--data" in info.value.hint


def test_bad_manifest(tmp_path: Path) -> None:
    bad = tmp_path / "m.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(P.PhotoFetchError):
        P.load_manifest(bad)
    _, entries = _fake_package(tmp_path)
    dup = [entries[0], entries[0]]
    with pytest.raises(P.PhotoFetchError, match="duplicate"):
        P.load_manifest(_write_manifest(tmp_path / "d.json", dup))


def test_cli_verify_only(tmp_path: Path) -> None:
    assert P.main(["--dest", str(tmp_path), "--verify-only"]) == 1


@pytest.mark.slow
def test_real_fetch() -> None:
    """The real apt-get fetch into the user cache (downloads ~170 MB when the cache is empty;
    later runs only verify, so CI on the same machine reuses it)."""
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get not available")
    dest = P.fetch_photos()
    good, bad = P.verify_photos(dest)
    assert bad == [] and len(good) == len(P.load_manifest())
    assert dest == P.default_photo_dir()


@pytest.mark.parametrize("data_filter", [True, False])
def test_a_deb_whose_data_reaches_outside_its_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                data_filter: bool) -> None:
    """Unpacked without dpkg: a member named ../x is refused, on Pythons with tarfile's data filter
    and on those without it (Debian 12's 3.11.2); nothing is written outside."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        body = b"not a photo"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    data = buf.getvalue()
    deb = tmp_path / "evil_1.0_all.deb"
    members = [(b"debian-binary", b"2.0\n"), (b"data.tar.gz", data)]
    out = b"!<arch>\n"
    for name, body in members:
        out += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
        out += str(len(body)).encode().ljust(10) + b"`\n" + body + (b"\n" if len(body) % 2 else b"")
    deb.write_bytes(out)
    real_which = shutil.which
    monkeypatch.setattr(P.shutil, "which", lambda cmd: None if cmd == "dpkg" else real_which(cmd))
    if not data_filter and hasattr(P.tarfile, "data_filter"):
        monkeypatch.delattr(P.tarfile, "data_filter")
    with pytest.raises(P.PhotoFetchError, match=r"holds a path outside its folder: \.\./escaped\.txt"):
        P.extract_deb(deb, tmp_path / "x" / "out")
    assert not (tmp_path / "x" / "escaped.txt").exists()
