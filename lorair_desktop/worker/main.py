"""`lorair worker`: run the background worker until stopped, signalled, or idle.

Lifetime: bind, write the runtime file (0600), serve; on SIGTERM, SIGINT or SIGHUP (unless started
ignoring it, as under nohup; a second signal stops at once) or after `--idle-exit` minutes with no
request and no job, cancel what runs (reported to long-polling clients), stop serving, free the
model and remove the runtime file. One worker per runtime folder (a lock file).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from ..bridge.protocol import PROTOCOL_VERSION
from ..bridge.runtime import (
    EXIT_ALREADY_RUNNING,
    RuntimeInfo,
    ensure_private_dir,
    remove_runtime,
    runtime_dir,
    runtime_file,
    write_runtime,
)
from ..core import DEFAULT_MODEL, LoraIRError
from ..core.device import DEVICE_CHOICES
from ..single_instance import single_instance
from ..stop_signals import stop_on_signal
from .config import Limits, WorkerConfig
from .jobs import Scheduler
from .models import ModelManager
from .server import WorkerServer, is_loopback

log = logging.getLogger(__name__)

EXIT_OK, EXIT_CONFIG = 0, 2


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("lorair-desktop")
    except Exception:  # not installed (running from a checkout)
        return "0+unknown"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Limits()
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback unless --allow-remote)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    parser.add_argument("--device", default="auto", help=f"{' | '.join(DEVICE_CHOICES)} or e.g. cuda:1")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME|PATH",
        help=f"preset name or .safetensors checkpoint (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        metavar="MIN",
        help="exit after MIN minutes with no request and no job (default: never)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow binding a non-loopback address and non-loopback Host headers "
        "(the token is still required; model paths are refused to remote clients)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for inference (default: all cores); fewer leaves room for the editor",
    )
    parser.add_argument("--queue-size", type=int, default=d.queue_size, help="restore jobs that may wait")
    parser.add_argument("--max-pixels", type=int, default=d.max_pixels, help="largest image per job")
    parser.add_argument(
        "--result-ttl", type=float, default=d.result_ttl_s, metavar="S", help="seconds a finished job's result is kept"
    )
    parser.add_argument(
        "--runtime-dir",
        type=Path,
        default=None,
        help="folder of the runtime file (default: the per-user runtime folder)",
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    limits = replace(
        Limits(),
        queue_size=max(1, args.queue_size),
        max_pixels=max(1, args.max_pixels),
        result_ttl_s=max(0.0, args.result_ttl),
    )
    idle = args.idle_exit * 60.0 if args.idle_exit is not None and args.idle_exit > 0 else None
    return WorkerConfig(
        host=args.host,
        port=args.port,
        device=args.device,
        precision=args.precision,
        model=args.model,
        idle_exit_s=idle,
        allow_remote=args.allow_remote,
        runtime_dir=args.runtime_dir,
        threads=args.threads,
        limits=limits,
    )


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("lorair_desktop").setLevel(args.log_level)  # also when `lorair` set up logging
    from ..core.cpu import keep_freed_memory

    keep_freed_memory()  # before any thread starts: restores run on the inference thread
    return serve(config_from_args(args))


def serve(cfg: WorkerConfig, stop: threading.Event | None = None) -> int:
    """Run until `stop` is set, a signal arrives, or the idle limit passes. Returns the exit code."""
    if not cfg.allow_remote and not is_loopback(cfg.host):
        log.error("binding %s would expose the worker to the network; pass --allow-remote to do so", cfg.host)
        return EXIT_CONFIG
    try:
        directory = ensure_private_dir(cfg.runtime_dir or runtime_dir())
    except Exception as exc:
        log.error("cannot use the runtime folder: %s", exc)
        return EXIT_CONFIG
    path = runtime_file(directory)
    with single_instance(directory / "worker.lock") as mine:
        if not mine:
            log.error("another worker already runs for %s (see %s); not starting a second one", directory, path)
            return EXIT_ALREADY_RUNNING
        if cfg.threads:
            import torch

            torch.set_num_threads(max(1, cfg.threads))
        try:
            models = ModelManager(cfg.device, cfg.precision)
        except LoraIRError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        scheduler = Scheduler(models, cfg.limits)
        try:
            server = WorkerServer(cfg, scheduler, models, secrets.token_urlsafe(32), package_version())
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", cfg.host, cfg.port, exc)
            return EXIT_CONFIG
        with stop_on_signal(stop, lambda name: log.info("%s: stopping (again to stop at once)", name)) as stop:
            return _serve_until_stopped(cfg, scheduler, models, server, path, stop)


def _serve_until_stopped(cfg: WorkerConfig, scheduler: Scheduler, models: ModelManager, server: WorkerServer,
                         path: Path, stop: threading.Event) -> int:
    scheduler.start(cfg.model)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True)
    thread.start()
    pid = os.getpid()
    client_host = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else ("::1" if cfg.host == "::" else cfg.host)
    try:
        write_runtime(
            RuntimeInfo(server.port, server.token, pid, server.version, PROTOCOL_VERSION, client_host), path
        )
        log.info(
            "worker %s (protocol %d, pid %d) listening on %s:%d, device %s; runtime file %s",
            server.version,
            PROTOCOL_VERSION,
            pid,
            cfg.host,
            server.port,
            models.device,
            path,
        )
        while not stop.wait(0.5):
            if cfg.idle_exit_s is not None and server.idle_for() > cfg.idle_exit_s:
                log.info("idle for %.0f s: exiting", cfg.idle_exit_s)
                break
        log.info("shutting down")
        scheduler.stop(timeout=60.0)
        _drain(server, 2.0)  # clients following a job get its cancellation before the port closes
        server.shutdown()
        server.server_close()
        models.unload()
    finally:
        remove_runtime(pid, path)
    log.info("stopped")
    return EXIT_OK


def _drain(server: WorkerServer, limit: float, quiet: float = 0.3) -> None:
    """Keep answering until requests have stopped for `quiet` seconds (at most `limit`): a host that
    follows a job re-polls between progress answers and must still get its final 'cancelled'."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.quiet_for() >= quiet:
            return
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lorair worker", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
