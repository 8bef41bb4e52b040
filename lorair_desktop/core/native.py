"""Fused CPU kernels (native_kernels.c), compiled on this machine at first use; PyTorch ops otherwise.

Why: between its convolutions this network is memory-bound, and a few of PyTorch's ops there are
far from the memory's speed on channels_last tensors. Layer norm over rows of 16-32 channels spends
~20 ns a row (992² x 16: 10.6 ms, against 2.4 ms to copy the tensor; the C kernel, written for
the row length: 2.2-2.7 ms); TLC's cell means, the upsampling of its attention and the decoder's
pixel_shuffle each take a pass over a full-size tensor that a fused kernel saves. Measured on the
lite network (992² tile, 2 cores, `lorair bench --quick`): the backbone ~18 % faster in fp32 and
~22 % in bf16.

The kernels: layer_norm_nhwc (with the DAM's residual), gate_pool (SimpleGate + TLC cell means),
scale_by_grid (times the bilinearly upsampled TLC attention), shuffle_add (pixel_shuffle + skip).
Each returns None where it does not apply (another device or layout, gradients wanted, ...), and
the caller then runs PyTorch's ops; in float32 both agree to ~1e-6, in bf16 to a rounding step.

How: the C source ships with the package; the first use compiles it with the system C compiler
(`$CC`, else `cc`, `gcc` or `clang`; ~1 s) into the user cache, named by a hash of the source,
flags, compiler and CPU, so a shared home folder on another CPU never loads a library built for
this one. Where PyTorch's OpenMP runtime can be shared (Linux), the kernels run on PyTorch's own
thread team (threads of their own would fight its spinning wait for the cores), else on POSIX
threads. A freshly loaded library must reproduce PyTorch on small test tensors before it is used.
No compiler, a failed build or check, or `LORAIR_NATIVE=0`: PyTorch's ops run (one log line says
why; `lorair bench` prints it). Nothing here is needed for correct results, only for speed.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..atomic import replacing

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native_kernels.c")
# Reassociating the sums lets the compiler vectorise them; no -ffast-math, which would also switch
# the whole process to flush-denormals-to-zero.
OPT_FLAGS = ["-O3", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]
NORM_CHANNELS = (16, 32, 64, 128, 256, 512, 1024)  # the row lengths the C kernels are written for
_SERIAL_BELOW = 1 << 16  # elements: below this a thread costs more than it saves
_lock = threading.Lock()
_state: dict[str, object] = {}


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _machine_id(cc: str) -> str:
    """What the built library depends on besides its source: the compiler and this CPU's features."""
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    cpu = platform.machine() + platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                cpu += line
    except OSError:
        pass
    return version + cpu


def _cache_dir() -> Path:
    import platformdirs

    return Path(os.environ.get("LORAIR_NATIVE_CACHE") or platformdirs.user_cache_dir("lorair-desktop")) / "native"


def _openmp_runtime() -> str | None:
    """The OpenMP runtime PyTorch loaded (Linux: read from this process's memory map), made visible
    to libraries loaded after it, so that the kernels' OpenMP calls go to PyTorch's thread team
    rather than to a second runtime with a team of its own."""
    torch.get_num_threads()  # the runtime is loaded with torch; make sure it is initialised
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = {line.split()[-1] for line in maps.splitlines() if "/lib" in line and ("gomp" in line or "iomp" in line)}
    for path in sorted(paths):
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return path
        except OSError:
            continue
    return None


def _prune(folder: Path, days: float = 30) -> None:
    """Builds not made for a month (an older source, another CPU of a shared home) go: one is
    ~60 KB, and a fresh build takes about a second."""
    import time

    for old in folder.glob("lorair_kernels-*"):
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > days * 86400:
                old.unlink()


class _CompileFailed(Exception):
    """The compiler refused these flags: the next set is tried."""


