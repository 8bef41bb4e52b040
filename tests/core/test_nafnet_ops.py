"""The fast memory-bound ops equal their plain definitions."""

import torch
import torch.nn.functional as F

from lorair_desktop.core.nafnet import LayerNorm2d, local_mean


def test_local_mean_equals_average_pooling_with_replicated_edges() -> None:
    # few channels (cumulative sums) and many on a channels_last tensor (separable pools)
    for x in (torch.rand(2, 5, 70, 90), torch.rand(1, 64, 70, 90).contiguous(memory_format=torch.channels_last)):
        ref = F.pad(F.avg_pool2d(x.double(), (31, 41), stride=1), (20, 20, 15, 15), mode="replicate")
        assert (local_mean(x, (31, 41)) - ref).abs().max() < 1e-5
        assert torch.allclose(local_mean(x, (100, 100)), x.mean((-2, -1), keepdim=True))


def test_layer_norm_matches_definition_in_both_memory_formats() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 6, 9, 11) * 3
    ln = LayerNorm2d(6)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    ref = (x - mu) / torch.sqrt(var + 1e-6) * ln.weight.view(1, -1, 1, 1) + ln.bias.view(1, -1, 1, 1)
    with torch.no_grad():
        assert (ln(x) - ref).abs().max() < 1e-5
        assert (ln(x.contiguous(memory_format=torch.channels_last)) - ref).abs().max() < 1e-5


def test_tlc_coarse_grid_approximates_the_exact_local_mean_at_any_size() -> None:
    """The coarse grid (sizes that are a multiple of its cell or not) stays close to the exact TLC
    local mean, so no tile size falls back to the slow full-resolution path."""
    from lorair_desktop.core.nafnet import ChannelPool

    torch.manual_seed(0)
    pool = ChannelPool(window=192).eval()
    for h, w, exact_cells in [(384, 384, True), (256, 320, True), (250, 301, False)]:
        # A smooth image plus noise: local means vary over the image, as in real feature maps.
        yy, xx = torch.meshgrid(torch.linspace(0, 3, h), torch.linspace(0, 5, w), indexing="ij")
        x = (torch.sin(yy) * torch.cos(xx))[None, None].repeat(1, 3, 1, 1) + 0.3 * torch.rand(1, 3, h, w)
        grid = pool(x)
        assert grid.shape[-1] < w // 6  # really the coarse path
        approx = pool.expand(grid, (h, w))
        step, cells = pool.grid(h, w)
        assert step > 1 and cells % 2 == 1 and abs(step * cells - 192) <= step
        assert exact_cells == (h % step == 0 and w % step == 0)
        exact = local_mean(x, (step * cells, step * cells))
        assert approx.shape == exact.shape
        err = (approx - exact).abs()
        if exact_cells:
            # Measured ~0.006 max, ~0.002 mean; a grid misaligned by half a cell gives ~0.05 / ~0.02.
            assert err.max() < 0.015, (h, w)
            assert err.mean() < 0.005, (h, w)
        else:  # edge-padded last cell: measured ~0.04 max, ~0.013 mean
            assert err.max() < 0.06, (h, w)
            assert err.mean() < 0.02, (h, w)


def test_folded_output_scale_and_dam_equal_the_unfolded_formulas() -> None:
    from lorair_desktop.core.lora import LoRAConv2d
    from lorair_desktop.core.nafnet import DAM

    torch.manual_seed(0)
    conv = LoRAConv2d(6, 5, 1, num_experts=3)
    with torch.no_grad():
        conv.lora_B.normal_()
    s = torch.randn(1, 5, 1, 1)
    x = torch.rand(2, 6, 7, 9)
    with torch.no_grad():
        ref = conv(x) * s
        assert (conv(x, out_scale=s) - ref).abs().max() < 1e-5
        conv.merge(torch.tensor([0.5, 0.2, 0.0]))
        ref = conv(x) * s
        assert (conv(x, out_scale=s) - ref).abs().max() < 1e-5
        conv.unmerge()

    dam = DAM(8, 4, 16, 2, lambda i, o, k, **kw: LoRAConv2d(i, o, k, **kw))
    with torch.no_grad():
        dam.beta.normal_()
        dam.norm.weight.normal_()
        dam.norm.bias.normal_()
    x = torch.rand(2, 8, 6, 6)
    prior = torch.randn(2, 4, 1, 1)
    with torch.no_grad():
        batch = dam(x, prior)  # B = 2: the unfolded path
        single = torch.cat([dam(x[i : i + 1], prior[i : i + 1]) for i in range(2)])  # B = 1: folded
    assert (batch - single).abs().max() < 1e-5
