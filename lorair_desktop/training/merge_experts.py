"""Give a checkpoint the LoRA experts of some degradations from another checkpoint.

`lorair train --stage experts --no-full --tasks …` trains the named experts' adapters and keeps the
base network, the router and every other expert bit for bit. Runs that start from one model and
train disjoint sets of experts can therefore run side by side (one per core, or one per machine)
and be put together afterwards:

    python -m lorair_desktop.training.merge_experts TARGET.safetensors SOURCE.safetensors \
        --experts rain,haze [-o OUT]

TARGET keeps everything except the named experts' adapters, which become SOURCE's (every LoRA
layer's slice of those experts). With ``--blend W`` (0 < W < 1) they become the weighted mean
(1 − W)·TARGET + W·SOURCE instead, factor by factor: two runs of the same experts from one model
(different seeds, one per core) averaged, as weight averaging of fine-tuned models does. The mean
of the factors is not quite the mean of the two low-rank updates (a cross term, second order in
how far the runs moved apart), so measure a blend like any other weights.

An expert's adapter is a change to one base network under one router's prior, so the two
checkpoints must have the same network, router and experts, and every tensor outside the adapters
(base network and router) must be equal: a run that tuned the base (`--full`, `--tune-base`) is
refused, since its experts would land on a base they never saw. TARGET's storage precision (fp16
stays fp16), metadata, routing rule (`lora.top_k`, `lora.min_share`) and prototype priors are
kept; the metadata records which experts came from which file's sha256 under
``experts_source_sha256``, and a blend's weight W under ``experts_blend``. Without ``-o``, TARGET
is rewritten in place, atomically, and where it is a manifest entry the manifest's sha256 is
updated.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from ..core.checkpoint import model_from_tensors, read_checkpoint, rewrite_checkpoint, sha256_file
from ..errors import LoraIRError, report_error
from .provenance import BLEND_KEY, SOURCES_KEY, Provenance


def _differing(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors outside the LoRA adapters whose values differ (fp16 vs fp32 storage alike)."""
    return [k for k, v in ours.items() if ".lora_" not in k and not torch.equal(v.float(), theirs[k].float())]


def merge_experts(target: Path, source: Path, experts: Sequence[str], output: Path | None = None,
                  blend: float = 1.0) -> str:
    """Write TARGET with SOURCE's adapters for ``experts`` (``blend`` < 1: their weighted mean with
    TARGET's) to ``output`` (default: TARGET, in place). Returns the written file's sha256."""
    if not 0.0 < blend <= 1.0:
        raise LoraIRError(f"blend weight {blend:g} is outside (0, 1]",
                          "give the share of SOURCE's adapters, e.g. 0.5 for the mean of the two")
    out = output or target
    if out.resolve() != target.resolve() and out.exists():
        raise LoraIRError(f"{out} exists", "choose a new output file, or drop -o to rewrite the target")
    src_cfg, src_tensors, _ = read_checkpoint(source)
    cfg, tensors, meta = read_checkpoint(target)
    if not experts:
        raise LoraIRError("no experts named", f"name some of {', '.join(cfg.experts)} with --experts")
    unknown = [e for e in experts if e not in cfg.experts]
    if unknown:
        raise LoraIRError(f"{target.name} has no expert {', '.join(unknown)}",
                          f"its experts are {', '.join(cfg.experts)}")
    same = (src_cfg.net == cfg.net and src_cfg.router == cfg.router and tuple(src_cfg.experts) == tuple(cfg.experts)
            and (src_cfg.lora.rank, src_cfg.lora.alpha) == (cfg.lora.rank, cfg.lora.alpha))
    if not same:
        raise LoraIRError(f"{source.name} and {target.name} are not the same model (network, router, LoRA rank "
                          "or experts differ)", "merge experts of runs started from the same model")
    donor = model_from_tensors(src_cfg, src_tensors, source.name)
    model = model_from_tensors(cfg, tensors, target.name)
    moved = _differing(model.state_dict(), donor.state_dict())
    if moved:
        raise LoraIRError(
            f"{source.name}'s base network or router differs from {target.name}'s ({len(moved)} tensors, "
            f"e.g. {moved[0]}): its experts were trained on another base",
            "merge runs that trained LoRA only (--no-full, no --tune-base) from the same model",
        )
    idx = [cfg.experts.index(e) for e in experts]
    theirs = dict(donor.net.named_parameters())
    with torch.no_grad():
        for name, p in model.net.named_parameters():
            if ".lora_" in name:  # (experts, …): one slice per expert
                p[idx] = theirs[name][idx] if blend == 1.0 else (1.0 - blend) * p[idx] + blend * theirs[name][idx]
    record = Provenance.from_meta(meta, target.name, cfg.experts).with_source(experts, sha256_file(source), blend)
    new_meta = {k: v for k, v in meta.items() if k not in (SOURCES_KEY, BLEND_KEY)} | record.to_meta()
    return rewrite_checkpoint(model, out, (tensors, new_meta))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lorair_desktop.training.merge_experts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", type=Path, help="the checkpoint that gets the experts (rewritten unless -o is given)")
    p.add_argument("source", type=Path, help="the checkpoint whose experts are taken")
    p.add_argument("--experts", required=True, help="comma-separated expert names, e.g. rain,haze")
    p.add_argument("-o", "--output", type=Path, default=None, help="write the result here instead")
    p.add_argument("--blend", type=float, default=1.0, metavar="W",
                   help="take W of SOURCE's adapters and 1 − W of TARGET's (default 1: SOURCE's as they are)")
    args = p.parse_args(argv)
    experts = [e.strip() for e in args.experts.split(",") if e.strip()]
    try:
        sha = merge_experts(args.target, args.source, experts, args.output, args.blend)
    except LoraIRError as exc:
        return report_error(exc)
    how = "" if args.blend == 1.0 else f" blended {args.blend:g} into the target's"
    print(f"{args.output or args.target}: experts {', '.join(experts)} of {args.source.name}{how}, sha256 {sha}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