def _build(cc: str) -> Path:
    """The compiled library in the cache, built now if missing (into a temporary file renamed into
    place, so that two processes building at once never load a half-written file). With OpenMP
    where PyTorch's runtime can be shared, else with POSIX threads; -march=native where accepted."""
    source, machine = SOURCE.read_bytes(), _machine_id(cc).encode()
    openmp = [["-fopenmp"]] if _openmp_runtime() else []
    error = ["no message"]
    for extra in [*openmp, []]:
        for arch in (["-march=native"], []):  # some compilers (older clang on ARM) refuse -march=native
            flags = [*OPT_FLAGS, *extra, *arch, "-shared", "-fPIC", "-pthread"]
            key = hashlib.sha256(source + " ".join(flags).encode() + machine).hexdigest()[:16]
            out = _cache_dir() / f"lorair_kernels-{key}{'.dll' if os.name == 'nt' else '.so'}"
            if out.exists():
                return out
            _prune(out.parent)
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                with replacing(out) as tmp:
                    run = subprocess.run([cc, *flags, "-o", str(tmp), str(SOURCE)], capture_output=True,
                                         text=True, timeout=120)
                    if run.returncode != 0:
                        raise _CompileFailed(run.stderr)
                return out
            except _CompileFailed as failed:
                error = str(failed).strip().splitlines()[-1:] or error
    raise OSError(f"{Path(cc).name} failed: {error[0]}")


def _load() -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        raise OSError("no C compiler (cc, gcc or clang) on the PATH")
    lib = ctypes.CDLL(str(_build(cc)))
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    signatures = {
        "lorair_layer_norm_rows": [ptr, ptr, ptr, ptr, i64, i32, ctypes.c_float, i32, i32],
        "lorair_gate_pool": [ptr, ptr, ptr, i64, i64, i64, i64, i64, i32, i32],
        "lorair_scale_by_grid": [ptr, ptr, ptr, i64, i64, i64, i64, i64, i32, i32],
        "lorair_shuffle_add": [ptr, ptr, ptr, i64, i64, i64, i64, i32, i32],
        "lorair_openmp": [],
    }
    for name, args in signatures.items():
        f = getattr(lib, name)
        f.argtypes, f.restype = args, i32
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None where they cannot be had here (the reason is logged once)."""
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if "lib" not in _state:
            lib = None
            if os.environ.get("LORAIR_NATIVE", "1") == "0":
                _state["reason"] = "LORAIR_NATIVE=0"
            else:
                try:
                    lib = _load()
                    _state["lib"] = lib  # the self-check below goes through layer_norm_nhwc
                    _self_check()
                except Exception as e:  # any failure only means the PyTorch ops run instead
                    lib = None
                    _state["reason"] = f"{type(e).__name__}: {e}"
            _state["lib"] = lib
            if lib is None:
                log.info("fused CPU kernels off (%s): PyTorch's ops run instead", _state["reason"])
    return _state["lib"]  # type: ignore[return-value]


def status() -> str:
    """One line for reports: whether the fused kernels are in use, and why not."""
    lib = library()
    if lib is None:
        return f"off ({_state.get('reason', 'unknown')})"
    return "on (OpenMP, PyTorch's threads)" if lib.lorair_openmp() else "on (POSIX threads)"


def _self_check() -> None:
    """Each kernel against PyTorch on small tensors (a miscompiled library is never used)."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> Tensor:
        return (torch.randn(*shape, generator=g) * 2 + 0.5).contiguous(memory_format=torch.channels_last)

    x, w, b = rand(2, 16, 6, 10), torch.randn(16, generator=g), torch.randn(16, generator=g)
    x2, att, u = rand(2, 32, 6, 10), rand(2, 16, 3, 5), rand(2, 64, 3, 5)
    a, c = x2.chunk(2, 1)
    gate, cells = gate_pool(x2, 2) or (None, None)
    checks = {
        "layer norm": (layer_norm_nhwc(x, w, b, 1e-6, residual=True),
                       x + F.layer_norm(x.permute(0, 2, 3, 1), (16,), w, b, 1e-6).permute(0, 3, 1, 2)),
        "gate": (gate, a * c),
        "cell means": (cells, F.avg_pool2d(a * c, 2)),
        "upsampled attention": (scale_by_grid(x, att, 2),
                                x * F.interpolate(att, scale_factor=2, mode="bilinear", align_corners=False)),
        "pixel shuffle": (shuffle_add(u, x), F.pixel_shuffle(u, 2) + x),
    }
    for name, (got, want) in checks.items():
        if got is None or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"the compiled {name} differs from PyTorch's")


_KIND = {torch.float32: 0, torch.bfloat16: 1}


