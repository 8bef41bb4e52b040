"""The `lorair` command: restore, analyze, models, and the subcommands of the other layers.

Every user-facing failure is a LoraIRError (or a BridgeError) printed as one line plus a hint, with
a non-zero exit; set LORAIR_DEBUG=1 to see tracebacks of unexpected errors.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import LoraIRError, report_error

if TYPE_CHECKING:  # the CLI imports its heavy parts (torch, OpenCV) only in the command that needs them
    from .core import Restorer
    from .imageio import LoadedImage

# Long jobs that share the cores for hours wait passively in OpenMP: a spinning team slows 2-8x
# beside another busy program. Restores keep the spinning wait, ~20 % faster on free cores, and
# core.cpu.ThreadGovernor drops to fewer threads while other programs hold cores.
PASSIVE_WAIT = frozenset({"train", "eval", "data"})


def set_wait_policy(argv: list[str]) -> None:
    """Set before torch loads (OpenMP reads it once); a user's own OMP_WAIT_POLICY wins."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in PASSIVE_WAIT:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Subcommands owned by other layers: name -> module with add_arguments(parser) and run(args) -> int.
SUBCOMMANDS: dict[str, str] = {
    "worker": "lorair_desktop.worker.main",
    "plugins": "lorair_desktop.plugins_install",
    "train": "lorair_desktop.training.train_cli",
    "eval": "lorair_desktop.training.eval_cli",
    "data": "lorair_desktop.training.data_cli",
    "bench": "lorair_desktop.bench",
    "import-official": "lorair_desktop.models_cli",
}

HELP = {
    "worker": "run the local background worker that the app and plugins talk to",
    "plugins": "install or remove the Krita / GIMP 3 plugins",
    "train": "train a model (router, base network, LoRA experts)",
    "eval": "evaluate a model per degradation; writes JSON and Markdown",
    "data": "fetch the offline training photos and show the manifest",
    "bench": "speed and memory benchmarks",
    "import-official": "convert the paper's released LoRA-IR weights (.pth) into a model",
}


class _Progress:
    """Restore progress on stderr where there is some to see: several tiles, or passes of one."""

    def __init__(self) -> None:
        self.shown = False

    def __call__(self, done: float, total: int) -> None:
        if total > 1 or done < total or self.shown:
            self.shown = True
            print(f"\rrestoring: {100 * done / total:3.0f} % (tile {int(done)}/{total})",
                  end="" if done < total else "\n", file=sys.stderr, flush=True)


def restore_jobs(inputs: list[str], output: str, force: bool, suffix: str = "") -> tuple[list[tuple[Path, Path]], bool]:
    """(input, output) pairs, and whether they go into a folder; every one is checked before anything
    is restored: one file to ``-o FILE``,
    or files and folders (their images, not recursive) to ``-o FOLDER``, made if missing, each
    result named after its input (``imageio.output_name``). An input is never written over there."""
    from . import imageio

    paths, out = [Path(p) for p in inputs], Path(output)
    folder = output.endswith(("/", os.sep))  # "-o restored/": a folder, made if missing
    if suffix:
        suffix = "." + suffix.lower().lstrip(".")
        if suffix not in imageio.WRITE_FORMATS:
            raise LoraIRError(f"cannot write '{suffix}' files",
                              f"use one of {', '.join(sorted(s[1:] for s in imageio.WRITE_FORMATS))}")
    if len(paths) == 1 and not paths[0].is_dir() and not out.is_dir() and not folder:
        if not paths[0].is_file():
            raise LoraIRError(f"{paths[0]} does not exist or is not a file")
        if suffix:
            raise LoraIRError("--format names the format of results in an output folder",
                              f"give -o a folder, or write the suffix in the file name ({out.stem}{suffix})")
        imageio.check_output_path(paths[0], out, force)
        return [(paths[0], out)], False
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += imageio.list_images(p)
        elif p.is_file():
            files.append(p)
        else:
            raise LoraIRError(f"{p} does not exist or is not a file")
    if not files:
        raise LoraIRError(f"no images in {', '.join(inputs)}",
                          f"looked for {', '.join(sorted(imageio.READ_SUFFIXES))}")
    if out.exists() and not out.is_dir():
        raise LoraIRError(f"{out} is a file, and {len(files)} images need an output folder", "give -o a folder")
    sources = {f.resolve(): f for f in files}
    jobs: list[tuple[Path, Path]] = []
    taken: dict[Path, Path] = {}
    for src in files:
        dst = out / imageio.output_name(src, suffix)
        key = dst.resolve()
        if key in sources:
            raise LoraIRError(f"the result of {src} would replace the input {sources[key]}",
                              "choose another output folder (originals are never written over)")
        if key in taken:
            raise LoraIRError(f"{taken[key]} and {src} would both be written to {dst}",
                              "restore them to separate folders, or rename one")
        taken[key] = src
        if dst.exists() and not force:
            raise LoraIRError(f"{dst} already exists", "choose another output folder or add --force")
        jobs.append((src, dst))
    out.mkdir(parents=True, exist_ok=True)
    return jobs, True


