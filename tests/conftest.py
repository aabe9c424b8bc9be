"""Shared pytest fixtures: real Prometheus, Alertmanager and node_exporter processes.

Owns the lifetime of every real process a test uses: each fixture stops what it started, even
when the test fails. Helpers to start binaries live in ``realstack.py`` (import it as
``from realstack import ...``); the seeded history comes from ``vigil.synthetic``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from realstack import Process, start_alertmanager, start_node_exporter, start_prometheus


@pytest.fixture(scope="session")
def node_exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """One real node_exporter for the whole session."""
    process = start_node_exporter(tmp_path_factory.mktemp("node-exporter"))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """``prometheus_factory(**kwargs)`` = ``realstack.start_prometheus(tmp_path, **kwargs)``, stopped after the test."""
    started: list[Process] = []

    def factory(**kwargs: Any) -> Process:
        process = start_prometheus(tmp_path, **kwargs)
        started.append(process)
        return process

    try:
        yield factory
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[Callable[[str], Process]]:
    """``alertmanager_factory(config_yaml)`` starts a real Alertmanager, stopped after the test."""
    started: list[Process] = []

    def factory(config_yaml: str) -> Process:
        process = start_alertmanager(tmp_path, config_yaml)
        started.append(process)
        return process

    try:
        yield factory
    finally:
        for process in started:
            process.stop()
