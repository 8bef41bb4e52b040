"""`lorair import-official` and `lorair models fetch`: install the paper's released weights.

    lorair import-official --router setting1_router.pth --ir setting1_ir.pth [--name lorair-setting1]
        [--preset lorair-setting1] [-o FILE.safetensors] [--dtype keep|fp16|fp32] [--json]
    lorair models fetch lorair-setting1 [--no-verify] [--keep-downloads] [--cache DIR] [--json]

Both end in a checkpoint of ours under resources/weights plus its manifest entry, so the CLI,
worker, app and plugins use the model like any other. Torch loads only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

DTYPES = ("keep", "fp16", "fp32")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `import-official` subcommand."""
    parser.description = ("Convert the official LoRA-IR release (Setting I: DG-Router + IR network .pth files) "
                          "into a model of ours. The files are read as plain tensors (no pickled code runs).")
    parser.add_argument("--router", required=True, type=Path, help="the released router file (setting1_router.pth)")
    parser.add_argument("--ir", required=True, type=Path, help="the released IR network file (setting1_ir.pth)")
    parser.add_argument("--name", default=None, help="model name (default: the preset's, lorair-setting1)")
    parser.add_argument("--preset", default="lorair-setting1",
                        help="preset name or config JSON describing the released architecture")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="write the .safetensors here instead of the weights folder (manifest untouched)")
    parser.add_argument("--dtype", choices=DTYPES, default="keep",
                        help="keep the release's dtypes (lossless, default), or store fp16 / fp32")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lorair models [list|fetch NAME]` beyond the listing's own."""
    parser.add_argument("action", nargs="?", choices=("list", "fetch"), default="list",
                        help="list the models (default) or fetch a model's released weights")
    parser.add_argument("name", nargs="?", help="model to fetch, e.g. lorair-setting1")
    parser.add_argument("--no-verify", action="store_true",
                        help="accept downloads whose sha256 the manifest does not record")
    parser.add_argument("--keep-downloads", action="store_true", help="keep the downloaded release files")
    parser.add_argument("--cache", type=Path, default=None, help="download folder (default: the user cache)")
    parser.add_argument("--dtype", choices=DTYPES, default="keep", help="storage dtype of the converted model")


def _result_dict(res: Any, seconds: float) -> dict[str, Any]:
    return {"name": res.name, "path": str(res.path), "sha256": res.sha256, "bytes": res.bytes,
            "manifest": str(res.manifest) if res.manifest else None, "tensors": res.tensors,
            "parameters": res.parameters, "seconds": round(seconds, 1)}


def _report(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2))
        return
    print(f"{info['path']}: {info['tensors']} tensors, {info['parameters'] / 1e6:.1f} M parameters, "
          f"{info['bytes'] / 2**20:.0f} MB, sha256 {info['sha256'][:12]}…", file=sys.stderr)
    if info["manifest"]:
        print(f"installed as '{info['name']}': use it with --model {info['name']}", file=sys.stderr)
    else:
        print(f"use it with --model {info['path']}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from .core.convert_official import convert_official

    t0 = time.perf_counter()
    res = convert_official(args.router, args.ir, preset=args.preset, name=args.name, output=args.output,
                           dtype=args.dtype)
    _report(_result_dict(res, time.perf_counter() - t0), args.json)
    return 0


class _Progress:
    """One status line per file on stderr, redrawn at most every 1/4 s."""

    def __init__(self) -> None:
        self.last = 0.0
        self.name = ""

    def __call__(self, name: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if name == self.name and now - self.last < 0.25 and not finished:
            return
        self.name, self.last = name, now
        pct = f" {100 * done / total:5.1f} %" if total else ""
        size = f"{done / 2**20:,.0f}" + (f" / {total / 2**20:,.0f}" if total else "")
        print(f"\r{name}: {size} MB{pct}", end="\n" if finished else "", file=sys.stderr, flush=True)


def run_fetch(args: argparse.Namespace) -> int:
    import platformdirs

    from .core.convert_official import fetch_model
    from .errors import LoraIRError

    if not args.name:
        raise LoraIRError("`lorair models fetch` needs a model name", "e.g. `lorair models fetch lorair-setting1`")
    cache = args.cache or Path(platformdirs.user_cache_dir("lorair-desktop")) / "downloads"
    t0 = time.perf_counter()
    res = fetch_model(args.name, cache, allow_unverified=args.no_verify, keep_downloads=args.keep_downloads,
                      progress=None if args.json else _Progress(), dtype=args.dtype)
    _report(_result_dict(res, time.perf_counter() - t0), args.json)
    return 0
