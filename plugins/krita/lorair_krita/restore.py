"""The plugin's logic, free of Krita and Qt: what to read, what to send, what to call the new layer,
and restores that run on a background thread while Krita's UI thread polls them.

`Controller` talks to Krita only through a `Host` (see `host.KritaHost`; tests use a fake one) and to
the worker only through the vendored bridge. Every Host call happens on the caller's (UI) thread;
the background threads only do network I/O.
"""

from __future__ import annotations

import array
import json
import os
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

REINSTALL_HINT = "reinstall it from a terminal with `lorair plugins install krita`, then restart Krita"
DEFAULT_MARGIN = 32  # px of context around the selection: the network sees past the edges
MAX_MARGIN = 512
MAX_WEIGHT = 2.0  # the model core's bound on a manual expert weight

# Krita's channel order per bit depth for RGBA layers: integer depths are stored BGRA, float RGBA.
# 16-bit float has no wire sample type, so it travels as f32 and is converted back.
_LAYOUTS = {"U8": ("BGRA", "u8"), "U16": ("BGRA", "u16"), "F16": ("RGBA", "f32"), "F32": ("RGBA", "f32")}


class PluginError(Exception):
    """A failure the user sees in Krita: one sentence plus what to do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def load_bridge() -> Any:
    """The vendored bridge package, or a PluginError that says how to repair the install."""
    try:
        from .vendor import bridge
    except ImportError as exc:
        raise PluginError(f"The LoRA-IR plugin is incomplete: its bridge module is missing ({exc}).",
                          REINSTALL_HINT.capitalize() + ".") from None
    return bridge


def install_record() -> dict[str, Any]:
    """What `lorair plugins install` recorded (version, protocol, worker command); {} if absent."""
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
    # Without a record the bridge would run *Krita's* Python, which has no lorair: say so instead.
    raise PluginError("The LoRA-IR plugin does not know how to start the worker.", REINSTALL_HINT.capitalize() + ".")


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


def restore_region(canvas: Rect, selection: Rect | None, margin: int) -> Rect:
    """The pixels sent to the worker: the selection's bounds plus `margin`, inside the canvas.

    No selection means the whole canvas. An empty selection (or one outside the canvas) is an error.
    """
    if selection is None:
        return canvas
    if selection.empty or selection.intersected(canvas).empty:
        raise PluginError("The selection is empty.", "Select the area to restore, or deselect all to restore "
                          "the whole layer.")
    return selection.expanded(max(0, margin)).intersected(canvas)


# ---- pixels --------------------------------------------------------------------------------------


def wire_layout(color_model: str, depth: str) -> tuple[str, str]:
    """(order, sample) the worker receives for a Krita layer; other colour models are refused."""
    if color_model != "RGBA":
        raise PluginError(f"LoRA-IR restores RGB images; this layer's colour model is {color_model}.",
                          "Convert the image (Image > Convert Image Color Space) or the layer to RGB/Alpha.")
    if depth not in _LAYOUTS:
        raise PluginError(f"LoRA-IR cannot read {depth} layers.",
                          "Convert the layer to 8-bit, 16-bit or 32-bit float RGB/Alpha.")
    return _LAYOUTS[depth]


def _swap_if_big_endian(raw: bytes, code: str) -> bytes:
    """Krita hands out native-endian samples; the wire is little-endian."""
    if sys.byteorder == "little" or code == "B":
        return raw
    arr = array.array(code, raw)
    arr.byteswap()
    return arr.tobytes()


def to_wire(raw: bytes, depth: str) -> bytes:
    """Krita's native pixel bytes -> the wire layout of `wire_layout`."""
    if depth == "F16":
        n = len(raw) // 2
        return struct.pack(f"<{n}f", *struct.unpack(f"={n}e", raw))
    return _swap_if_big_endian(raw, {"U8": "B", "U16": "H", "F32": "f"}[depth])


