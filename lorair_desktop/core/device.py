"""Device choice (CUDA, then MPS, then CPU) and the dtype policy per device."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def select_device(preference: str = "auto") -> torch.device:
    pref = (preference or "auto").lower()
    base = pref.split(":")[0]
    if base not in DEVICE_CHOICES:
        raise DeviceError(f"unknown device '{preference}'", f"choose one of {', '.join(DEVICE_CHOICES)}")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise DeviceError("CUDA was asked for but no CUDA device is available", "use --device auto or cpu")
    if base == "mps" and not mps_available():
        raise DeviceError("MPS was asked for but is not available on this machine", "use --device auto or cpu")
    return torch.device(pref)


def inference_dtype(
    device: torch.device, precision: str = "auto", cpu_auto: Callable[[], torch.dtype] | None = None
) -> torch.dtype:
    """The dtype for `precision`. "auto" is bf16 on CUDA; on a CPU, what `cpu_auto` decides (the Restorer
    measures its network there: core.precision); fp32 otherwise."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise DeviceError(f"unknown precision '{precision}'", "use auto, fp32, bf16 or fp16")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_auto is not None:
        return cpu_auto()
    return torch.float32
