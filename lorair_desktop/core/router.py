"""DG-Router: a CLIP-style vision tower seen through five views, and an MLP head.

The tower is an open_clip architecture. A ModifiedResNet ("RN") shipped in resources/model_configs/clip/
and built without pretrained weights (the compact model's) comes from rn_tower, torch only, with
open_clip's parameter names; every other tower (ViTs, pretrained weights) is built by open_clip.

Views of one image (B, 3, H, W) in [0, 1], each S x S (S = router.image_size):
- global: the whole image resized to S;
- four high-resolution views: "paper" resizes the image to 2S and cuts it in 2x2 tiles;
  "native" takes an S crop at the centre of each quadrant at full resolution (pixel statistics such as
  noise and JPEG blocks survive), falling back to "paper" for images smaller than 2S.
Embeddings e_global and e_slide (mean over the four) are concatenated; the head gives the
degradation prior (B, P) and one logit per expert (B, E).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import BUILTIN_RESOURCES, ModelConfig, resources_dir
from .errors import ConfigError
from .rn_tower import is_rn_config, tower_from_json

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_BUILTIN_CLIP_CONFIGS = BUILTIN_RESOURCES / "model_configs" / "clip"
_registered: set[Path] = set()


def _clip_config_dirs() -> list[Path]:
    """Where the project's own tower configs live: the repository's, then LORAIR_RESOURCES' (which wins)."""
    dirs = [_BUILTIN_CLIP_CONFIGS, resources_dir() / "model_configs" / "clip"]
    return [d for i, d in enumerate(dirs) if d not in dirs[:i]]


def _register_custom_towers() -> None:
    """Make the project's own open_clip architectures (model_configs/clip/*.json) known."""
    import open_clip  # slow to import (~5 s): only when a tower is built, not when the core loads

    for folder in _clip_config_dirs():  # each folder once, the repository's first (later ones win)
        if folder not in _registered and folder.is_dir():
            open_clip.add_model_config(folder)
            _registered.add(folder)


def _no_random_init_warning(record: logging.LogRecord) -> bool:
    return "No pretrained weights loaded" not in record.getMessage()


def _shipped_rn_config(name: str) -> dict | None:
    """The parsed model_configs/clip/<name>.json when the project has one and it describes a ModifiedResNet."""
    for folder in reversed(_clip_config_dirs()):  # LORAIR_RESOURCES' first, as open_clip would resolve it
        path = folder / f"{name}.json"
        if path.parent != folder or not path.is_file():
            continue
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read tower config {path.name}", str(e)) from e
        return cfg if isinstance(cfg, dict) and is_rn_config(cfg) else None
    return None


def build_tower(name: str, pretrained: str | None = None) -> tuple[nn.Module, int]:
    """The vision tower of an open_clip architecture and its embedding size."""
    if not pretrained and (rn := _shipped_rn_config(name)) is not None:
        # Our own RN towers are built natively: importing open_clip costs ~240 MB of resident memory
        # (torchvision and more) and ~5 s of start-up, for a few convolutions. Same keys and outputs.
        return tower_from_json(rn)
    _register_custom_towers()
    import open_clip

    if name not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip architecture '{name}'", "see open_clip.list_models()")
    root = logging.getLogger()
    root.addFilter(_no_random_init_warning)  # building without weights is expected: weights load next
    # open_clip moves the model to `device` (cpu by default), which fails on meta tensors: pass the
    # current default device so `with torch.device("meta")` can list a full-size model's keys for free.
    device = torch.get_default_device()
    try:
        if pretrained and Path(pretrained).is_file():
            model = open_clip.create_model(name, pretrained=str(pretrained), weights_only=True, device=device)
        else:
            model = open_clip.create_model(name, pretrained=pretrained, device=device)
    finally:
        root.removeFilter(_no_random_init_warning)
    cfg = open_clip.get_model_config(name)
    return model.visual, int(cfg["embed_dim"])


