"""The fused C kernels (core/native.py) equal PyTorch's ops, apply only where they may, and every
caller falls back to PyTorch where they cannot be built; the network gives the same image both ways."""

import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

from lorair_desktop.core import native
from lorair_desktop.core.checkpoint import load_model

CL = torch.channels_last
needs_kernels = pytest.mark.skipif(native.library() is None, reason=f"fused kernels off here: {native.status()}")


def _rand(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 1.5 + 0.3).to(dtype).contiguous(memory_format=CL)


def _close(got: torch.Tensor | None, want: torch.Tensor, terms: torch.Tensor | None = None) -> None:
    """float32: equal to ~1e-6 (another order of the same sums); bf16: within one rounding step of
    the magnitude of the terms (default: of the result). The kernels round once where PyTorch's
    ops may round twice (x + LN(x): LN's result, then the sum), and their float32 statistics may
    differ in the last bit, which flips a rounding."""
    assert got is not None and got.dtype == want.dtype and got.shape == want.shape
    assert got.is_contiguous(memory_format=CL)
    d = (got.float() - want.float()).abs()
    if want.dtype == torch.float32:
        assert d.max() <= 1e-5 * (1 + want.abs().max())
    else:
        scale = (want if terms is None else terms).float().abs()
        assert (d <= scale * 2**-7 + 1e-6).all()


@pytest.fixture
def kernels_off(monkeypatch):
    """The library as if it could not be built here: every caller runs PyTorch's ops."""
    monkeypatch.setattr(native, "_state", {"lib": None, "reason": "turned off by the test"})


def test_the_kernels_build_and_load_where_there_is_a_c_compiler() -> None:
    if native._compiler() is None:
        pytest.skip("no C compiler here: the PyTorch ops run (tested below)")
    assert native.status().startswith("on"), native.status()


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("c", [16, 32, 64, 128, 256, 512])
def test_layer_norm_equals_pytorch(c: int, dtype: torch.dtype) -> None:
    x = _rand(2, c, 7, 5, dtype=dtype)
    w, b = torch.randn(c), torch.randn(c)
    want = F.layer_norm(x.permute(0, 2, 3, 1), (c,), w, b, 1e-6).permute(0, 3, 1, 2)
    with torch.no_grad():
        _close(native.layer_norm_nhwc(x, w, b, 1e-6), want)
        _close(native.layer_norm_nhwc(x, w, b, 1e-6, residual=True), x + want, terms=x.abs() + want.abs())


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gate_with_cell_means_equals_pytorch(dtype: torch.dtype) -> None:
    for c, h, w, step in [(16, 12, 9, 3), (32, 8, 16, 4), (24, 10, 10, 5)]:
        x = _rand(2, 2 * c, h, w, dtype=dtype)
        a, b = x.chunk(2, 1)
        got = native.gate_pool(x, step)
        assert got is not None
        _close(got[0], a * b)
        _close(got[1], F.avg_pool2d(a * b, step))


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_upsampled_attention_product_equals_pytorch(dtype: torch.dtype) -> None:
    for c, gh, gw, step in [(16, 3, 4, 4), (64, 5, 2, 2), (8, 2, 3, 5)]:
        x = _rand(2, c, gh * step, gw * step, dtype=dtype)
        att = _rand(2, c, gh, gw, dtype=dtype, seed=1)
        up = F.interpolate(att, scale_factor=step, mode="bilinear", align_corners=False)
        _close(native.scale_by_grid(x, att, step), x * up)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pixel_shuffle_add_equals_pytorch(dtype: torch.dtype) -> None:
    for c, h, w in [(16, 6, 10), (3, 4, 2)]:
        u, skip = _rand(2, 4 * c, h // 2, w // 2, dtype=dtype), _rand(2, c, h, w, dtype=dtype, seed=1)
        got = native.shuffle_add(u, skip)
        assert got is not None and torch.equal(got, F.pixel_shuffle(u, 2) + skip)  # one rounding: exact


@needs_kernels
def test_the_kernels_decline_what_they_do_not_handle() -> None:
    x, w, b = _rand(1, 16, 4, 4), torch.ones(16), torch.zeros(16)
    assert native.layer_norm_nhwc(x.contiguous(), w, b, 1e-6) is None  # not channels_last
    assert native.layer_norm_nhwc(_rand(1, 24, 4, 4), torch.ones(24), torch.zeros(24), 1e-6) is None  # no kernel
    assert native.layer_norm_nhwc(x.double(), w, b, 1e-6) is None
    assert native.layer_norm_nhwc(x.requires_grad_(), w, b, 1e-6) is None  # training: autograd needs PyTorch
    x2 = _rand(1, 32, 6, 6)
    assert native.gate_pool(x2, 4) is None  # 6 is no multiple of 4
    assert native.gate_pool(x2.contiguous(), 2) is None
    assert native.scale_by_grid(_rand(1, 16, 8, 8), _rand(1, 16, 3, 3), 2) is None  # grid x step != size
    assert native.scale_by_grid(_rand(1, 16, 8, 8), _rand(1, 16, 4, 4).bfloat16(), 2) is None  # mixed types
    assert native.shuffle_add(_rand(1, 64, 3, 3), _rand(1, 16, 6, 8)) is None


@needs_kernels
def test_concurrent_calls_from_several_threads_stay_correct() -> None:
    x, w, b = _rand(1, 32, 64, 48), torch.randn(32), torch.randn(32)
    want = F.layer_norm(x.permute(0, 2, 3, 1), (32,), w, b, 1e-6).permute(0, 3, 1, 2)
    errors: list[float] = []

    def work() -> None:
        with torch.no_grad():
            for _ in range(20):
                errors.append(float((native.layer_norm_nhwc(x, w, b, 1e-6) - want).abs().max()))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 80 and max(errors) < 1e-5


@pytest.fixture(scope="module")
def lite():
    return load_model("lorair-lite").eval()


def _network(model, image: torch.Tensor, bf16: bool) -> torch.Tensor:
    net = model.net.to(memory_format=CL)
    prior = torch.randn(1, model.cfg.net.prior_dim, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return net(image, prior).float()


@needs_kernels
def test_the_shipped_network_restores_the_same_image_with_and_without_the_kernels(lite, monkeypatch) -> None:
    """A tile large enough for TLC's cell grid at every level (and one whose size is no multiple of
    the cells: those blocks fall back per op), fp32 and bf16 autocast."""
    for h, w in [(320, 384), (250, 301)]:
        image = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h)).contiguous(memory_format=CL)
        fast = [_network(lite, image, bf16) for bf16 in (False, True)]
        with monkeypatch.context() as m:
            m.setattr(native, "_state", {"lib": None, "reason": "off for the comparison"})
            plain = [_network(lite, image, bf16) for bf16 in (False, True)]
        assert (fast[0] - plain[0]).abs().max() < 1e-5
        d = (fast[1] - plain[1]).abs()
        assert d.mean() < 2e-3 and d.max() < 3e-2  # two bf16 paths, each rounding to 8 mantissa bits


