"""Every fast inference path equals the fp32 reference within a stated tolerance; `lorair bench`
writes a well-formed report (no timing is asserted)."""

import json
import os

import numpy as np
import psutil
import pytest
import torch

from lorair_desktop.cli import main
from lorair_desktop.core import Restorer
from lorair_desktop.core.cpu import bf16_fast


def _img(seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:96, 0:128].astype(np.float32)
    base = np.stack([0.5 + 0.3 * np.sin(xx / 9), 0.5 + 0.2 * np.cos(yy / 7), 0.4 + 0.1 * np.sin((xx + yy) / 5)], -1)
    return np.clip(base + np.random.default_rng(seed).normal(0, 0.04, base.shape), 0, 1).astype(np.float32)


def test_channels_last_equals_contiguous(small_model) -> None:
    import torch

    img = _img()
    w = small_model.net.intro.conv.weight  # a 3x3 conv: its two memory formats differ
    a = Restorer(small_model, "cpu", channels_last=True).restore(img).image
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    b = Restorer(small_model, "cpu", channels_last=False).restore(img).image
    # the weights went back too (a shared model keeps no channels_last weights: the bench's "off" row)
    assert w.is_contiguous()
    assert np.abs(a - b).max() < 1e-5


@pytest.mark.skipif(not bf16_fast(), reason="this CPU has no bf16 kernels")
def test_bf16_is_close_to_fp32(small_model) -> None:
    img = _img()
    ref = Restorer(small_model, "cpu", precision="fp32").restore(img)
    fast = Restorer(small_model, "cpu", precision="bf16").restore(img)
    assert fast.dtype == "bfloat16"
    d = np.abs(fast.image - ref.image)
    # bf16 keeps 8 mantissa bits: ~0.4 % relative per op; the global residual is added in fp32.
    assert d.mean() < 4e-3 and d.max() < 6e-2


