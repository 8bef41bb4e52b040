"""From router logits to expert weights, and the user's manual overrides.

Auto: keep the top-k logits, softmax over them (the others get 0), as LoRA-IR does; a model may drop
the shares below its `lora.min_share` from that mix (see topk_softmax).
Manual: the user's weights, as given, for the experts they name; unnamed experts get 0, or keep the
router's weight when `keep_router` is set. Weights must be finite and within [0, MAX_WEIGHT].

The network is conditioned on the router's degradation prior as well as on the expert mix, so a
manual mix alone does not undo a wrong routing: the prior still says what the router saw. Where a
model carries per-expert prototype priors (the router's mean prior over training crops of each
degradation), `steer_prior` moves the prior along with the weights (see there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .errors import ExpertError

MAX_WEIGHT = 2.0


def topk_softmax(logits: Tensor, k: int, min_share: float = 0.0) -> Tensor:
    """(..., E) logits -> weights summing to 1 over the k largest, exactly 0 elsewhere.

    With ``min_share`` > 0 a share below it is dropped too and the rest renormalised: a router sure
    of one degradation still gives the runner-up a few percent, and such a sliver of an unrelated
    expert cost the shipped lite model up to 4 dB on a dark crop (the largest share, at least 1/k,
    always stays: ModelConfig keeps min_share below 1/top_k)."""
    k = max(1, min(k, logits.shape[-1]))
    idx = logits.topk(k, dim=-1).indices
    masked = torch.full_like(logits, float("-inf")).scatter(-1, idx, logits.gather(-1, idx))
    weights = masked.softmax(dim=-1)
    if min_share <= 0 or k == 1:
        return weights
    weights = torch.where(weights < min_share, torch.zeros_like(weights), weights)
    return weights / weights.sum(dim=-1, keepdim=True)


def steer_prior(prior: Tensor, router_weights: Sequence[float], applied: Sequence[float],
                prototypes: Tensor) -> Tensor:
    """The image's prior moved from the router's mix of expert prototypes to the applied one:
    ``prior + (a/Σa − r/Σr) · prototypes``.

    Weights are normalised first, so a weight's size (how strongly an expert acts, which the LoRA
    scale expresses) does not move the prior; only a change of *which* experts act does. Where the
    user keeps the router's choice, the prior is unchanged and keeps what the image says about the
    degradation's strength; where all weights are 0 (the base network alone), it is unchanged too.
    `prior` is (1, P) (or (P,)), `prototypes` (E, P)."""
    a = torch.tensor([float(w) for w in applied], dtype=torch.float32)
    r = torch.tensor([float(w) for w in router_weights], dtype=torch.float32)
    if a.sum() <= 0 or r.sum() <= 0:
        return prior
    shift = a / a.sum() - r / r.sum()
    if not shift.any():
        return prior  # the same object: callers can tell that nothing was steered
    delta = shift.to(prototypes.device) @ prototypes.float()
    return (prior.float() + delta.reshape(prior.shape)).to(prior.dtype)


def validate_overrides(overrides: Mapping[str, object], experts: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in overrides.items():
        if name not in experts:
            raise ExpertError(f"unknown expert '{name}'", f"this model's experts: {', '.join(experts)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ExpertError(f"weight of '{name}' must be a number, got {value!r}")
        v = float(value)
        if not math.isfinite(v) or v < 0 or v > MAX_WEIGHT:
            raise ExpertError(f"weight of '{name}' is {value!r}", f"use a number between 0 and {MAX_WEIGHT}")
        out[name] = v
    return out


def apply_overrides(
    router_weights: Sequence[float],
    overrides: Mapping[str, object] | None,
    experts: Sequence[str],
    keep_router: bool = False,
) -> list[float]:
    """The weights actually applied: the router's when `overrides` is None, else the user's."""
    if overrides is None:
        return [float(w) for w in router_weights]
    given = validate_overrides(overrides, experts)
    base = [float(w) for w in router_weights] if keep_router else [0.0] * len(experts)
    return [given.get(name, base[i]) for i, name in enumerate(experts)]


def parse_experts_arg(text: str, experts: Sequence[str]) -> tuple[dict[str, float] | None, bool]:
    """Parse the CLI form 'auto' | 'noise=0.8,jpeg=0.3' | 'auto,noise=0.5' -> (overrides, keep_router)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or parts == ["auto"]:
        return None, False
    keep = parts[0] == "auto"
    if keep:
        parts = parts[1:]
    values: dict[str, object] = {}
    for p in parts:
        name, sep, val = p.partition("=")
        if not sep:
            raise ExpertError(f"cannot read '{p}'", "write name=weight, e.g. --experts noise=0.8,jpeg=0.3")
        try:
            values[name.strip()] = float(val)
        except ValueError:
            raise ExpertError(f"weight of '{name.strip()}' is not a number: {val!r}") from None
    return validate_overrides(values, experts), keep
