"""The native ModifiedResNet tower (rn_tower) against open_clip's: same keys, shapes and outputs;
the compact model builds and loads its shipped weights without importing open_clip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorair_desktop.core.config import resources_dir
from lorair_desktop.core.errors import ConfigError
from lorair_desktop.core.rn_tower import ModifiedResNetTower, tower_from_json

SHIPPED_RN = resources_dir() / "model_configs" / "clip" / "lorair-tiny-rn.json"
OTHER_RN = {  # two blocks in stage 1 (a stride-1 downsample), 16 heads of 64 over 1024 features, 2x2 grid
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [2, 1, 1, 1], "width": 32, "patch_size": None},
    "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def rn_configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped RN config and OTHER_RN, both registered with open_clip (for the reference)."""
    import open_clip

    from lorair_desktop.core.router import _register_custom_towers

    _register_custom_towers()
    folder = tmp_path_factory.mktemp("rncfg")
    other = folder / "lorair-test-rn64.json"
    other.write_text(json.dumps(OTHER_RN))
    open_clip.add_model_config(folder)
    return {"lorair-tiny-rn": SHIPPED_RN, "lorair-test-rn64": other}


def _reference(name: str) -> torch.nn.Module:
    import open_clip

    return open_clip.create_model(name).visual


def _randomize_norms(module: torch.nn.Module, seed: int) -> None:
    """open_clip's random init, with every BatchNorm made non-trivial too (bn3 starts at zero, which
    would hide each residual branch; running stats start at 0 and 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


@pytest.mark.parametrize("name", ["lorair-tiny-rn", "lorair-test-rn64"])
def test_same_keys_shapes_and_outputs_as_open_clip(rn_configs: dict[str, Path], name: str) -> None:
    ref = _reference(name)
    ours, dim = tower_from_json(rn_configs[name])
    cfg = json.loads(rn_configs[name].read_text())
    assert isinstance(ours, ModifiedResNetTower) and dim == cfg["embed_dim"]
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert {k: v.shape for k, v in our_sd.items()} == {k: v.shape for k, v in ref_sd.items()}

    _randomize_norms(ref, seed=1)
    ours.load_state_dict(ref.state_dict(), strict=True)
    size = cfg["vision_cfg"]["image_size"]
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    for train in (False, True):  # eval: BatchNorm running stats; train: batch statistics
        ref.train(train)
        ours.train(train)
        with torch.no_grad():
            want, got = ref(x), ours(x)
        assert got.shape == (3, dim)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_same_initial_weights_for_a_seed() -> None:
    """Modules are created in open_clip's order, so training from scratch starts from the same place."""
    from open_clip.modified_resnet import ModifiedResNet

    torch.manual_seed(3)
    ref = ModifiedResNet([2, 1, 1, 1], output_dim=64, heads=16, image_size=64, width=32)
    torch.manual_seed(3)
    ours, _ = tower_from_json(OTHER_RN)
    for (k, a), b in zip(ref.state_dict().items(), ours.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_compact_model_builds_and_loads_without_open_clip() -> None:
    probe = (
        "import sys, json; from pathlib import Path\n"
        "from lorair_desktop.core.model import LoRAIR\n"
        "from lorair_desktop.core.config import load_config, resources_dir\n"
        "from lorair_desktop.core.checkpoint import load_checkpoint\n"
        "LoRAIR(load_config('lorair-compact'))\n"
        "built = 'open_clip' in sys.modules\n"
        "m = load_checkpoint(resources_dir() / 'weights' / 'lorair-compact.safetensors')\n"
        "print(json.dumps({'built': built, 'loaded': 'open_clip' in sys.modules,\n"
        "                  'tower': type(m.router.tower).__name__}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "built": False, "loaded": False, "tower": "ModifiedResNetTower"}


def _bad(edit) -> dict:
    cfg = json.loads(SHIPPED_RN.read_text())
    edit(cfg)
    return cfg


@pytest.mark.parametrize(("edit", "key"), [
    (lambda c: c["vision_cfg"].pop("width"), "vision_cfg.width"),
    (lambda c: c["vision_cfg"].update(width="16"), "vision_cfg.width"),
    (lambda c: c["vision_cfg"].pop("image_size"), "vision_cfg.image_size"),
    (lambda c: c.pop("embed_dim"), "embed_dim"),
    (lambda c: c.pop("vision_cfg"), "vision_cfg"),
    (lambda c: c["vision_cfg"].update(layers=[1, 1, 1]), "vision_cfg.layers"),
    (lambda c: c["vision_cfg"].update(layers=[1, 0, 1, 1]), "vision_cfg.layers[1]"),
    (lambda c: c["vision_cfg"].update(head_width=3), "vision_cfg.head_width"),
])
def test_bad_config_names_the_key(edit, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        tower_from_json(_bad(edit))


def test_vit_and_timm_configs_are_refused(tmp_path: Path) -> None:
    vit = tmp_path / "vit.json"
    vit.write_text(json.dumps({"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64,
                                                                "patch_size": 8}}))
    with pytest.raises(ConfigError, match="not a ModifiedResNet"):
        tower_from_json(vit)
    with pytest.raises(ConfigError, match="timm model"):
        tower_from_json({"embed_dim": 64, "vision_cfg": {"timm_model_name": "resnet50", "layers": [1, 1, 1, 1]}})
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        tower_from_json(tmp_path / "broken.json")
