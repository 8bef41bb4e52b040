"""Merged, per-sample and unmerged expert mixing agree; zero weights give the base network exactly."""

import pytest
import torch

from lorair_desktop.core.lora import LoRAConv2d


def _layer(groups: int = 1, k: int = 3, seed: int = 0) -> LoRAConv2d:
    torch.manual_seed(seed)
    c = 8
    layer = LoRAConv2d(c, c if groups > 1 else 12, k, padding=k // 2, groups=groups, num_experts=3, rank=2, alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.1)
    return layer


def test_delta_layout_matches_loralib_formula_for_full_and_depthwise() -> None:
    for groups in (1, 8):
        layer = _layer(groups)
        d = layer.deltas()
        assert d.shape == (3, *layer.conv.weight.shape)
        for i in range(3):
            expected = (layer.lora_B[i] @ layer.lora_A[i]).view(layer.conv.weight.shape) * layer.scale
            torch.testing.assert_close(d[i], expected, rtol=0, atol=0)


def test_merged_equals_unmerged_reference() -> None:
    x = torch.rand(2, 8, 20, 20)
    for groups in (1, 8):
        layer = _layer(groups)
        w = torch.tensor([0.7, 0.0, 0.3])
        ref = layer.forward_unmerged(x, w)
        layer.merge(w)
        merged = layer(x)
        assert (merged - ref).abs().max().item() <= 1e-5


def test_zero_weights_and_unmerge_give_the_base_exactly() -> None:
    layer = _layer()
    x = torch.rand(1, 8, 16, 16)
    base = layer(x)
    layer.merge(torch.zeros(3))
    assert torch.equal(layer(x), base)
    layer.merge(torch.tensor([1.0, 0.5, 0.2]))
    assert not torch.allclose(layer(x), base)
    layer.unmerge()
    assert torch.equal(layer(x), base)
    assert torch.equal(layer.conv.weight, layer.conv.weight)  # base weights never written


def test_per_sample_mix_matches_each_sample_merged() -> None:
    for groups in (1, 8):
        layer = _layer(groups)
        x = torch.rand(3, 8, 12, 12)
        mix = torch.tensor([[1.0, 0, 0], [0, 0.4, 0.6], [0, 0, 0]])
        layer.mix = mix
        batched = layer(x)
        layer.mix = None
        for b in range(3):
            layer.merge(mix[b])
            assert (layer(x[b : b + 1]) - batched[b : b + 1]).abs().max().item() <= 1e-5
        layer.unmerge()


def test_crops_of_one_image_share_its_mix_row() -> None:
    # 2 crops of each of 3 images, crop-major: sample n uses mix row n % 3, as if the rows were repeated
    for groups in (1, 8):
        layer = _layer(groups)
        x = torch.rand(6, 8, 12, 12)
        mix = torch.tensor([[1.0, 0, 0], [0, 0.4, 0.6], [0.2, 0.0, 0.5]])
        outs, grads = [], []
        for rows in (mix, mix.repeat(2, 1)):
            layer.zero_grad()
            layer.mix = rows
            outs.append(layer(x))
            outs[-1].square().sum().backward()
            grads.append(layer.lora_B.grad.clone())
        assert (outs[0] - outs[1]).abs().max().item() <= 1e-5
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)  # the experts train the same
        layer.mix = torch.zeros(4, 3)  # 4 rows cannot be shared by 6 samples
        with pytest.raises(ValueError, match="multiple"):
            layer(x)
        layer.mix = None


def test_whole_model_merged_vs_unmerged(small_model) -> None:
    torch.manual_seed(1)
    x = torch.rand(1, 3, 48, 64)
    prior = torch.randn(1, small_model.cfg.net.prior_dim)
    w = torch.tensor([0.6, 0.0, 0.4, 0.0, 0.0, 0.0])
    with torch.no_grad():
        base = small_model.net(x, prior)
        small_model.set_reference_mix(w)
        ref = small_model.net(x, prior)
        small_model.unmerge()
        small_model.merge(w)
        merged = small_model.net(x, prior)
        small_model.unmerge()
        after = small_model.net(x, prior)
    assert (merged - ref).abs().max().item() <= 1e-5
    assert (merged - base).abs().max().item() > 1e-4  # the experts really change the output
    assert torch.equal(after, base)


@pytest.mark.parametrize("groups", [1, 8])
def test_grown_rank_keeps_every_expert_delta(groups: int) -> None:
    small = _layer(groups)  # rank 2, alpha 4: scale 2
    c_out = small.conv.out_channels
    big = LoRAConv2d(8, c_out, 3, padding=1, groups=groups, num_experts=3, rank=6, alpha=3)  # scale 0.5
    big.grow_from(small)
    torch.testing.assert_close(big.deltas(), small.deltas(), rtol=1e-6, atol=1e-7)
    assert torch.equal(big.conv.weight, small.conv.weight) and torch.equal(big.conv.bias, small.conv.bias)
    x = torch.rand(2, 8, 10, 10)
    big.mix = small.mix = torch.tensor([[0.2, 0.8, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(big(x), small(x), rtol=1e-5, atol=1e-6)
    # the extra rank is free to learn: a gradient reaches its B columns (LoRA's zero start)
    big(x).square().mean().backward()
    assert big.lora_B.grad[:, :, small.lora_A.shape[1]:].abs().sum() > 0


def test_rank_cannot_shrink_or_change_the_conv() -> None:
    small = _layer()
    with pytest.raises(ValueError, match="cannot grow rank 2"):
        LoRAConv2d(8, 12, 3, padding=1, num_experts=3, rank=1, alpha=4).grow_from(small)
    with pytest.raises(ValueError, match="cannot grow"):
        LoRAConv2d(8, 16, 3, padding=1, num_experts=3, rank=4, alpha=4).grow_from(small)