def from_wire(raw: bytes, depth: str) -> bytes:
    if depth == "F16":
        n = len(raw) // 4
        # Clamp to half's range so an HDR value from the worker cannot overflow struct's "e".
        vals = [min(max(v, -65504.0), 65504.0) for v in struct.unpack(f"<{n}f", raw)]
        return struct.pack(f"={n}e", *vals)
    return _swap_if_big_endian(raw, {"U8": "B", "U16": "H", "F32": "f"}[depth])


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


# ---- settings ------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What the docker edits and the action uses. Stored as one JSON string in Krita's settings."""

    auto: bool = True
    weights: dict[str, float] = field(default_factory=dict)  # manual weights, by expert name
    experts: list[str] = field(default_factory=list)  # the model's experts, as last seen
    margin: int = DEFAULT_MARGIN
    autostart: bool = True

    def expert_spec(self, bridge: Any) -> Any:
        if self.auto:
            return bridge.ExpertSpec.auto()
        weights = {n: min(max(float(self.weights.get(n, 0.0)), 0.0), MAX_WEIGHT) for n in self.experts}
        return bridge.ExpertSpec.manual(weights or dict(self.weights), keep_router=False)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> Settings:
        s = cls()
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            return s
        if not isinstance(data, dict):
            return s
        s.auto = bool(data.get("auto", s.auto))
        s.autostart = bool(data.get("autostart", s.autostart))
        try:
            s.margin = min(max(int(data.get("margin", s.margin)), 0), MAX_MARGIN)
            s.weights = {str(k): float(v) for k, v in dict(data.get("weights") or {}).items()}
            s.experts = [str(e) for e in list(data.get("experts") or [])]
        except (TypeError, ValueError):
            pass
        return s


# ---- the host seen by the controller -------------------------------------------------------------


@dataclass
class Target:
    """The layer a restore reads from and puts its result above. `handle` is the host's own object."""

    handle: Any
    canvas: Rect
    selection: Rect | None
    color_model: str
    depth: str
    name: str


class Host(Protocol):
    def target(self) -> Target: ...  # the active layer; PluginError when there is none

    def read(self, target: Target, rect: Rect) -> tuple[bytes, bytes | None]: ...  # pixels, mask

    def still_open(self, target: Target) -> bool: ...

    def add_layer(self, target: Target, rect: Rect, pixels: bytes, name: str) -> None: ...  # one undo step

    def show_error(self, message: str, hint: str) -> None: ...

    def notify(self, message: str) -> None: ...


# ---- background work -----------------------------------------------------------------------------


class Task:
    """`fn(report, cancelled)` on a daemon thread; the UI thread reads `progress`, `done`, `result`."""

    def __init__(self, kind: str, fn: Callable[[Callable[[Any], None], Callable[[], bool]], Any]) -> None:
        self.kind = kind
        self.progress: Any = None
        self.result: Any = None
        self.error: BaseException | None = None
        self._fn = fn
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lorair-{kind}", daemon=True)

    def start(self) -> Task:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self._fn(self._report, self._cancel.is_set)
        except BaseException as exc:  # handed to the UI thread, which shows it
            self.error = exc
        finally:
            self._done.set()

    def _report(self, value: Any) -> None:
        self.progress = value

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


@dataclass
class Status:
    """What the docker shows; rebuilt by `Controller.tick`."""

    busy: bool = False
    text: str = "Not connected to the LoRA-IR worker."
    progress: float | None = None  # 0..1 while a restore runs
    error: str = ""
    worker: str = ""  # "cpu · lorair-compact" once connected
    models: list[str] = field(default_factory=list)
    model: str = ""
    router_weights: dict[str, float] = field(default_factory=dict)
    last_layer: str = ""


