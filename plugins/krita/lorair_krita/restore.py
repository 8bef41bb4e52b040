"""The plugin's logic, free of Krita and Qt: what to read, what to send, what to call the new layer,
and restores that run on a background thread while Krita's UI thread polls them.

`Controller` talks to Krita only through a `Host` (see `host.KritaHost`; tests use a fake one) and to
the worker only through the vendored bridge. Every Host call happens on the caller's (UI) thread;
the background threads only do network I/O. What the GIMP plug-in does alike (region, expert
weights, layer name, worker, error wording) is the vendored bridge's `hostkit`.
"""

from __future__ import annotations

import array
import json
import re
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

try:  # the only import of the vendored bridge: the rest of the plugin imports it from here
    from .vendor.bridge import ENSEMBLES, JobRequest, hostkit
    from .vendor.bridge.hostkit import DEFAULT_MARGIN, MAX_MARGIN, PluginError, Rect, layer_name, model_label
except ImportError as exc:  # the sources copied by hand: `lorair plugins install` vendors the bridge
    raise ImportError(f"The LoRA-IR plugin is incomplete: its bridge module is missing ({exc}). Reinstall it "
                      "from a terminal with `lorair plugins install krita`, then restart Krita.") from exc

PLUGIN = hostkit.Plugin("krita", "Krita", "plugin", deselect="Select > Deselect",
                        bug_hint="Please report it with Krita's log (Help > Show Krita Log).")

# Krita's channel order per bit depth for RGBA layers: integer depths are stored BGRA, float RGBA.
# 16-bit float has no wire sample type, so it travels as f32 and is converted back.
_LAYOUTS = {"U8": ("BGRA", "u8"), "U16": ("BGRA", "u16"), "F16": ("RGBA", "f32"), "F32": ("RGBA", "f32")}


# ---- pixels --------------------------------------------------------------------------------------


def wire_layout(color_model: str, depth: str) -> tuple[str, str]:
    """(order, sample) the worker receives for a Krita layer: RGB/Alpha, or Grayscale/Alpha (grey then
    alpha at every depth; the worker restores it as RGB and returns grey). Other models are refused."""
    if color_model not in ("RGBA", "GRAYA"):
        raise PluginError(f"LoRA-IR restores RGB and grayscale images; this layer's colour model is {color_model}.",
                          "Convert the image (Image > Convert Image Color Space) or the layer to RGB/Alpha.")
    if depth not in _LAYOUTS:
        raise PluginError(f"LoRA-IR cannot read {depth} layers.",
                          "Convert the layer to 8-bit, 16-bit or 32-bit float RGB/Alpha or Grayscale/Alpha.")
    order, sample = _LAYOUTS[depth]
    return ("GRAYA" if color_model == "GRAYA" else order), sample


# Krita names its linear-light profiles "…-g10.icc" (gamma 1.0: its default for float RGB and grey),
# "scRGB (linear)" or "… linear …".
_LINEAR_PROFILE = re.compile(r"(?:^|[-_ ])g10(?:[-_. ]|$)|linear|scrgb", re.IGNORECASE)


def transfer_of(profile: str) -> str:
    """The wire's `transfer` for a layer with this colour profile: "linear" for linear light, which the
    worker encodes to the sRGB curve the model knows and back, else "srgb" (gamma-encoded values)."""
    return "linear" if _LINEAR_PROFILE.search(profile or "") else "srgb"


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


# ---- settings ------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What the docker edits and the action uses. Stored as one JSON string in Krita's settings."""

    auto: bool = True
    weights: dict[str, float] = field(default_factory=dict)  # manual weights, by expert name
    experts: list[str] = field(default_factory=list)  # the model's experts, as last seen
    margin: int = DEFAULT_MARGIN
    autostart: bool = True
    passes: int = 1  # flipped/turned passes the worker averages (one of ENSEMBLES; others read as 1)

    def expert_spec(self) -> Any:
        return hostkit.expert_spec(self.auto, self.weights, self.experts)

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
            passes = int(data.get("passes", s.passes))
            s.passes = passes if passes in ENSEMBLES else 1
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
    profile: str = ""  # the layer's colour profile name (its transfer: see `transfer_of`)


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
        self._job_target: tuple[Target, Rect] | None = None
        self._connect = connect or self._default_connect

    @staticmethod
    def _default_connect(settings: Settings) -> Any:
        return PLUGIN.connect(autostart=settings.autostart)

    @property
    def active(self) -> bool:
        return self.job is not None or self.query is not None

    # ---- starting work (UI thread) -------------------------------------------------------------

    def _capture(self) -> tuple[Target, Rect, Any]:
        """Read the active layer's region and build the job request; PluginError on bad input or
        while another job runs."""
        if self.job is not None:
            raise PluginError("A LoRA-IR job is already running.", "Wait for it to finish or press Cancel.")
        target = self.host.target()
        order, sample = wire_layout(target.color_model, target.depth)
        rect = PLUGIN.restore_region(target.canvas, target.selection, self.settings.margin)
        pixels, mask = self.host.read(target, rect)
        request = JobRequest(to_wire(pixels, target.depth), rect.w, rect.h, order, sample,
                             mask=mask, experts=self.settings.expert_spec(), ensemble=self.settings.passes,
                             transfer=transfer_of(target.profile))
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
        message, hint = PLUGIN.explain(exc)
        self.status.error = f"{message} {hint}".strip()
        self.status.text = "Failed."
        self.host.show_error(message, hint)

    def restore(self) -> bool:
        """Start restoring the selection of the active layer; False (and a message) when it cannot."""
        return self._guarded(self._start_restore)

    def _start_restore(self) -> None:
        target, rect, request = self._capture()
        settings = self.settings

        def work(report: Callable[[Any], None], cancelled: Callable[[], bool]) -> Any:
            return PLUGIN.restore(self._connect(settings), request, on_progress=report, should_cancel=cancelled)

        self._job_target = (target, rect)
        self._begin(Task("restore", work), "Connecting to the LoRA-IR worker…")

    def analyze(self) -> bool:
        """Ask the router which degradations it sees in the selection (weights shown as bars)."""
        return self._guarded(self._start_analyze)

    def _start_analyze(self) -> None:
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
                text, frac = hostkit.progress_text(job.progress)
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
            message, hint = PLUGIN.explain(task.error)
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
        if task.error is not None:
            if hostkit.is_cancelled(task.error):
                self.status.text = "Cancelled; the image is unchanged."
                return
            self._fail(task.error)
            return
        if task.kind == "analyze":
            self.status.router_weights = dict(task.result.router_weights)
            self.settings.experts = list(task.result.experts) or self.settings.experts
            self.status.text = f"Router: mostly {task.result.top_expert}."
            return
        target, rect = self._job_target or (None, None)
        self._job_target = None
        try:
            self._apply(task.result, target, rect)
        except Exception as exc:  # a Krita call failing here must still reach the user
            self._fail(exc)

    def _apply(self, result: Any, target: Target, rect: Rect) -> None:
        """Add the restored region (its size and layout already checked by `PLUGIN.restore`)."""
        h = result.header
        if not self.host.still_open(target):
            raise PluginError("The image was closed before its restore finished; nothing was changed.")
        name = layer_name(h.applied_weights)
        self.host.add_layer(target, rect, from_wire(result.pixels, target.depth), name)
        self.status.router_weights = dict(h.router_weights)
        self.status.last_layer = name
        self.status.text = f"Added layer “{name}” ({h.device}, {sum(h.timings.values()):.1f} s)."
        self.host.notify(self.status.text)
