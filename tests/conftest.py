"""Shared pytest fixtures: real Prometheus, Alertmanager and node_exporter processes.

Owns the lifetime of every real process a test uses: each fixture stops what it started, even
when the test fails. Helpers to start binaries live in ``realstack.py`` (import it as
``from realstack import ...``); the seeded history comes from ``vigil.synthetic``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from realstack import Process, start_alertmanager, start_node_exporter, start_prometheus
from vigil.openmetrics import to_openmetrics
from vigil.synthetic import LabelledSeries, generate


@pytest.fixture(scope="session")
def node_exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """One real node_exporter for the whole session."""
    process = start_node_exporter(tmp_path_factory.mktemp("node-exporter"))
    try:
        yield process
    finally:
        process.stop()


@contextmanager
def _stopped_after(start: Callable[..., Process]) -> Iterator[Callable[..., Process]]:
    """A factory wrapping ``start``; every process it started is stopped on exit."""
    started: list[Process] = []

    def factory(*args: Any, **kwargs: Any) -> Process:
        process = start(*args, **kwargs)
        started.append(process)
        return process

    try:
        yield factory
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """``prometheus_factory(**kwargs)`` = ``realstack.start_prometheus(tmp_path, **kwargs)``, stopped after the test."""
    with _stopped_after(lambda **kwargs: start_prometheus(tmp_path, **kwargs)) as factory:
        yield factory


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[Callable[[str], Process]]:
    """``alertmanager_factory(config_yaml)`` starts a real Alertmanager, stopped after the test."""
    with _stopped_after(lambda config_yaml: start_alertmanager(tmp_path, config_yaml)) as factory:
        yield factory


SEEDED_METRIC = "vigil_test_cpu"
SEEDED_JOB = "vigil-test"
SEEDED_DAYS = 7
SEEDED_STEP_S = 60.0
SEEDED_ANOMALY_HOURS = 6.0
NODE_JOB = "node"


@dataclass(frozen=True)
class SeededPrometheus:
    """A running Prometheus with planted history, and the ground truth of what was planted.

    ``series`` maps the ``instance`` label to the planted series; its labels in Prometheus are
    ``{__name__: metric, job: job, instance: <key>}``. ``events_ms[instance]`` lists the planted
    anomalies as ``(start_ms, end_ms)``, both inclusive (empty for quiet series). History runs from
    ``start_ms`` to ``end_ms`` (inclusive) every ``step_s``; anomalies lie in the last
    ``SEEDED_ANOMALY_HOURS`` hours. Prometheus also scrapes the session node_exporter as job ``node``.
    """

    process: Process
    url: str
    metric: str
    job: str
    node_job: str
    start_ms: int
    end_ms: int
    step_s: float
    series: dict[str, LabelledSeries]
    events_ms: dict[str, list[tuple[int, int]]]

    def labels(self, instance: str) -> dict[str, str]:
        return {"__name__": self.metric, "job": self.job, "instance": instance}


def seeded_series(end_ms: int) -> dict[str, LabelledSeries]:
    """The planted cpu series: a spike, a level shift, and a quiet one, ending at ``end_ms``."""
    points = int(round(SEEDED_DAYS * 86400 / SEEDED_STEP_S))
    start_ms = end_ms - (points - 1) * int(SEEDED_STEP_S * 1000)
    after = 1.0 - SEEDED_ANOMALY_HOURS / (SEEDED_DAYS * 24)
    common = dict(days=SEEDED_DAYS, step_s=SEEDED_STEP_S, start_ms=start_ms, anomaly_after_fraction=after)
    return {
        "spiky": generate("cpu", seed=11, kind="spike", **common),
        "shifted": generate("cpu", seed=12, kind="level_shift", **common),
        "quiet": generate("cpu", seed=13, **common),
    }


@pytest.fixture(scope="session")
def seeded_prometheus(tmp_path_factory: pytest.TempPathFactory, node_exporter: Process) -> Iterator[SeededPrometheus]:
    """Prometheus with 7 days of 60 s cpu history (backfilled) that also scrapes node_exporter."""
    step_ms = int(SEEDED_STEP_S * 1000)
    # End one step before now, on a step boundary: backfilled data must lie before the start.
    end_ms = (int(time.time() * 1000) // step_ms - 1) * step_ms
    planted = seeded_series(end_ms)
    text = to_openmetrics([
        (SEEDED_METRIC, [({"job": SEEDED_JOB, "instance": instance}, s.times_ms, s.values)
                         for instance, s in planted.items()]),
    ])
    process = start_prometheus(
        tmp_path_factory.mktemp("seeded-prometheus"),
        openmetrics=text,
        scrape_targets=[(NODE_JOB, f"127.0.0.1:{node_exporter.port}")],
    )
    try:
        yield SeededPrometheus(
            process=process, url=process.url, metric=SEEDED_METRIC, job=SEEDED_JOB, node_job=NODE_JOB,
            start_ms=int(planted["quiet"].times_ms[0]), end_ms=end_ms, step_s=SEEDED_STEP_S,
            series=planted, events_ms={instance: list(s.events) for instance, s in planted.items()},
        )
    finally:
        process.stop()


# --- the Vigil service over the seeded Prometheus ------------------------------------------------

@pytest.fixture(scope="session")
def service_settings(seeded_prometheus: SeededPrometheus):
    from vigil.config import Settings

    return Settings().replace(prometheus={"url": seeded_prometheus.url, "request_timeout_s": 5.0})


@pytest.fixture(scope="session")
def service_app(service_settings):
    """One app for the session, so tests also see the model cache at work."""
    from vigil.http.app import create_app

    return create_app(service_settings)


@pytest.fixture()
def client(service_app):
    return service_app.test_client()
