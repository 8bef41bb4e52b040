"""Shared fixtures. `small_model_path`: a real compact LoRA-IR checkpoint with seeded random weights
(non-trivial: residual scales, LoRA B and DAM gains are non-zero), for tests that need a model that
is fast and whose exact numbers do not matter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# OpenMP threads that spin while waiting collapse when processes share the 2 cores (tests + workers).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# "auto" precision on a CPU is measured (core.precision): pin it so results do not depend on a timing.
os.environ.setdefault("LORAIR_CPU_PRECISION", "fp32")


def make_random_model(seed: int = 0):
    import torch

    from lorair_desktop.core import LoRAIR, load_config

    torch.manual_seed(seed)
    model = LoRAIR(load_config("lorair-compact"))
    with torch.no_grad():
        for name, p in model.net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0.0, 0.05)
            elif "lora_B" in name:
                p.normal_(0.0, 0.02)
    return model.eval()


def with_router_context(model, context: int):
    """A copy of `model` (same weights) whose router routes through `context`-px crops (0: whole)."""
    import dataclasses

    from lorair_desktop.core import LoRAIR

    cfg = dataclasses.replace(model.cfg, router=dataclasses.replace(model.cfg.router, context=context))
    copy = LoRAIR(cfg)
    copy.load_state_dict(model.state_dict())
    copy.prior_prototypes = model.prior_prototypes
    return copy.eval()


@pytest.fixture(scope="session")
def small_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lorair_desktop.core import save_checkpoint

    path = tmp_path_factory.mktemp("models") / "small.safetensors"
    save_checkpoint(make_random_model(), path)
    return path


@pytest.fixture(scope="module")
def small_model():
    """The same seeded random compact model, in memory."""
    return make_random_model()
