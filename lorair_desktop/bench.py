"""`lorair bench`: where the time and memory go, on this machine, for a model and device.

Everything printed comes from runs made here and now: medians over repeats after a warm-up, with the
raw samples in the JSON report. Nothing is asserted; tests never time things.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (under ~3 minutes on 2 cores)")
    p.add_argument("--json", type=Path, default=None, help="also write the full report (with raw samples) here")
    p.add_argument("--model", default=None, help="preset or checkpoint (default: the default model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--skip", default="", help="comma-separated sections to skip: peer,memory,worker,gemm,variants")
    p.add_argument("--megapixels", type=float, nargs="+", default=None,
                   help="image sizes for the restore rows (default 1 and 4; 1 with --quick)")
    p.add_argument("--setting1", type=float, default=None, metavar="MEGAPIXELS",
                   help="only this: the full-size Setting I model on a photo this large (24 = a 24 MP photo), "
                        "seconds per megapixel and peak memory (random weights unless installed)")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile of the network, weights as inputs and frozen (adds a few "
                        "minutes on a laptop CPU: it compiles twice)")


def _synced(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """fn, then a wait for the device's queued work: CUDA and MPS return before their kernels finish."""
    import torch

    if device.startswith("cuda"):
        return lambda: (fn(), torch.cuda.synchronize())
    if device == "mps":
        return lambda: (fn(), torch.mps.synchronize())
    return fn


def _timeit(fn: Callable[[], object], repeats: int, warmup: int = 1, device: str = "cpu") -> dict:
    fn = _synced(fn, device)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(samples), "samples": samples}


def _load(model_name: str | None):
    from .core import DEFAULT_MODEL, load_model
    from .errors import ModelNotTrained

    try:
        return load_model(model_name or DEFAULT_MODEL), "trained"
    except ModelNotTrained:
        import torch

        from .core import LoRAIR, load_config

        torch.manual_seed(0)  # speed does not depend on the values; say so in the report
        return LoRAIR(load_config(model_name or DEFAULT_MODEL)), "random (no trained weights installed)"


def _image(mp: float, seed: int = 0):
    import numpy as np

    side = int((mp * 1e6) ** 0.5)
    return np.random.default_rng(seed).random((side, side, 3), dtype=np.float32)


class BusyNeighbour:
    """Another program keeping `cores` cores busy (pure-Python spin loops) while in the block."""

    def __init__(self, cores: int = 1) -> None:
        self.cores = cores
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> BusyNeighbour:
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.cores)]
        time.sleep(0.5)  # let them start spinning before anything is timed
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def bench_variants(model, device: str, sizes: list[float], repeats: int) -> list[dict]:
    """Seconds per megapixel for the restore paths users get, and the paths we chose against."""
    import torch

    from .core import Restorer
    from .core.cpu import bf16_fast
    from .core.inference import CPU_TILE_MIN

    rows = []
    threads = torch.get_num_threads()
    for mp in sizes:
        img = _image(mp)
        n_mp = img.shape[0] * img.shape[1] / 1e6
        variants: list[tuple[str, dict, dict, int]] = [
            ("default (auto tile and precision, channels_last, merged)", {}, {}, 0),
            ("fp32", {"precision": "fp32"}, {}, 0),
            ("whole image (no tiling)", {}, {"tile": 1 << 16}, 0),
            (f"small tiles ({CPU_TILE_MIN} px, the CPU floor)", {}, {"tile": CPU_TILE_MIN}, 0),
            ("channels_last off", {"channels_last": False}, {}, 0),
            ("unmerged experts (reference path)", {}, {"merged": False}, 0),
        ]
        if bf16_fast(torch.device(device) if device != "auto" else None):
            variants.append(("bf16 autocast", {"precision": "bf16"}, {}, 0))
        if device == "cpu" and (os.cpu_count() or 1) > 1:
            # Users restore while Krita or GIMP runs: the thread count must not collapse beside them.
            variants.append(("default, beside a program busy on 1 core", {}, {}, 1))
        for name, ctor, call, busy in variants:
            r = Restorer(model, device=device, **ctor)
            res = {}

            def run(r=r, call=call, res=res, img=img) -> None:
                res["out"] = r.restore(img, **call)

            with BusyNeighbour(busy) if busy else contextlib.nullcontext():
                t = _timeit(run, repeats)
            # The governor gave torch fewer threads beside the neighbour; what runs next gets them back.
            torch.set_num_threads(threads)
            out = res["out"]
            rows.append({"size_mp": round(n_mp, 2), "variant": name, "s_per_mp": t["median_s"] / n_mp,
                         "router_share": out.timings["route_s"] / out.timings["total_s"], "tiles": out.tiles,
                         "tile_size": out.tile_size, "dtype": out.dtype, "samples": t["samples"]})
            log.info("%s", rows[-1])
        model.to("cpu")
    return rows


