"""A manual expert mix steers the degradation prior along with the weights (routing.steer_prior),
where the model carries prototype priors; checkpoints carry them optionally and checked."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lorair_desktop.core import checkpoint as ckpt
from lorair_desktop.core.errors import CheckpointError
from lorair_desktop.core.inference import Restorer
from lorair_desktop.core.model import PROTOTYPES_KEY
from lorair_desktop.core.routing import steer_prior

PROTOS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 4.0]])


def test_steering_moves_the_prior_from_the_routers_mix_to_the_applied_one() -> None:
    prior = torch.tensor([[0.5, 0.5, 0.5]])
    out = steer_prior(prior, [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], PROTOS)
    assert torch.allclose(out, torch.tensor([[-0.5, 0.5, 4.5]]))
    half = steer_prior(prior, [0.5, 0.5, 0.0], [0.0, 1.0, 0.0], PROTOS)  # from (p0 + p1) / 2 to p1
    assert torch.allclose(half, torch.tensor([[0.0, 1.5, 0.5]]))


def test_weight_size_does_not_steer_only_the_choice_of_experts() -> None:
    prior = torch.tensor([[0.5, 0.5, 0.5]])
    assert steer_prior(prior, [0.0, 1.0, 0.0], [0.0, 0.3, 0.0], PROTOS) is prior  # weaker, same expert
    assert steer_prior(prior, [0.6, 0.4, 0.0], [1.2, 0.8, 0.0], PROTOS) is prior  # same shares, stronger
    assert steer_prior(prior, [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], PROTOS) is prior  # base network alone
    doubled = steer_prior(prior, [1.0, 0.0, 0.0], [0.0, 0.0, 2.0], PROTOS)  # 2x jpeg steers as 1x does
    assert torch.allclose(doubled, steer_prior(prior, [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], PROTOS))


def test_prototypes_round_trip_in_fp32_and_fp16(small_model, tmp_path: Path) -> None:
    e, p = small_model.cfg.num_experts, small_model.cfg.net.prior_dim
    protos = torch.randn(e, p)
    small_model.prior_prototypes = protos
    try:
        for half in (False, True):
            path = tmp_path / f"m{half}.safetensors"
            ckpt.save_checkpoint(small_model, path, half=half)
            got = ckpt.load_checkpoint(path).prior_prototypes
            assert got is not None and got.dtype == torch.float32
            assert torch.allclose(got, protos, atol=2e-3 if half else 0.0)
    finally:
        small_model.prior_prototypes = None
    plain = tmp_path / "plain.safetensors"  # a checkpoint from before prototypes: loads, without them
    ckpt.save_checkpoint(small_model, plain)
    assert PROTOTYPES_KEY not in load_file(str(plain))
    assert ckpt.load_checkpoint(plain).prior_prototypes is None


@pytest.mark.parametrize("bad", ["shape", "nan", "int"])
def test_damaged_prototypes_are_refused_by_name(small_model, tmp_path: Path, bad: str) -> None:
    path = tmp_path / "m.safetensors"
    ckpt.save_checkpoint(small_model, path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    e, p = small_model.cfg.num_experts, small_model.cfg.net.prior_dim
    tensors[PROTOTYPES_KEY] = {"shape": torch.zeros(e, p + 1), "nan": torch.full((e, p), float("nan")),
                               "int": torch.zeros(e, p, dtype=torch.int64)}[bad]
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError) as err:
        ckpt.load_checkpoint(path)
    assert PROTOTYPES_KEY in err.value.message and "prototypes" in err.value.hint


def test_restorer_steers_only_a_manual_mix_that_differs_from_the_routers(small_model) -> None:
    rng = np.random.default_rng(0)
    img = rng.random((48, 64, 3), dtype=np.float32)
    r = Restorer(small_model, device="cpu", precision="fp32")
    experts = r.experts
    try:
        auto = r.restore(img)
        top = max(auto.router_weights, key=auto.router_weights.get)
        other = next(e for e in experts if e != top)
        plain_forced = r.restore(img, overrides={other: 1.0})
        assert not plain_forced.prior_steered  # no prototypes: the image's prior, as before
        small_model.prior_prototypes = 10 * torch.randn(len(experts), small_model.cfg.net.prior_dim)
        assert not r.restore(img).prior_steered  # auto never steers
        weaker = {e: 0.5 * w for e, w in auto.router_weights.items()}  # the router's own mix, half as strong
        assert not r.restore(img, overrides=weaker).prior_steered
        steered = r.restore(img, overrides={other: 1.0})
        assert steered.prior_steered
        assert np.abs(steered.image - plain_forced.image).max() > 1e-4  # the network saw another prior
        assert np.allclose(r.restore(img).image, auto.image, atol=1e-5)  # auto: the same as without prototypes
    finally:
        small_model.prior_prototypes = None
