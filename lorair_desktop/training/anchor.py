"""Router fine-tuning anchored to the prior the network was trained on (``lorair train --stage router
--anchor-prior``).

A router fine-tuned with cross-entropy alone moves the degradation prior of every input, and the
network, trained on the old prior, loses until its experts are trained again (session 10: up to
7.3 dB on noise σ50 right after such a router fine-tune). Anchored, the router is taught the prior
that already works with the network as it is. For a training crop with label ``y``, the target is

    anchor prior + (y − anchor's expert mix) · prototypes

where the anchor is the router as the stage found it (frozen) and the prototypes are its per-expert
mean priors (``training.prototypes``): where the anchor routed right, the target is its own prior
(nothing moves); where it routed wrong, it is the prior steered to the right expert, which is what a
user's manual mix gives (``core.routing.steer_prior``) and which the network handles (lorair-lite,
4-crop evaluation: jpeg q10's worst crop −8.44 dB forced without steering, −0.17 with it). The loss is
cross-entropy plus the mean squared distance to that target. BatchNorm statistics stay frozen (the
router trains in eval mode), since updating them would move every prior.

The anchor lives in the run folder (``router-anchor.safetensors``), so a resumed stage keeps the
anchor it started with rather than its own half-trained router.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..atomic import replacing
from ..core.config import LoRAConfig
from ..core.model import PROTOTYPES_KEY, LoRAIR
from ..core.router import DGRouter, RouterOutput
from ..core.routing import topk_softmax
from ..errors import LoraIRError

ANCHOR_FILE = "router-anchor.safetensors"


class PriorAnchor:
    """The frozen router a stage started from, with its prototype priors."""

    def __init__(self, router: DGRouter, prototypes: Tensor, lora: LoRAConfig) -> None:
        self.router = router.eval().requires_grad_(False)
        self.prototypes = prototypes.float()
        self.lora = lora  # how logits become the expert mix (top_k, min_share)

    @classmethod
    def for_run(cls, run_dir: Path, model: LoRAIR, prototypes: Tensor | None, save: bool = True) -> PriorAnchor:
        """The run's anchor: read back on a resume, else made from ``model``'s router now and saved
        (by one process only under DDP: ``save``; the others start from the same weights)."""
        path = run_dir / ANCHOR_FILE
        device = next(model.router.parameters()).device
        if path.is_file():
            return cls._load(path, model).to(device)
        if prototypes is None:
            raise LoraIRError(
                "--anchor-prior needs the model's prototype priors, and this run's model has none",
                "start the run from a model that carries them (--init-from; the shipped ones do), or add them "
                "with `python -m lorair_desktop.training.prototypes RUN/model.safetensors`",
            )
        anchor = cls(copy.deepcopy(model.router), prototypes.to(device), model.cfg.lora)
        if not save:
            return anchor
        tensors = {f"router.{k}": v.detach().cpu().contiguous() for k, v in anchor.router.state_dict().items()}
        tensors[PROTOTYPES_KEY] = anchor.prototypes.cpu().contiguous()
        with replacing(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "lorair-router-anchor"})
        return anchor

    @classmethod
    def _load(cls, path: Path, model: LoRAIR) -> PriorAnchor:
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise LoraIRError(f"{path} is damaged: {exc}", "delete it to anchor to the current router") from exc
        router = copy.deepcopy(model.router)
        state = {k.removeprefix("router."): v for k, v in tensors.items() if k.startswith("router.")}
        protos = tensors.get(PROTOTYPES_KEY)
        own = router.state_dict()
        if (protos is None or tuple(protos.shape) != (model.cfg.num_experts, model.cfg.net.prior_dim)
                or state.keys() != own.keys() or any(state[k].shape != own[k].shape for k in own)):
            raise LoraIRError(f"{path} does not belong to this run's model",
                              "delete it to anchor to the current router, or resume the run it came from")
        router.load_state_dict(state)
        return cls(router, protos, model.cfg.lora)

    def to(self, device: torch.device) -> PriorAnchor:
        self.router.to(device)
        self.prototypes = self.prototypes.to(device)
        return self

    @torch.no_grad()
    def targets(self, images: Tensor, labels: Tensor) -> Tensor:
        """(B, P) target priors; ``labels`` are class indices (B,) or distributions (B, E)."""
        out = self.router(images)
        mix = topk_softmax(out.logits.float(), self.lora.top_k, self.lora.min_share)
        want = labels.float() if labels.is_floating_point() else F.one_hot(labels, mix.shape[-1]).float()
        return out.prior.float() + (want - mix) @ self.prototypes

    def loss(self, out: RouterOutput, images: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(out.logits, labels) + F.mse_loss(out.prior.float(), self.targets(images, labels))
