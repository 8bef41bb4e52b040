"""The GIMP plug-in's logic, free of GIMP: the pixel format, the request and its progress, and the
error text. What the Krita plugin does alike (region, expert weights, layer name, worker, error
wording) is the vendored bridge's `hostkit`. Tested with plain Python."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

try:  # the only import of the vendored bridge: the rest of the plug-in imports it from here
    from .vendor.bridge import ExpertSpec, JobRequest, JobResult, hostkit
    from .vendor.bridge.hostkit import PluginError, Rect
except ImportError as exc:  # the sources copied by hand: `lorair plugins install` vendors the bridge
    raise ImportError(f"The LoRA-IR plug-in is incomplete: its bridge module is missing ({exc}). Reinstall it "
                      "from a terminal with `lorair plugins install gimp`, then restart GIMP.") from exc

PROCEDURE = "plug-in-lorair-restore"
PLUGIN = hostkit.Plugin("gimp", "GIMP", "plug-in", deselect="Select > None",
                        bug_hint="Please report it with the messages of GIMP's Error Console.")

__all__ = ["PLUGIN", "PROCEDURE", "JobRequest", "PixelFormat", "PluginError", "Rect", "connect", "error_text",
           "hostkit", "pixel_format", "restore"]


@dataclass(frozen=True)
class PixelFormat:
    order: str  # wire order: RGBA | RGB | GRAYA | GRAY
    sample: str  # wire sample: u8 | u16 | f32
    babl: str  # what GEGL reads and writes: perceptual (gamma) R'G'B' like the model expects


def pixel_format(bits: int, is_float: bool, has_alpha: bool, grey: bool = False) -> PixelFormat:
    """The wire layout for an image precision: 8/16-bit integers as they are, everything else as float.

    GEGL converts linear-light or half/double buffers to and from this exactly where it can; the
    model works on perceptual sRGB values, hence R'G'B' (Y' for a grayscale image, which the worker
    restores as RGB and returns grey).
    """
    if not is_float and bits == 8:
        sample, babl = "u8", "u8"
    elif not is_float and bits == 16:
        sample, babl = "u16", "u16"
    else:
        sample, babl = "f32", "float"
    colour, order = ("Y'", "GRAY") if grey else ("R'G'B'", "RGB")
    if has_alpha:
        colour, order = colour + "A", order + "A"
    return PixelFormat(order, sample, f"{colour} {babl}")


def connect(autostart: bool = True) -> Any:
    """The worker (tests replace this function)."""
    return PLUGIN.connect(autostart)


def error_text(exc: BaseException) -> str:
    """One message for GIMP from a PluginError, a BridgeError or a bug."""
    return PLUGIN.error_text(exc)


def restore(client: Any, pixels: bytes, mask: bytes | None, rect: Rect, fmt: PixelFormat, experts: ExpertSpec,
            on_progress: Callable[[float, str], None], passes: int = 1) -> JobResult:
    """Send the region, show progress, and check that the answer fits before anything is drawn.
    `passes`: flipped/turned passes averaged by the worker (1, 2, 4 or 8)."""
    request = JobRequest(pixels, rect.w, rect.h, fmt.order, fmt.sample, mask=mask, experts=experts,
                         ensemble=passes)

    def report(st: Any) -> None:
        text, fraction = hostkit.progress_text(st)
        on_progress(fraction or 0.0, f"LoRA-IR: {text}")

    return PLUGIN.restore(client, request, on_progress=report)
