"""The full-size Setting I release converts key for key (on the meta device: nothing is allocated),
and the LoRA deltas of full-size layers follow loralib's formula."""

from __future__ import annotations

import pytest
import torch

from lorair_desktop.core.config import load_config
from lorair_desktop.core.convert_official import convert_state_dicts, expected_shapes, map_ir
from lorair_desktop.core.errors import CheckpointError
from lorair_desktop.core.lora import LoRAConv2d

from .conftest import load_fixture, official_ir_shapes, official_router_shapes


def _meta(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


@pytest.fixture(scope="module")
def fixture() -> dict:
    return load_fixture()


@pytest.fixture(scope="module")
def setting1():
    cfg = load_config("lorair-setting1")
    return cfg, expected_shapes(cfg)


def test_fixture_matches_the_official_layout_as_read(fixture: dict) -> None:
    """Our reading of the official code (official_ir_shapes) is what the official code builds."""
    g = fixture["network_g"]
    assert g == {"width": 64, "enc_blk_nums": [1, 1, 1, 28], "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1, 1],
                 "train_size": [1, 3, 256, 256], "r": 8, "num_experts": 3, "top_k": 1}
    assert official_ir_shapes(64, [1, 1, 1, 28], 1, [1, 1, 1, 1], 8, 3) == fixture["ir"]


def test_router_fixture_is_the_transformers_vit_l_14_336(fixture: dict) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    with torch.device("meta"):
        hf = CLIPVisionModelWithProjection(cfg)
    assert official_router_shapes(hf, 3) == fixture["router"]


def test_preset_is_the_released_architecture(setting1) -> None:
    cfg, _ = setting1
    n = cfg.net
    assert (n.width, n.enc_blocks, n.middle_blocks, n.dec_blocks) == (64, (1, 1, 1, 28), 1, (1, 1, 1, 1))
    assert (n.prior_dim, n.dam_hidden, n.dam_reduction, n.train_size, n.tlc) == (384, 128, 16, 256, True)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.top_k, cfg.lora.scale) == (8, 16, 1, 2.0)
    assert cfg.experts == ("snow", "rain-fog", "raindrop")  # official labels: snow=0, rain=1, raindrop=2
    r = cfg.router
    assert (r.clip_model, r.image_size, r.views, r.head_hidden, r.freeze_tower) == (
        "ViT-L-14-336-quickgelu", 336, "paper", 768, True)


def test_every_official_key_converts_with_none_left_over(fixture: dict, setting1) -> None:
    cfg, expected = setting1
    out = convert_state_dicts(_meta(fixture["router"]), _meta(fixture["ir"]), cfg, expected)
    assert set(out) == set(expected)  # nothing missing, nothing left over
    assert all(tuple(out[k].shape) == expected[k] for k in out)
    assert len(fixture["router"]) + len(fixture["ir"]) - len(out) == 24 * 4  # q, k, v (weight, bias) fused: 6 keys -> 2
    assert sum(1 for k in out if k.endswith(".lora_A")) == sum(1 for k in fixture["ir"] if k.endswith("_A_list"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r, i: i.__setitem__("encoders.3.blocks.27.extra.weight", torch.empty(2, device="meta")),
         "encoders.3.blocks.27.extra.weight"),
        (lambda r, i: r.__setitem__("cls_head.scale", torch.empty(2, device="meta")), "cls_head.scale"),
        (lambda r, i: i.pop("middle_blks.conv3.lora_B_list"), "net.middle.dam.se1.lora_B"),
        (lambda r, i: r.pop("clip_model.vision_tower.vision_model.encoder.layers.5.self_attn.k_proj.bias"),
         "layers.5.self_attn.k_proj.bias"),
        (lambda r, i: i.__setitem__("ups.1.0.lora_A_list", torch.empty(3, 8, 257, device="meta")),
         "ups.1.0.lora_A_list -> net.ups.1.lora_A"),
        (lambda r, i: i.__setitem__("ups.1.0.conv.bias", torch.empty(256, device="meta")), "ups.1.0.conv.bias"),
    ],
)
def test_unknown_missing_or_misshaped_keys_are_named(fixture: dict, setting1, change, message: str) -> None:
    cfg, expected = setting1
    router, ir = _meta(fixture["router"]), _meta(fixture["ir"])
    change(router, ir)
    with pytest.raises(CheckpointError) as err:
        convert_state_dicts(router, ir, cfg, expected)
    assert message in err.value.message


# Full-size layers with real tensors, one at a time: k x k, 2 x 2 stride 2, depthwise, 1 x 1 without bias.
LAYERS = [
    # official name, (in, out, k, stride, padding, groups, bias), our key
    ("intro", (3, 64, 3, 1, 1, 1, True), "net.intro"),
    ("ending", (64, 3, 3, 1, 1, 1, True), "net.ending"),
    ("downs.2", (256, 512, 2, 2, 0, 1, True), "net.downs.2"),
    ("encoders.3.blocks.27.conv2", (1024, 1024, 3, 1, 1, 1024, True), "net.encoders.3.blocks.27.conv2"),
    ("middle_blks.blocks.0.conv2", (2048, 2048, 3, 1, 1, 2048, True), "net.middle.blocks.0.conv2"),
    ("encoders.2.conv3", (256, 16, 1, 1, 0, 1, True), "net.encoders.2.dam.se1"),
    ("ups.0.0", (1024, 2048, 1, 1, 0, 1, False), "net.ups.0"),
]


@pytest.mark.parametrize(("official", "spec", "ours"), LAYERS, ids=[x[0] for x in LAYERS])
def test_full_size_lora_delta_matches_loralib(fixture: dict, official: str, spec: tuple, ours: str) -> None:
    cin, cout, k, stride, padding, groups, bias = spec
    g = torch.Generator().manual_seed(1)
    sd = {key: torch.randn(s, generator=g) for key, s in fixture["ir"].items() if key.startswith(official + ".")
          and key[len(official) + 1:] in ("conv.weight", "conv.bias", "lora_A_list", "lora_B_list")}
    assert len(sd) == (4 if bias else 3)
    conv = map_ir(sd)
    layer = LoRAConv2d(cin, cout, k, stride=stride, padding=padding, groups=groups, bias=bias,
                       num_experts=3, rank=8, alpha=16)
    layer.load_state_dict({key[len(ours) + 1:]: v for key, v in conv.items()}, strict=True)
    w0 = sd[f"{official}.conv.weight"]
    scaling = 16 / 8  # loralib: lora_alpha / r, with the release's lora_alpha = 2r
    deltas = layer.deltas()
    for i in range(3):
        expected = (sd[f"{official}.lora_B_list"][i] @ sd[f"{official}.lora_A_list"][i]).view(w0.shape) * scaling
        torch.testing.assert_close(deltas[i], expected)  # bmm vs @: summation order only
    # loralib's batch-1 inference path: W0 + p_i * delta_i for the top-1 expert, then the plain conv.
    probs = torch.tensor([0.0, 1.0, 0.0])
    x = torch.randn(1, cin, 8, 8, generator=g)
    ref = torch.nn.functional.conv2d(x, w0 + (sd[f"{official}.lora_B_list"][1] @ sd[f"{official}.lora_A_list"][1])
                                     .view(w0.shape) * scaling, sd.get(f"{official}.conv.bias"), stride, padding,
                                     1, groups)
    layer.merge(probs)
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-4)
