"""What the Krita and GIMP plugins share, free of any host: the region to send, the expert weights,
the new layer's name, progress and error wording, the install record and the restore itself.
Standard library only, like the rest of the bridge.

`lorair plugins install` copies the whole bridge into each plugin as `<package>/vendor/bridge`, so
a plugin imports this as `from .vendor.bridge import hostkit`; the desktop app and the worker never
need it (`bridge/__init__` does not import it). What differs between the hosts (the command that
installs them, their menus' words) is a `Plugin`; everything that calls Krita or GIMP stays in the
plugin's own host module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .client import JobRequest, JobResult, WorkerClient
from .protocol import E_CANCELLED, ENSEMBLES, ExpertSpec, JobStatus

DEFAULT_MARGIN = 32  # px of context around the selection: the network sees past its edges
MAX_MARGIN = 512
MAX_WEIGHT = 2.0  # the model core's bound on a manual expert weight (core.routing.MAX_WEIGHT)
RECORD = "install.json"  # written by `lorair plugins install` into vendor/, next to this bridge


class PluginError(Exception):
    """A failure the user sees in the host: one sentence plus what to do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


# ---- geometry ------------------------------------------------------------------------------------


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


# ---- passes --------------------------------------------------------------------------------------


PASSES_TIP = ("Average this many flipped and turned passes: finer detail, that many times the time "
              "(rain keeps to 4).")


def pass_choices() -> list[tuple[int, str]]:
    """(passes, label) for a host's Passes menu, fastest first."""
    return [(n, "1 (fastest)" if n == 1 else f"{n} ({n}× the time)") for n in ENSEMBLES]


def check_passes(n: Any) -> int:
    """A pass count a script or a setting gave, as the int the worker takes; PluginError otherwise."""
    if isinstance(n, bool) or not isinstance(n, int) or n not in ENSEMBLES:
        raise PluginError(f"{n!r} passes are not offered.", f"Choose {', '.join(map(str, ENSEMBLES))} passes.")
    return n


# ---- expert weights ------------------------------------------------------------------------------


def parse_experts(text: str) -> ExpertSpec:
    """'auto' | 'noise=0.8,jpeg=0.3' | 'auto,rain=0' (the router's mix with edits) -> ExpertSpec.

    Names are checked by the worker against its model, which answers with the valid ones.
    """
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    if not parts or parts == ["auto"]:
        return ExpertSpec.auto()
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
    return ExpertSpec.manual(weights, keep_router=keep)


def experts_text(auto: bool, weights: dict[str, float]) -> str:
    """A choice of experts as text that `parse_experts` reads back."""
    if auto:
        return "auto"
    return ",".join(f"{name}={w:.2f}" for name, w in weights.items()) or "auto"


def expert_spec(auto: bool, weights: dict[str, float], experts: list[str]) -> ExpertSpec:
    """Auto, or the user's weights for the model's `experts` (missing ones 0), each within [0, MAX_WEIGHT].

    With no expert list yet (never connected) the weights go as they are, for the worker to check.
    """
    if auto:
        return ExpertSpec.auto()
    clamped = {n: min(max(float(weights.get(n, 0.0)), 0.0), MAX_WEIGHT) for n in experts}
    return ExpertSpec.manual(clamped or dict(weights), keep_router=False)


def layer_name(applied: dict[str, float], limit: int = 4) -> str:
    """'LoRA-IR: noise 0.82, jpeg 0.18': what was applied, strongest first."""
    used = sorted(((w, n) for n, w in applied.items() if w >= 0.005), key=lambda t: (-t[0], t[1]))
    if not used:
        return "LoRA-IR: base network"
    parts = [f"{n} {w:.2f}" for w, n in used[:limit]]
    if len(used) > limit:
        parts.append("…")
    return "LoRA-IR: " + ", ".join(parts)


