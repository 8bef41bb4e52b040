"""`lorair bench --compile`: what torch.compile buys, and what it costs, for this network here.

Two ways of compiling (TorchInductor) are timed against the eager network on one tile, in the
precision a restore uses on this device, with the experts merged as a restore has them:

- **compiled**: the weights stay inputs of the compiled program. Every image gets its own expert
  mix, i.e. new merged weights; as inputs they need no recompiling (a new tile shape does).
- **compiled, weights frozen**: inductor's `freezing` folds the weights into the program (on a CPU:
  prepacked oneDNN convolutions with the following element-wise ops fused in). Every new mix is
  then a new program to compile.

Why neither is in the restore path: on the 2-core EPYC of the README (lite, one 992-1024 px tile;
`lorair bench --quick --compile` and scripted runs of the same measurement), "compiled" took x1.22-1.34
of the eager time in bf16 (x1.17 in fp32) after 44-70 s of compiling; "frozen" took x0.71-0.77 in
bf16 (x0.66 in fp32), but compiled again for 21-34 s at every new mix, i.e. for every routed image,
to save ~0.07 s per megapixel. The report says where a machine (a GPU, say) differs.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

VARIANTS = (("compiled", False), ("compiled, weights frozen", True))


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def bench_compile(model, device: str = "cpu", side: int = 1024, repeats: int = 5) -> list[dict]:
    """One row per compiled variant: the first call (the compile), the median steady time against
    eager in interleaved rounds, the largest difference from eager, and what a second expert mix
    costs (whether it recompiled). A variant that fails to compile (no C++ compiler, an unsupported
    platform) gets an "error" row instead: the report is still written."""
    import torch
    import torch._dynamo
    import torch._inductor.config as inductor_config

    from .bench import _synced
    from .core import Restorer

    restorer = Restorer(model, device=device)  # the device, memory format and precision a restore uses
    dtype, dev = restorer.dtype, restorer.device
    net = model.net
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, side, side, generator=gen).to(dev).contiguous(memory_format=torch.channels_last)
    prior = torch.randn(1, model.cfg.net.prior_dim, generator=gen).to(dev)
    mix_a = torch.zeros(model.cfg.num_experts)
    mix_a[0] = 1.0
    mix_b = torch.full((model.cfg.num_experts,), 1.0 / model.cfg.num_experts)

    def call(fn: Callable) -> torch.Tensor:
        with torch.inference_mode():
            if dtype == torch.float32:
                return fn(x, prior).float()
            with torch.autocast(dev.type, dtype=dtype):
                return fn(x, prior).float()

    sync = _synced(lambda: None, str(dev))  # waits for queued kernels on CUDA/MPS, nothing on a CPU

    def timed(fn: Callable) -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        y = call(fn)
        sync()
        return time.perf_counter() - t0, y

    rows = []
    try:
        for name, frozen in VARIANTS:
            torch._dynamo.reset()  # one compiled program per variant: a kept one would be reused
            row: dict = {"variant": name, "side": side, "dtype": str(dtype).replace("torch.", ""),
                         "device": str(dev)}
            try:
                with inductor_config.patch(freezing=frozen):
                    model.merge(mix_a, channels_last=restorer.channels_last)
                    _, ref = timed(net)
                    compiled = torch.compile(net, dynamic=False)
                    graphs = _graphs()
                    row["first_call_s"], y = timed(compiled)
                    row["max_abs_diff"] = float((y - ref).abs().max())
                    eager_s, comp_s = [], []
                    for _ in range(repeats):  # interleaved: a neighbour's load hits both alike
                        eager_s.append(timed(net)[0])
                        comp_s.append(timed(compiled)[0])
                    model.merge(mix_b, channels_last=restorer.channels_last)
                    _, ref_b = timed(net)
                    before = _graphs()
                    row["new_mix_first_call_s"], y_b = timed(compiled)
                    row["recompiled_for_new_mix"] = _graphs() > before
                    row["new_mix_max_abs_diff"] = float((y_b - ref_b).abs().max())
                    row["graphs"] = _graphs() - graphs
            except Exception as exc:  # a diagnostic: report why, keep benchmarking the rest
                log.info("compiling failed", exc_info=True)
                rows.append({**row, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"})
                continue
            row.update(seconds=statistics.median(comp_s), eager_seconds=statistics.median(eager_s),
                       ratio_to_eager=statistics.median(c / e for c, e in zip(comp_s, eager_s, strict=True)),
                       samples=comp_s, eager_samples=eager_s)
            rows.append(row)
            log.info("%s", row)
    finally:
        model.unmerge()
        torch._dynamo.reset()
        model.to("cpu")
    return rows


def format_compile(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    r0 = rows[0]
    lines = [f"\ntorch.compile (inductor), the network alone on one {r0['side']}² tile, "
             f"{r0['dtype']} on {r0['device']}:"]
    for r in rows:
        if "error" in r:
            lines.append(f"  {r['variant']:<26} failed: {r['error']}")
            continue
        again = "recompiled" if r["recompiled_for_new_mix"] else "no recompile"
        lines.append(f"  {r['variant']:<26} {r['seconds']:7.3f} s against eager {r['eager_seconds']:.3f} s: "
                     f"x{r['ratio_to_eager']:.2f}; compiling {r['first_call_s']:.1f} s; a new expert mix "
                     f"{r['new_mix_first_call_s']:.1f} s ({again}); max |diff| {r['max_abs_diff']:.1e}")
    return lines
