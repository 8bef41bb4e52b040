"""The conversion at small scale with real numbers: a random transformers CLIP gives the same
embeddings as the open_clip tower it converts into, and a random official-layout model, converted
through `lorair import-official`, computes what the official forward computes (written here from
the official code, with loralib's expert formula)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lorair_desktop.cli import main
from lorair_desktop.core.checkpoint import load_checkpoint
from lorair_desktop.core.convert_official import map_clip_vision
from lorair_desktop.core.router import _CLIP_MEAN, _CLIP_STD, build_tower, make_views

from .conftest import RANK, SMALL_NET, E, random_hf_clip, random_official, write_official

SCALE = 2 * RANK / RANK  # loralib scaling lora_alpha / r with the release's alpha = 2r


def test_transformers_clip_converts_to_the_same_open_clip_tower(test_tower: str) -> None:
    hf = random_hf_clip(seed=3)
    tower, dim = build_tower(test_tower)
    assert dim == hf.config.projection_dim
    tower.load_state_dict(map_clip_vision(hf.state_dict()), strict=True)
    tower.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=x).image_embeds
        got = tower(x)
    assert (got - ref).abs().max().item() <= 1e-5


# -- the official forward, written from PriorFtModel_arch.py / loralib / classification/model.py --------------


def _mix(logits: torch.Tensor, k: int = 1) -> torch.Tensor:
    idx = logits.topk(k, dim=-1).indices
    masked = torch.full_like(logits, float("-inf")).scatter(-1, idx, logits.gather(-1, idx))
    return masked.softmax(-1)


class OfficialReference:
    def __init__(self, sd: dict[str, torch.Tensor], probs: torch.Tensor) -> None:
        self.sd, self.p = sd, probs

    def conv(self, name: str, x: torch.Tensor, stride: int = 1, padding: int = 0, groups: int = 1) -> torch.Tensor:
        w = self.sd[f"{name}.conv.weight"]
        a, b = self.sd[f"{name}.lora_A_list"], self.sd[f"{name}.lora_B_list"]
        for i in range(E):
            w = w + self.p[i] * (b[i] @ a[i]).view(w.shape) * SCALE
        return F.conv2d(x, w, self.sd.get(f"{name}.conv.bias"), stride, padding, 1, groups)

    def ln(self, name: str, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + 1e-6).sqrt()
        return self.sd[f"{name}.weight"].view(1, -1, 1, 1) * y + self.sd[f"{name}.bias"].view(1, -1, 1, 1)

    def block(self, p: str, inp: torch.Tensor) -> torch.Tensor:
        x = self.conv(f"{p}.conv1", self.ln(f"{p}.norm1", inp))
        x = self.conv(f"{p}.conv2", x, padding=1, groups=x.shape[1])  # depthwise
        a, b = x.chunk(2, 1)
        x = a * b
        x = x * self.conv(f"{p}.sca.1", x.mean((2, 3), keepdim=True))
        y = inp + self.conv(f"{p}.conv3", x) * self.sd[f"{p}.beta"]
        a, b = self.conv(f"{p}.conv4", self.ln(f"{p}.norm2", y)).chunk(2, 1)
        return y + self.conv(f"{p}.conv5", a * b) * self.sd[f"{p}.gamma"]

    def level_with_prior(self, p: str, x: torch.Tensor, prior: torch.Tensor, n: int) -> torch.Tensor:
        y = self.conv(f"{p}.conv2", F.gelu(self.conv(f"{p}.conv1", prior)))
        y = torch.sigmoid(self.conv(f"{p}.conv4", F.relu(self.conv(f"{p}.conv3", y))))
        x = x + self.sd[f"{p}.beta"] * (self.ln(f"{p}.norm", x) * y)
        for j in range(n):
            x = self.block(f"{p}.blocks.{j}", x)
        return x

    def forward(self, inp: torch.Tensor, de_prior: torch.Tensor) -> torch.Tensor:
        x = self.conv("intro", inp, padding=1)
        pr = de_prior[..., None, None]
        pr = F.gelu(self.conv("intro_de.2", F.gelu(self.conv("intro_de.0", pr))))
        skips = []
        for i, n in enumerate(SMALL_NET["enc_blocks"]):
            x = self.level_with_prior(f"encoders.{i}", x, pr, n)
            skips.append(x)
            x = self.conv(f"downs.{i}", x, stride=2)
        x = self.level_with_prior("middle_blks", x, pr, SMALL_NET["middle_blocks"])
        for i, n in enumerate(SMALL_NET["dec_blocks"]):
            x = F.pixel_shuffle(self.conv(f"ups.{i}.0", x), 2) + skips[-1 - i]
            for j in range(n):
                x = self.block(f"decoders.{i}.blocks.{j}", x)
        return self.conv("ending", x, padding=1) + inp


def _router_reference(router_sd: dict[str, torch.Tensor], image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIPDeRouter.forward on the five views: (logits, prior)."""
    hf = random_hf_clip()
    pre = "clip_model.vision_tower."
    hf.load_state_dict({k[len(pre):]: v.float() for k, v in router_sd.items() if k.startswith(pre)}, strict=True)
    sd = {k: v.float() for k, v in router_sd.items()}
    views = make_views(image, 32, "paper", "bicubic")[0]  # (5, 3, S, S): global, then 4 tiles
    mean, std = torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(_CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        emb = hf(pixel_values=(views - mean) / std).image_embeds
    y = torch.cat([emb[:1], emb[1:].mean(0, keepdim=True)], dim=1)
    prior = F.gelu(F.linear(F.gelu(F.linear(y, sd["de_extractor.0.weight"], sd["de_extractor.0.bias"])),
                            sd["de_extractor.2.weight"], sd["de_extractor.2.bias"]))
    return F.linear(prior, sd["cls_head.weight"], sd["cls_head.bias"]), prior


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, small_preset_path: Path):
    folder = tmp_path_factory.mktemp("official")
    rp, ip = write_official(folder, seed=0)
    out = folder / "converted.safetensors"
    rc = main(["import-official", "--router", str(rp), "--ir", str(ip), "--preset", str(small_preset_path),
               "-o", str(out), "--json"])
    assert rc == 0
    return out