def model_label(name: str) -> str:
    """A preset name as is; a checkpoint path as its file name without the extension."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base[: -len(".safetensors")] if base.endswith(".safetensors") else base


# ---- progress and errors -------------------------------------------------------------------------


def progress_text(st: JobStatus | None) -> tuple[str, float | None]:
    """(what to show, fraction or None while unknown) for a job status; None = still connecting."""
    if st is None:
        return "Connecting to the LoRA-IR worker…", None
    if st.state == "queued":
        return f"Queued (position {int(st.queue_position or 0) + 1})…", 0.0
    if st.state == "running" and st.tiles:
        eta = f", about {st.eta_s:.0f} s left" if st.eta_s else ""
        return f"Restoring: tile {st.tile} of {st.tiles}{eta}", float(st.progress)
    return f"{st.state.capitalize()}…", float(st.progress)


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")) if text else ""


def is_cancelled(exc: BaseException) -> bool:
    """A BridgeError of a cancelled job (duck-typed, like `Plugin.explain`)."""
    return getattr(exc, "code", None) == E_CANCELLED


# ---- the install record --------------------------------------------------------------------------


def install_record(path: Path | None = None) -> dict[str, Any]:
    """What `lorair plugins install` recorded (version, protocol, worker command) next to this vendored
    bridge, or in `path`; {} if absent (the bridge in the source tree has none)."""
    path = path or Path(__file__).resolve().parent.parent / RECORD
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---- what differs between the hosts --------------------------------------------------------------


@dataclass(frozen=True)
class Plugin:
    """One host's words, and what needs them: its restore region, worker, result check and errors."""

    host: str  # the argument of `lorair plugins install`: krita | gimp
    app: str  # Krita | GIMP
    noun: str  # plugin | plug-in
    deselect: str  # the menu command that drops the selection
    bug_hint: str  # where an unexpected error is reported from

    @property
    def reinstall_hint(self) -> str:
        return f"Reinstall it from a terminal with `lorair plugins install {self.host}`, then restart {self.app}."

    def restore_region(self, bounds: Rect, selection: Rect | None, margin: int) -> Rect:
        """The pixels sent to the worker: the selection's bounds plus `margin`, inside `bounds`.

        No selection (None) means all of `bounds`; an empty one, or one that misses `bounds`, is an error.
        """
        if selection is None:
            return bounds
        if selection.empty or selection.intersected(bounds).empty:
            raise PluginError("The selection does not cover any pixel of this layer.",
                              f"Select the area to restore ({self.deselect} restores the whole layer).")
        return selection.expanded(max(0, min(margin, MAX_MARGIN))).intersected(bounds)

    def worker_command(self, record: dict[str, Any]) -> list[str] | None:
        """The recorded command, unless $LORAIR_WORKER_CMD overrides it (the bridge reads that itself)."""
        if os.environ.get("LORAIR_WORKER_CMD"):
            return None
        cmd = record.get("worker_command")
        if isinstance(cmd, list) and cmd and all(isinstance(c, str) for c in cmd):
            return cmd
        # Without a record the bridge would run the *host's* Python, which has no lorair: say so instead.
        raise PluginError(f"The LoRA-IR {self.noun} does not know how to start the worker.", self.reinstall_hint)

    def connect(self, autostart: bool = True) -> WorkerClient:
        """The running worker, or one started with the recorded command when `autostart`."""
        return WorkerClient.connect(autostart=autostart, start_command=self.worker_command(install_record()))

    def restore(self, client: Any, request: JobRequest, on_progress: Callable[[JobStatus], None] | None = None,
                should_cancel: Callable[[], bool] | None = None) -> JobResult:
        """Send the region, follow progress, and check that the answer fits before anything is drawn."""
        result = client.restore(request, on_progress=on_progress, should_cancel=should_cancel)
        h = result.header
        if (h.width, h.height, h.order, h.sample) != (request.width, request.height, request.order,
                                                      request.sample) or len(result.pixels) != memoryview(
                request.pixels).nbytes:
            raise PluginError("The worker returned pixels of another size or layout; nothing was changed.",
                              f"Make sure the {self.noun} and the worker come from the same LoRA-IR version.")
        return result

    def explain(self, exc: BaseException) -> tuple[str, str]:
        """(message, hint) of a PluginError, a BridgeError or a bug.

        BridgeErrors are duck-typed: a test (or a second copy of the bridge) may raise another class.
        """
        if isinstance(exc, PluginError):
            return exc.message, exc.hint
        message, hint = getattr(exc, "message", None), getattr(exc, "hint", None)
        if isinstance(message, str) and getattr(exc, "code", None):
            return _sentence(message), _sentence(hint or "")
        return f"Unexpected error: {type(exc).__name__}: {exc}", self.bug_hint

    def error_text(self, exc: BaseException) -> str:
        """`explain` as one line."""
        return " ".join(part for part in self.explain(exc) if part)
