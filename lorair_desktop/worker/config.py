"""The worker's settings and explicit limits, in one place (reported by GET /v1/info)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..bridge.protocol import MAX_JSON_HEADER
from ..core import DEFAULT_MODEL


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 64_000_000  # per job (a 8000x8000 region)
    max_body_bytes: int = 1 << 30  # a whole request body; larger is refused before reading
    max_json_header_bytes: int = MAX_JSON_HEADER  # the JSON part of a framed body
    max_http_header_line: int = 65536  # set by http.server: longer lines answer 431
    max_http_headers: int = 100  # set by http.server: more answer 431
    queue_size: int = 16  # restore jobs waiting (not counting the running one); more answer 429
    max_queued_bytes: int = 4 << 30  # pixel bytes held by waiting jobs; more answer 429
    pending_analyses: int = 8  # analyze requests waiting for the device
    result_ttl_s: float = 300.0  # a finished job and its pixels are dropped after this
    max_result_bytes: int = 2 << 30  # kept result pixels in total; the oldest go first
    io_timeout_s: float = 60.0  # a socket read or write that stalls longer ends the connection
    max_wait_s: float = 30.0  # longest long-poll hold of GET /v1/jobs/{id}?wait=
    sync_timeout_s: float = 300.0  # longest wait of a synchronous analyze or model switch
    max_connections: int = 64  # concurrent connections; more are answered 503 at once

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class WorkerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    device: str = "auto"
    precision: str = "auto"
    model: str = DEFAULT_MODEL
    idle_exit_s: float | None = None  # None: run until stopped
    allow_remote: bool = False
    runtime_dir: Path | None = None  # None: bridge.runtime.runtime_dir()
    threads: int | None = None  # CPU inference threads; None: torch's default (all cores)
    limits: Limits = field(default_factory=Limits)
