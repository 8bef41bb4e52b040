"""Fixtures for the training tests: a tiny model config (with a 32-px open_clip tower registered
for it) and a folder of small synthetic textured images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

TINY_TOWER = "lorair-test-rn32"


def synthetic_photo(seed: int, h: int = 160, w: int = 160) -> np.ndarray:
    """uint8 RGB with smooth shading, fine texture and hard-edged shapes (something to restore)."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.random((5, 5, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 1.0)
    img = 0.55 * base + 0.25 * fine
    for _ in range(6):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        img[y : y + rng.integers(8, 40), x : x + rng.integers(8, 40)] += rng.uniform(-0.3, 0.3, 3).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic 160² PNGs (hash split: 6 train, 2 val)."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(8):
        Image.fromarray(synthetic_photo(i)).save(root / f"img{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LoRA-IR config JSON (width 8, two levels, experts noise + haze) and its 32-px
    ModifiedResNet tower, registered with open_clip (lorair-tiny-rn is built for 96 px: its
    attention pool's positional embedding fixes the input size)."""
    import open_clip

    from lorair_desktop.core.router import _register_custom_towers

    _register_custom_towers()  # the project's towers first, from the real resources folder
    root = tmp_path_factory.mktemp("tinycfg")
    clip = root / "clip"
    clip.mkdir()
    (clip / f"{TINY_TOWER}.json").write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
    }))
    open_clip.add_model_config(clip)
    cfg = {
        "name": "lorair-test-tiny",
        "description": "tiny test model",
        "experts": ["noise", "haze"],
        "net": {"width": 8, "enc_blocks": [1, 1], "middle_blocks": 1, "dec_blocks": [1, 1], "prior_dim": 16,
                "dam_hidden": 8, "dam_reduction": 4, "train_size": 32, "tlc": True},
        "lora": {"rank": 2, "alpha": 4, "top_k": 1},
        "router": {"clip_model": TINY_TOWER, "image_size": 32, "views": "native", "head_hidden": 32},
    }
    path = root / "lorair-test-tiny.json"
    path.write_text(json.dumps(cfg))
    return path