def quadrant_boxes(h: int, w: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of the four native-resolution views: S crops centred in each quadrant."""
    boxes = []
    for cy in (h // 4, 3 * h // 4):
        for cx in (w // 4, 3 * w // 4):
            boxes.append((min(max(cy - size // 2, 0), h - size), min(max(cx - size // 2, 0), w - size)))
    return boxes


MAX_CONTEXTS_PER_SIDE = 3  # 9 contexts at most: each costs ~5 ms on a 2-core CPU (tiny router)


def _contexts_along(side: int, context: int) -> int:
    """How many contexts along one side: one below 1.5 contexts, else one per ~2 contexts of
    length, 2-3 (a 1000-px side gets 2, a 1600-px one 3)."""
    if side < 1.5 * context:
        return 1
    return min(MAX_CONTEXTS_PER_SIDE, max(2, round(side / (2 * context))))


def context_boxes(h: int, w: int, context: int) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the crops a router trained on `context`-px crops routes an
    h x w image through: a grid of crops at full resolution, centred in equal cells. Empty where
    the image is about one context in size (route it whole) or `context` is 0.

    On the 8 held-out photos, whole (1600 px wide; `lorair eval --crop 0`, lorair-lite, with
    DGRouter.route_crops), against the whole photo in one global view: router top-1 79.2 -> 97.9 %,
    haze +3.45 dB (5 of 8 photos routed to haze -> 8), jpeg q30 +1.33 (3 of 8 -> 7), low-light +1.18
    (the prior, not the choice), noise +0.05/+0.19/+0.38 (σ 15/25/50), jpeg q10 +0.33, blur -0.14,
    the other rows within ±0.07."""
    if context <= 0 or max(h, w) < 1.5 * context:
        return []
    ch, cw = min(context, h), min(context, w)
    ny, nx = _contexts_along(h, context), _contexts_along(w, context)

    def starts(side: int, n: int, size: int) -> list[int]:
        return [min(max(int((i + 0.5) * side / n) - size // 2, 0), side - size) for i in range(n)]

    return [(y0, x0, ch, cw) for y0 in starts(h, ny, ch) for x0 in starts(w, nx, cw)]


def make_views(image: Tensor, size: int, mode: str, resample: str = "bilinear",
               native_crops: Tensor | None = None) -> Tensor:
    """(B, 3, H, W) -> (B, 5, 3, S, S): global view first, then the four high-resolution views.

    `resample` "bicubic" (antialiased, clamped to [0, 1]) follows the official router's PIL resizes.
    `native_crops` (B, 4, 3, S, S): the native views cut by the caller from a full-resolution image
    when `image` is a reduced copy (so a huge photo never has to exist as one float tensor).
    """
    h, w = image.shape[-2:]

    def resize(x: Tensor, side: int) -> Tensor:
        y = F.interpolate(x, size=(side, side), mode=resample, antialias=True, align_corners=False)
        return y.clamp(0.0, 1.0) if resample == "bicubic" else y

    glob = resize(image, size)
    if mode == "native" and native_crops is not None:
        tiles = list(native_crops.unbind(1))
    elif mode == "native" and min(h, w) >= 2 * size:
        tiles = [image[:, :, y0 : y0 + size, x0 : x0 + size] for y0, x0 in quadrant_boxes(h, w, size)]
    else:
        big = resize(image, 2 * size)
        tiles = [big[:, :, i * size : (i + 1) * size, j * size : (j + 1) * size] for i in (0, 1) for j in (0, 1)]
    return torch.stack([glob, *tiles], dim=1)


@dataclass
class RouterOutput:
    prior: Tensor  # (B, P) degradation prior
    logits: Tensor  # (B, E) one per expert


class DGRouter(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        rc = cfg.router
        self.size = rc.image_size
        self.views = rc.views
        self.resample = rc.resample
        self.tower, dim = build_tower(rc.clip_model, rc.pretrained)
        self.head = nn.Sequential(
            nn.Linear(2 * dim, rc.head_hidden),
            nn.GELU(),
            nn.Linear(rc.head_hidden, cfg.net.prior_dim),
            nn.GELU(),
        )
        self.classifier = nn.Linear(cfg.net.prior_dim, cfg.num_experts)
        self.register_buffer("mean", torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_CLIP_STD).view(1, 3, 1, 1), persistent=False)
        if rc.freeze_tower or rc.pretrained:
            self.tower.requires_grad_(False)

    def features(self, image: Tensor, native_crops: Tensor | None = None) -> Tensor:
        """(B, 3, H, W) -> (B, 2D): the global view's embedding beside the mean of the other four's."""
        views = make_views(image.float(), self.size, self.views, self.resample, native_crops)  # (B, 5, 3, S, S)
        b = views.shape[0]
        x = (views.flatten(0, 1) - self.mean) / self.std
        emb = self.tower(x).reshape(b, 5, -1)
        return torch.cat([emb[:, 0], emb[:, 1:].mean(1)], dim=-1)

    def from_features(self, feat: Tensor) -> RouterOutput:
        prior = self.head(feat)
        return RouterOutput(prior=prior, logits=self.classifier(prior))

    def forward(self, image: Tensor, native_crops: Tensor | None = None) -> RouterOutput:
        return self.from_features(self.features(image, native_crops))

    def route_crops(self, crops: Tensor) -> RouterOutput:
        """One image seen as K crops (K, 3, H, W) of the size the router learnt on: the head reads the
        mean of their features, so the prior stays one the head can produce (the mean of K priors
        was measured 0.1-0.3 dB worse on blurred, hazy and JPEG photos). Output batch of 1."""
        return self.from_features(self.features(crops).mean(0, keepdim=True))
