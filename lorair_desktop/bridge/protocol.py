"""The wire protocol between hosts (app, Krita, GIMP) and the worker. Standard library only.

This module is the single contract: the worker and every client import these types and functions.

Transport
---------
HTTP/1.1 on 127.0.0.1 (a free port; see `bridge.runtime` for how clients find it). Every request but
``GET /v1/health`` carries ``Authorization: Bearer <token>`` (the token is in the runtime file, mode
0600). Requests whose ``Host`` is not a loopback name (localhost, 127.0.0.1, [::1]), or that carry
browser headers (any ``Origin``, ``Sec-Fetch-Site`` other than ``none``), are refused with 403; there
is no CORS. Clients may send ``X-LoRAIR-Protocol: <PROTOCOL_VERSION>``; a different value is refused
with 400 ``protocol_mismatch``. Bodies need a ``Content-Length`` (no chunked uploads).

Pixel layout
------------
``order``: "RGBA" | "BGRA" | "RGB" | "GRAYA" | "GRAY" (channels interleaved per pixel; grey is
restored as RGB and returned grey, the mean of the three). ``sample``: "u8" | "u16" | "f32"
(native little-endian; u8/u16 span 0..max, f32 spans 0.0..1.0 and must be finite). Rows are
top to bottom, no padding: ``len(pixels) == width * height * channels * bytes_per_sample``.
``transfer``: "srgb" (default: gamma-encoded values, what the model is trained on) | "linear"
(linear light, e.g. Krita's float layers with a g10 or scRGB profile): the worker encodes them to
sRGB for the model and decodes the result. Float values outside 0..1 (HDR highlights, wide gamut) are
restored clipped and the part outside is added back, so no highlight is lost.
An optional soft mask is ``width * height`` bytes, 8-bit, 255 = fully selected.
Alpha is passed through untouched. With a mask the worker returns the result already blended with
the input, per colour channel ``out = in + m/255 * (restored - in)``, alpha = input alpha, so a host
just places the returned pixels in a new layer.

Framed bodies (job submit, analyze, result)
-------------------------------------------
``[4-byte big-endian JSON length][UTF-8 JSON header][pixel bytes][mask bytes if has_mask]``,
Content-Type ``application/x-lorair-job`` (requests) / ``application/x-lorair-result`` (results).
A request body's length must equal exactly what its header implies.

Job header JSON (`JobHeader`)::

    {"width": 640, "height": 480, "order": "BGRA", "sample": "u8", "has_mask": true,
     "model": null,                      # optional: preset name or .safetensors path; the worker
                                         # switches to it (and it stays current). A model that
                                         # cannot be loaded fails the job, the current one stays
     "experts": {"mode": "auto"}         # or {"mode": "manual", "weights": {"noise": 0.8},
                                         #     "keep_router": false}
     "tile": null, "overlap": null,      # optional ints: tile side >= 16, overlap >= 0
     "ensemble": 1,                      # optional: 1, 2, 4 or 8 flipped/turned passes averaged
                                         # (that many times slower; rain mixes use 4 at most)
     "transfer": "linear"}               # optional, "srgb" when absent (see Pixel layout)

Result header JSON (`ResultHeader`): width, height, order, sample (same layout as the input),
router_weights, applied_weights ({expert: weight}; the router's, and the ones actually merged),
timings ({"queue_s", "decode_s", "route_s", "restore_s", "total_s", "encode_s"}: seconds), tiles,
tile_size, device, dtype, model, ensemble (the passes run). The pixels follow; no mask.

Routes (all under /v1; JSON bodies unless framed)
-------------------------------------------------
========  ===========================  =====================================================
GET       /v1/health                   no auth. {"ok", "service", "protocol", "pid", "version"}
GET       /v1/info                     `WorkerInfo`: version, protocol, pid, device, current
                                       model and its experts (or its error), available models,
                                       limits, queue {"queued", "capacity", "running", "kept"}
POST      /v1/model                    {"model": name|path} -> `ModelInfo` once loaded (it waits
                                       behind queued jobs: one inference at a time). On failure
                                       the model's error; the current model stays loaded
POST      /v1/jobs                     framed job body -> 202 `SubmitReply` {"id", "state",
                                       "queue_position"} + Location header; 429 queue_full;
                                       503 with the model's error when no model is usable
GET       /v1/jobs/{id}[?wait=S&after=REV]
                                       `JobStatus`: state queued|running|done|failed|cancelled,
                                       progress 0..1, tile i of tiles, eta_s, queue_position,
                                       error, rev. With `wait`, the answer is held until `rev`
                                       exceeds `after` or S seconds pass (long poll, S <= limit)
GET       /v1/jobs/{id}/result         200 framed result; 409 job_not_done; a failed or
                                       cancelled job answers its own error
POST      /v1/jobs/{id}/cancel         idempotent; `JobStatus` (a running job turns cancelled
                                       between tiles)
DELETE    /v1/jobs/{id}                forget the job and its result now (cancels it if active)
POST      /v1/analyze                  framed body (mask ignored) -> `AnalyzeResult` JSON
========  ===========================  =====================================================

Errors
------
Always ``{"error": {"code": str, "message": str, "hint": str}}`` with a truthful status; the codes
are the `E_*` constants below (status in brackets), plus the model core's codes:
``bad_experts`` / ``bad_image`` [422], ``model_not_found`` [404], ``model_not_trained`` /
``bad_checkpoint`` / ``bad_config`` / ``bad_device`` [503], ``cancelled`` [409].

Client (`bridge.client.WorkerClient`): ``connect()``, ``health()``, ``info()``, ``set_model()``,
``analyze()``, ``submit()``, ``status()``, ``result()``, ``cancel()``, ``delete()`` and the blocking
``restore()``; every failure is a `BridgeError`.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
TRANSFERS = ("srgb", "linear")  # how the colour values encode light (see Pixel layout)
PROTOCOL_HEADER = "X-LoRAIR-Protocol"
JOB_CONTENT_TYPE = "application/x-lorair-job"
RESULT_CONTENT_TYPE = "application/x-lorair-result"
SERVICE = "lorair-worker"

ORDERS: dict[str, int] = {"RGBA": 4, "BGRA": 4, "RGB": 3, "GRAYA": 2, "GRAY": 1}  # order -> channels
ALPHA_ORDERS = frozenset({"RGBA", "BGRA", "GRAYA"})  # the last channel is alpha, passed through
SAMPLES: dict[str, int] = {"u8": 1, "u16": 2, "f32": 4}  # sample -> bytes per sample
STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = frozenset({"done", "failed", "cancelled"})
MIN_TILE = 16
MAX_TILE = 16384
MAX_OVERLAP = 1024
ENSEMBLES = (1, 2, 4, 8)  # self-ensemble pass counts (the model core checks the same set)
MAX_SIDE = 1 << 20  # a sanity bound; the worker's max_pixels is the real limit
MAX_JSON_HEADER = 64 * 1024  # bytes of JSON in a framed body
_LEN = struct.Struct(">I")

# Error codes (HTTP status in brackets) that the bridge and the worker produce.
E_BAD_REQUEST = "bad_request"  # [400] framing, JSON, header fields, body length
E_PROTOCOL = "protocol_mismatch"  # [400] / client-side: versions differ
E_UNAUTHORIZED = "unauthorized"  # [401] missing or wrong token
E_FORBIDDEN = "forbidden"  # [403] foreign Host, browser/cross-site request, remote model path
E_NOT_FOUND = "not_found"  # [404] no such route
E_JOB_NOT_FOUND = "job_not_found"  # [404] unknown or expired job id
E_METHOD = "method_not_allowed"  # [405]
E_REQUEST_TIMEOUT = "request_timeout"  # [408] the body did not arrive in time
E_NOT_DONE = "job_not_done"  # [409] result asked for before the job finished
E_RESULT_GONE = "result_expired"  # [410] the job finished but its pixels were dropped
E_LENGTH_REQUIRED = "length_required"  # [411]
E_BODY_TOO_LARGE = "body_too_large"  # [413]
E_IMAGE_TOO_LARGE = "image_too_large"  # [413] more pixels than the worker's limit
E_BAD_PIXELS = "bad_pixels"  # [422] NaN or infinite float samples
E_QUEUE_FULL = "queue_full"  # [429]
E_HEADERS_TOO_LARGE = "headers_too_large"  # [431]
E_INTERNAL = "internal"  # [500]
E_OUT_OF_MEMORY = "out_of_memory"  # [500]
E_UNAVAILABLE = "unavailable"  # [503] shutting down, too many connections, model loading failed
E_TIMEOUT = "timeout"  # [504] / client-side: no answer in time
E_CANCELLED = "cancelled"  # [409] result of a cancelled job; client-side: the user cancelled
# Client-side only:
E_NOT_RUNNING = "worker_not_running"
E_START_FAILED = "worker_start_failed"
E_WORKER_GONE = "worker_gone"
E_BAD_RESPONSE = "bad_response"


class BridgeError(Exception):
    """Every failure a host may see: a stable `code`, a one-line `message`, a `hint` to act on.

    `status` is the HTTP status when the worker answered, else None.
    """

    def __init__(self, code: str, message: str, hint: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.status = status

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "hint": self.hint}}

    @classmethod
    def from_dict(cls, data: Any, status: int | None = None) -> BridgeError:
        """From the error shape; anything else becomes a bad_response error."""
        err = data.get("error") if isinstance(data, dict) else None
        if not isinstance(err, dict) or not isinstance(err.get("code"), str):
            return cls(
                E_BAD_RESPONSE,
                f"the worker answered HTTP {status} without the error shape",
                "another program may be listening on the worker's port; restart the worker",
                status,
            )
        return cls(err["code"], str(err.get("message", "")), str(err.get("hint", "")), status)


def bad(message: str, hint: str = "") -> BridgeError:
    return BridgeError(E_BAD_REQUEST, message, hint, 400)


# ---- strict dict reading -------------------------------------------------------------------


def _check_keys(data: Any, what: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict:
    if not isinstance(data, dict):
        raise bad(f"{what} must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise bad(
            f"{what}: unknown key(s) {', '.join(map(repr, unknown))}", f"valid keys: {', '.join(required + optional)}"
        )
    missing = [k for k in required if k not in data]
    if missing:
        raise bad(f"{what}: missing key(s) {', '.join(map(repr, missing))}")
    return data


def _int(data: dict, key: str, lo: int, hi: int, what: str) -> int:
    v = data[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"{what}.{key} must be an integer, got {v!r}"[:200])
    if not lo <= v <= hi:
        raise bad(f"{what}.{key} is {v}", f"use a value from {lo} to {hi}")
    return v


def _opt_int(data: dict, key: str, lo: int, hi: int, what: str) -> int | None:
    return None if data.get(key) is None else _int(data, key, lo, hi, what)


def _choice(data: dict, key: str, choices: dict[str, int] | tuple[str, ...], what: str) -> str:
    v = data[key]
    if not isinstance(v, str) or v not in choices:
        raise bad(f"{what}.{key} {v!r} is not supported"[:200], f"use one of {', '.join(choices)}")
    return v


def _ensemble(data: dict, what: str) -> int:
    v = data.get("ensemble", 1)
    if v is None:
        return 1
    if isinstance(v, bool) or not isinstance(v, int) or v not in ENSEMBLES:
        raise bad(f"{what}.ensemble {v!r} is not supported"[:200], f"use one of {', '.join(map(str, ENSEMBLES))}")
    return v


def _bool(data: dict, key: str, default: bool, what: str) -> bool:
    v = data.get(key, default)
    if not isinstance(v, bool):
        raise bad(f"{what}.{key} must be true or false, got {v!r}"[:200])
    return v


def _weights(v: Any, what: str) -> dict[str, float]:
    """A {name: finite number} mapping (names checked against the model by the worker)."""
    if not isinstance(v, dict):
        raise bad(f"{what} must be an object of expert name -> weight")
    out: dict[str, float] = {}
    for k, w in v.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise BridgeError(
                "bad_experts",
                f"weight of expert {k!r} must be a finite number, got {w!r}"[:200],
                "use a number such as 0.8",
                422,
            )
        out[str(k)] = float(w)
    return out


# ---- types ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertSpec:
    """How to mix the experts: the router's choice ("auto") or the user's weights ("manual").

    In manual mode, experts not named get 0, or keep the router's weight when `keep_router`.
    """

    mode: str = "auto"
    weights: dict[str, float] = field(default_factory=dict)
    keep_router: bool = False

    @classmethod
    def auto(cls) -> ExpertSpec:
        return cls()

    @classmethod
    def manual(cls, weights: dict[str, float], keep_router: bool = False) -> ExpertSpec:
        return cls("manual", dict(weights), keep_router)

    def to_dict(self) -> dict[str, Any]:
        if self.mode == "auto":
            return {"mode": "auto"}
        return {"mode": "manual", "weights": dict(self.weights), "keep_router": self.keep_router}

    @classmethod
    def from_dict(cls, data: Any) -> ExpertSpec:
        if not isinstance(data, dict) or data.get("mode") not in ("auto", "manual"):
            raise bad(
                'experts.mode must be "auto" or "manual"',
                'send {"mode": "auto"} or {"mode": "manual", "weights": {"noise": 0.8}}',
            )
        if data["mode"] == "auto":
            _check_keys(data, "experts", ("mode",), ())
            return cls()
        _check_keys(data, "experts", ("mode", "weights"), ("keep_router",))
        return cls("manual", _weights(data["weights"], "experts.weights"), _bool(data, "keep_router", False, "experts"))

    def overrides(self) -> dict[str, float] | None:
        """The core's `overrides` argument: None means the router's weights."""
        return None if self.mode == "auto" else dict(self.weights)


def pixel_bytes(width: int, height: int, order: str, sample: str) -> int:
    return width * height * ORDERS[order] * SAMPLES[sample]


@dataclass(frozen=True)
class JobHeader:
    width: int
    height: int
    order: str = "RGBA"
    sample: str = "u8"
    has_mask: bool = False
    model: str | None = None
    experts: ExpertSpec = field(default_factory=ExpertSpec)
    tile: int | None = None
    overlap: int | None = None
    ensemble: int = 1
    transfer: str = "srgb"

    _KEYS = ("width", "height", "order", "sample")
    _OPTIONAL = ("has_mask", "model", "experts", "tile", "overlap", "ensemble", "transfer")

    @property
    def pixel_bytes(self) -> int:
        return pixel_bytes(self.width, self.height, self.order, self.sample)

    @property
    def mask_bytes(self) -> int:
        return self.width * self.height if self.has_mask else 0

    @property
    def payload_bytes(self) -> int:
        return self.pixel_bytes + self.mask_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "order": self.order,
            "sample": self.sample,
            "has_mask": self.has_mask,
            "model": self.model,
            "experts": self.experts.to_dict(),
            "tile": self.tile,
            "overlap": self.overlap,
            "ensemble": self.ensemble,
            # only when not the default: a worker from before the key refuses unknown keys
            **({"transfer": self.transfer} if self.transfer != "srgb" else {}),
        }

    @classmethod
    def from_dict(cls, data: Any) -> JobHeader:
        what = "header"
        d = _check_keys(data, what, cls._KEYS, cls._OPTIONAL)
        model = d.get("model")
        if model is not None and (not isinstance(model, str) or not 0 < len(model) <= 4096):
            raise bad("header.model must be a model name or a checkpoint path (a non-empty string)")
        return cls(
            width=_int(d, "width", 1, MAX_SIDE, what),
            height=_int(d, "height", 1, MAX_SIDE, what),
            order=_choice(d, "order", ORDERS, what),
            sample=_choice(d, "sample", SAMPLES, what),
            has_mask=_bool(d, "has_mask", False, what),
            model=model,
            experts=ExpertSpec.from_dict(d.get("experts") or {"mode": "auto"}),
            tile=_opt_int(d, "tile", MIN_TILE, MAX_TILE, what),
            overlap=_opt_int(d, "overlap", 0, MAX_OVERLAP, what),
            ensemble=_ensemble(d, what),
            transfer="srgb" if d.get("transfer") is None else _choice(d, "transfer", TRANSFERS, what),
        )


@dataclass(frozen=True)
class ResultHeader:
    width: int
    height: int
    order: str
    sample: str
    router_weights: dict[str, float]
    applied_weights: dict[str, float]
    timings: dict[str, float]
    tiles: int
    tile_size: int
    device: str
    dtype: str
    model: str
    ensemble: int = 1

    @property
    def pixel_bytes(self) -> int:
        return pixel_bytes(self.width, self.height, self.order, self.sample)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Any) -> ResultHeader:
        keys = tuple(k for k in cls.__dataclass_fields__ if k != "ensemble")
        d = _check_keys(data, "result", keys, ("ensemble",))
        return cls(**{k: d[k] for k in keys}, ensemble=int(d.get("ensemble", 1)))


@dataclass(frozen=True)
class ErrorInfo:
    code: str
    message: str
    hint: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "hint": self.hint}

    @classmethod
    def from_dict(cls, data: Any) -> ErrorInfo | None:
        if not isinstance(data, dict):
            return None
        return cls(str(data.get("code", "")), str(data.get("message", "")), str(data.get("hint", "")))

    def to_exception(self, status: int | None = None) -> BridgeError:
        return BridgeError(self.code, self.message, self.hint, status)


@dataclass(frozen=True)
class SubmitReply:
    id: str
    state: str
    queue_position: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Any) -> SubmitReply:
        d = _check_keys(data, "submit reply", ("id", "state", "queue_position"), ())
        return cls(str(d["id"]), str(d["state"]), int(d["queue_position"]))


@dataclass(frozen=True)
class JobStatus:
    id: str
    state: str  # one of STATES
    progress: float  # 0..1 over tiles
    tile: int  # tiles done
    tiles: int  # 0 until the job has been planned
    queue_position: int | None  # 0 = next to run; None unless queued
    eta_s: float | None
    elapsed_s: float  # since submission
    rev: int  # bumps on every change; pass as `after` to long-poll
    error: ErrorInfo | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["error"] = self.error.to_dict() if self.error else None
        return d

    @classmethod
    def from_dict(cls, data: Any) -> JobStatus:
        keys = tuple(cls.__dataclass_fields__)
        d = _check_keys(data, "job status", keys[:-1], ("error",))
        return cls(**{**{k: d[k] for k in keys[:-1]}, "error": ErrorInfo.from_dict(d.get("error"))})


@dataclass(frozen=True)
class AnalyzeResult:
    model: str
    experts: tuple[str, ...]
    router_weights: dict[str, float]
    top_expert: str
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "experts": list(self.experts)}

    @classmethod
    def from_dict(cls, data: Any) -> AnalyzeResult:
        keys = tuple(cls.__dataclass_fields__)
        d = _check_keys(data, "analysis", keys, ())
        return cls(**{**{k: d[k] for k in keys}, "experts": tuple(d["experts"])})


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what was asked for: a preset name or a checkpoint path
    state: str  # "loading" | "ready" | "error"
    experts: tuple[str, ...]  # empty unless ready
    error: ErrorInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "experts": list(self.experts),
            "error": self.error.to_dict() if self.error else None,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ModelInfo:
        d = _check_keys(data, "model", ("name", "state", "experts"), ("error",))
        return cls(str(d["name"]), str(d["state"]), tuple(d["experts"]), ErrorInfo.from_dict(d.get("error")))


@dataclass(frozen=True)
class WorkerInfo:
    version: str
    protocol: int
    pid: int
    device: str
    device_name: str
    model: ModelInfo
    models: list[dict[str, Any]]  # [{"name", "trained", "experts", "description"}]
    limits: dict[str, Any]
    queue: dict[str, int]  # {"queued", "capacity", "running", "kept" (jobs whose state is still held)}

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, data: Any) -> WorkerInfo:
        keys = tuple(cls.__dataclass_fields__)
        d = _check_keys(data, "info", keys, ())
        return cls(**{**{k: d[k] for k in keys}, "model": ModelInfo.from_dict(d["model"])})


# ---- framing -------------------------------------------------------------------------------


def encode_json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8")


def frame_prefix(header: dict[str, Any]) -> bytes:
    """`[4-byte big-endian length][JSON]`: the part of a framed body before the pixels."""
    js = encode_json(header)
    return _LEN.pack(len(js)) + js


def read_prefix_length(four: bytes) -> int:
    if len(four) != 4:
        raise bad("the body is shorter than its 4-byte header length")
    n = _LEN.unpack(four)[0]
    if not 2 <= n <= MAX_JSON_HEADER:
        raise bad(f"the JSON header length is {n} bytes", f"it must be 2..{MAX_JSON_HEADER}")
    return n


def decode_json(raw: bytes | bytearray | memoryview, what: str = "JSON header") -> Any:
    try:
        return json.loads(bytes(raw).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise bad(f"the {what} is not valid UTF-8 JSON: {exc}"[:300]) from None


def _reject_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not allowed", name, 0)


def split_frame(body: bytes | bytearray | memoryview) -> tuple[Any, memoryview]:
    """A whole framed body -> (parsed JSON, memoryview of the bytes after it)."""
    view = memoryview(body).cast("B")
    n = read_prefix_length(bytes(view[:4]))
    if len(view) < 4 + n:
        raise bad("the body ends inside its JSON header")
    return decode_json(view[4 : 4 + n]), view[4 + n :]
