"""OpenMP's wait policy per command: passive for the hour-long jobs, spinning (governed) for restores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lorair_desktop.cli import set_wait_policy


@pytest.mark.parametrize(("argv", "passive"), [
    (["train", "--preset", "compact"], True),
    (["-v", "eval", "--quick"], True),
    (["data", "fetch"], True),
    (["restore", "in.png", "-o", "out.png"], False),
    (["worker", "--idle-exit", "10"], False),
    (["bench", "--quick"], False),
    ([], False),
])
def test_policy_by_command(argv: list[str], passive: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    set_wait_policy(argv)
    assert (os.environ.get("OMP_WAIT_POLICY") == "PASSIVE") is passive


def test_users_own_policy_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    set_wait_policy(["train"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_set_before_torch_loads() -> None:
    """The policy only works if torch (and its OpenMP) is not loaded yet when the CLI decides."""
    code = ("import sys\nimport lorair_desktop.cli as c\nassert 'torch' not in sys.modules\n"
            "c.set_wait_policy(['train'])\nprint('ok')")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "ok"