def layer_norm_nhwc(x: Tensor, weight: Tensor, bias: Tensor, eps: float, *, residual: bool = False) -> Tensor | None:
    """LayerNorm over the channels of a channels_last (B, C, H, W) CPU tensor, times weight plus bias,
    plus x itself where `residual`, in x's dtype (as PyTorch's layer norm gives it, bf16 autocast
    included). None where no kernel applies (then use PyTorch): not on a CPU, gradients wanted,
    another layout, dtype or channel count, or no library here."""
    c = x.shape[1] if x.dim() == 4 else 0
    if c not in NORM_CHANNELS or not _usable(x) or (torch.is_grad_enabled() and (weight.requires_grad
                                                                              or bias.requires_grad)):
        return None
    lib = library()
    if lib is None:
        return None
    w = weight.detach().to(torch.float32).contiguous()
    b = bias.detach().to(torch.float32).contiguous()
    y = torch.empty_like(x, memory_format=torch.channels_last)
    threads = 1 if x.numel() < _SERIAL_BELOW else torch.get_num_threads()
    rc = lib.lorair_layer_norm_rows(x.data_ptr(), y.data_ptr(), w.data_ptr(), b.data_ptr(), x.numel() // c, c,
                                    eps, _KIND[x.dtype] | 2 * residual, threads)
    return y if rc == 0 else None


def _usable(*xs: Tensor) -> bool:
    """Tensors the kernels below take: CPU, float32 or bf16 alike, channels_last, no gradient wanted."""
    x = xs[0]
    return (all(t.dim() == 4 and t.device.type == "cpu" and t.dtype == x.dtype
                and t.is_contiguous(memory_format=torch.channels_last) for t in xs)
            and x.dtype in _KIND and not (torch.is_grad_enabled() and any(t.requires_grad for t in xs)))


def _threads(x: Tensor) -> int:
    return 1 if x.numel() < _SERIAL_BELOW else torch.get_num_threads()


def gate_pool(x: Tensor, step: int) -> tuple[Tensor, Tensor] | None:
    """NAFNet's SimpleGate and TLC's cell means in one pass over x (B, 2C, H, W), channels_last:
    (a * b, avg_pool2d(a * b, step)) for a, b = x.chunk(2, 1). None where it does not apply (then use
    PyTorch), e.g. H or W not a multiple of step."""
    n, c2, h, w = x.shape if x.dim() == 4 else (0, 0, 0, 0)
    if not _usable(x) or c2 % 2 or step < 1 or h % step or w % step or (lib := library()) is None:
        return None
    g = torch.empty(n, c2 // 2, h, w, dtype=x.dtype, memory_format=torch.channels_last)
    cells = torch.empty(n, c2 // 2, h // step, w // step, dtype=x.dtype, memory_format=torch.channels_last)
    rc = lib.lorair_gate_pool(x.data_ptr(), g.data_ptr(), cells.data_ptr(), n, h, w, c2 // 2, step,
                              _KIND[x.dtype], _threads(x))
    return (g, cells) if rc == 0 else None


def scale_by_grid(x: Tensor, att: Tensor, step: int) -> Tensor | None:
    """x * F.interpolate(att, scale_factor=step, mode="bilinear", align_corners=False) in one pass, for
    x (B, C, H, W) and att (B, C, H/step, W/step). None where it does not apply (then use PyTorch)."""
    if (att.dim() != 4 or not _usable(x, att) or att.shape[:2] != x.shape[:2] or step < 1
            or (att.shape[2] * step, att.shape[3] * step) != tuple(x.shape[2:]) or (lib := library()) is None):
        return None
    y = torch.empty_like(x, memory_format=torch.channels_last)
    n, c, gh, gw = att.shape
    rc = lib.lorair_scale_by_grid(x.data_ptr(), att.data_ptr(), y.data_ptr(), n, gh, gw, c, step,
                                  _KIND[x.dtype], _threads(x))
    return y if rc == 0 else None


def shuffle_add(u: Tensor, skip: Tensor) -> Tensor | None:
    """F.pixel_shuffle(u, 2) + skip in one pass, u (B, 4C, H/2, W/2) and skip (B, C, H, W), both
    channels_last. None where it does not apply (then use PyTorch)."""
    if (u.dim() != 4 or not _usable(u, skip) or u.shape[0] != skip.shape[0] or u.shape[1] != 4 * skip.shape[1]
            or (u.shape[2] * 2, u.shape[3] * 2) != tuple(skip.shape[2:]) or (lib := library()) is None):
        return None
    y = torch.empty_like(skip, memory_format=torch.channels_last)
    n, c, h, w = skip.shape
    rc = lib.lorair_shuffle_add(u.data_ptr(), skip.data_ptr(), y.data_ptr(), n, h, w, c, _KIND[u.dtype],
                                _threads(skip))
    return y if rc == 0 else None
