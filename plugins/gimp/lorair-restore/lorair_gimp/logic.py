"""The GIMP plug-in's logic, free of GIMP: parsing the arguments, the region to send, the pixel
format, the request, and the new layer's name. Tested with plain Python."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROCEDURE = "plug-in-lorair-restore"
REINSTALL_HINT = "Reinstall it from a terminal with `lorair plugins install gimp`, then restart GIMP."
DEFAULT_MARGIN = 32  # px of context around the selection: the network sees past its edges
MAX_MARGIN = 512
MAX_WEIGHT = 2.0  # the model core's bound on a manual expert weight


class PluginError(Exception):
    """A failure shown in GIMP's error console / dialog: one sentence plus what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


def load_bridge() -> Any:
    """The vendored bridge package, or a PluginError that says how to repair the install."""
    try:
        from .vendor import bridge
    except ImportError as exc:
        raise PluginError(f"The LoRA-IR plug-in is incomplete: its bridge module is missing ({exc}).",
                          REINSTALL_HINT) from None
    return bridge


def install_record() -> dict[str, Any]:
    path = Path(__file__).resolve().parent / "vendor" / "install.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def worker_command(record: dict[str, Any]) -> list[str] | None:
    """The recorded command, unless $LORAIR_WORKER_CMD overrides it (the bridge reads that itself)."""
    if os.environ.get("LORAIR_WORKER_CMD"):
        return None
    cmd = record.get("worker_command")
    if isinstance(cmd, list) and cmd and all(isinstance(c, str) for c in cmd):
        return cmd
    # Without a record the bridge would run GIMP's Python, which has no lorair: say so instead.
    raise PluginError("The LoRA-IR plug-in does not know how to start the worker.", REINSTALL_HINT)


def connect(bridge: Any, autostart: bool = True) -> Any:
    return bridge.WorkerClient.connect(autostart=autostart, start_command=worker_command(install_record()))


# ---- arguments -----------------------------------------------------------------------------------


def parse_experts(text: str, bridge: Any) -> Any:
    """'auto' | 'noise=0.8,jpeg=0.3' | 'auto,rain=0' (the router's mix with edits) -> ExpertSpec.

    Names are checked by the worker against its model, which answers with the valid ones.
    """
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    if not parts or parts == ["auto"]:
        return bridge.ExpertSpec.auto()
    keep = parts[0] == "auto"
    weights: dict[str, float] = {}
    for part in parts[1:] if keep else parts:
        name, sep, value = part.partition("=")
        try:
            weight = float(value) if sep else float("nan")
        except ValueError:
            weight = float("nan")
        if not name.strip() or not 0.0 <= weight <= MAX_WEIGHT:
            raise PluginError(f"Cannot read the expert weight “{part}”.",
                              f"Write name=weight with a weight from 0 to {MAX_WEIGHT:g}, e.g. noise=0.8,jpeg=0.3, "
                              "or auto.")
        weights[name.strip()] = weight
    return bridge.ExpertSpec.manual(weights, keep_router=keep)


def experts_text(auto: bool, weights: dict[str, float]) -> str:
    """The dialog's choice as the `experts` argument, so Filters > Repeat does the same again."""
    if auto:
        return "auto"
    return ",".join(f"{name}={w:.2f}" for name, w in weights.items()) or "auto"


# ---- geometry and pixels -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    w: int
    h: int

    @property
    def empty(self) -> bool:
        return self.w <= 0 or self.h <= 0

    def expanded(self, margin: int) -> Rect:
        return Rect(self.x - margin, self.y - margin, self.w + 2 * margin, self.h + 2 * margin)

    def intersected(self, other: Rect) -> Rect:
        x0, y0 = max(self.x, other.x), max(self.y, other.y)
        x1, y1 = min(self.x + self.w, other.x + other.w), min(self.y + self.h, other.y + other.h)
        return Rect(x0, y0, max(0, x1 - x0), max(0, y1 - y0))