def test_bench_quick_json_report(small_model_path, tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    before = {p.pid for p in psutil.Process().children()}  # other tests' workers may be running
    threads = torch.get_num_threads()
    rc = main(["bench", "--quick", "--model", str(small_model_path), "--megapixels", "0.02", "--repeats", "1",
               "--skip", "memory,worker,gemm,peer", "--json", str(out)])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["model"]["name"] == "lorair-compact"
    variants = {r["variant"] for r in rep["restore"]}
    assert {"whole image (no tiling)", "unmerged experts (reference path)"} <= variants
    if (os.cpu_count() or 1) > 1:
        assert "default, beside a program busy on 1 core" in variants
    assert {p.pid for p in psutil.Process().children()} <= before  # the busy neighbour is gone
    # the governor gave torch fewer threads beside the neighbour: the later sections got them back
    assert torch.get_num_threads() == threads
    for r in rep["restore"]:
        assert r["s_per_mp"] > 0 and len(r["samples"]) == 1 and 0 <= r["router_share"] <= 1
        assert r["dtype"] == ("bfloat16" if r["variant"] == "bf16 autocast" else "float32")
    assert rep["machine"]["device"] == "cpu" and rep["machine"]["accelerator"] is None
    assert {r["device"] for r in rep["backbone"]} == {"cpu"}
    names = [r["variant"] for r in rep["backbone"]]
    assert names[:3] == ["plain backbone (no experts)", "merged experts", "unmerged experts"]
    assert rep["backbone"][0]["ratio_to_plain"] == 1.0
    assert {r["precision"] for r in rep["backbone"]} == {"fp32"}
    if bf16_fast():  # the restore's precision here: the same rows again, under bf16 autocast
        assert [r["variant"] for r in rep["backbone_bf16"]] == names
        assert {r["precision"] for r in rep["backbone_bf16"]} == {"bf16"}
    else:
        assert "backbone_bf16" not in rep
    assert "s/MP" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_backbone_bench_runs_on_the_device_it_reports(small_model) -> None:
    from lorair_desktop.bench import bench_backbone

    rows = bench_backbone(small_model, repeats=1, side=64, peer=False, device="cuda")
    assert {r["device"] for r in rows} == {"cuda"}
    assert next(small_model.parameters()).device.type == "cpu"  # handed back for the next section


def test_backbone_bench_sets_ours_beside_the_peer_and_puts_the_network_back(small_model) -> None:
    pytest.importorskip("spandrel")
    from lorair_desktop.bench import BARE, PEER, _peer_computation, bench_backbone

    net = small_model.net.eval()
    x, prior = torch.rand(1, 3, 64, 64), torch.rand(1, small_model.cfg.net.prior_dim)
    with torch.inference_mode():
        ref = net(x, prior)
        with _peer_computation(net):
            bare = net(x, prior)
        after = net(x, prior)
    assert (bare - ref).abs().max() > 1e-4  # without the prior's modulation the network computes less
    assert torch.equal(after, ref)  # and everything is back
    rows = {r["variant"]: r for r in bench_backbone(small_model, repeats=2, side=64)}
    assert {PEER, BARE} <= rows.keys()
    assert rows[PEER]["ratio_to_peer"] == 1.0 and rows["plain backbone (no experts)"]["ratio_to_plain"] == 1.0
    assert all(len(r["samples"]) == 2 and r["ratio_to_peer"] > 0 for r in rows.values())


@pytest.mark.slow
def test_bench_compile_matches_eager_and_keeps_the_mix_an_input(small_model) -> None:
    """The compiled network computes the eager one's image (fp32: to ~1e-6), and only the frozen
    variant compiles again when the expert mix changes: the design fact its report row states."""
    from lorair_desktop.bench_compile import bench_compile, format_compile
    from lorair_desktop.core.lora import lora_layers

    rows = bench_compile(small_model, "cpu", side=64, repeats=1)
    by_name = {r["variant"]: r for r in rows}
    assert set(by_name) == {"compiled", "compiled, weights frozen"}
    for r in rows:
        assert "error" not in r, r
        assert r["dtype"] == "float32"  # the tiny model's automatic precision here
        assert r["max_abs_diff"] < 1e-4 and r["new_mix_max_abs_diff"] < 1e-4
        assert r["first_call_s"] > 0 and len(r["samples"]) == 1
    assert not by_name["compiled"]["recompiled_for_new_mix"]
    assert by_name["compiled, weights frozen"]["recompiled_for_new_mix"]
    assert not any(layer.merged for layer in lora_layers(small_model.net))  # handed back unmerged
    assert "compiling" in "\n".join(format_compile(rows))


def test_gemm_peak_is_the_faster_of_both_dense_products() -> None:
    """The efficiency column's peak takes oneDNN's 1x1 convolution as well as MKL's matrix product
    (the network's convolutions run on oneDNN's kernels), and the report says which was which."""
    from lorair_desktop.bench import bench_gemm, format_report

    peak = bench_gemm(repeats=1, n=256)
    for prec in ("fp32", "bf16"):
        p = peak[prec]
        assert p["matmul_gflops_per_s"] > 0 and p["conv1x1_gflops_per_s"] > 0
        assert p["gflops_per_s"] == max(p["matmul_gflops_per_s"], p["conv1x1_gflops_per_s"])
    row = {"variant": "plain backbone (no experts)", "side": 64, "seconds": 1.0, "ratio_to_plain": 1.0,
           "gflops_per_s": peak["fp32"]["gflops_per_s"] / 2, "precision": "fp32", "device": "cpu"}
    rep = {"model": {"name": "m", "weights": "w"}, "machine": {"device": "cpu", "threads": 2, "torch": "t"},
           "backbone": [row], "gemm_peak": peak, "wall_s": 1.0}
    text = format_report(rep)
    assert "(50% of fp32 GEMM peak)" in text and "matrix product / 1x1 conv" in text