@contextlib.contextmanager
def _peer_computation(net):
    """The network computing what the peer computes: no prior modulation (DAM) and global channel
    pooling (no TLC windows). For timing only; everything is put back on exit."""
    from .core.nafnet import DAM, ChannelPool, Level

    levels = [(m, m.dam) for m in net.modules() if isinstance(m, Level) and isinstance(m.dam, DAM)]
    pools = [(m, m.window) for m in net.modules() if isinstance(m, ChannelPool)]
    try:
        for m, _ in levels:
            m.dam = None
        for m, _ in pools:
            m.window = None
        yield
    finally:
        for m, dam in levels:
            m.dam = dam
        for m, window in pools:
            m.window = window


PEER = "spandrel NAFNet (peer, same config)"
BARE = "ours as the peer computes (no DAM, no TLC)"


def bench_backbone(model, repeats: int, side: int = 1024, peer: bool = True, device: str = "cpu",
                   precision: str = "fp32") -> list[dict]:
    """The network alone on one tile (on `device`, fp32 or under bf16 autocast): base (no experts),
    merged experts, unmerged, and spandrel's NAFNet, beside ours computing exactly what the peer does
    (see _peer_computation). In bf16 the peer runs under the same autocast as ours.

    Ratios are medians of per-round ratios: the variants run interleaved, so a neighbour's load or a
    clock change hits one round of all of them alike and cancels out of that round's ratios."""
    import torch

    from .core.cpu import keep_freed_memory
    from .core.flops import forward_flops, network_flops

    keep_freed_memory()  # as a restore has it, also where the restore rows were skipped
    net = model.net.eval().to(device)
    x = torch.rand(1, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
    prior = torch.zeros(1, model.cfg.net.prior_dim, device=device)
    w = torch.zeros(model.cfg.num_experts, device=device)
    w[0] = 1.0
    net.to(memory_format=torch.channels_last)

    def bare() -> None:
        with _peer_computation(net):
            net(x, prior)

    flops = {"ours": network_flops(model, side)}
    variants: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "plain backbone (no experts)": (model.unmerge, lambda: net(x, prior)),
        "merged experts": (lambda: model.merge(w, channels_last=True), lambda: net(x, prior)),
        "unmerged experts": (lambda: (model.unmerge(), model.set_reference_mix(w)), lambda: net(x, prior)),
    }
    try:
        if not peer:
            raise ImportError("peer skipped")
        from spandrel.architectures.NAFNet import NAFNet

        c = model.cfg.net
        peer_net = NAFNet(width=c.width, middle_blk_num=c.middle_blocks, enc_blk_nums=list(c.enc_blocks),
                          dec_blk_nums=list(c.dec_blocks)).eval().to(device, memory_format=torch.channels_last)
        variants[PEER] = (model.unmerge, lambda: peer_net(x))
        variants[BARE] = (model.unmerge, bare)
        flops[PEER] = forward_flops(peer_net.cpu(), side)
        peer_net.to(device)
        with _peer_computation(net.cpu()):
            flops[BARE] = network_flops(model, side)
        net.to(device)
    except ImportError:
        log.info("no peer comparison (spandrel skipped or not installed)")
    samples: dict[str, list[float]] = {name: [] for name in variants}
    timed = {name: _synced(fn, device) for name, (_setup, fn) in variants.items()}
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        for rep in range(repeats + 1):  # the first round is the warm-up
            for name, (setup, _fn) in variants.items():
                setup()
                t0 = time.perf_counter()
                timed[name]()
                if rep:
                    samples[name].append(time.perf_counter() - t0)
    model.unmerge()
    model.to("cpu")
    plain = samples["plain backbone (no experts)"]
    rows = []
    for name, v in samples.items():
        # achieved rate on the variant's own work (the experts' unmerged convs count as overhead)
        work = flops.get(name, flops["ours"])
        row = {"variant": name, "seconds": statistics.median(v), "samples": v, "side": side, "device": device,
               "precision": precision,
               "ratio_to_plain": statistics.median(a / b for a, b in zip(v, plain, strict=True)),
               "gflop": work / 1e9, "gflops_per_s": work / statistics.median(v) / 1e9}
        if PEER in samples:
            row["ratio_to_peer"] = statistics.median(a / b for a, b in zip(v, samples[PEER], strict=True))
        rows.append(row)
    return rows