def test_converted_model_computes_the_official_forward(converted: Path) -> None:
    _, ir_sd = random_official(seed=0)
    model = load_checkpoint(converted).double()
    ref = OfficialReference({k: v.double() for k, v in ir_sd.items()}, torch.zeros(E, dtype=torch.float64))
    g = torch.Generator().manual_seed(5)
    img = torch.rand(1, 3, 32, 40, generator=g, dtype=torch.float64)  # a multiple of 4: no padding on either side
    prior = torch.randn(1, 384, generator=g, dtype=torch.float64)
    for logits in (torch.tensor([0.3, 2.0, -1.0]), torch.tensor([5.0, 0.0, 1.0]), None):
        probs = _mix(logits.double()) if logits is not None else torch.zeros(E, dtype=torch.float64)
        ref.p = probs
        expected = ref.forward(img, prior)
        with torch.no_grad():
            model.merge(probs)
            got = model.net(img, prior)
            model.unmerge()
        assert (got - expected).abs().max().item() < 1e-9, f"probs {probs.tolist()}"
    # The experts are not trivial here: expert 1 alone changes the output.
    with_expert = OfficialReference(ref.sd, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)).forward(img, prior)
    assert (with_expert - ref.forward(img, prior)).abs().max().item() > 1e-3


def test_converted_router_matches_the_official_router(converted: Path) -> None:
    router_sd, _ = random_official(seed=0)
    model = load_checkpoint(converted)
    img = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(2))
    ref_logits, ref_prior = _router_reference(router_sd, img)
    with torch.no_grad():
        out = model.route(img)
    assert ref_prior.abs().max().item() > 0.1  # a live head, not all zeros after the GELUs
    torch.testing.assert_close(out.prior, ref_prior, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in model.router.tower.parameters())  # the tower stays frozen


def test_bf16_router_is_kept_lossless_and_loads(tmp_path: Path, small_preset_path: Path, capsys) -> None:
    from safetensors import safe_open

    rp, ip = write_official(tmp_path, seed=1, router_dtype=torch.bfloat16)
    out = tmp_path / "m.safetensors"
    assert main(["import-official", "--router", str(rp), "--ir", str(ip), "--preset", str(small_preset_path),
                 "-o", str(out), "--name", "my-setting1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "my-setting1" and info["manifest"] is None and info["path"] == str(out)
    with safe_open(str(out), framework="pt") as f:
        assert f.get_tensor("router.tower.proj").dtype == torch.bfloat16
        assert f.get_tensor("net.intro.lora_A").dtype == torch.float32
        meta = f.metadata()
    assert meta["router_file"] == "setting1_router.pth" and len(meta["ir_sha256"]) == 64
    model = load_checkpoint(out)
    assert model.cfg.name == "my-setting1"
    router_sd, _ = random_official(seed=1, router_dtype=torch.bfloat16)
    torch.testing.assert_close(model.router.tower.proj,
                               router_sd["clip_model.vision_tower.visual_projection.weight"].float().t())


def test_the_same_release_files_convert_to_the_same_bytes(tmp_path: Path, small_preset_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With SOURCE_DATE_EPOCH set, two conversions are byte-identical: a sorted header, a fixed time."""
    from lorair_desktop.core.checkpoint import sha256_file

    rp, ip = write_official(tmp_path, seed=3)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764547200")
    outs = [tmp_path / f"{i}.safetensors" for i in range(2)]
    for out in outs:
        assert main(["import-official", "--router", str(rp), "--ir", str(ip), "--preset", str(small_preset_path),
                     "-o", str(out), "--json"]) == 0
    assert sha256_file(outs[0]) == sha256_file(outs[1])
    raw = outs[0].read_bytes()
    head = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert list(head) == sorted(head) and head["__metadata__"]["converted"] == "2025-12-01T00:00:00+00:00"
    assert load_checkpoint(outs[0]).cfg.name  # still a valid checkpoint


def test_bad_files_are_clear_errors(tmp_path: Path, small_preset_path: Path, capsys) -> None:
    rp, ip = write_official(tmp_path, seed=2)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    cases = [
        (["--router", str(junk), "--ir", str(ip)], "junk.pth is not a readable PyTorch checkpoint"),
        (["--router", str(ip), "--ir", str(rp)], "unknown key(s) in the official"),  # swapped files
        (["--router", str(rp), "--ir", str(tmp_path / "nope.pth")], "does not exist"),
    ]
    for args, message in cases:
        rc = main(["import-official", *args, "--preset", str(small_preset_path), "-o", str(tmp_path / "x.safetensors")])
        err = capsys.readouterr().err
        assert rc == 2 and message in err, err
    # A pickle that would run code is refused by weights_only loading.
    evil = tmp_path / "evil.pth"
    torch.save({"params": {"x": torch.zeros(1)}, "obj": Path("x")}, evil)
    rc = main(["import-official", "--router", str(evil), "--ir", str(ip), "--preset", str(small_preset_path),
               "-o", str(tmp_path / "x.safetensors")])
    assert rc == 2 and "not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
