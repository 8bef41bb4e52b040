"""A LoRA-IR model: the DG-Router plus the restoration network, with its config and I/O contract."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .lora import lora_layers
from .nafnet import LoRAIRNet
from .router import DGRouter, RouterOutput
from .routing import topk_softmax


@dataclass(frozen=True)
class ModelDescriptor:
    """What a caller may rely on: input float RGB in [0, 1], NCHW; output the same size."""

    name: str
    experts: tuple[str, ...]
    input_range: tuple[float, float] = (0.0, 1.0)
    channels: int = 3
    pad_multiple: int = 16
    supports_tiling: bool = True
    dtypes: tuple[str, ...] = ("float32", "bfloat16")


#: The checkpoint key of the per-expert prototype priors (optional; not part of the state dict).
PROTOTYPES_KEY = "prior_prototypes"


class LoRAIR(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.router = DGRouter(cfg)
        self.net = LoRAIRNet(cfg)
        # (E, P): the router's mean prior over training crops of each expert's degradation, which
        # lets a manual expert mix steer the prior too (routing.steer_prior). Measured from data
        # after the router is trained (training.prototypes), so it stays out of the state dict:
        # checkpoints without it still load strictly, and manual mixes then leave the prior alone.
        self.prior_prototypes: Tensor | None
        self.register_buffer("prior_prototypes", None, persistent=False)

    @property
    def experts(self) -> tuple[str, ...]:
        return self.cfg.experts

    @property
    def descriptor(self) -> ModelDescriptor:
        return ModelDescriptor(name=self.cfg.name, experts=self.cfg.experts, pad_multiple=self.cfg.pad_multiple)

    def route(self, image: Tensor) -> RouterOutput:
        return self.router(image)

    def router_weights(self, logits: Tensor) -> Tensor:
        return topk_softmax(logits, self.cfg.lora.top_k, self.cfg.lora.min_share)

    # -- expert mixing ------------------------------------------------------------------------
    def set_sample_mix(self, mix: Tensor | None) -> None:
        """Per-sample expert weights (B, E) for training; None runs the base (or merged) network."""
        for layer in lora_layers(self.net):
            layer.mix = mix

    @torch.no_grad()
    def merge(self, weights: Tensor, channels_last: bool = False) -> None:
        """Fold W0 + sum_i w_i delta_i into every conv once: inference then costs the plain network."""
        w = weights.reshape(-1).float()
        for layer in lora_layers(self.net):
            layer.merge(w, channels_last)

    def unmerge(self) -> None:
        for layer in lora_layers(self.net):
            layer.unmerge()
            layer.reference_mix = None

    def set_reference_mix(self, weights: Tensor | None) -> None:
        """Run every conv unmerged (base conv + one conv per expert): the slow reference path."""
        for layer in lora_layers(self.net):
            layer.reference_mix = None if weights is None else weights.reshape(-1).float()

    def forward(self, image: Tensor, prior: Tensor, mix: Tensor | None = None) -> Tensor:
        """Training forward: restored image for a batch, each sample with its own expert weights.
        ``mix`` may hold one row per image of a batch of k crops of each, crop-major (sample n uses
        row n % len(mix)); ``prior`` has one row per sample."""
        self.set_sample_mix(mix)
        try:
            return self.net(image, prior)
        finally:
            self.set_sample_mix(None)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by training stage: the router, the base network, the LoRA experts."""
        lora, base = [], []
        for name, p in self.net.named_parameters():
            (lora if ".lora_" in name else base).append(p)
        return {"router": list(self.router.parameters()), "base": base, "experts": lora}
