"""`lorair worker` options and the remote opt-in."""

from __future__ import annotations

from pathlib import Path

from lorair_desktop.worker.config import WorkerConfig
from lorair_desktop.worker.main import EXIT_CONFIG, config_from_args, run, serve

from .conftest import inproc_worker, raw


def test_worker_subcommand_is_registered() -> None:
    from lorair_desktop.cli import SUBCOMMANDS, build_parser

    assert SUBCOMMANDS["worker"] == "lorair_desktop.worker.main"
    argv = [
        "worker",
        "--port",
        "0",
        "--device",
        "cpu",
        "--model",
        "m.safetensors",
        "--idle-exit",
        "1.5",
        "--queue-size",
        "3",
        "--threads",
        "2",
    ]
    args = build_parser(argv).parse_args(argv)
    assert args.func is run
    cfg = config_from_args(args)
    assert (cfg.host, cfg.port, cfg.device, cfg.model, cfg.allow_remote) == (
        "127.0.0.1",
        0,
        "cpu",
        "m.safetensors",
        False,
    )
    assert cfg.idle_exit_s == 90.0 and cfg.limits.queue_size == 3 and cfg.threads == 2


def test_non_loopback_bind_needs_explicit_opt_in(tmp_path: Path) -> None:
    assert serve(WorkerConfig(host="0.0.0.0", runtime_dir=tmp_path)) == EXIT_CONFIG
    assert not (tmp_path / "worker.json").exists()


def test_allow_remote_accepts_other_host_names_but_still_needs_the_token(
    small_model_path: Path, tmp_path: Path
) -> None:
    cfg = WorkerConfig(model=str(small_model_path), device="cpu", runtime_dir=tmp_path / "rt", allow_remote=True)
    with inproc_worker(cfg) as client:
        assert raw(client, "GET", "/v1/info", host="gpu-box.lan:8000")[0] == 200
        assert raw(client, "GET", "/v1/info", host="gpu-box.lan:8000", token=None)[0] == 401
        assert raw(client, "GET", "/v1/info", headers={"Origin": "https://evil.example"})[0] == 403