def restore_region(bounds: Rect, selected: Rect | None, margin: int) -> Rect:
    """Selection ∩ layer (drawable coordinates) plus `margin`, inside the layer; None = no selection.

    `selected` is what `mask_intersect` gives: an empty rectangle when the selection misses the layer.
    """
    if selected is None:
        return bounds
    if selected.empty or selected.intersected(bounds).empty:
        raise PluginError("The selection does not cover any pixel of this layer.",
                          "Select the area to restore (Select > None restores the whole layer).")
    return selected.expanded(max(0, min(margin, MAX_MARGIN))).intersected(bounds)


@dataclass(frozen=True)
class PixelFormat:
    order: str  # wire order: RGBA | RGB
    sample: str  # wire sample: u8 | u16 | f32
    babl: str  # what GEGL reads and writes: perceptual (gamma) R'G'B' like the model expects

    @property
    def bytes_per_pixel(self) -> int:
        return len(self.order) * {"u8": 1, "u16": 2, "f32": 4}[self.sample]


def pixel_format(bits: int, is_float: bool, has_alpha: bool) -> PixelFormat:
    """The wire layout for an image precision: 8/16-bit integers as they are, everything else as float.

    GEGL converts linear-light or half/double buffers to and from this exactly where it can; the
    model works on perceptual sRGB values, hence R'G'B'.
    """
    if not is_float and bits == 8:
        sample, babl = "u8", "u8"
    elif not is_float and bits == 16:
        sample, babl = "u16", "u16"
    else:
        sample, babl = "f32", "float"
    channels = "R'G'B'A" if has_alpha else "R'G'B'"
    return PixelFormat("RGBA" if has_alpha else "RGB", sample, f"{channels} {babl}")


def layer_name(applied: dict[str, float], limit: int = 4) -> str:
    """'LoRA-IR: noise 0.82, jpeg 0.18': what was applied, strongest first."""
    used = sorted(((w, n) for n, w in applied.items() if w >= 0.005), key=lambda t: (-t[0], t[1]))
    if not used:
        return "LoRA-IR: base network"
    parts = [f"{n} {w:.2f}" for w, n in used[:limit]]
    if len(used) > limit:
        parts.append("…")
    return "LoRA-IR: " + ", ".join(parts)


def error_text(exc: BaseException) -> str:
    """One message for GIMP from a PluginError, a BridgeError (duck-typed) or a bug."""
    if isinstance(exc, PluginError):
        return str(exc)
    message, hint = getattr(exc, "message", None), getattr(exc, "hint", "")
    if isinstance(message, str) and getattr(exc, "code", None):
        return f"LoRA-IR: {message}" + (f"\nHint: {hint}" if hint else "")
    return f"LoRA-IR: unexpected error {type(exc).__name__}: {exc}"


def restore(client: Any, bridge: Any, pixels: bytes, mask: bytes | None, rect: Rect, fmt: PixelFormat,
            experts: Any, on_progress: Callable[[float, str], None]) -> Any:
    """Send the region, follow progress, and check that the answer fits before anything is drawn."""
    request = bridge.JobRequest(pixels, rect.w, rect.h, fmt.order, fmt.sample, mask=mask, experts=experts)

    def report(st: Any) -> None:
        if st.state == "queued":
            on_progress(0.0, f"LoRA-IR: queued (position {int(st.queue_position or 0) + 1})")
        elif st.tiles:
            on_progress(float(st.progress), f"LoRA-IR: tile {st.tile} of {st.tiles}")

    result = client.restore(request, on_progress=report)
    h = result.header
    if (h.width, h.height, h.order, h.sample) != (rect.w, rect.h, fmt.order, fmt.sample) or len(
            result.pixels) != len(pixels):
        raise PluginError("The worker returned pixels of another size or layout; nothing was changed.",
                          "Make sure the plug-in and the worker come from the same LoRA-IR version.")
    return result
