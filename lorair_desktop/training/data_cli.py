"""`lorair data`: fetch, verify and list the offline training photos (or any image folder).

    lorair data fetch [--dest DIR] [--deb-dir DIR]   # download + unpack + verify into the cache
    lorair data verify [--dest DIR]                  # sha256 of every manifest photo; exit 1 if any bad
    lorair data list [--dest DIR | --data DIR] [--split train|val] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from PIL import Image

from .photos import SPLITS, default_photo_dir, fetch_photos, load_manifest, verify_photos


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True)
    f = sub.add_parser("fetch", help="download and unpack the manifest photos into the cache (apt-get download)")
    f.add_argument("--deb-dir", type=Path, default=None, help="folder with already downloaded .deb files")
    v = sub.add_parser("verify", help="check size and sha256 of every manifest photo")
    ls = sub.add_parser("list", help="list the photos: split, size, megapixels, presence")
    ls.add_argument("--data", type=Path, default=None, help="list any folder of images with its train/val split")
    ls.add_argument("--split", choices=SPLITS, default=None)
    ls.add_argument("--json", action="store_true")
    for sp in (f, v, ls):
        sp.add_argument("--dest", type=Path, default=None, help=f"photo folder (default: {default_photo_dir()})")


def _summary(rows: list[dict[str, Any]]) -> str:
    parts = []
    for split in SPLITS:
        sel = [r for r in rows if r["split"] == split]
        if sel:
            parts.append(f"{split}: {len(sel)} images, {sum(r['megapixels'] for r in sel):.0f} MP")
    return "; ".join(parts)


def _manifest_rows(dest: Path) -> list[dict[str, Any]]:
    entries = load_manifest()
    # Presence by size only (fast); `lorair data verify` checks every sha256.
    ok = {e.name for e in entries if (dest / e.name).is_file() and (dest / e.name).stat().st_size == e.size}
    return [
        {
            "name": e.name,
            "split": e.split,
            "width": e.width,
            "height": e.height,
            "megapixels": round(e.width * e.height / 1e6, 2),
            "bytes": e.size,
            "package": e.package,
            "sha256": e.sha256,
            "present": e.name in ok,
        }
        for e in entries
    ]


def _folder_rows(folder: Path) -> list[dict[str, Any]]:
    from .dataset import list_images, select_split

    paths = list_images(folder)
    val = set(select_split(paths, folder, "val"))
    train = set(select_split(paths, folder, "train"))
    rows = []
    for p in paths:
        if p not in val and p not in train:
            continue  # a stray file in a manifest folder: ignored by training too
        try:
            with Image.open(p) as im:  # header only: no decode
                w, h = im.size
        except OSError:
            w = h = 0
        rows.append({"name": p.relative_to(folder).as_posix(), "split": "val" if p in val else "train",
                     "width": w, "height": h, "megapixels": round(w * h / 1e6, 2), "bytes": p.stat().st_size,
                     "present": True})
    return rows


def run(args: argparse.Namespace) -> int:
    dest = args.dest or default_photo_dir()
    if args.data_command == "fetch":
        fetch_photos(dest, deb_dir=args.deb_dir)
        rows = _manifest_rows(dest)
        print(f"{dest}: all {len(rows)} photos present and verified ({_summary(rows)})")
        return 0
    if args.data_command == "verify":
        good, bad = verify_photos(dest)
        for e in bad:
            print(f"missing or damaged: {e.name} ({e.package})")
        print(f"{dest}: {len(good)} verified, {len(bad)} missing or damaged")
        if bad:
            print("fix with: lorair data fetch")
        return 0 if not bad else 1
    rows = _folder_rows(args.data) if args.data is not None else _manifest_rows(dest)
    if args.split:
        rows = [r for r in rows if r["split"] == args.split]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max([len(r["name"]) for r in rows] + [4])
    print(f"{'name':<{width}}  split  {'size':>11}  {'MP':>6}  {'MB':>6}  present")
    for r in rows:
        size = f"{r['width']}x{r['height']}"
        print(f"{r['name']:<{width}}  {r['split']:<5}  {size:>11}  {r['megapixels']:6.2f}  {r['bytes'] / 2**20:6.2f}  "
              f"{'yes' if r['present'] else 'NO'}")
    where = args.data if args.data is not None else f"{dest} (photo manifest)"
    missing = sum(not r["present"] for r in rows)
    print(f"{where}: {_summary(rows)}" + (f"; {missing} missing (run: lorair data fetch)" if missing else ""))
    return 0