def error_text(exc: BaseException) -> tuple[str, str]:
    """(message, hint) of a PluginError, a BridgeError (duck-typed: it comes from the vendor) or a bug."""
    if isinstance(exc, PluginError):
        return exc.message, exc.hint
    message, hint = getattr(exc, "message", None), getattr(exc, "hint", None)
    if isinstance(message, str) and getattr(exc, "code", None):
        return _sentence(message), _sentence(hint or "")
    return (f"Unexpected error: {type(exc).__name__}: {exc}",
            "Please report it with Krita's log (Help > Show Krita Log).")


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")) if text else ""


def _progress_text(st: Any) -> tuple[str, float | None]:
    if st is None:
        return "Connecting to the LoRA-IR worker…", None
    if st.state == "queued":
        return f"Queued (position {int(st.queue_position or 0) + 1})…", 0.0
    if st.state == "running" and st.tiles:
        eta = f", about {st.eta_s:.0f} s left" if st.eta_s else ""
        return f"Restoring: tile {st.tile} of {st.tiles}{eta}", float(st.progress)
    return f"{st.state.capitalize()}…", float(st.progress)


class Controller:
    """Starts restores, analyses and worker queries, and applies results on the UI thread.

    The UI calls `tick()` from a timer while `active` is true; nothing here blocks on the network.
    """

    def __init__(self, host: Host, settings: Settings | None = None,
                 connect: Callable[[Settings], Any] | None = None) -> None:
        self.host = host
        self.settings = settings or Settings()
        self.status = Status()
        self.job: Task | None = None  # a restore or an analysis (one at a time)
        self.query: Task | None = None  # worker info or a model switch
        self._job_target: tuple[Target, Rect, Any] | None = None
        self._connect = connect or self._default_connect

    @staticmethod
    def _default_connect(settings: Settings) -> Any:
        bridge = load_bridge()
        return bridge.WorkerClient.connect(autostart=settings.autostart,
                                           start_command=worker_command(install_record()))

    @property
    def active(self) -> bool:
        return self.job is not None or self.query is not None

    # ---- starting work (UI thread) -------------------------------------------------------------

    def _capture(self) -> tuple[Target, Rect, Any]:
        """Read the active layer's region and build the job request; PluginError on bad input."""
        bridge = load_bridge()
        target = self.host.target()
        order, sample = wire_layout(target.color_model, target.depth)
        rect = restore_region(target.canvas, target.selection, self.settings.margin)
        pixels, mask = self.host.read(target, rect)
        request = bridge.JobRequest(to_wire(pixels, target.depth), rect.w, rect.h, order, sample,
                                    mask=mask, experts=self.settings.expert_spec(bridge))
        return target, rect, request

    def _guarded(self, fn: Callable[[], None]) -> bool:
        """Run a starter; any failure is shown in Krita (and the docker) instead of raised into Qt."""
        try:
            fn()
            return True
        except Exception as exc:
            self._fail(exc)
            return False

    def _fail(self, exc: BaseException) -> None:
        message, hint = error_text(exc)
        self.status.error = f"{message} {hint}".strip()
        self.status.text = "Failed."
        self.host.show_error(message, hint)

    def restore(self) -> bool:
        """Start restoring the selection of the active layer; False (and a message) when it cannot."""
        return self._guarded(self._start_restore)

    def _start_restore(self) -> None:
        if self.job is not None:
            raise PluginError("A LoRA-IR job is already running.", "Wait for it to finish or press Cancel.")
        target, rect, request = self._capture()
        settings = self.settings

        def work(report: Callable[[Any], None], cancelled: Callable[[], bool]) -> Any:
            return self._connect(settings).restore(request, on_progress=report, should_cancel=cancelled)

        self._job_target = (target, rect, request)
        self._begin(Task("restore", work), "Connecting to the LoRA-IR worker…")

    def analyze(self) -> bool:
        """Ask the router which degradations it sees in the selection (weights shown as bars)."""
        return self._guarded(self._start_analyze)

    def _start_analyze(self) -> None:
        if self.job is not None:
            raise PluginError("A LoRA-IR job is already running.", "Wait for it to finish or press Cancel.")
        _, _, request = self._capture()
        settings = self.settings
        self._begin(Task("analyze", lambda report, cancelled: self._connect(settings).analyze(request)),
                    "Analysing…")

    def _begin(self, task: Task, text: str) -> None:
        self.job = task.start()
        self.status.busy, self.status.text, self.status.progress, self.status.error = True, text, None, ""

    def refresh_worker(self, model: str | None = None) -> None:
        """Fetch the worker's info (starting it when allowed), or switch its model first."""
        if self.query is not None:
            return
        settings = self.settings

        def work(report: Callable[[Any], None], cancelled: Callable[[], bool]) -> Any:
            client = self._connect(settings)
            if model:
                client.set_model(model)
            return client.info()

        self.query = Task("info", work).start()

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.text = "Cancelling…"

    # ---- polling (UI thread) -------------------------------------------------------------------

    def tick(self) -> Status:
        if self.query is not None and self.query.done:
            self._finish_query(self.query)
            self.query = None
        job = self.job
        if job is not None:
            if job.done:
                self.job = None
                self.status.busy, self.status.progress = False, None
                self._finish_job(job)
            else:
                text, frac = _progress_text(job.progress)
                if not job.cancelled:
                    self.status.text, self.status.progress = text, frac
        return self.status

    def wait_idle(self, timeout: float) -> bool:
        """Block until the running tasks end, then tick once (for scripts and tests)."""
        for task in (self.job, self.query):
            if task is not None and not task.wait(timeout):
                return False
        self.tick()
        return True

    def _finish_query(self, task: Task) -> None:
        if task.error is not None:
            message, hint = error_text(task.error)
            self.status.worker = ""
            self.status.text = f"Worker unavailable: {message} {hint}".strip()
            return
        info = task.result
        device = f"{info.device} ({info.device_name})" if info.device_name else info.device
        self.status.worker = f"{device} · {model_label(info.model.name)}"
        self.status.model = info.model.name
        self.status.models = [str(m.get("name")) for m in info.models if isinstance(m, dict)]
        if info.model.name not in self.status.models:  # a checkpoint path rather than a preset
            self.status.models.insert(0, info.model.name)
        if info.model.experts:
            self.settings.experts = list(info.model.experts)
        if info.model.error is not None:
            self.status.text = f"Model not ready: {info.model.error.message}"
        elif not self.status.busy:
            self.status.text = "Connected."

    def _finish_job(self, task: Task) -> None:
        bridge = load_bridge()
        if task.error is not None:
            if getattr(task.error, "code", None) == bridge.protocol.E_CANCELLED:
                self.status.text = "Cancelled; the image is unchanged."
                return
            self._fail(task.error)
            return
        if task.kind == "analyze":
            self.status.router_weights = dict(task.result.router_weights)
            self.settings.experts = list(task.result.experts) or self.settings.experts
            self.status.text = f"Router: mostly {task.result.top_expert}."
            return
        target, rect, request = self._job_target or (None, None, None)
        self._job_target = None
        try:
            self._apply(task.result, target, rect, request)
        except Exception as exc:  # a Krita call failing here must still reach the user
            self._fail(exc)

    def _apply(self, result: Any, target: Target, rect: Rect, request: Any) -> None:
        h = result.header
        if (h.width, h.height, h.order, h.sample) != (rect.w, rect.h, request.order, request.sample) or len(
                result.pixels) != len(memoryview(request.pixels)):
            raise PluginError("The worker returned pixels of another size or layout; nothing was changed.",
                              "Make sure the plugin and the worker come from the same LoRA-IR version.")
        if not self.host.still_open(target):
            raise PluginError("The image was closed before its restore finished; nothing was changed.")
        name = layer_name(h.applied_weights)
        self.host.add_layer(target, rect, from_wire(result.pixels, target.depth), name)
        self.status.router_weights = dict(h.router_weights)
        self.status.last_layer = name
        self.status.text = f"Added layer “{name}” ({h.device}, {sum(h.timings.values()):.1f} s)."
        self.host.notify(self.status.text)
