"""Fixtures for the plugin tests: one real worker process on the small model for the whole session."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lorair_desktop.plugins_install import install

from .support import RunningWorker, start_worker, stop_worker


@pytest.fixture(scope="session")
def plugin_worker(small_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    base = tmp_path_factory.mktemp("plugin-worker")
    worker = start_worker(small_model_path, base / "runtime", base / "worker.log")
    try:
        yield worker
    finally:
        stop_worker(worker)




def _forget(package: str) -> None:
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def krita_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`lorair_krita.restore` of an installed copy (with its vendored bridge, exactly what Krita
    loads); outside Krita the package registers nothing."""
    folder = tmp_path_factory.mktemp("pykrita")
    install("krita", folder)
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("lorair_krita.restore")
    finally:
        sys.path.remove(str(folder))
        _forget("lorair_krita")


@pytest.fixture(scope="module")
def gimp_logic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`lorair_gimp.logic` of an installed copy of the GIMP plug-in (its folder is sys.path[0] in GIMP)."""
    folder = install("gimp", tmp_path_factory.mktemp("plug-ins"))
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("lorair_gimp.logic")
    finally:
        sys.path.remove(str(folder))
        _forget("lorair_gimp")
