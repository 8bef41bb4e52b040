"""Counting the network's floating-point operations, to compare achieved GFLOP/s with the machine's peak."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from .model import LoRAIR


def forward_flops(run: Callable[[torch.Tensor], object], side: int) -> int:
    """FLOPs of run(x) for one (1, 3, side, side) image: any network, ours or a peer."""
    x = torch.zeros(1, 3, side, side)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        run(x)
    return int(counter.get_total_flops())


def network_flops(model: LoRAIR, side: int) -> int:
    """FLOPs of one forward of the restoration network (experts merged: same as the plain net) on side²."""
    prior = torch.zeros(1, model.cfg.net.prior_dim)
    return forward_flops(lambda x: model.net(x, prior), side)
