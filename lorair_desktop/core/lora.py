"""A bank of low-rank expert adapters on one convolution (LoRA-IR's mixture of LoRA experts).

Layout follows loralib's ConvLoRA so the official checkpoints map one to one:
  A: (E, r*k, in*k)    B: (E, out/groups*k, r*k)    delta_i = (B_i @ A_i).view(W.shape) * alpha/r
For a depthwise conv (groups = in = out) the product is (k, C*k), which views to (C, 1, k, k).

Three ways to run, all giving the same result:
- merged (inference): W = W0 + sum_i w_i delta_i folded once per image; the per-pixel cost is the plain conv's;
- per-sample (training): each image's merged weight, run as one grouped conv over the batch;
- unmerged (reference): conv(x, W0) + sum_i w_i conv(x, delta_i).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LoRAConv2d(nn.Module):
    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = True,
        num_experts: int = 1,
        rank: int = 4,
        alpha: float = 8.0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, groups=groups, bias=bias)
        k = kernel_size
        self.num_experts = num_experts
        self.rank = rank
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(num_experts, rank * k, in_ch * k))
        self.lora_B = nn.Parameter(torch.zeros(num_experts, out_ch // groups * k, rank * k))
        for i in range(num_experts):
            nn.init.kaiming_uniform_(self.lora_A[i], a=math.sqrt(5))
        self._merged: Tensor | None = None  # W0 + mix, set by merge(); never written into conv.weight
        self.mix: Tensor | None = None  # (M, E) per-image weights for training (see _forward_per_sample)
        self.reference_mix: Tensor | None = None  # (E,) weights for the unmerged reference path

    # -- expert deltas ---------------------------------------------------------------------------
    def deltas(self) -> Tensor:
        """All expert deltas stacked: (E, *W.shape)."""
        w = self.conv.weight
        return torch.bmm(self.lora_B, self.lora_A).reshape(self.num_experts, *w.shape) * self.scale

    def mixed_weight(self, weights: Tensor) -> Tensor:
        """W0 + sum_i w_i delta_i for weights of shape (E,) -> W.shape, or (B, E) -> (B, *W.shape)."""
        d = self.deltas()
        if weights.dim() == 1:
            return self.conv.weight + torch.tensordot(weights.to(d.dtype), d, dims=1)
        return self.conv.weight.unsqueeze(0) + torch.tensordot(weights.to(d.dtype), d, dims=1)

    @torch.no_grad()
    def merge(self, weights: Tensor, channels_last: bool = False) -> None:
        w = self.mixed_weight(weights.to(self.conv.weight.device)).detach()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if self.conv.weight.is_contiguous(memory_format=fmt):
            # the strides of the weight itself: a 1x1 kernel's are ambiguous, and oneDNN was measured
            # slower on the other reading of them (the lite network 0.268 against 0.250 s per tile)
            self._merged = torch.empty_like(self.conv.weight).copy_(w)
        else:
            self._merged = w.contiguous(memory_format=fmt)

    def unmerge(self) -> None:
        self._merged = None

    @property
    def merged(self) -> bool:
        return self._merged is not None

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: Tensor, out_scale: Tensor | None = None) -> Tensor:
        """conv(x), times `out_scale` (C_out values, any shape) per output channel if given. On the
        merged/plain path the scale is folded into the (small) weight, which saves a full pass over
        the (large) output: this network is memory-bound."""
        c = self.conv
        if self.mix is not None or self.reference_mix is not None:
            y = (self._forward_per_sample(x, self.mix) if self.mix is not None
                 else self.forward_unmerged(x, self.reference_mix))  # type: ignore[arg-type]
            return y if out_scale is None else y * out_scale.reshape(1, -1, 1, 1)
        weight = self._merged if self._merged is not None else c.weight
        bias = c.bias
        if out_scale is not None:
            s = out_scale.reshape(-1)
            weight = weight * s.view(-1, 1, 1, 1).to(weight.dtype)
            bias = None if bias is None else bias * s.to(bias.dtype)
        return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
                        c.stride, c.padding, c.dilation, c.groups)

    def _forward_per_sample(self, x: Tensor, mix: Tensor) -> Tensor:
        """Sample n of the batch uses mix[n % M] (M = len(mix)): a batch of k·M samples holds k
        crops of each of M images, crop-major. The M mixed weights run as one grouped conv with the
        k crops as its batch, so a weight is built once per image, not once per crop."""
        c = self.conv
        n, m = x.shape[0], mix.shape[0]
        if m == 0 or n % m:
            raise ValueError(f"expert weights for {m} samples, batch has {n} (needs a multiple)")
        w = self.mixed_weight(mix)  # (M, out, in/g, k, k)
        y = F.conv2d(x.reshape(n // m, -1, *x.shape[2:]), w.reshape(-1, *w.shape[2:]).to(x.dtype), None,
                     c.stride, c.padding, c.dilation, c.groups * m)
        y = y.reshape(n, -1, *y.shape[2:])
        if c.bias is not None:
            y = y + c.bias.view(1, -1, 1, 1).to(x.dtype)
        return y

    def forward_unmerged(self, x: Tensor, weights: Tensor) -> Tensor:
        """Reference path: base conv plus each expert's conv, weighted. weights: (E,)."""
        c = self.conv
        y = F.conv2d(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)
        for i, d in enumerate(self.deltas()):
            if float(weights[i]) != 0.0:
                y = y + weights[i] * F.conv2d(x, d, None, c.stride, c.padding, c.dilation, c.groups)
        return y

    @torch.no_grad()
    def grow_from(self, small: LoRAConv2d) -> None:
        """Take ``small``'s weights into this layer of the same conv but a rank at least as high,
        with every expert's delta unchanged. B @ A is a sum of rank-one terms, so ``small``'s terms
        go first and the extra ones keep their fresh A with B = 0 (LoRA's own start); B is rescaled
        where alpha/rank differs. The grown layer computes what ``small`` computed, and the new
        rank starts learning from there."""
        if (self.conv.weight.shape != small.conv.weight.shape or self.num_experts != small.num_experts
                or self.rank < small.rank):
            raise ValueError(f"cannot grow rank {small.rank} ({tuple(small.conv.weight.shape)}, "
                             f"{small.num_experts} experts) into rank {self.rank} "
                             f"({tuple(self.conv.weight.shape)}, {self.num_experts} experts)")
        self.conv.load_state_dict(small.conv.state_dict())
        n = small.lora_A.shape[1]  # small.rank * k
        self.lora_A[:, :n] = small.lora_A
        self.lora_B.zero_()
        self.lora_B[:, :, :n] = small.lora_B * (small.scale / self.scale)


def lora_layers(module: nn.Module) -> list[LoRAConv2d]:
    return [m for m in module.modules() if isinstance(m, LoRAConv2d)]
