"""Router fine-tuning anchored to the prior the network knows (training.anchor, --anchor-prior)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lorair_desktop.cli import main
from lorair_desktop.core.checkpoint import load_checkpoint, save_checkpoint
from lorair_desktop.core.config import LoRAConfig
from lorair_desktop.training import degradations as D
from lorair_desktop.training.anchor import ANCHOR_FILE, PriorAnchor

from .conftest import synthetic_photo
from .test_train_run import train


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def routed(tiny_config: Path, photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose router stage has run (so it carries prototype priors)."""
    run = tmp_path_factory.mktemp("routed")
    train(tiny_config, photo_folder, run, "router", 40)
    assert load_checkpoint(run / "model.safetensors").prior_prototypes is not None
    return run / "model.safetensors"


def held_out() -> torch.Tensor:
    """Noisy and hazy crops of images never trained on (labels 0 and 1 of the tiny model)."""
    imgs = []
    for seed in range(200, 206):
        clean = synthetic_photo(seed, 64, 64).astype(np.float32) / 255.0
        rng = np.random.default_rng(seed)
        for img in (D.add_gaussian_noise(clean, 25, rng), D.haze(clean, rng, beta=1.5, depth="vertical")):
            imgs.append(D.quantize8(img).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(imgs))


def test_targets_keep_a_right_routing_and_steer_a_wrong_one(routed: Path) -> None:
    model = load_checkpoint(routed)
    protos = model.prior_prototypes
    anchor = PriorAnchor(model.router, protos, LoRAConfig(top_k=1))  # the tiny model routes top-1: one-hot mixes
    x = held_out()
    with torch.no_grad():
        out = model.route(x)
    top = out.logits.argmax(-1)
    assert torch.allclose(anchor.targets(x, top), out.prior, atol=1e-5)  # routed as labelled: unchanged
    other = 1 - top
    want = out.prior + protos[other] - protos[top]  # labelled otherwise: the prior a manual mix steers to
    assert torch.allclose(anchor.targets(x, other), want, atol=1e-4)
    soft = torch.full((len(x), 2), 0.5)  # a mixed sample's label: half way between the two
    assert torch.allclose(anchor.targets(x, soft), (anchor.targets(x, top) + anchor.targets(x, other)) / 2, atol=1e-4)


def test_an_anchored_stage_moves_the_prior_less_than_plain_fine_tuning(
    routed: Path, tiny_config: Path, photo_folder: Path, tmp_path: Path
) -> None:
    src = load_checkpoint(routed)
    x = held_out()
    with torch.no_grad():
        before = src.route(x).prior
    moved = {}
    for how in ("plain", "anchored"):
        extra = ["--anchor-prior"] if how == "anchored" else []
        info = train(tiny_config, photo_folder, tmp_path / how, "router", 30, "--init-from", str(routed),
                     "--lr", "3e-3", "--flat-crops", "0.7", *extra)
        assert info["recipe"]["router"]["anchor_prior"] is (how == "anchored")
        m = load_checkpoint(tmp_path / how / "model.safetensors")
        with torch.no_grad():
            moved[how] = float((m.route(x).prior - before).norm(dim=-1).mean())
        if how == "anchored":
            got, had = load_file(str(tmp_path / how / "model.safetensors")), load_file(str(routed))
            stats = [k for k in had if k.startswith("router.") and k.endswith(("running_mean", "running_var"))]
            assert stats and all(torch.equal(got[k], had[k]) for k in stats)  # BatchNorm frozen
            assert (tmp_path / how / ANCHOR_FILE).is_file()
            assert m.prior_prototypes is not None  # measured anew for the new router
    assert moved["anchored"] < 0.5 * moved["plain"], moved


def test_a_resumed_stage_keeps_the_anchor_it_started_with(
    routed: Path, tiny_config: Path, photo_folder: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train(tiny_config, photo_folder, run, "router", 6, "--init-from", str(routed), "--anchor-prior", "--lr", "3e-3")
    first = load_file(str(run / ANCHOR_FILE))
    source = load_file(str(routed))
    assert all(torch.equal(v, source[k]) for k, v in first.items())  # the router the stage started from
    info = train(tiny_config, photo_folder, run, "router", 12, "--resume")
    assert info["recipe"]["router"]["anchor_prior"] is True  # restored from the recipe
    again = load_file(str(run / ANCHOR_FILE))
    assert all(torch.equal(v, first[k]) for k, v in again.items())


def test_anchoring_needs_prototypes(tiny_config: Path, photo_folder: Path, routed: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    bare = load_checkpoint(routed)
    bare.prior_prototypes = None
    save_checkpoint(bare, tmp_path / "bare.safetensors")
    rc = main(["train", "--preset", str(tiny_config), "--stage", "router", "--data", str(photo_folder),
               "--steps", "2", "--batch", "4", "--context", "64", "--run-dir", str(tmp_path / "run"),
               "--init-from", str(tmp_path / "bare.safetensors"), "--anchor-prior"])
    assert rc == 2
    assert "prototype priors" in capsys.readouterr().err
