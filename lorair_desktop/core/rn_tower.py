"""A torch-only ModifiedResNet vision tower (the CLIP "RN" image encoder), built from an open_clip JSON config.

Why: importing open_clip for the shipped router (a tiny RN tower trained from scratch) costs ~240 MB of
resident memory (it pulls in torchvision and more) and ~5 s at start-up. This module rebuilds the same
network with torch alone. Parameter/buffer names and shapes are those of open_clip's `model.visual`
(`conv1`.. `bn3`, `layer1`..`layer4` of Bottlenecks with a `downsample` Sequential named "-1", "0", "1",
`attnpool.{positional_embedding, q_proj, k_proj, v_proj, c_proj}`), so checkpoints with keys
`router.tower.*` load unchanged, and the forward output matches open_clip's. Modules are created (and
initialised) in open_clip's order, so one seed gives the same initial weights either way.

What open_clip does for such a config (`vision_cfg.layers` a list, no timm model): the tower is
`ModifiedResNet(layers, output_dim=embed_dim, heads=width * 32 // head_width, image_size, width)` with
BatchNorm and ReLU fixed (the config's norm/activation choices only concern transformers).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError

_EXPANSION = 4  # a Bottleneck's output has 4x its inner channels
_DEFAULT_HEAD_WIDTH = 64  # open_clip's CLIPVisionCfg.head_width


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (avgpool when strided) -> 1x1 convs with BatchNorm, plus a shortcut.

    Striding is anti-aliased: an average pool, never a strided conv, on both branches."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * _EXPANSION
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample: nn.Sequential | None = None
        if stride > 1 or inplanes != out:
            # the "-1" name keeps open_clip's state-dict keys: downsample.0.weight, downsample.1.*
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                ("1", nn.BatchNorm2d(out)),
            ]))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class AttentionPool2d(nn.Module):
    """Multi-head attention of the mean feature (plus a learned position) over all positions.

    Only the pooled token's output is used, so only its query is computed."""

    def __init__(self, grid: int, dim: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, dim) / dim**0.5)
        self.k_proj = nn.Linear(dim, dim)  # k before q: open_clip's creation order (same RNG draws)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, output_dim)
        self.num_heads = heads

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (B, HW+1, C)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        h = self.num_heads

        def split(t: Tensor) -> Tensor:  # (B, N, C) -> (B, heads, N, C / heads)
            return t.unflatten(-1, (h, c // h)).transpose(1, 2)

        q = split(self.q_proj(tokens[:, :1]))
        k, v = split(self.k_proj(tokens)), split(self.v_proj(tokens))
        pooled = F.scaled_dot_product_attention(q, k, v)  # (B, heads, 1, C / heads)
        return self.c_proj(pooled.transpose(1, 2).reshape(b, c))


class ModifiedResNetTower(nn.Module):
    """CLIP's ResNet image encoder: a 3-conv stem with an average pool, four Bottleneck stages
    (strides 1, 2, 2, 2) and an attention pool to `output_dim`. Input (B, 3, S, S), S = image_size."""

    def __init__(self, layers: list[int] | tuple[int, ...], output_dim: int, heads: int,
                 image_size: int = 224, width: int = 64) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.image_size = image_size
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)

        inplanes = width
        stages = []
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = [Bottleneck(inplanes, planes, stride=1 if i == 0 else 2)]
            inplanes = planes * _EXPANSION
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, output_dim)
        self._init_parameters()

    def _init_parameters(self) -> None:
        pool = self.attnpool
        std = pool.c_proj.in_features**-0.5
        for proj in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)  # each residual branch starts as the identity

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


def _load(path_or_cfg: str | Path | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    if isinstance(path_or_cfg, Mapping):
        return path_or_cfg, "tower config"
    path = Path(path_or_cfg)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read tower config {path}", str(e)) from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"tower config {path.name} is not valid JSON", str(e)) from e
    if not isinstance(data, Mapping):
        raise ConfigError(f"tower config {path.name} must be a JSON object")
    return data, path.name


def is_rn_config(cfg: Mapping[str, Any]) -> bool:
    """Whether an open_clip config describes a ModifiedResNet tower (open_clip's own test)."""
    vision = cfg.get("vision_cfg")
    return (isinstance(vision, Mapping) and not vision.get("timm_model_name")
            and isinstance(vision.get("layers"), (list, tuple)))


def _positive_int(value: Any, key: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        what = "missing" if value is None else f"must be a positive integer, got {value!r}"
        raise ConfigError(f"{where}: '{key}' {what}")
    return value


def tower_from_json(path_or_cfg: str | Path | Mapping[str, Any]) -> tuple[nn.Module, int]:
    """(tower, embed_dim) from an open_clip model config (a JSON file or its parsed dict) whose
    vision_cfg describes a ModifiedResNet; ConfigError for anything else or for bad values."""
    cfg, where = _load(path_or_cfg)
    vision = cfg.get("vision_cfg")
    if not isinstance(vision, Mapping):
        raise ConfigError(f"{where}: 'vision_cfg' {'missing' if vision is None else 'must be an object'}")
    if not is_rn_config(cfg):
        kind = f"timm model {vision['timm_model_name']!r}" if vision.get("timm_model_name") else "a ViT"
        raise ConfigError(f"{where}: the vision tower is {kind}, not a ModifiedResNet "
                          "('vision_cfg.layers' must be a list of four block counts)",
                          "such towers are built by open_clip")
    layers = vision["layers"]
    if len(layers) != 4:
        raise ConfigError(f"{where}: 'vision_cfg.layers' must list 4 block counts, got {len(layers)}")
    for i, n in enumerate(layers):
        _positive_int(n, f"vision_cfg.layers[{i}]", where)
    embed_dim = _positive_int(cfg.get("embed_dim"), "embed_dim", where)
    width = _positive_int(vision.get("width"), "vision_cfg.width", where)
    image_size = _positive_int(vision.get("image_size"), "vision_cfg.image_size", where)
    head_width = vision.get("head_width", _DEFAULT_HEAD_WIDTH)
    head_width = _positive_int(head_width, "vision_cfg.head_width", where)
    if width % 2:
        raise ConfigError(f"{where}: 'vision_cfg.width' must be even (the stem starts at width / 2), got {width}")
    if image_size < 32:
        raise ConfigError(f"{where}: 'vision_cfg.image_size' must be at least 32 (the tower downsamples by 32), "
                          f"got {image_size}")
    feat = width * 32
    heads = feat // head_width
    if heads < 1 or feat % heads:
        raise ConfigError(f"{where}: 'vision_cfg.head_width' {head_width} does not split the {feat} features "
                          f"into whole heads")
    tower = ModifiedResNetTower(list(layers), output_dim=embed_dim, heads=heads, image_size=image_size, width=width)
    return tower, embed_dim