def test_without_the_kernels_the_network_still_restores(lite, kernels_off) -> None:
    assert native.library() is None and native.status() == "off (turned off by the test)"
    image = torch.rand(1, 3, 96, 80).contiguous(memory_format=CL)
    out = _network(lite, image, bf16=False)
    assert out.shape == image.shape and torch.isfinite(out).all()


def test_a_failing_compiler_leaves_the_pytorch_ops(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("LORAIR_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # exists, and fails whatever it is asked
    assert native.library() is None
    assert native.status().startswith("off (OSError: false failed")
    assert native.layer_norm_nhwc(_rand(1, 16, 4, 4), torch.ones(16), torch.zeros(16), 1e-6) is None
    assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob("*.tmp"))  # nothing half-built left


def test_lorair_native_0_turns_them_off() -> None:
    code = "from lorair_desktop.core import native; print(native.status())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LORAIR_NATIVE": "0"})
    assert out.returncode == 0 and out.stdout.strip() == "off (LORAIR_NATIVE=0)"


def test_the_posix_threads_build_passes_its_check_too(monkeypatch, tmp_path) -> None:
    """Where PyTorch's OpenMP runtime cannot be shared (macOS, say), the kernels are built without
    OpenMP; that build must pass the same check against PyTorch and agree with it here."""
    if native._compiler() is None:
        pytest.skip("no C compiler here")
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_openmp_runtime", lambda: None)
    monkeypatch.setenv("LORAIR_NATIVE_CACHE", str(tmp_path))
    assert native.status() == "on (POSIX threads)"
    x, w, b = _rand(1, 32, 40, 30), torch.randn(32), torch.randn(32)
    with torch.no_grad():
        _close(native.layer_norm_nhwc(x, w, b, 1e-6),
               F.layer_norm(x.permute(0, 2, 3, 1), (32,), w, b, 1e-6).permute(0, 3, 1, 2))
