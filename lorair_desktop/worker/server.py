"""The worker's HTTP/1.1 front: security checks, the /v1 routes, bounded body reading.

Handlers run on one thread per connection (ThreadingHTTPServer); they only parse, validate and talk
to the Scheduler, which owns the device. Every answer, including http.server's own low-level errors,
has the one error shape `{"error": {"code", "message", "hint"}}`.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..bridge import protocol as p
from ..bridge.protocol import BridgeError, JobHeader, bad
from ..core import LoraIRError
from ..core.routing import validate_overrides
from . import pixels
from .config import WorkerConfig
from .errors import status_for
from .jobs import Scheduler
from .models import ModelManager, model_key

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_MAX_JSON_BODY = 64 * 1024
_CHUNK = 1 << 20


class ClientGone(Exception):
    """The client closed the connection before its request was complete."""


def host_name(host_header: str) -> str:
    """'[::1]:8080' -> '::1', 'localhost:80' -> 'localhost'."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def is_loopback(host: str) -> bool:
    """'localhost' or a loopback IP literal; never a name that merely starts with '127.' (rebinding)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WorkerServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, cfg: WorkerConfig, scheduler: Scheduler, models: ModelManager, token: str, version: str) -> None:
        self.cfg, self.limits = cfg, cfg.limits
        self.scheduler, self.models = scheduler, models
        self.token, self.version = token, version
        self._lock = threading.Lock()
        self.active = 0  # open connections
        self.inflight = 0  # requests being handled
        self.last_activity = time.monotonic()
        if ":" in cfg.host:
            self.address_family = socket.AF_INET6
        super().__init__((cfg.host, cfg.port), Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            full = self.active >= self.limits.max_connections
            if not full:
                self.active += 1
        if full:
            # Answered on the accept thread without reading: cheap, and the client learns why.
            body = p.encode_json(
                BridgeError(
                    p.E_UNAVAILABLE, "the worker has too many open connections", "close idle connections and try again"
                ).to_dict()
            )
            head = (
                f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            try:
                request.settimeout(1.0)
                request.sendall(head + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self.active -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def touch(self, delta: int) -> None:
        with self._lock:
            self.inflight += delta
            self.last_activity = time.monotonic()

    def quiet_for(self) -> float:
        """Seconds since the last request began or ended; 0 while one is being handled."""
        with self._lock:
            return 0.0 if self.inflight else time.monotonic() - self.last_activity

    def idle_for(self) -> float:
        """Seconds with no request, no job and no open request; 0 while anything is going on."""
        with self._lock:
            if self.inflight:
                return 0.0
            last = self.last_activity
        if self.scheduler.busy():
            return 0.0
        return time.monotonic() - max(last, self.scheduler.last_active)


Route = tuple[str, re.Pattern[str], str]
ROUTES: list[Route] = [
    ("GET", re.compile(r"/v1/health"), "health"),
    ("GET", re.compile(r"/v1/info"), "info"),
    ("POST", re.compile(r"/v1/model"), "model"),
    ("POST", re.compile(r"/v1/jobs"), "submit"),
    ("POST", re.compile(r"/v1/analyze"), "analyze"),
    ("GET", re.compile(r"/v1/jobs/([^/]+)"), "status"),
    ("DELETE", re.compile(r"/v1/jobs/([^/]+)"), "delete"),
    ("GET", re.compile(r"/v1/jobs/([^/]+)/result"), "result"),
    ("POST", re.compile(r"/v1/jobs/([^/]+)/cancel"), "cancel"),
]
_LOW_LEVEL = {
    400: p.E_BAD_REQUEST,
    408: p.E_REQUEST_TIMEOUT,
    414: p.E_BAD_REQUEST,
    431: p.E_HEADERS_TOO_LARGE,
    501: p.E_METHOD,
    505: p.E_BAD_REQUEST,
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # so even an unparsable request line gets a status line back
    server_version = "lorair-worker"
    sys_version = ""
    server: WorkerServer

    _remaining: int | None = None  # body bytes not yet read; None: Content-Length not looked at

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.limits.io_timeout_s)  # bounds every read/write here

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # ---- answers ---------------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        ctype: str = "application/json",
        headers: dict[str, str] | None = None,
        tail: bytes | memoryview | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) + (len(tail) if tail is not None else 0)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        if tail is not None:
            self.wfile.write(tail)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, p.encode_json(data), headers=headers)

    def _error(self, exc: BridgeError) -> None:
        self._discard_body()
        status = exc.status or status_for(exc.code)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        self._json(status, exc.to_dict(), headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, too many headers…) in our error shape."""
        self.close_connection = True
        err = BridgeError(
            _LOW_LEVEL.get(code, p.E_BAD_REQUEST),
            f"HTTP {code}: {message or 'bad request'}",
            "the request is malformed; use the LoRA-IR bridge client",
            code,
        )
        with contextlib.suppress(OSError):
            self._json(code, err.to_dict())

    # ---- bodies ----------------------------------------------------------------------------

    def _content_length(self, required: bool) -> int:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # the body cannot be framed: drop the connection after answering
            raise BridgeError(
                p.E_LENGTH_REQUIRED, "chunked request bodies are not supported", "send a Content-Length", 411
            )
        raw = self.headers.get("Content-Length")
        if raw is None:
            if required:
                self.close_connection = True
                raise BridgeError(p.E_LENGTH_REQUIRED, "the request has no Content-Length", "send one", 411)
            return 0
        if not raw.strip().isdigit():
            self.close_connection = True
            raise bad(f"Content-Length {raw[:40]!r} is not a number")
        n = int(raw)
        if n > self.server.limits.max_body_bytes:
            self.close_connection = True
            raise BridgeError(
                p.E_BODY_TOO_LARGE,
                f"the body is {n} bytes, over the worker's limit of {self.server.limits.max_body_bytes}",
                "restore a smaller region",
                413,
            )
        return n

    def _read(self, n: int) -> bytearray:
        """Exactly n bytes of the body into a fresh buffer; ClientGone if the client stops sending."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.rfile.readinto(view[got:])
            if not k:
                self.close_connection = True
                raise ClientGone(f"client sent {got} of {n} bytes")
            got += k
        self._remaining = (self._remaining or 0) - n
        return buf

    def _discard_body(self) -> None:
        """Read what is left of a refused body so the answer reaches the client and keep-alive holds."""
        if self._remaining is None:  # refused before the body was looked at
            try:
                self._remaining = self._content_length(required=False)
            except BridgeError:
                self.close_connection, self._remaining = True, 0
        left = self._remaining
        if left <= 0 or self.close_connection:
            return
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, _CHUNK))
                if not chunk:
                    self.close_connection = True
                    return
                left -= len(chunk)
        except OSError:
            self.close_connection = True
        self._remaining = 0

    def _read_json_body(self) -> Any:
        n = self._content_length(required=True)
        self._remaining = n
        if n > _MAX_JSON_BODY:
            raise BridgeError(p.E_BODY_TOO_LARGE, f"a JSON body of {n} bytes is too large", "", 413)
        return p.decode_json(self._read(n), "JSON body")

    def _read_framed(self, job: bool) -> tuple[JobHeader, bytearray]:
        limits = self.server.limits
        total = self._content_length(required=True)
        self._remaining = total
        if job:
            self.server.scheduler.admit(total)
        if total < 4:
            raise bad(
                f"the body is {total} bytes, too short for a framed job",
                "send [4-byte JSON length][JSON header][pixels][mask]",
            )
        n = p.read_prefix_length(bytes(self._read(4)))
        if 4 + n > total:
            raise bad(f"the JSON header claims {n} bytes but the body has only {total - 4} after the length")
        header = JobHeader.from_dict(p.decode_json(self._read(n)))
        if header.width * header.height > limits.max_pixels:
            raise BridgeError(
                p.E_IMAGE_TOO_LARGE,
                f"{header.width}x{header.height} is "
                f"{header.width * header.height} pixels, over the worker's limit of "
                f"{limits.max_pixels}",
                "restore a smaller region, or raise --max-pixels",
                413,
            )
        expected = 4 + n + header.payload_bytes
        if total != expected:
            raise bad(
                f"the body is {total} bytes, but its header implies {expected} (4 + {n} JSON + "
                f"{header.pixel_bytes} pixels + {header.mask_bytes} mask)",
                "pixels must be width x height x channels x bytes per sample, rows without padding",
            )
        payload = self._read(header.payload_bytes)
        pixels.check_finite(memoryview(payload)[: header.pixel_bytes], header)
        self._check_model_access(header.model)
        return header, payload

    # ---- checks ----------------------------------------------------------------------------

    def _check_origin(self) -> None:
        """DNS rebinding and browser pages: a loopback Host only, no Origin, no cross-site fetch."""
        host = self.headers.get("Host")
        if not self.server.cfg.allow_remote and (host is None or not is_loopback(host_name(host))):
            raise BridgeError(
                p.E_FORBIDDEN,
                f"requests for host {str(host)[:80]!r} are refused",
                "the worker only answers requests addressed to 127.0.0.1 or localhost",
                403,
            )
        site = self.headers.get("Sec-Fetch-Site")
        if self.headers.get("Origin") is not None or (site is not None and site.strip().lower() != "none"):
            raise BridgeError(
                p.E_FORBIDDEN,
                "requests from web pages are refused",
                "only local programs holding the worker's token may use it",
                403,
            )

    def _check_auth(self) -> None:
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.server.token.encode()):
            raise BridgeError(
                p.E_UNAUTHORIZED,
                "missing or wrong token" if auth else "no token was sent",
                "send 'Authorization: Bearer <token>' with the token from the worker's "
                "runtime file (the bridge client does this)",
                401,
            )
        proto = self.headers.get(p.PROTOCOL_HEADER)
        if proto is not None and proto.strip() != str(p.PROTOCOL_VERSION):
            raise BridgeError(
                p.E_PROTOCOL,
                f"this worker speaks protocol {p.PROTOCOL_VERSION}, the client {proto[:20]!r}",
                "update the plugin or the worker so both come from the same LoRA-IR Desktop version",
                400,
            )

    def _check_model_access(self, model: str | None) -> None:
        """Remote clients may pick preset names only, never a path on this machine."""
        if model is None or not self.server.cfg.allow_remote or is_loopback(self.client_address[0]):
            return
        if "/" in model or "\\" in model or model.endswith(".safetensors"):
            raise BridgeError(
                p.E_FORBIDDEN,
                "remote clients cannot load model files by path",
                "use a model name listed by /v1/info",
                403,
            )

    # ---- dispatch --------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _other(self) -> None:
        self.close_connection = True  # e.g. HEAD: no body framing we want to keep alive
        self._dispatch()

    do_PUT = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = do_CONNECT = _other

    def _dispatch(self) -> None:
        self._remaining = None
        srv = self.server
        srv.touch(+1)
        try:
            err = self._handle()
            if err is not None:
                with contextlib.suppress(OSError):
                    self._error(err)
        except OSError:
            self.close_connection = True
        finally:
            srv.touch(-1)

    def _handle(self) -> BridgeError | None:
        """Run the route; returns the error to answer, if any (the connection may be gone instead)."""
        try:
            self._check_origin()
            url = urlsplit(self.path)
            name, args = self._route(url.path)
            if name not in ("model", "submit", "analyze"):
                self._discard_body()  # e.g. a GET with a body: unread, it would poison keep-alive
            if name != "health":
                self._check_auth()
            getattr(self, f"h_{name}")(*args, query=parse_qs(url.query, max_num_fields=8))
            return None
        except BridgeError as exc:
            return exc
        except LoraIRError as exc:
            return BridgeError(exc.code, exc.message, exc.hint, status_for(exc.code))
        except ClientGone as exc:
            log.info("client %s went away mid-request: %s", self.client_address[0], exc)
            self.close_connection = True
        except TimeoutError:
            self.close_connection, self._remaining = True, 0
            return BridgeError(p.E_REQUEST_TIMEOUT, "the request stopped arriving", "", 408)
        except (BrokenPipeError, ConnectionError):
            self.close_connection = True
        except ValueError as exc:  # e.g. parse_qs field limits
            return bad(f"malformed request: {exc}"[:200])
        except Exception as exc:
            log.exception("unexpected error on %s %s", self.command, self.path[:200])
            return BridgeError(
                p.E_INTERNAL,
                f"the worker failed on this request ({type(exc).__name__})",
                "see the worker's log; the worker keeps serving",
                500,
            )
        return None

    def _route(self, path: str) -> tuple[str, tuple[str, ...]]:
        allowed = []
        for method, pattern, name in ROUTES:
            m = pattern.fullmatch(path)
            if m:
                if method == self.command:
                    return name, m.groups()
                allowed.append(method)
        if allowed:
            raise BridgeError(
                p.E_METHOD, f"{self.command} is not allowed on {path[:100]}", f"use {' or '.join(allowed)}", 405
            )
        raise BridgeError(p.E_NOT_FOUND, f"no route {path[:100]!r}", "routes live under /v1/ (see /v1/info)", 404)

    # ---- routes ----------------------------------------------------------------------------

    def h_health(self, query: dict) -> None:
        self._json(
            200,
            {
                "ok": True,
                "service": p.SERVICE,
                "protocol": p.PROTOCOL_VERSION,
                "pid": os.getpid(),
                "version": self.server.version,
            },
        )

    def h_info(self, query: dict) -> None:
        srv = self.server
        info = p.WorkerInfo(
            srv.version,
            p.PROTOCOL_VERSION,
            os.getpid(),
            str(srv.models.device),
            srv.models.device_name,
            srv.models.info(),
            srv.models.available(),
            srv.limits.to_dict(),
            srv.scheduler.counts(),
        )
        self._json(200, info.to_dict())

    def h_model(self, query: dict) -> None:
        data = self._read_json_body()
        if (
            not isinstance(data, dict)
            or set(data) != {"model"}
            or not isinstance(data["model"], str)
            or not data["model"]
        ):
            raise bad('the body must be {"model": "<name or path>"}')
        self._check_model_access(data["model"])
        self._json(200, self.server.scheduler.switch(data["model"]).to_dict())

    def _check_model_ready(self, header: JobHeader) -> None:
        """Refuse now what would surely fail: an unusable model, unknown expert names."""
        models = self.server.models
        err = models.current_error()
        if err is not None and (header.model is None or model_key(header.model) == model_key(models.name)):
            raise BridgeError(err.code, err.message, err.hint, 503)
        experts = models.ready_experts(header.model)
        overrides = header.experts.overrides()
        if experts is not None and overrides is not None:
            validate_overrides(overrides, experts)

    def h_submit(self, query: dict) -> None:
        header, payload = self._read_framed(job=True)
        self._check_model_ready(header)
        job = self.server.scheduler.submit(header, payload)
        st = self.server.scheduler.status(job)
        reply = p.SubmitReply(job.id, st.state, st.queue_position or 0)
        self._json(202, reply.to_dict(), {"Location": f"/v1/jobs/{job.id}"})

    def h_analyze(self, query: dict) -> None:
        header, payload = self._read_framed(job=False)
        self._check_model_ready(header)
        self._json(200, self.server.scheduler.analyze(header, payload).to_dict())

    def h_status(self, job_id: str, query: dict) -> None:
        sched = self.server.scheduler
        job = sched.get(job_id)
        wait = _number(query, "wait", 0.0)
        if wait > 0:
            after = int(_number(query, "after", -1))
            st = sched.wait(job, after, min(wait, self.server.limits.max_wait_s))
        else:
            st = sched.status(job)
        self._json(200, st.to_dict())

    def h_cancel(self, job_id: str, query: dict) -> None:
        self._json(200, self.server.scheduler.cancel(job_id).to_dict())

    def h_delete(self, job_id: str, query: dict) -> None:
        self.server.scheduler.delete(job_id)
        self._json(200, {"deleted": True})

    def h_result(self, job_id: str, query: dict) -> None:
        header, data = self.server.scheduler.result(job_id)
        self._send(200, p.frame_prefix(header), p.RESULT_CONTENT_TYPE, tail=memoryview(data))


def _number(query: dict[str, list[str]], key: str, default: float) -> float:
    values = query.get(key)
    if not values:
        return default
    try:
        v = float(values[0])
    except ValueError:
        raise bad(f"query parameter {key}={values[0][:20]!r} is not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise bad(f"query parameter {key} must be finite")
    return v
