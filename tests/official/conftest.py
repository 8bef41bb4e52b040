"""Helpers for the official-release tests: the official key layout written from the official code
(checked against the fixture generated from that code), a tiny transformers CLIP and the matching
open_clip tower, a tiny preset of the Setting I architecture, and random official-shaped files.

Nothing here allocates the full-size model: full-size checks run on the meta device."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from .httpserver import Served, serve

FIXTURE = Path(__file__).parent / "fixtures" / "setting1_official_keys.json"
TEST_TOWER = "lorair-test-vit-qg"  # open_clip twin of tiny_hf_config()
E, RANK = 3, 2
SMALL_NET = {"width": 16, "enc_blocks": [1, 2], "middle_blocks": 1, "dec_blocks": [1, 1], "prior_dim": 384,
             "dam_hidden": 128, "dam_reduction": 16, "train_size": 32, "tlc": True}


def load_fixture() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def official_ir_shapes(width: int, enc: list[int], middle: int, dec: list[int], r: int, e: int,
                       prior: int = 384, hidden: int = 128) -> dict[str, list[int]]:
    """PriorFtModel's state-dict layout (loralib Conv2dMix everywhere), from reading the official code."""
    shapes: dict[str, list[int]] = {}

    def conv(name: str, cin: int, cout: int, k: int, groups: int = 1, bias: bool = True) -> None:
        shapes[f"{name}.lora_A_list"] = [e, r * k, cin * k]
        shapes[f"{name}.lora_B_list"] = [e, cout // groups * k, r * k]
        shapes[f"{name}.conv.weight"] = [cout, cin // groups, k, k]
        if bias:
            shapes[f"{name}.conv.bias"] = [cout]

    def block(p: str, c: int) -> None:
        conv(f"{p}.conv1", c, 2 * c, 1)
        conv(f"{p}.conv2", 2 * c, 2 * c, 3, groups=2 * c)
        conv(f"{p}.conv3", c, c, 1)
        conv(f"{p}.sca.1", c, c, 1)
        conv(f"{p}.conv4", c, 2 * c, 1)
        conv(f"{p}.conv5", c, c, 1)
        for n in ("norm1", "norm2"):
            shapes[f"{p}.{n}.weight"] = shapes[f"{p}.{n}.bias"] = [c]
        shapes[f"{p}.beta"] = shapes[f"{p}.gamma"] = [1, c, 1, 1]

    def level_with_prior(p: str, c: int, n: int) -> None:
        conv(f"{p}.conv1", prior, hidden, 1)
        conv(f"{p}.conv2", hidden, c, 1)
        conv(f"{p}.conv3", c, c // 16, 1)
        conv(f"{p}.conv4", c // 16, c, 1)
        shapes[f"{p}.norm.weight"] = shapes[f"{p}.norm.bias"] = [c]
        shapes[f"{p}.beta"] = [1, c, 1, 1]
        for j in range(n):
            block(f"{p}.blocks.{j}", c)

    conv("intro", 3, width, 3)
    conv("ending", width, 3, 3)
    conv("intro_de.0", prior, prior, 1)
    conv("intro_de.2", prior, prior, 1)
    c = width
    for i, n in enumerate(enc):
        level_with_prior(f"encoders.{i}", c, n)
        conv(f"downs.{i}", c, 2 * c, 2)
        c *= 2
    level_with_prior("middle_blks", c, middle)
    for i, n in enumerate(dec):
        conv(f"ups.{i}.0", c, 2 * c, 1, bias=False)
        c //= 2
        for j in range(n):
            block(f"decoders.{i}.blocks.{j}", c)
    return shapes


def official_router_shapes(hf_model: torch.nn.Module, cls_num: int) -> dict[str, list[int]]:
    """CLIPDeRouter: the transformers tower under clip_model.vision_tower, then the MLP head."""
    shapes = {f"clip_model.vision_tower.{k}": list(v.shape) for k, v in hf_model.state_dict().items()}
    d = hf_model.visual_projection.weight.shape[0]
    shapes.update({"de_extractor.0.weight": [d, 2 * d], "de_extractor.0.bias": [d],
                   "de_extractor.2.weight": [d // 2, d], "de_extractor.2.bias": [d // 2],
                   "cls_head.weight": [cls_num, d // 2], "cls_head.bias": [cls_num]})
    return shapes


def tiny_hf_config():  # -> CLIPVisionConfig
    # projection_dim stays 768: the official head halves it into the prior, which the IR net fixes at 384.
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            image_size=32, patch_size=8, projection_dim=768, hidden_act="quick_gelu",
                            layer_norm_eps=1e-5)


def random_hf_clip(seed: int = 0):  # -> CLIPVisionModelWithProjection
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(tiny_hf_config()).eval()
    with torch.no_grad():  # transformers' init leaves biases 0 and LayerNorms 1: randomise everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="session")
def test_tower(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Register an open_clip architecture with tiny_hf_config()'s hyper-parameters."""
    import open_clip

    cfg = {"embed_dim": 768, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "mlp_ratio": 2.0,
                          "patch_size": 8},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    path = tmp_path_factory.mktemp("clip") / f"{TEST_TOWER}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return TEST_TOWER


def small_preset(name: str = "tiny-setting1") -> dict[str, Any]:
    return {"name": name, "description": "a tiny model with the Setting I architecture",
            "experts": ["snow", "rain-fog", "raindrop"], "net": dict(SMALL_NET),
            "lora": {"rank": RANK, "alpha": 2 * RANK, "top_k": 1},
            "router": {"clip_model": TEST_TOWER, "image_size": 32, "views": "paper", "resample": "bicubic",
                       "head_hidden": 768, "pretrained": None, "freeze_tower": True}}


@pytest.fixture(scope="session")
def small_preset_path(tmp_path_factory: pytest.TempPathFactory, test_tower: str) -> Path:
    path = tmp_path_factory.mktemp("preset") / "tiny-setting1.json"
    path.write_text(json.dumps(small_preset()))
    return path


def random_official(seed: int = 0, router_dtype: torch.dtype = torch.float32
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random (router, IR) state dicts in the official layout for small_preset()."""
    net = SMALL_NET
    shapes = official_ir_shapes(net["width"], net["enc_blocks"], net["middle_blocks"], net["dec_blocks"], RANK, E)
    g = torch.Generator().manual_seed(seed)
    ir = {}
    for k, s in shapes.items():
        t = torch.randn(s, generator=g) * 0.1
        if k.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            t += 1.0
        ir[k] = t
    hf = random_hf_clip(seed)
    router = {f"clip_model.vision_tower.{k}": v.to(router_dtype) for k, v in hf.state_dict().items()}
    for k, s in official_router_shapes(hf, E).items():
        if k not in router:
            router[k] = (torch.randn(s, generator=g) * 0.05).to(router_dtype)
    return router, ir


def write_official(folder: Path, seed: int = 0, router_dtype: torch.dtype = torch.float32) -> tuple[Path, Path]:
    router, ir = random_official(seed, router_dtype)
    folder.mkdir(parents=True, exist_ok=True)
    rp, ip = folder / "setting1_router.pth", folder / "setting1_ir.pth"
    torch.save({"params": router}, rp)
    torch.save({"params": ir}, ip)
    return rp, ip


@pytest.fixture
def server() -> Iterator[Served]:
    """A local file server: put bytes in `server.files["/name"]`, fetch `server.base + "/name"`."""
    with serve() as state:
        yield state