def bench_gemm(repeats: int = 5, n: int = 2048, device: str = "cpu") -> dict:
    """Dense-product peak of the device, per precision (fp32 as PyTorch runs it by default: no TF32
    on CUDA): the faster of a square matrix product and the same work as a 1x1 convolution. On a
    CPU the two run on different libraries (MKL's GEMM, oneDNN's convolution kernels, which the
    network's convolutions use too); MKL's alone made the network look 97 % efficient in fp32 on the
    2-core EPYC, where oneDNN's product is the faster one."""
    import torch
    import torch.nn.functional as F

    if device.startswith("cuda"):
        n = 8192  # a 2048² product is over in microseconds there: mostly launch cost
    c, side = 512, 64  # the 1x1 convolution: (side² x c) by (c x c), channels_last
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.rand(n, n, dtype=dt, device=device), torch.rand(n, n, dtype=dt, device=device)
        x = torch.rand(1, c, side, side, dtype=dt, device=device).contiguous(memory_format=torch.channels_last)
        w = torch.rand(c, c, 1, 1, dtype=dt, device=device).contiguous(memory_format=torch.channels_last)
        # a peak: the best run (a neighbour's load only ever slows a product down)
        with torch.inference_mode():
            t_mm = min(_timeit(lambda a=a, b=b: a @ b, repeats, device=device)["samples"])
            t_conv = min(_timeit(lambda x=x, w=w: F.conv2d(x, w), repeats, device=device)["samples"])
        matmul, conv = 2 * n**3 / t_mm / 1e9, 2 * c * c * side * side / t_conv / 1e9
        out[name] = {"gflops_per_s": max(matmul, conv), "matmul_gflops_per_s": matmul, "conv1x1_gflops_per_s": conv}
    return out


_MEMORY_PROBE = """
import sys, time, numpy as np
from lorair_desktop.bench import _load
from lorair_desktop.core.cpu import peak_rss_bytes
from lorair_desktop.core import Restorer
model, _ = _load(sys.argv[1] or None)
side_h, side_w = 4000, 6000
# 8-bit pixels, as a decoded photo or a host's layer arrives; the result comes back 8-bit too.
img = np.random.default_rng(0).integers(0, 256, (side_h, side_w, 3), dtype=np.uint8)
r = Restorer(model, device=sys.argv[2])
t0 = time.perf_counter(); out = r.restore(img, out_dtype=np.uint8); dt = time.perf_counter() - t0
print(peak_rss_bytes(), dt, out.tiles, out.tile_size)
"""


