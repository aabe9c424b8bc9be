"""The pipeline on real Prometheus data: training before the range, caching, shards, exclusions."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.config import ExcludeWindow
from vigil.pipeline.core import Detection, Query
from vigil.sources.prometheus import PrometheusClient

pytestmark = pytest.mark.real


@pytest.fixture()
def fits():
    return []


@pytest.fixture()
def detection(service_settings, fits):
    return Detection(service_settings, PrometheusClient.from_settings(service_settings.prometheus),
                     on_fit=lambda model, duration_s: fits.append(model))


def query(seeded, **kw):
    end_ms = seeded.end_ms
    return Query(expr=seeded.metric, start_ms=end_ms - 6 * 3600_000, end_ms=end_ms, step_s=60, **kw)


def test_series_filter_applies_before_any_model_is_fitted(detection, seeded_prometheus, fits):
    result = detection.run(query(seeded_prometheus, series_filter=lambda labels: labels["instance"] == "spiky"))
    assert [s.labels["instance"] for s in result.series] == ["spiky"]
    assert len(fits) == 1


def test_max_series_is_enforced_per_query_before_its_range_is_fetched(detection, seeded_prometheus, monkeypatch):
    from vigil.errors import BadRequest

    ranges = []
    real = detection.prometheus.query_range
    monkeypatch.setattr(detection.prometheus, "query_range", lambda *a, **k: ranges.append(a) or real(*a, **k))
    with pytest.raises(BadRequest, match=r"has 3 series \(counted at its end, before fetching the range\); at most 2"):
        detection.run(query(seeded_prometheus, max_series=2))
    assert ranges == []  # refused for the cost of one instant count, not of the range
    detection.run(query(seeded_prometheus, max_series=3))
    assert ranges
    # A refresh of a stored view is not counted again; what it fetches is still checked.
    with pytest.raises(BadRequest, match="returned 3 series; at most 2"):
        detection.run(query(seeded_prometheus, max_series=2))


def test_a_shard_is_limited_by_the_series_it_keeps_not_by_the_count(detection, seeded_prometheus):
    result = detection.run(query(seeded_prometheus, max_series=1,
                                 series_filter=lambda labels: labels["instance"] == "quiet"))
    assert [s.labels["instance"] for s in result.series] == ["quiet"]


def test_series_are_counted_in_one_instant_step_or_not_at_all(seeded_prometheus, service_settings):
    client = PrometheusClient.from_settings(service_settings.prometheus)
    at_s = seeded_prometheus.end_ms / 1000
    assert client.series_count(seeded_prometheus.metric, at_s) == 3
    assert client.series_count(f'{seeded_prometheus.metric}{{instance="nope"}}', at_s) == 0
    # Not a vector: no count (the range query gives Prometheus' own answer or error).
    assert client.series_count("1 + 1", at_s) is None
    assert client.series_count(f"{seeded_prometheus.metric}[5m]", at_s) is None
    # Counting every series costs Prometheus what reading them does: refused like the range query.
    from vigil.errors import BadRequest

    with pytest.raises(BadRequest, match="matches every series"):
        client.series_count('{__name__=~".+"}', at_s)


def test_episodes_carry_reasons_and_models_are_reused(detection, seeded_prometheus, fits):
    first = detection.run(query(seeded_prometheus, model="seasonal"))
    spiky = next(s for s in first.series if s.labels["instance"] == "spiky")
    assert spiky.episodes and "spiky" in spiky.episodes[0].reason
    assert spiky.model == "seasonal"
    assert len(fits) == 3
    detection.run(query(seeded_prometheus, model="seasonal"))
    assert len(fits) == 3


def test_panel_over_its_fit_budget_answers_with_the_baseline_and_trains_in_the_background(
        detection, seeded_prometheus, fits):
    first = detection.run(query(seeded_prometheus, model="iforest", fit_budget_s=0.0))
    # A zero budget: every series is answered by its baseline and trained in the background.
    assert [s.model for s in first.series] == ["seasonal (while iforest trains)"] * 3
    assert any("train in the background" in n for n in first.notices)
    detection._background.submit(lambda: None).result(timeout=30)  # background work done
    second = detection.run(query(seeded_prometheus, model="iforest", fit_budget_s=0.0))
    assert [s.model for s in second.series] == ["iforest"] * 3


def test_a_panel_uses_the_previous_slot_while_the_new_one_trains_but_never_a_later_one(
        detection, seeded_prometheus, fits):
    refit_ms = int(detection.settings.detection.refit_every_s * 1000)
    now = query(seeded_prometheus, model="seasonal", fit_budget_s=5.0)
    detection.run(now)
    assert len(fits) == 3
    # An hour later: the old models answer at once, new ones train in the background.
    later = Query(**{**now.__dict__, "start_ms": now.start_ms + refit_ms, "end_ms": now.end_ms + refit_ms})
    result = detection.run(later)
    assert [s.model for s in result.series] == ["seasonal"] * 3
    detection._background.submit(lambda: None).result(timeout=30)
    assert len(fits) == 6
    # An hour earlier: a model trained after the viewed start is never used.
    earlier = Query(**{**now.__dict__, "start_ms": now.start_ms - refit_ms, "end_ms": now.end_ms - refit_ms})
    detection.run(earlier)
    assert len(fits) == 9


def test_excluding_the_whole_history_means_cold_start(detection, seeded_prometheus):
    everything = (ExcludeWindow(seeded_prometheus.start_ms - 1, seeded_prometheus.end_ms),)
    result = detection.run(query(seeded_prometheus, exclude=everything))
    assert all("cold start" in s.model for s in result.series)
    assert any("history" in n for n in result.notices)


def _verdicts(result):
    return {(s.labels["instance"], int(t)): (float(v), int(f)) for s in result.series
            for t, v, f in zip(s.times_ms, s.scores.anomaly_score, s.is_anomaly)}


@pytest.mark.parametrize("model", ["auto", "iforest"])
def test_a_points_verdict_does_not_depend_on_how_it_is_viewed(detection, seeded_prometheus, model):
    """The same score and decision for a timestamp whether a panel shows 15 minutes or 7 days (at
    Grafana's step for each), and in a worker run (30 minutes at 60 s) that starts anywhere."""
    end_ms = seeded_prometheus.end_ms
    views = {}
    for span_s, step_s in ((900, 15), (1800, 60), (1800 + 37, 60), (3600, 15), (3 * 3600, 15), (7 * 86400 - 7200, 60)):
        result = detection.run(Query(expr=seeded_prometheus.metric, start_ms=end_ms - span_s * 1000, end_ms=end_ms,
                                     step_s=step_s, model=model))
        views[(span_s, step_s)] = _verdicts(result)
    longest = views[(7 * 86400 - 7200, 60)]
    for key, verdicts in views.items():
        common = set(verdicts) & set(longest)
        assert len(common) >= 3 * 14, key
        differ = {k: (verdicts[k], longest[k]) for k in common
                  if not (abs(verdicts[k][0] - longest[k][0]) < 1e-9 and verdicts[k][1] == longest[k][1])}
        assert not differ, (key, sorted(differ.items())[:3])


def test_a_coarse_panel_shows_each_buckets_most_anomalous_point(detection, seeded_prometheus):
    end_ms = seeded_prometheus.end_ms
    start_ms = end_ms - 6 * 3600_000
    fine = _verdicts(detection.run(Query(expr=seeded_prometheus.metric, start_ms=start_ms, end_ms=end_ms, step_s=60)))
    coarse = detection.run(Query(expr=seeded_prometheus.metric, start_ms=start_ms, end_ms=end_ms, step_s=600))
    checked = 0
    for s in coarse.series:
        instance = s.labels["instance"]
        assert np.all(np.diff(s.times_ms) == 600_000)
        for t, score, flag in zip(s.times_ms, s.scores.anomaly_score, s.is_anomaly):
            inside = [v for (i, u), v in fine.items() if i == instance and t - 600_000 < u <= t]
            if len(inside) < 10:
                continue
            assert score == max(v[0] for v in inside)
            assert flag == max(v[1] for v in inside)
            checked += 1
    assert checked >= 3 * 30
