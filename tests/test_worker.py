"""The worker's run of a job: audit first, deliveries owed, metrics, sharding, HTTP endpoints."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from grafana_recorder import GrafanaRecorder
from vigil.sinks.annotations import GrafanaSink
from vigil.config import GrafanaSettings, Secret, load_settings
from vigil.detection.detectors import Scores
from vigil.detection.episodes import Episode
from vigil.errors import UpstreamUnavailable
from vigil.pipeline.core import DetectionResult, ScoredSeries
from vigil.sinks.base import Delivered
from vigil.worker.runner import Worker, in_shard
from vigil.worker.metrics import MetricsServer

T0 = 1_735_711_200_000
STEP_MS = 60_000


class FakeDetection:
    """Stands in for vigil.pipeline.Detection: returns scripted series, records the queries."""

    def __init__(self) -> None:
        self.queries = []
        self.next: list[ScoredSeries] | Exception = []

    def run(self, query, deadline_s=None):
        self.queries.append(query)
        if isinstance(self.next, Exception):
            raise self.next
        return DetectionResult(list(self.next))


def scored(instance: str, episodes, last_ms: int, score: float = 2.0) -> ScoredSeries:
    times = np.arange(last_ms - 10 * STEP_MS, last_ms + 1, STEP_MS, dtype=np.int64)
    values = np.full(times.size, 0.5)
    s = np.full(times.size, score)
    return ScoredSeries({"instance": instance, "job": "node"}, times, values, Scores(s, values, values - 0.1, values + 0.1),
                        np.zeros(times.size, np.int8), list(episodes), "iforest", None)


def ep(start, end=None):
    return Episode(start, end, start, 2.5, 0.97, 0.3, 0.2, 0.4, "CPU far above its usual level")


@pytest.fixture
def settings(tmp_path):
    path = tmp_path / "vigil.yml"
    path.write_text(f"""
audit: {{path: {tmp_path / 'audit.db'}}}
worker: {{lookback: 1h, max_backoff: 1s}}
alertmanager: {{url: "http://127.0.0.1:1"}}
jobs:
  - name: node-cpu
    query: node_cpu_usage
    every: 1m
    severity: critical
    model: iforest
