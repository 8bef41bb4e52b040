"""The offline training photographs: fetch, unpack, verify.

The photos are real photographs shipped in Debian wallpaper packages; which files are photos
(and not renders or drawings) was decided by eye and is recorded, with sha256 and train/val
split, in ``photo_manifest.json`` next to this module. ``fetch_photos`` downloads the packages
with ``apt-get download``, unpacks them with ``dpkg -x`` (or a pure-Python ``.deb`` reader when
dpkg is missing), verifies every chosen file and copies it into the cache folder. Re-running it
only redoes what is missing or damaged.

Command line: ``python -m lorair_desktop.training.photos [--dest DIR] [--verify-only]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import platformdirs

from lorair_desktop.atomic import replacing
from lorair_desktop.errors import LoraIRError

__all__ = [
    "MANIFEST_PATH",
    "PhotoEntry",
    "PhotoFetchError",
    "default_photo_dir",
    "download_package",
    "extract_deb",
    "fetch_photos",
    "install_from_extracted",
    "load_manifest",
    "main",
    "manifest_names",
    "sha256_file",
    "verify_photos",
]

log = logging.getLogger(__name__)

MANIFEST_PATH = Path(__file__).with_name("photo_manifest.json")
SPLITS = ("train", "val")


class PhotoFetchError(LoraIRError):
    """The training photos could not be fetched or verified."""

    code = "photo_fetch_failed"


@dataclass(frozen=True)
class PhotoEntry:
    """One chosen photograph: where it lives in which Debian package and what it must hash to."""

    name: str
    package: str
    path: str
    size: int
    sha256: str
    split: str
    width: int = 0
    height: int = 0


def load_manifest(path: Path | None = None) -> list[PhotoEntry]:
    """Read and validate the photo manifest (default: the one shipped with the package)."""
    path = MANIFEST_PATH if path is None else Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = [PhotoEntry(**item) for item in data["photos"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PhotoFetchError(
            f"cannot read photo manifest {path}: {exc}",
            "reinstall lorair-desktop or restore photo_manifest.json",
        ) from exc
    seen: set[str] = set()
    for e in entries:
        if e.split not in SPLITS:
            raise PhotoFetchError(
                f"manifest entry {e.name}: split must be train or val, not {e.split!r}",
                "fix photo_manifest.json",
            )
        if e.name.lower() in seen or "/" in e.name or e.name.startswith("."):
            raise PhotoFetchError(
                f"manifest entry {e.name!r}: duplicate or unsafe file name", "fix photo_manifest.json"
            )
        if len(e.sha256) != 64 or PurePosixPath(e.path).is_absolute() or ".." in PurePosixPath(e.path).parts:
            raise PhotoFetchError(f"manifest entry {e.name}: bad sha256 or path", "fix photo_manifest.json")
        seen.add(e.name.lower())
    return entries


def manifest_names(split: str | None = None, entries: Sequence[PhotoEntry] | None = None) -> list[str]:
    """File names of the manifest photos, optionally only one split."""
    entries = load_manifest() if entries is None else entries
    return [e.name for e in entries if split is None or e.split == split]


def default_photo_dir() -> Path:
    """``<user cache>/lorair-desktop/photos``."""
    return Path(platformdirs.user_cache_dir("lorair-desktop")) / "photos"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_valid(path: Path, entry: PhotoEntry) -> bool:
    return path.is_file() and path.stat().st_size == entry.size and sha256_file(path) == entry.sha256


def verify_photos(dest: Path, entries: Sequence[PhotoEntry] | None = None) -> tuple[list[PhotoEntry], list[PhotoEntry]]:
    """Split the entries into ``(verified, missing_or_bad)`` according to the files in ``dest``."""
    entries = load_manifest() if entries is None else entries
    good: list[PhotoEntry] = []
    bad: list[PhotoEntry] = []
    for e in entries:
        (good if _is_valid(Path(dest) / e.name, e) else bad).append(e)
    return good, bad


def install_from_extracted(roots: Mapping[str, Path], dest: Path, entries: Iterable[PhotoEntry]) -> list[Path]:
    """Copy each entry from its unpacked package root (``roots[package]``) into ``dest``, after
    checking size and sha256. Raises ``PhotoFetchError`` on a missing file or a mismatch."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for e in entries:
        if e.package not in roots:
            raise PhotoFetchError(f"package {e.package} was not unpacked", "run the fetch again")
        src = Path(roots[e.package]) / e.path
        if not src.is_file():
            raise PhotoFetchError(
                f"{e.path} is missing from package {e.package}",
                "the Debian package changed; update photo_manifest.json",
            )
        digest = sha256_file(src)
        if digest != e.sha256 or src.stat().st_size != e.size:
            raise PhotoFetchError(
                f"checksum mismatch for {e.name} from {e.package}: expected {e.sha256[:12]}…, got {digest[:12]}…",
                "the Debian package changed or the download is damaged; delete the cache and retry, "
                "or update photo_manifest.json",
            )
        target = dest / e.name
        with replacing(target) as tmp:
            shutil.copyfile(src, tmp)
        written.append(target)
    return written


