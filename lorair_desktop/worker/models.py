"""The model manager: loads one model on the worker's device, keeps it warm, switches, frees memory.

Loading runs on the inference thread only (see jobs.Scheduler), so a switch never races a restore.
A model that fails to load is not fatal: its error is kept and reported by /v1/info and on submit.
"""

from __future__ import annotations

import gc
import logging
import platform
import threading
from pathlib import Path
from typing import Any

import torch

from ..bridge.protocol import ErrorInfo, ModelInfo
from ..core import LoraIRError, Restorer, load_model
from ..core.checkpoint import list_models
from ..core.device import select_device

log = logging.getLogger(__name__)


def model_key(name: str) -> str:
    """Compare a checkpoint path by its absolute form, a preset by its name."""
    p = Path(name)
    if p.suffix == ".safetensors" or p.is_file():
        return str(p.expanduser().resolve())
    return name


class ModelManager:
    def __init__(self, device: str = "auto", precision: str = "auto") -> None:
        self.device = select_device(device)  # DeviceError here is fatal: the worker cannot serve
        self.precision = precision
        self._lock = threading.Lock()  # guards the fields below; loading itself is serialized by the caller
        self.name = ""
        self.state = "unloaded"  # unloaded | loading | ready | error
        self.error: ErrorInfo | None = None
        self.restorer: Restorer | None = None

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        if self.device.type == "mps":
            return "Apple GPU (MPS)"
        return _cpu_name()

    def info(self) -> ModelInfo:
        with self._lock:
            experts = self.restorer.experts if self.restorer is not None and self.state == "ready" else ()
            return ModelInfo(self.name, self.state, tuple(experts), self.error)

    def current_error(self) -> ErrorInfo | None:
        with self._lock:
            return self.error if self.state == "error" else None

    def ready_experts(self, name: str | None) -> tuple[str, ...] | None:
        """The experts of the model a job would run on, when that model is already loaded."""
        with self._lock:
            if self.state != "ready" or self.restorer is None:
                return None
            if name is not None and model_key(name) != model_key(self.name):
                return None
            return tuple(self.restorer.experts)

    def require(self, name: str | None) -> Restorer:
        """The restorer for `name` (None: the current model), loading it if needed. Inference thread only."""
        with self._lock:
            same = name is None or model_key(name) == model_key(self.name)
            if same and self.state == "ready" and self.restorer is not None:
                return self.restorer
            if same and self.state == "error" and self.error is not None:
                raise LoraIRErrorFromInfo(self.error)
        return self.load(name or self.name)

    def load(self, name: str) -> Restorer:
        """Load `name` and make it current. If it cannot be read, the current model stays (a typo in
        a request must not unload a working model); the old model is freed before the new one goes to
        the device, so device memory never holds both."""
        log.info("loading model %s on %s", name, self.device)
        with self._lock:
            if self.restorer is None:
                self.name, self.state, self.error = name, "loading", None
        try:
            model = load_model(name)  # on the CPU: the current model is untouched so far
        except LoraIRError as exc:
            self._refused(name, ErrorInfo(exc.code, exc.message, exc.hint))
            raise
        except (MemoryError, RuntimeError, OSError, ValueError) as exc:
            log.exception("reading model %s failed", name)
            info = ErrorInfo(
                "bad_checkpoint",
                f"model '{name}' could not be read: {exc}"[:500],
                "check the file, or free memory and switch again",
            )
            self._refused(name, info)
            raise LoraIRErrorFromInfo(info) from exc
        with self._lock:
            self.name, self.state, self.error, self.restorer = name, "loading", None, None
        self._free()
        try:
            restorer = Restorer(model, device=self.device, precision=self.precision)
        except (MemoryError, RuntimeError) as exc:
            log.exception("moving model %s to %s failed", name, self.device)
            info = ErrorInfo(
                "bad_checkpoint",
                f"model '{name}' could not be placed on {self.device}: {exc}"[:500],
                "free device memory (close other GPU programs) and switch again",
            )
            self._fail(info)
            raise LoraIRErrorFromInfo(info) from exc
        with self._lock:
            self.restorer, self.state = restorer, "ready"
        log.info("model %s ready (experts: %s)", name, ", ".join(restorer.experts))
        return restorer

    def _refused(self, name: str, info: ErrorInfo) -> None:
        """A model that cannot be read: an error state only if there is no working model to keep."""
        with self._lock:
            keep = self.restorer is not None and self.state == "ready"
        if keep:
            log.warning("model %s refused, keeping %s: %s %s", name, self.name, info.message, info.hint)
        else:
            self._fail(info)

    def _fail(self, info: ErrorInfo) -> None:
        log.warning("model %s unavailable: %s %s", self.name, info.message, info.hint)
        with self._lock:
            self.state, self.error, self.restorer = "error", info, None
        self._free()

    def unload(self) -> None:
        with self._lock:
            self.restorer, self.state = None, "unloaded"
        self._free()

    def _free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @staticmethod
    def available() -> list[dict[str, Any]]:
        try:
            return [
                {
                    "name": m.name,
                    "trained": m.weights is not None,
                    "experts": list(m.config.experts),
                    "description": m.config.description,
                }
                for m in list_models()
            ]
        except LoraIRError as exc:
            log.warning("cannot list models: %s", exc)
            return []


class LoraIRErrorFromInfo(LoraIRError):
    """A stored model error raised again with its original code."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message, info.hint)
        self.code = info.code


def _cpu_name() -> str:
    try:  # Linux: platform.processor() is often empty there
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"
