"""Give a checkpoint another checkpoint's trained router, with the prototype priors measured on it.

The router is trained apart from the network (`lorair train --stage router`, `--anchor-prior`), and
one router can serve several networks of the same experts: lorair-lite and lorair-compact share
theirs. After a router fine-tune run of one model, this puts that router into the other:

    python -m lorair_desktop.training.graft_router SOURCE.safetensors TARGET.safetensors [-o OUT]

TARGET keeps its network, its experts' adapters, its storage precision and its metadata; its router
and its prototype priors become SOURCE's (prototypes are means of the router's prior, so they
belong to the router). The two must have the same router config and the same experts in the same
order. Without ``-o``, TARGET is rewritten in place, atomically, and where it is a manifest entry (a
shipped or installed model) the manifest's sha256 is updated; the metadata records the source's
sha256 under ``router_source_sha256``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..core.checkpoint import model_from_tensors, read_checkpoint, rewrite_checkpoint, sha256_file
from ..errors import LoraIRError, report_error


def graft_router(source: Path, target: Path, output: Path | None = None) -> tuple[str, bool]:
    """Write TARGET with SOURCE's router to ``output`` (default: TARGET, in place). Returns the
    written file's sha256 and whether the prototype priors came along (False: SOURCE has none, and
    the written model has none either, since TARGET's were measured on another router)."""
    src_cfg, src_tensors, _ = read_checkpoint(source)
    cfg, tensors, meta = read_checkpoint(target)
    if src_cfg.router != cfg.router or tuple(src_cfg.experts) != tuple(cfg.experts):
        raise LoraIRError(
            f"{source.name}'s router cannot serve {target.name}: "
            + ("the router configs differ" if src_cfg.router != cfg.router
               else f"experts {', '.join(src_cfg.experts)} vs {', '.join(cfg.experts)}"),
            "graft between models of the same router preset and the same experts in the same order",
        )
    donor = model_from_tensors(src_cfg, src_tensors, source.name)
    model = model_from_tensors(cfg, tensors, target.name)
    model.router.load_state_dict(donor.router.state_dict())
    model.prior_prototypes = donor.prior_prototypes
    out = output or target
    if out.resolve() != target.resolve() and out.exists():
        raise LoraIRError(f"{out} exists", "choose a new output file, or drop -o to rewrite the target")
    sha = rewrite_checkpoint(model, out, (tensors, {**meta, "router_source_sha256": sha256_file(source)}))
    return sha, donor.prior_prototypes is not None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lorair_desktop.training.graft_router", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="the checkpoint whose router is taken")
    p.add_argument("target", type=Path, help="the checkpoint that gets it (rewritten unless -o is given)")
    p.add_argument("-o", "--output", type=Path, default=None, help="write the result here instead")
    args = p.parse_args(argv)
    try:
        sha, protos = graft_router(args.source, args.target, args.output)
    except LoraIRError as exc:
        return report_error(exc)
    print(f"{args.output or args.target}: router of {args.source.name}, sha256 {sha}")
    if not protos:
        print(f"note: {args.source.name} has no prototype priors, so the result has none either; add them with "
              "`python -m lorair_desktop.training.prototypes`", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