def download_package(package: str, workdir: Path) -> Path:
    """``apt-get download PACKAGE`` into ``workdir``; returns the ``.deb`` path."""
    apt = shutil.which("apt-get")
    if apt is None:
        raise PhotoFetchError(
            "apt-get is not available, so the Debian wallpaper packages cannot be downloaded",
            "run on Debian/Ubuntu, or pass deb_dir= a folder with the .deb files, "
            "or train on your own folder with --data DIR",
        )
    workdir = Path(workdir)
    before = set(workdir.glob("*.deb"))
    proc = subprocess.run([apt, "download", package], cwd=workdir, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        hint = (
            "run 'apt-get update' first"
            if "Unable to locate" in (proc.stderr or "")
            else "check the network access to the Debian mirrors"
        )
        raise PhotoFetchError(f"apt-get download {package} failed: {msg[-1] if msg else proc.returncode}", hint)
    new = sorted(set(workdir.glob("*.deb")) - before) or sorted(workdir.glob(f"{package}_*.deb"))
    if not new:
        raise PhotoFetchError(f"apt-get download {package} produced no .deb file", "retry; check disk space")
    return new[0]


def _ar_members(deb: Path) -> Iterable[tuple[str, bytes]]:
    with open(deb, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise PhotoFetchError(f"{deb.name} is not a Debian package", "delete it and fetch again")
        while header := fh.read(60):
            if len(header) < 60:
                break
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            data = fh.read(size)
            if size % 2:
                fh.read(1)
            yield name, data


def extract_deb(deb: Path, outdir: Path) -> Path:
    """Unpack a ``.deb``'s data into ``outdir`` (``dpkg -x``; a pure-Python ar/tar reader when
    dpkg is missing). Returns ``outdir``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    dpkg = shutil.which("dpkg")
    if dpkg is not None:
        proc = subprocess.run([dpkg, "-x", str(deb), str(outdir)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise PhotoFetchError(f"dpkg -x {deb.name} failed: {proc.stderr.strip()}", "delete it and fetch again")
        return outdir
    for name, data in _ar_members(deb):
        if name.startswith("data.tar"):
            try:
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                    _extract_data(tar, outdir, deb.name)
            except tarfile.TarError as exc:
                raise PhotoFetchError(
                    f"cannot unpack {deb.name}: {exc}", "install dpkg (its data archive may use zstd)"
                ) from exc
            return outdir
    raise PhotoFetchError(f"{deb.name} has no data archive", "delete it and fetch again")


def _extract_data(tar: tarfile.TarFile, outdir: Path, name: str) -> None:
    """Unpack only what lands inside ``outdir``: tarfile's "data" filter where this Python has it
    (3.11.4 and later; Debian 12 ships 3.11.2), else its files and folders whose paths stay inside
    (links and devices skipped: photos need neither)."""
    def outside(member: str) -> PhotoFetchError:
        return PhotoFetchError(f"{name} holds a path outside its folder: {member}", "delete it and fetch again")

    if hasattr(tarfile, "data_filter"):
        try:
            tar.extractall(outdir, filter="data")
        except tarfile.OutsideDestinationError as exc:
            raise outside(exc.tarinfo.name) from exc
        return
    root = outdir.resolve()
    safe = []
    for member in tar.getmembers():
        if not (member.isfile() or member.isdir()):
            continue
        if not (root / member.name).resolve().is_relative_to(root):
            raise outside(member.name)
        safe.append(member)
    tar.extractall(outdir, members=safe)  # every member checked above


def _find_deb(deb_dir: Path, package: str) -> Path | None:
    found = sorted(Path(deb_dir).glob(f"{package}_*.deb"))
    return found[-1] if found else None


def fetch_photos(dest: Path | None = None, *, deb_dir: Path | None = None, manifest: Path | None = None) -> Path:
    """Make sure every manifest photo is in ``dest`` (default ``default_photo_dir()``) and
    verified; download and unpack only the packages still needed. Returns ``dest``.

    ``deb_dir``: a folder with already downloaded ``PACKAGE_*.deb`` files to use before apt-get.
    """
    dest = default_photo_dir() if dest is None else Path(dest)
    entries = load_manifest(manifest)
    dest.mkdir(parents=True, exist_ok=True)
    good, todo = verify_photos(dest, entries)
    if not todo:
        log.info("all %d photos present and verified in %s", len(good), dest)
        return dest
    packages = sorted({e.package for e in todo})
    log.info("%d of %d photos to fetch from %s", len(todo), len(entries), ", ".join(packages))
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=dest.parent) as tmp:
        work = Path(tmp)
        roots: dict[str, Path] = {}
        for pkg in packages:
            deb = _find_deb(deb_dir, pkg) if deb_dir is not None else None
            if deb is None:
                log.info("downloading %s", pkg)
                deb = download_package(pkg, work)
            log.info("unpacking %s", deb.name)
            roots[pkg] = extract_deb(deb, work / f"x-{pkg}")
        install_from_extracted(roots, dest, todo)
    good, bad = verify_photos(dest, entries)
    if bad:
        raise PhotoFetchError(
            f"{len(bad)} photos failed verification after the fetch: " + ", ".join(e.name for e in bad[:5]),
            "delete the cache folder and retry",
        )
    log.info("%d photos ready in %s", len(good), dest)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: fetch (or only verify) the training photos."""
    parser = argparse.ArgumentParser(
        prog="python -m lorair_desktop.training.photos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dest", type=Path, default=None, help="target folder (default: the user cache)")
    parser.add_argument("--deb-dir", type=Path, default=None, help="folder with pre-downloaded .deb files")
    parser.add_argument("--verify-only", action="store_true", help="only check what is already there")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dest = default_photo_dir() if args.dest is None else args.dest
    try:
        if args.verify_only:
            good, bad = verify_photos(dest)
            log.info("%d verified, %d missing or damaged in %s", len(good), len(bad), dest)
            return 0 if not bad else 1
        fetch_photos(dest, deb_dir=args.deb_dir)
    except PhotoFetchError as exc:
        log.error("error: %s", exc)
        return 2
    entries = load_manifest()
    counts = {s: sum(e.split == s for e in entries) for s in SPLITS}
    mp = sum(e.width * e.height for e in entries) / 1e6
    log.info("%s (%d train, %d val, %.0f MP)", dest, counts["train"], counts["val"], mp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
