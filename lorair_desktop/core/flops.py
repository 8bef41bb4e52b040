"""Counting the network's floating-point operations, to compare achieved GFLOP/s with the machine's peak."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .model import LoRAIR


def network_flops(model: LoRAIR, side: int) -> int:
    """FLOPs of one forward of the restoration network (experts merged: same as the plain net) on side²."""
    x = torch.zeros(1, 3, side, side)
    prior = torch.zeros(1, model.cfg.net.prior_dim)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.net(x, prior)
    return int(counter.get_total_flops())
