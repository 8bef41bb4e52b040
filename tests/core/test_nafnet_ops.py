"""The fast memory-bound ops equal their plain definitions."""

import torch
import torch.nn.functional as F

from lorair_desktop.core.nafnet import LayerNorm2d, local_mean


def test_local_mean_equals_average_pooling_with_replicated_edges() -> None:
    x = torch.rand(2, 5, 70, 90)
    ref = F.pad(F.avg_pool2d(x, (31, 41), stride=1), (20, 20, 15, 15), mode="replicate")
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
