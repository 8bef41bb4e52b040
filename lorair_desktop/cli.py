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

from .errors import LoraIRError, report_error

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


def cmd_restore(args: argparse.Namespace) -> int:
    from . import imageio
    from .core import Restorer, load_model
    from .core.routing import parse_experts_arg
    from .worker import pixels

    src, dst = Path(args.input), Path(args.output)
    if not src.is_file():
        raise LoraIRError(f"{src} does not exist or is not a file")
    imageio.check_output_path(src, dst, args.force)
    if not 1 <= args.quality <= 100:  # before the restore: the encoder would refuse it only after
        raise LoraIRError(f"--quality {args.quality} is out of range", "use a quality from 1 to 100")
    img = imageio.read_image(src, max_pixels=args.max_pixels)
    caveat = img.caveat(src.name)
    if caveat:
        if dst.exists() and dst.resolve() == src.resolve():  # even with --force: the file holds more
            raise LoraIRError(f"{caveat}: writing the result over it would lose what it holds",
                              "write the output to another file")
        print(f"note: {caveat}", file=sys.stderr)
    model = load_model(args.model)
    overrides, keep = parse_experts_arg(args.experts, model.experts)
    restorer = Restorer(model, device=args.device, precision=args.precision)
    t0 = time.perf_counter()
    tiling = {"tile": args.tile} | ({} if args.overlap is None else {"overlap": args.overlap})
    model_in, spill = pixels.for_model(img.rgb, img.transfer)  # linear light: on its sRGB encoding
    res = restorer.restore(model_in, overrides, keep, **tiling, progress=None if args.quiet else _Progress(),
                           ensemble=args.ensemble)
    imageio.write_image(dst, pixels.from_model(res.image, img.transfer, spill), img.alpha, img.bit_depth,
                        img.icc_profile, quality=args.quality,
                        exif=img.exif, grey=img.grey)
    if args.json:
        print(json.dumps({"output": str(dst), "router_weights": res.router_weights,
                          "applied_weights": res.applied_weights, "tiles": res.tiles, "timings": res.timings,
                          "ensemble": res.ensemble, "prior_steered": res.prior_steered,
                          "device": str(restorer.device)}, indent=2))
    elif not args.quiet:
        applied = ", ".join(f"{k} {v:.2f}" for k, v in res.applied_weights.items() if v > 0) or "none (base network)"
        passes = f" x{res.ensemble} passes" if res.ensemble > 1 else ""
        steered = " (the prior steered to this mix)" if res.prior_steered else ""
        print(f"{dst}: applied {applied}{steered}; {res.tiles} tile(s){passes} on {restorer.device}, "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


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
    r.add_argument("input")
    r.add_argument("-o", "--output", required=True)
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
