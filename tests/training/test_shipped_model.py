"""Every shipped model (the default and the others in the manifest): loads, matches its sha256,
restores a real photo it never saw.

The test photo is matplotlib's sample `grace_hopper.jpg` (a dev dependency): never used for
training or tuning. Skipped while no weights are shipped."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lorair_desktop.core.checkpoint import DEFAULT_MODEL, read_manifest, sha256_file, weights_dir

MIN_GAIN_DB = 4.0  # σ 25 input ≈ 20.4 dB; CBM3D gains ≈ 10 dB here, a blind compact net well over 4


def _test_photo() -> Path | None:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        return None
    p = Path(spec.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    return p if p.is_file() else None


SHIPPED = sorted(read_manifest())


def test_the_default_model_is_shipped() -> None:
    assert DEFAULT_MODEL in SHIPPED


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request: pytest.FixtureRequest) -> tuple[str, Path]:
    name = request.param
    path = weights_dir() / read_manifest()[name]["file"]
    if not path.is_file():
        pytest.skip(f"{path.name} is not shipped yet")
    return name, path


def test_manifest_entry_matches(shipped: tuple[str, Path]) -> None:
    name, path = shipped
    entry = read_manifest()[name]
    assert entry["file"] == path.name and entry["config"] == name
    assert entry["sha256"] == sha256_file(path) and entry["bytes"] == path.stat().st_size
    assert path.stat().st_size < 30 * 2**20


def test_restores_a_noisy_photo(shipped: tuple[str, Path]) -> None:
    import torch
    from PIL import Image

    from lorair_desktop.core import Restorer, load_model
    from lorair_desktop.training.degradations import add_gaussian_noise, quantize8
    from lorair_desktop.training.evaluate import psnr

    photo = _test_photo()
    if photo is None:
        pytest.skip("matplotlib's sample photo is not installed (pip install -e '.[dev]')")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    clean = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float32)[:384, :384] / 255.0
    noisy = quantize8(add_gaussian_noise(clean, 25, np.random.default_rng(0)))
    model = load_model(shipped[0])  # verifies the sha256 against the manifest
    res = Restorer(model, device="cpu").restore(noisy)
    gain = psnr(res.image, clean) - psnr(noisy, clean)
    assert gain > MIN_GAIN_DB, f"PSNR gain {gain:.2f} dB"
    assert max(res.router_weights, key=res.router_weights.get) == "noise"


def pale_sky(h: int = 256, w: int = 256) -> np.ndarray:
    """A pale dusk sky with soft cloud texture: bright, smooth, low-contrast, as a photo's sky
    selection is. The routers of the shipped models take it for haze."""
    import cv2

    t = np.linspace(0.0, 1.0, h)[:, None, None]
    sky = (np.array([0.93, 0.80, 0.90]) * (1 - t) + np.array([0.98, 0.72, 0.62]) * t) * np.ones((1, w, 1))
    clouds = cv2.GaussianBlur(np.random.default_rng(0).normal(0.0, 0.02, (h, w, 3)), (0, 0), 6)
    return np.clip(sky + clouds, 0.0, 1.0).astype(np.float32)


def test_forcing_jpeg_on_a_compressed_sky_restores_it_as_jpeg(shipped: tuple[str, Path]) -> None:
    """The user's override must act even where the router chose otherwise: forced to jpeg, the sky
    keeps its brightness and at least about the input's PSNR. Without the prototype priors steering
    the prior along, the network still dehazes it (lorair-lite: 12.0 dB against 33.7, mean 0.83 -> 0.63)."""
    from lorair_desktop.core import Restorer, load_model
    from lorair_desktop.training.degradations import jpeg, quantize8
    from lorair_desktop.training.evaluate import psnr

    clean = pale_sky()
    deg = quantize8(jpeg(clean, 10))
    restorer = Restorer(load_model(shipped[0]), device="cpu", precision="fp32")
    res = restorer.restore(deg, overrides={"jpeg": 1.0})
    assert res.applied_weights["jpeg"] == 1.0
    assert abs(float(res.image.mean()) - float(deg.mean())) < 0.01
    assert psnr(res.image, clean) > psnr(deg, clean) - 0.5


def test_auto_leaves_a_compressed_sky_bright(shipped: tuple[str, Path]) -> None:
    """A pale sky is what haze looks like, and the routers the models first shipped with sent this one
    95 % to haze, which halved its brightness (lorair-lite: 6.2 dB against the input's 33.7). The
    router fine-tuned with --anchor-prior routes it mostly to jpeg and keeps it as it was."""
    from lorair_desktop.core import Restorer, load_model
    from lorair_desktop.training.degradations import jpeg, quantize8
    from lorair_desktop.training.evaluate import psnr

    clean = pale_sky()
    deg = quantize8(jpeg(clean, 10))
    res = Restorer(load_model(shipped[0]), device="cpu", precision="fp32").restore(deg)
    assert abs(float(res.image.mean()) - float(deg.mean())) < 0.01
    assert psnr(res.image, clean) > psnr(deg, clean) - 0.5
