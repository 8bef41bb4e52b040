"""Per-expert prototype priors: the router's mean degradation prior over training crops of each
degradation, stored in the checkpoint (``core.model.PROTOTYPES_KEY``).

They let a manual expert mix steer the prior the network is conditioned on (``core.routing.
steer_prior``). Without them, forcing the right expert on a crop the router got wrong leaves the
wrong prior in place, and the network still acts on it: on the 4-crop evaluation of lorair-lite, a
pale JPEG-compressed sky the router sends to haze lost 13.2 dB with jpeg forced, and 0.4 dB with
jpeg forced and the prior steered.

``lorair train`` measures them when its router stage ends, and export when a run lacks them. For a
checkpoint made before they existed:

    python -m lorair_desktop.training.prototypes MODEL.safetensors [--data DIR]

adds them in place (atomically; the manifest's sha256 is updated where the file is a manifest entry).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..core.checkpoint import model_from_tensors, read_checkpoint, rewrite_checkpoint
from ..core.model import LoRAIR
from ..errors import LoraIRError, report_error
from .dataset import ImageBank, build_validation_set, photo_bank
from .degradations import DEGRADATIONS

CROP = 256  # the router's training context
CROPS_PER_IMAGE = 2
SEED = 4242  # other seeds than validation's and evaluation's, so they measure on other crops too
BATCH = 16


@torch.no_grad()
def measure_prototypes(model: LoRAIR, bank: ImageBank, crops_per_image: int = CROPS_PER_IMAGE,
                       seed: int = SEED) -> torch.Tensor | None:
    """(E, P) mean router prior over ``bank``'s crops degraded as each expert's degradation; None
    where an expert has no synthesiser here (a model with custom experts), since its prototype
    cannot be measured."""
    experts = list(model.experts)
    if any(e not in DEGRADATIONS for e in experts) or not bank.images:
        return None
    samples = build_validation_set(bank, experts, crop_size=CROP, crops_per_image=crops_per_image, seed=seed)
    device = next(model.parameters()).device
    was_training = model.router.training
    model.router.eval()
    sums = torch.zeros(len(experts), model.cfg.net.prior_dim, dtype=torch.float64)
    counts = torch.zeros(len(experts), dtype=torch.float64)
    try:
        for i in range(0, len(samples), BATCH):
            part = samples[i : i + BATCH]
            x = torch.from_numpy(np.stack([s.degraded.transpose(2, 0, 1) for s in part])).to(device)
            prior = model.route(x.float()).prior.double().cpu()
            labels = torch.tensor([s.label for s in part])
            sums.index_add_(0, labels, prior)
            counts.index_add_(0, labels, torch.ones(len(part), dtype=torch.float64))
    finally:
        model.router.train(was_training)
    return (sums / counts.clamp_min(1)[:, None]).float()


def add_to_checkpoint(path: Path, bank: ImageBank) -> str:
    """Measure ``path``'s prototypes and write them into it in place; returns the new sha256."""
    cfg, tensors, meta = read_checkpoint(path)
    model = model_from_tensors(cfg, tensors, path.name)
    protos = measure_prototypes(model, bank)
    if protos is None:
        raise LoraIRError(f"{path.name}: prototypes need a synthesiser for every expert",
                          f"this model's experts are {', '.join(model.experts)}; known: {', '.join(DEGRADATIONS)}")
    model.prior_prototypes = protos
    return rewrite_checkpoint(model, path, (tensors, meta))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lorair_desktop.training.prototypes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a .safetensors checkpoint, changed in place")
    p.add_argument("--data", type=Path, default=None, help="folder of clean photos (default: the photo manifest)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        bank = ImageBank.from_folder(args.data, "train") if args.data is not None else photo_bank("train")
        sha = add_to_checkpoint(args.model, bank)
    except LoraIRError as exc:
        return report_error(exc)
    print(f"{args.model}: prototype priors added, sha256 {sha}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
