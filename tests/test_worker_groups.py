"""A worker job with ``group_by``: one audit episode, annotation and alert per group episode, from a
real Prometheus (``GroupedPrometheus``) to the Grafana recorder."""

from __future__ import annotations

import pytest

from grafana_recorder import GrafanaRecorder
from vigil.config import ConfigError, load_settings
from vigil.worker.runner import Worker

pytestmark = pytest.mark.real

TOKEN = "glsa_group_test"


def write_config(tmp_path, body: str):
    path = tmp_path / "vigil.yml"
    path.write_text(body)
    return path


def test_a_worker_run_records_one_episode_per_group_episode(tmp_path, grouped_prometheus):
    with GrafanaRecorder(TOKEN) as grafana:
        path = write_config(tmp_path, f"""
prometheus: {{url: "{grouped_prometheus.url}"}}
grafana: {{url: "{grafana.url}", token: {TOKEN}}}
audit: {{path: "{tmp_path / 'audit.db'}"}}
worker: {{lookback: 4h}}
jobs:
  - name: cpu-modes
    query: {grouped_prometheus.metric}
    every: 1m
    group_by: [instance]
""")
        worker = Worker(load_settings(path, environ={}))
        assert worker.run_once(drain_s=10) == 0
        [episode] = worker.store.episodes(since_ms=0)
        assert episode.job == "cpu-modes"
        assert episode.series_key == "instance=odd" and episode.labels == {"instance": "odd"}
        assert episode.model == "group-iforest"
        [event] = grouped_prometheus.events_ms["odd"]
        assert episode.start_ms <= event[1] and (episode.end_ms or episode.last_ms) >= event[0]
        assert "unusual combination across 3 series" in episode.reason and "driven by mode=system" in episode.reason
        [annotation] = grafana.annotations.values()
        assert "driven by mode=system" in annotation["text"]
        assert {"anomaly", "cpu-modes", "instance:odd"} <= set(annotation["tags"])
        metrics = worker.metrics.exposition().decode()
        assert 'vigil_anomaly_score{instance="odd",vigil_job="cpu-modes"}' in metrics
        assert 'vigil_series_watched{vigil_job="cpu-modes"} 3.0' in metrics  # three groups

        # The next run sees the same episode: nothing new is recorded or sent.
        assert worker.run_once(drain_s=10) == 0
        assert len(worker.store.episodes(since_ms=0)) == 1 and len(grafana.annotations) == 1
        kinds = [e["kind"] for e in worker.store.events()]
        assert kinds.count("episode_started") == 1


def test_shards_split_groups_not_their_members(tmp_path, grouped_prometheus):
    path = write_config(tmp_path, f"""
prometheus: {{url: "{grouped_prometheus.url}"}}
worker: {{lookback: 2h}}
jobs:
  - {{name: cpu-modes, query: {grouped_prometheus.metric}, every: 1m, group_by: [instance]}}
""")
    settings = load_settings(path, environ={})
    watched = []
    for index in range(2):
        shard = settings.replace(audit={"path": str(tmp_path / f"shard{index}.db")})
        worker = Worker(shard, sinks={}, shard_index=index, shard_count=2)
        outcome = worker.run_job(settings.jobs[0])
        assert outcome.ok, outcome.error
        watched.append(outcome.series)
    assert sum(watched) == 3  # each of the three groups is watched, whole, by exactly one shard


@pytest.mark.parametrize("group_by, needle", [
    ("instance", "jobs[0].group_by: must be a list of strings; got 'instance'"),
    ("[1instance]", "jobs[0].group_by[0]: must be a label name"),
    ("[instance, instance]", "jobs[0].group_by: must be label names without repeats"),
])
def test_a_bad_job_group_by_is_a_config_error(tmp_path, group_by, needle):
    path = write_config(tmp_path, f"jobs:\n  - {{name: a, query: up, group_by: {group_by}}}\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert any(needle in problem for problem in error.value.problems), error.value.problems
