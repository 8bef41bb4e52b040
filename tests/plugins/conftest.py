"""Fixtures for the plugin tests: one real worker process on the small model for the whole session,
and the plugins' plain-Python modules from installed copies."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lorair_desktop.plugins_install import SPECS, install

from .support import RunningWorker, start_worker, stop_worker


@pytest.fixture(scope="session")
def plugin_worker(small_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    base = tmp_path_factory.mktemp("plugin-worker")
    worker = start_worker(small_model_path, base / "runtime", base / "worker.log")
    try:
        yield worker
    finally:
        stop_worker(worker)


def _installed_module(host: str, folder: Path, module: str) -> Iterator[Any]:
    """`module` of a copy installed into `folder` (with its vendored bridge, exactly what the host
    loads), importable while the fixture lasts."""
    install(host, folder)
    path = (folder / SPECS[host].package).parent  # where the host finds the package
    package = module.split(".")[0]
    sys.path.insert(0, str(path))
    try:
        yield importlib.import_module(module)
    finally:
        sys.path.remove(str(path))
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def krita_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`lorair_krita.restore` of an installed copy; outside Krita the package registers nothing."""
    yield from _installed_module("krita", tmp_path_factory.mktemp("pykrita"), "lorair_krita.restore")


@pytest.fixture(scope="module")
def gimp_logic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`lorair_gimp.logic` of an installed copy of the GIMP plug-in (its folder is sys.path[0] in GIMP)."""
    yield from _installed_module("gimp", tmp_path_factory.mktemp("plug-ins"), "lorair_gimp.logic")
