"""The pipeline on real Prometheus data: training before the range, caching, shards, exclusions."""

from __future__ import annotations

import pytest

from vigil.config import ExcludeWindow
from vigil.pipeline import Detection, Query
from vigil.prometheus import PrometheusClient

pytestmark = pytest.mark.real


@pytest.fixture()
def detection(service_settings):
    return Detection(service_settings, PrometheusClient.from_settings(service_settings.prometheus))


def query(seeded, **kw):
    end_ms = seeded.end_ms
    return Query(expr=seeded.metric, start_ms=end_ms - 6 * 3600_000, end_ms=end_ms, step_s=60, **kw)


def test_series_filter_applies_before_any_model_is_fitted(detection, seeded_prometheus):
    result = detection.run(query(seeded_prometheus, series_filter=lambda labels: labels["instance"] == "spiky"))
    assert [s.labels["instance"] for s in result.series] == ["spiky"]
    assert len(detection.cache) == 1


def test_max_series_is_enforced_per_query(detection, seeded_prometheus):
    from vigil.errors import BadRequest

    with pytest.raises(BadRequest, match="returned 3 series; at most 2"):
        detection.run(query(seeded_prometheus, max_series=2))


def test_episodes_carry_reasons_and_models_are_reused(detection, seeded_prometheus):
    first = detection.run(query(seeded_prometheus, model="seasonal"))
    spiky = next(s for s in first.series if s.labels["instance"] == "spiky")
    assert spiky.episodes and "spiky" in spiky.episodes[0].reason
    assert spiky.model == "seasonal"
    fitted = len(detection.cache)
    detection.run(query(seeded_prometheus, model="seasonal"))
    assert len(detection.cache) == fitted


def test_excluding_the_whole_history_means_cold_start(detection, seeded_prometheus):
    everything = (ExcludeWindow(seeded_prometheus.start_ms - 1, seeded_prometheus.end_ms),)
    result = detection.run(query(seeded_prometheus, exclude=everything))
    assert all("cold start" in s.model for s in result.series)
    assert any("history" in n for n in result.notices)