def cmd_restore(args: argparse.Namespace) -> int:
    from . import imageio
    from .core import Restorer, load_model
    from .core.routing import parse_experts_arg

    imageio.check_quality(args.quality)  # before the restore: the encoder would refuse it only after
    jobs, into_folder = restore_jobs(args.input, args.output, args.force, args.format)
    first = None if into_folder else _read_for_restore(*jobs[0], args)  # a bad file fails before the model loads
    model = load_model(args.model)
    overrides, keep = parse_experts_arg(args.experts, model.experts)
    restorer = Restorer(model, device=args.device, precision=args.precision)
    if first is not None:
        report = _restore_file(restorer, overrides, keep, first, *jobs[0], args)
        if args.json:
            print(json.dumps(report, indent=2))
        return 0
    reports: list[dict] = []
    failed: list[Path] = []
    for src, dst in jobs:
        try:
            reports.append(_restore_file(restorer, overrides, keep, _read_for_restore(src, dst, args), src, dst,
                                         args))
        except LoraIRError as exc:  # one damaged photo does not stop the others
            failed.append(src)
            reports.append({"input": str(src), "error": exc.message, "hint": exc.hint})
            print(f"error: {src}: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
    if args.json:
        print(json.dumps(reports, indent=2))
    if failed or not args.quiet:
        print(f"{len(jobs) - len(failed)} restored, {len(failed)} failed, into {args.output}", file=sys.stderr)
    return 1 if failed else 0


def _read_for_restore(src: Path, dst: Path, args: argparse.Namespace) -> LoadedImage:
    """The image, with a note on what the result cannot hold of it (and a refusal to write over it)."""
    from . import imageio

    img = imageio.read_image(src, max_pixels=args.max_pixels)
    caveat = img.caveat(src.name)
    if caveat:
        if dst.exists() and dst.resolve() == src.resolve():  # even with --force: the file holds more
            raise LoraIRError(f"{caveat}: writing the result over it would lose what it holds",
                              "write the output to another file")
        print(f"note: {caveat}", file=sys.stderr)
    return img


def _restore_file(restorer: Restorer, overrides: dict[str, float] | None, keep: bool, img: LoadedImage, src: Path,
                  dst: Path, args: argparse.Namespace) -> dict:
    from . import imageio
    from .worker import pixels

    t0 = time.perf_counter()
    tiling = {"tile": args.tile} | ({} if args.overlap is None else {"overlap": args.overlap})
    model_in, spill = pixels.for_model(img.rgb, img.transfer)  # linear light: on its sRGB encoding
    res = restorer.restore(model_in, overrides, keep, **tiling, progress=None if args.quiet else _Progress(),
                           ensemble=args.ensemble)
    imageio.write_image(dst, pixels.from_model(res.image, img.transfer, spill), img.alpha, img.bit_depth,
                        img.icc_profile, quality=args.quality,
                        exif=img.exif, grey=img.grey, xmp=img.xmp)
    if not args.quiet and not args.json:
        applied = ", ".join(f"{k} {v:.2f}" for k, v in res.applied_weights.items() if v > 0) or "none (base network)"
        passes = f" x{res.ensemble} passes" if res.ensemble > 1 else ""
        steered = " (the prior steered to this mix)" if res.prior_steered else ""
        print(f"{dst}: applied {applied}{steered}; {res.tiles} tile(s){passes} on {restorer.device}, "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return {"input": str(src), "output": str(dst), "router_weights": res.router_weights,
            "applied_weights": res.applied_weights, "tiles": res.tiles, "timings": res.timings,
            "ensemble": res.ensemble, "prior_steered": res.prior_steered, "device": str(restorer.device)}


def cmd_analyze(args: argparse.Namespace) -> int:
    from . import imageio
    from .core import Restorer, load_model
    from .worker import pixels

    img = imageio.read_image(Path(args.input), max_pixels=args.max_pixels)
    restorer = Restorer(load_model(args.model), device=args.device)
    a = restorer.analyze(pixels.for_model(img.rgb, img.transfer)[0])
    if args.json:
        print(json.dumps({"router_weights": a.weights_dict(), "top_expert": a.top_expert, "logits": a.logits,
                          "router_crops": a.crops}))
    else:
        for name, w in a.weights_dict().items():
            print(f"{name:>10} {w:5.2f} {'#' * round(w * 40)}")
        seen = f"{a.crops} crops of {restorer.model.cfg.router.context} px" if a.crops else "the whole image"
        print(f"top expert: {a.top_expert} (router: {seen})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.action == "fetch":
        from .models_cli import run_fetch

        return run_fetch(args)
    from .core.checkpoint import DEFAULT_MODEL, list_models, read_sources

    rows = []
    fetchable = read_sources()
    for e in list_models():
        size = e.weights.stat().st_size if e.weights else 0
        rows.append({"name": e.name, "default": e.name == DEFAULT_MODEL, "experts": list(e.config.experts),
                     "weights": str(e.weights) if e.weights else None, "size_mb": round(size / 2**20, 2),
                     "description": e.config.description, "fetchable": e.name in fetchable})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        status = f"{r['weights']} ({r['size_mb']} MB)" if r["weights"] else "no trained weights installed"
        if not r["weights"] and r["fetchable"]:
            status = f"not installed; get the released weights with `lorair models fetch {r['name']}`"
        print(f"{r['name']}{' (default)' if r['default'] else ''}: {r['description']}")
        print(f"  experts: {', '.join(r['experts'])}\n  weights: {status}")
    return 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from . import DEFAULT_MODEL, models_cli
    from .bridge import protocol

    p = argparse.ArgumentParser(prog="lorair", description="LoRA-IR Desktop: all-in-one image restoration")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default=DEFAULT_MODEL, help="preset name or .safetensors path")
        sp.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
        sp.add_argument("--max-pixels", type=int, default=200_000_000, help="refuse larger images")

    r = sub.add_parser("restore", help="restore an image file")
    r.add_argument("input", nargs="+", help="an image file; or several files and folders, with -o a folder")
    r.add_argument("-o", "--output", required=True, help="the output file; or a folder (made if missing)")
    r.add_argument("--format", default="", metavar="EXT",
                   help="with -o a folder: write every result in this format, e.g. png or heic (default: each "
                        "input's own where it can be written, else png)")
    common(r)
    r.add_argument("--experts", default="auto", help="auto | name=w,... | auto,name=w (router's mix, edited)")
    r.add_argument("--tile", type=int, default=None, help="tile side in pixels (default: automatic)")
    r.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (default 16)")
    r.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    r.add_argument("--ensemble", type=int, choices=protocol.ENSEMBLES, default=1,
                   help="average this many flipped/turned passes: finer detail, that many times slower "
                        "(rain keeps to 4 passes)")
    r.add_argument("--quality", type=int, default=95, help="JPEG, WebP, HEIF and AVIF quality (1-100)")
    r.add_argument("--force", action="store_true", help="allow overwriting an existing output")
    r.add_argument("--json", action="store_true", help="print the weights and timings as JSON")
    r.add_argument("-q", "--quiet", action="store_true")
    r.set_defaults(func=cmd_restore)

    a = sub.add_parser("analyze", help="show the router's expert weights for an image")
    a.add_argument("input")
    common(a)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_analyze)

    m = sub.add_parser("models", help="list model presets, their experts and weights; fetch released weights")
    m.add_argument("--json", action="store_true")
    models_cli.add_fetch_arguments(m)  # `lorair models fetch NAME`
    m.set_defaults(func=cmd_models)

    # Only the chosen subcommand's module is imported: `lorair plugins ...` must not pay for torch.
    chosen = next((a for a in (argv or []) if a in SUBCOMMANDS), None)
    for name, module in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=HELP.get(name))
        if name == chosen:
            mod = importlib.import_module(module)
            mod.add_arguments(sp)
            sp.set_defaults(func=mod.run)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    set_wait_policy(argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except LoraIRError as exc:
        return report_error(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("LORAIR_DEBUG"):
            raise
        name = getattr(exc, "code", None) and getattr(exc, "message", None)
        if name:  # BridgeError and friends carry code/message/hint too
            print(f"error: {exc.message}", file=sys.stderr)  # type: ignore[attr-defined]
            hint = getattr(exc, "hint", "")
            if hint:
                print(f"hint: {hint}", file=sys.stderr)
            return 2
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: run again with LORAIR_DEBUG=1 for details and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
