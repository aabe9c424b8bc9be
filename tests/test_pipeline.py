"""The pipeline on real Prometheus data: training before the range, caching, shards, exclusions."""

from __future__ import annotations

import pytest

from vigil.config import ExcludeWindow
from vigil.pipeline import Detection, Query
from vigil.prometheus import PrometheusClient

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


def test_max_series_is_enforced_per_query(detection, seeded_prometheus):
    from vigil.errors import BadRequest

    with pytest.raises(BadRequest, match="returned 3 series; at most 2"):
        detection.run(query(seeded_prometheus, max_series=2))


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


def test_a_points_score_does_not_depend_on_where_the_range_starts(detection, seeded_prometheus):
    """Worker runs start their lookback at different instants; the same point must score the same."""
    end_ms = seeded_prometheus.end_ms
    refit_ms = int(detection.settings.detection.refit_every_s * 1000)
    slot_start = (end_ms // refit_ms - 1) * refit_ms  # the last whole refit slot: both starts lie in it
    scores = []
    for start_ms in (slot_start + 7_000, slot_start + 20 * 60_000 + 31_000):
        result = detection.run(Query(expr=seeded_prometheus.metric, start_ms=start_ms, end_ms=end_ms, step_s=60,
                                     model="iforest"))
        scores.append({(s.labels["instance"], int(t)): float(v) for s in result.series
                       for t, v in zip(s.times_ms, s.scores.anomaly_score)})
    common = set(scores[0]) & set(scores[1])
    assert len(common) >= 3 * 30
    differ = {k: (scores[0][k], scores[1][k]) for k in common if not abs(scores[0][k] - scores[1][k]) < 1e-9}
    assert not differ