def bench_memory_24mp(model_name: str | None, device: str) -> dict:
    """Peak resident memory of a 24 MP restore, measured in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, model_name or "", device],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    rss, dt, tiles, tile = proc.stdout.split()[-4:]
    image_mb = 24e6 * 3 / 2**20
    return {"peak_rss_mb": int(rss) / 2**20, "seconds": float(dt), "s_per_mp": float(dt) / 24, "tiles": int(tiles),
            "tile_size": int(tile), "input_mb": image_mb}


def run(args: argparse.Namespace) -> int:
    import torch

    from .core import native
    from .core.cpu import bf16_fast
    from .core.device import select_device

    if args.setting1 is not None:
        from .core.bench_official import bench_setting1, format_bench
        from .errors import LoraIRError

        if args.setting1 <= 0:
            raise LoraIRError(f"--setting1 needs a positive size in megapixels, got {args.setting1}")
        result = bench_setting1(args.setting1, device=str(select_device(args.device)))
        print(format_bench(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    repeats = args.repeats or (2 if args.quick else 5)
    device = str(select_device(args.device))
    model, weights = _load(args.model)
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    report: dict = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device,
                                "accelerator": gpu, "fused_kernels": native.status()},
                    "model": {"name": model.cfg.name, "weights": weights}}
    t_start = time.perf_counter()
    if "variants" not in skip:
        sizes = args.megapixels or ([1.0] if args.quick else [1.0, 4.0])
        report["restore"] = bench_variants(model, device, sizes, repeats)
    side = min(1024, int(((args.megapixels or [1.0])[0] * 1e6) ** 0.5) // 16 * 16)
    # a tile is cheap next to a restore: more rounds, since the peer ratio is what is read from them
    rounds = args.repeats or (8 if args.quick else 12)
    report["backbone"] = bench_backbone(model, rounds, side=side, peer="peer" not in skip, device=device)
    if bf16_fast(torch.device(device)):
        # what a restore runs here, with the peer under the same autocast (chaiNNer runs it in fp32 on a CPU)
        report["backbone_bf16"] = bench_backbone(model, rounds, side=side, peer="peer" not in skip, device=device,
                                                 precision="bf16")
    if args.compile:
        from .bench_compile import bench_compile

        report["compile"] = bench_compile(model, device, side=side, repeats=args.repeats or (3 if args.quick else 5))
    if "gemm" not in skip:
        report["gemm_peak"] = bench_gemm(device=device)
    if "memory" not in skip:
        report["memory_24mp"] = bench_memory_24mp(args.model, device)
    if "worker" not in skip:
        try:
            from .worker.bench import bench_roundtrip

            report["worker_roundtrip"] = bench_roundtrip(megapixels=1.0 if args.quick else 4.0,
                                                         model=args.model, repeats=repeats)
        except ImportError:
            report["worker_roundtrip"] = {"error": "worker not installed"}
    report["wall_s"] = time.perf_counter() - t_start
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"full report: {args.json}")
    return 0


def format_report(rep: dict) -> str:
    lines = [f"model {rep['model']['name']} ({rep['model']['weights']}) on {rep['machine']['device']}, "
             f"{rep['machine']['threads']} threads, torch {rep['machine']['torch']}",
             f"fused CPU kernels: {rep['machine'].get('fused_kernels', 'unknown')}"]
    if "restore" in rep:
        lines.append("\nrestore (route + experts merged + network), seconds per megapixel:")
        for r in rep["restore"]:
            lines.append(f"  {r['size_mp']:5.2f} MP  {r['variant']:<56} {r['s_per_mp']:7.3f} s/MP  "
                         f"{r.get('dtype', ''):<8}  router {100 * r['router_share']:4.1f}%  "
                         f"{r['tiles']} tile(s) of {r['tile_size']}")
    b0 = rep["backbone"][0]
    gemm = rep.get("gemm_peak", {})
    for rows in (rep["backbone"], rep.get("backbone_bf16", [])):
        if not rows:
            continue
        prec = rows[0].get("precision", "fp32")
        lines.append(f"\nnetwork alone, one {b0['side']}² tile, {prec} on {b0.get('device', 'cpu')}:")
        for r in rows:
            peak = gemm.get(prec, {}).get("gflops_per_s")
            frac = f" ({100 * r['gflops_per_s'] / peak:.0f}% of {prec} GEMM peak)" if peak else ""
            vs_peer = f"  x{r['ratio_to_peer']:.2f} of the peer" if "ratio_to_peer" in r else ""
            lines.append(f"  {r['variant']:<42} {r['seconds']:7.3f} s  x{r['ratio_to_plain']:.2f} of plain{vs_peer}  "
                         f"{r['gflops_per_s']:6.1f} GFLOP/s{frac}")
    if "compile" in rep:
        from .bench_compile import format_compile

        lines.extend(format_compile(rep["compile"]))
    if gemm:
        def _peak(p: dict) -> str:
            parts = (f"{p[k]:.0f}" for k in ("matmul_gflops_per_s", "conv1x1_gflops_per_s") if k in p)
            return f"{p['gflops_per_s']:.0f} GFLOP/s (matrix product / 1x1 conv: {' / '.join(parts)})"

        lines.append(f"\nGEMM peak on {b0.get('device', 'cpu')} (the faster of a square matrix product "
                     f"and a 1x1 convolution): fp32 {_peak(gemm['fp32'])}, bf16 {_peak(gemm['bf16'])}")
    mem = rep.get("memory_24mp")
    if mem:
        if "error" in mem:
            lines.append(f"\n24 MP memory probe failed: {mem['error']}")
        else:
            lines.append(f"\n24 MP photo: peak RSS {mem['peak_rss_mb']:.0f} MB (input alone "
                         f"{mem['input_mb']:.0f} MB as 8-bit), {mem['seconds']:.1f} s "
                         f"({mem['s_per_mp']:.2f} s/MP), {mem['tiles']} tiles of {mem['tile_size']}")
    wr = rep.get("worker_roundtrip")
    if wr:
        shown = {k: v for k, v in wr.items() if k != "samples"}
        lines.append(f"\nworker round trip vs in-process: {json.dumps(shown)}")
    lines.append(f"\nbench wall time {rep['wall_s']:.0f} s")
    return "\n".join(lines)
