"""Shared pytest fixtures: real Prometheus, Alertmanager and node_exporter processes.

Owns the lifetime of every real process a test uses: each fixture stops what it started, even
when the test fails. Helpers to start binaries live in ``realstack.py`` (import it as
``from realstack import ...``); the seeded history comes from ``vigil_dev.synthetic``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from realstack import Process, start_alertmanager, start_node_exporter, start_prometheus
from vigil_dev.openmetrics import to_openmetrics
from vigil_dev.synthetic import LabelledSeries, generate


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
    # The planted spike made unmistakable: twice the generator's deviation (~12 spreads, where
    # the medium threshold sits at ~6 on a clean series), so tests of the plumbing do not hang on
    # whether a borderline spike crosses it. Quality is measured elsewhere (bench, test_detectors).
    spike = generate("cpu", seed=11, kind="spike", **common)
    clean = generate("cpu", seed=11, **common)
    spike = spike._replace(values=clean.values + 2.0 * (spike.values - clean.values))
    return {
        "spiky": spike,
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


@pytest.fixture(scope="module")
def service_app(service_settings):
    """One app (and model cache, and metrics registry) per test module: the tests of one module
    see the cache at work, and no module depends on what another one fitted or counted. Not per
    test: every test would then refit every model, which on a slow machine multiplies the suite."""
    from vigil.http.app import create_app

    return create_app(service_settings)


@pytest.fixture()
def client(service_app):
    return service_app.test_client()


# --- a Prometheus with groups of series that move together (multivariate) -------------------------

GROUPED_METRIC = "vigil_test_group_cpu"
GROUPED_JOB = "vigil-group"
WIDE_METRIC = "vigil_test_group_wide"
WIDE_SERIES = 33
GROUPED_MODES = ("user", "system", "softirq")


@dataclass(frozen=True)
class GroupedPrometheus:
    """A running Prometheus with groups of cpu-mode series, and where the group anomaly was planted.

    ``{__name__: GROUPED_METRIC, job: GROUPED_JOB, instance, mode}``: instance ``odd`` and ``calm``
    have the three modes of ``GROUPED_MODES``, driven by one shared load (they move together);
    ``solo`` has ``mode="user"`` only. In ``odd``, ``mode="system"`` alone rises by 2.5 of its own
    spreads for 20 minutes at ``events_ms["odd"]`` (within the last 6 hours, where the shared load
    is near its normal level), which leaves every series inside its own band. ``WIDE_METRIC`` has
    ``WIDE_SERIES`` series of ``instance="wide"`` over the last 2 hours (a group too large).
    """

    process: Process
    url: str
    metric: str
    wide_metric: str
    job: str
    end_ms: int
    step_s: float
    events_ms: dict[str, list[tuple[int, int]]]
    driver: str


def grouped_series(end_ms: int) -> tuple[dict[tuple[str, str], tuple[Any, Any]], list[tuple[int, int]]]:
    """``{(instance, mode): (times_ms, values)}`` and the planted event of instance ``odd``."""
    import numpy as np

    from vigil.detection.baseline import SeasonalBaseline

    points = int(round(SEEDED_DAYS * 86400 / SEEDED_STEP_S))
    start_ms = end_ms - (points - 1) * int(SEEDED_STEP_S * 1000)
    out: dict[tuple[str, str], tuple[Any, Any]] = {}
    event: list[tuple[int, int]] = []
    for instance, seed in (("odd", 3), ("calm", 4), ("solo", 5)):
        base = generate("cpu", days=SEEDED_DAYS, step_s=SEEDED_STEP_S, seed=seed, start_ms=start_ms)
        n = base.values.size
        rng = np.random.default_rng(seed + 100)
        load = np.convolve(rng.standard_normal(n), np.ones(15) / 15, mode="same") * 0.1
        modes = {"user": base.values + load + 0.004 * rng.standard_normal(n),
                 "system": 0.5 * base.values + 0.5 * load + 0.003 * rng.standard_normal(n),
                 "softirq": 0.2 * base.values + 0.2 * load + 0.002 * rng.standard_normal(n)}
        if instance == "odd":
            width = 20
            hour = int(3600 / SEEDED_STEP_S)
            # Where the shared load is calm: "system rose while user and softirq stayed normal".
            starts = np.arange(n - 6 * hour, n - hour - width)
            i = int(starts[np.argmin([np.abs(load[s:s + width]).max() for s in starts])])
            history = slice(0, i - 12 * hour, 5)
            spread = SeasonalBaseline(step_s=SEEDED_STEP_S).fit(base.times_ms[history], modes["system"][history])
            modes["system"] = modes["system"].copy()
            modes["system"][i:i + width] += 2.5 * spread.spread_at(int(base.times_ms[i]))
            event.append((int(base.times_ms[i]), int(base.times_ms[i + width - 1])))
        for mode, values in modes.items():
            if instance != "solo" or mode == "user":
                out[(instance, mode)] = (base.times_ms, values)
    return out, event


@pytest.fixture(scope="session")
def grouped_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GroupedPrometheus]:
    """Prometheus with 7 days of 60 s history of groups of series (see :class:`GroupedPrometheus`)."""
    import numpy as np

    step_ms = int(SEEDED_STEP_S * 1000)
    end_ms = (int(time.time() * 1000) // step_ms - 1) * step_ms
    planted, event = grouped_series(end_ms)
    wide_times = np.arange(end_ms - 2 * 3600_000, end_ms + 1, step_ms, dtype=np.int64)
    wide_rng = np.random.default_rng(9)
    text = to_openmetrics([
        (GROUPED_METRIC, [({"job": GROUPED_JOB, "instance": instance, "mode": mode}, t, v)
                          for (instance, mode), (t, v) in planted.items()]),
        (WIDE_METRIC, [({"job": GROUPED_JOB, "instance": "wide", "n": str(k)}, wide_times,
                        1.0 + 0.1 * wide_rng.standard_normal(wide_times.size)) for k in range(WIDE_SERIES)]),
    ])
    process = start_prometheus(tmp_path_factory.mktemp("grouped-prometheus"), openmetrics=text)
    try:
        yield GroupedPrometheus(process=process, url=process.url, metric=GROUPED_METRIC, wide_metric=WIDE_METRIC,
                                job=GROUPED_JOB, end_ms=end_ms, step_s=SEEDED_STEP_S,
                                events_ms={"odd": event, "calm": [], "solo": []}, driver="mode=system")
    finally:
        process.stop()