""")
    return load_settings(path, environ={})


def make_worker(settings, grafana, detection, clock, am=None):
    sinks = {"grafana": GrafanaSink(GrafanaSettings(url=grafana.url, token=Secret("t")))}
    if am is not None:
        sinks["alertmanager"] = am
    return Worker(settings, detection=detection, sinks=sinks, clock_ms=lambda: clock[0])


class RecordingAlertSink:
    name = "alertmanager"
    request_timeout_s = 1.0

    def __init__(self):
        self.sent = []

    def deliver(self, episode, job, now_ms, remember):
        self.sent.append((episode.id, episode.end_ms))
        state = "firing" if episode.end_ms is None else "resolved"
        return Delivered(state, {"alert_state": state}, {"alert_state": state, "alert_sent_ms": now_ms})


def test_episode_lifecycle_through_runs(settings):
    detection, clock = FakeDetection(), [T0]
    am = RecordingAlertSink()
    with GrafanaRecorder("t") as grafana:
        worker = make_worker(settings, grafana, detection, clock, am)
        job = settings.jobs[0]
        detection.next = [scored("a", [ep(T0 - 2 * STEP_MS)], T0), scored("b", [], T0, score=0.2)]
        outcome = worker.run_job(job)
        assert (outcome.ok, outcome.series, outcome.started) == (True, 2, 1)
        query = detection.queries[0]
        assert (query.start_ms, query.end_ms, query.step_s, query.model) == (T0 - 3_600_000, T0, 60.0, "iforest")
        [stored] = worker.store.episodes(since_ms=0)
        assert stored.severity == "critical" and stored.alert_state == "pending"
        assert worker.store.backlog() == {"grafana": 1, "alertmanager": 1}  # committed before delivery
        assert worker.outbox.drain(10)
        assert len(grafana.annotations) == 1 and am.sent == [(stored.id, None)]

        clock[0] = T0 + 30_000  # within alertmanager.resend_every (60 s): no re-send yet
        detection.next = [scored("a", [ep(T0 - 2 * STEP_MS)], T0 + 30_000), scored("b", [], T0 + 30_000)]
        assert worker.run_job(job).extended == 1
        assert worker.outbox.drain(10)
        assert grafana.annotations[1]["timeEnd"] == T0 + 30_000 and len(am.sent) == 1  # extension: Grafana only

        clock[0] = T0 + 8 * STEP_MS
        detection.next = [scored("a", [ep(T0 - 2 * STEP_MS, T0 + 2 * STEP_MS)], clock[0]), scored("b", [], clock[0])]
        assert worker.run_job(job).ended == 1
        assert worker.outbox.drain(10)
        assert grafana.annotations[1]["timeEnd"] == T0 + 2 * STEP_MS and am.sent[-1] == (stored.id, T0 + 2 * STEP_MS)
        assert worker.store.episode(stored.id).alert_state == "resolved"
        assert len(grafana.annotations) == 1 and len(worker.store.episodes(since_ms=0)) == 1
        kinds = [e["kind"] for e in worker.store.events()]
        assert kinds.count("episode_started") == 1 and kinds.count("episode_ended") == 1

        text = worker.metrics.exposition().decode()
        assert 'vigil_anomaly_score{instance="a",job="node",vigil_job="node-cpu"} 2.0' in text
        assert 'vigil_episodes_started_total{vigil_job="node-cpu"} 1.0' in text
        assert 'vigil_episodes_ended_total{vigil_job="node-cpu"} 1.0' in text
        assert 'vigil_outbox_backlog{sink="grafana"} 0.0' in text
        assert 'vigil_job_last_success_timestamp_seconds{vigil_job="node-cpu"}' in text


def test_active_alerts_are_resent(settings):
    detection, clock = FakeDetection(), [T0]
    am = RecordingAlertSink()
    with GrafanaRecorder("t") as grafana:
        worker = make_worker(settings, grafana, detection, clock, am)
        detection.next = [scored("a", [ep(T0)], T0)]
        worker.run_job(settings.jobs[0])
        worker.outbox.drain(5)
        clock[0] = T0 + 30_000
        worker.outbox.deliver_due()
        assert len(am.sent) == 1
        clock[0] = T0 + 61_000  # alertmanager.resend_every defaults to 60 s
        worker.outbox.deliver_due()
        assert len(am.sent) == 2 and len(grafana.annotations) == 1


def test_failing_job_changes_nothing_and_is_counted(settings):
    detection, clock = FakeDetection(), [T0]
    with GrafanaRecorder("t") as grafana:
        worker = make_worker(settings, grafana, detection, clock)
        detection.next = [scored("a", [ep(T0)], T0)]
        worker.run_job(settings.jobs[0])
        detection.next = UpstreamUnavailable("Prometheus at http://x is unreachable")
        clock[0] = T0 + STEP_MS
        outcome = worker.run_job(settings.jobs[0])
        assert not outcome.ok and "unreachable" in outcome.error
        [stored] = worker.store.episodes(since_ms=0)
        assert stored.is_open  # an outage of Prometheus does not end the episode
        assert 'vigil_job_failures_total{vigil_job="node-cpu"} 1.0' in worker.metrics.exposition().decode()


def test_sharding_splits_series_between_workers(settings, tmp_path):
    keys = [f"instance=host-{i}" for i in range(200)]
    owners = [[k for k in keys if in_shard("node-cpu", k, i, 3)] for i in range(3)]
    assert sorted(sum(owners, [])) == sorted(keys) and all(40 < len(o) < 90 for o in owners)
    detection, clock = FakeDetection(), [T0]
    detection.next = [scored(f"host-{i}", [ep(T0)], T0) for i in range(30)]
    with GrafanaRecorder("t"):
        started = 0
        for index in range(3):
            store_settings = settings.replace(audit={"path": str(tmp_path / f"shard{index}.db")})
            worker = Worker(store_settings, detection=detection, sinks={}, shard_index=index, shard_count=3,
                            clock_ms=lambda: clock[0])
            started += worker.run_job(settings.jobs[0]).started
        assert started == 30
    with pytest.raises(ValueError, match="shard_index"):
        Worker(settings, detection=detection, sinks={}, shard_index=3, shard_count=3)


def test_metrics_server_serves_metrics_health_and_audit(settings):
    detection, clock = FakeDetection(), [T0]
    with GrafanaRecorder("t") as grafana:
        worker = make_worker(settings, grafana, detection, clock)
        detection.next = [scored("a", [ep(T0)], T0)]
        worker.run_job(settings.jobs[0])
        server = MetricsServer(worker.metrics, host="127.0.0.1", port=0, store=worker.store, healthy=worker.health).start()
        try:
            base = f"http://127.0.0.1:{server.port}"
            metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
            assert "vigil_anomaly_score{" in metrics and "vigil_outbox_backlog" in metrics
            health = json.load(urllib.request.urlopen(base + "/healthz", timeout=5))
            assert health["ok"] and health["backlog"]["grafana"] == 1
            rows = json.load(urllib.request.urlopen(base + f"/api/v1/audit?from={T0 - 86_400_000}", timeout=5))
            assert rows[0]["job"] == "node-cpu" and rows[0]["end"] is None
            with pytest.raises(urllib.error.HTTPError) as bad:
                urllib.request.urlopen(base + "/api/v1/audit?since=forever", timeout=5)
            assert bad.value.code == 400 and json.load(bad.value)["error"] == "bad_request"
        finally:
            server.stop()


def test_a_job_matching_nothing_is_warned_about_once_until_it_matches_again(settings, caplog):
    detection, clock = FakeDetection(), [T0]
    with GrafanaRecorder("t") as grafana:
        worker = make_worker(settings, grafana, detection, clock)
        job = settings.jobs[0]
        caplog.set_level("DEBUG", logger="vigil")

        def runs_logged(level: str) -> list[str]:
            return [r.getMessage() for r in caplog.records if r.levelname == level and "node-cpu" in r.getMessage()]

        detection.next = []
        for _ in range(3):
            worker.run_job(job)
            clock[0] += STEP_MS
        assert len(runs_logged("WARNING")) == 1 and "no series matched node_cpu_usage (" in runs_logged("WARNING")[0]
        assert not any("scored 0 series" in m for m in runs_logged("INFO"))
        assert len(runs_logged("DEBUG")) == 2
        detection.next = [scored("a", [], clock[0], score=0.2)]
        worker.run_job(job)
        assert any("matches series again" in m for m in runs_logged("INFO"))
        detection.next = []
        worker.run_job(job)
        assert len(runs_logged("WARNING")) == 2  # a new stretch of nothing is worth saying again
