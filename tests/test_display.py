"""One value formatter for reasons, annotations and alerts: what a person reads."""

from __future__ import annotations

import time

import pytest

from vigil.sinks.alerts import describe
from vigil.sinks.annotations import annotation_text
from vigil.store.audit import StoredEpisode
from vigil.display import format_instant, format_span, format_value

NOW_MS = int(time.time() * 1000)


@pytest.mark.parametrize("value, unit, text", [
    (0.8734, "percentunit", "87.3%"),
    (87.34, "percent", "87.3%"),
    (3 * 2**30, "bytes", "3 GiB"),
    (512, "bytes", "512 B"),
    (0.25, "s", "250 ms"),
    (12.5, "s", "12.5 s"),
    (1234.5, "reqps", "1.23k req/s"),
    (12_345_678, None, "12.3M"),
    (4_500_000_000, "short", "4.5G"),
    (0.8734, None, "0.873"),
    (-2500, None, "-2.5k"),
    (7, "widgets", "7 widgets"),
    (None, "percentunit", "no data"),
    (float("nan"), None, "no data"),
    (float("inf"), None, "infinite"),
])
def test_values_read_as_a_person_would_write_them(value, unit, text):
    assert format_value(value, unit) == text


def test_instants_and_spans_are_dated_in_utc():
    assert format_instant(1704067200000) == "2024-01-01 00:00 UTC"
    assert format_span(1704067200000, 1704067200000 + 45 * 60_000) == "2024-01-01 00:00 to 00:45 UTC (45m)"
    assert format_span(1704067200000, 1704067200000 + 26 * 3600_000) == "2024-01-01 00:00 to 2024-01-02 02:00 UTC (1d2h)"
    assert format_span(1704067200000, None) == "since 2024-01-01 00:00 UTC (still going on)"
    assert format_span(1704067200000, 1704067200000) == "2024-01-01 00:00 UTC (one point)"
    assert format_span(1704067200000, 1704067200000 + 60_000, ended=True) == "ended, 2024-01-01 00:00 to 00:01 UTC (1m)"
    assert format_span(1704067200000, None, ended=True) == "since 2024-01-01 00:00 UTC (still going on)"


def _episode(**overrides) -> StoredEpisode:
    values = dict(id="e1", job="node-cpu", series_key="instance=web-1", labels={"instance": "web-1"},
                  start_ms=NOW_MS - 600_000, end_ms=None, last_ms=NOW_MS, peak_ms=NOW_MS - 300_000, peak_score=2.4,
                  peak_value=0.8734, yhat=0.31, yhat_lower=0.22, yhat_upper=0.41, reason="CPU high",
                  model="iforest", unit="percentunit", severity="warning", annotation_id=None,
                  alert_state="pending", alert_sent_ms=None, created_ms=NOW_MS, updated_ms=NOW_MS)
    values.update(overrides)
    return StoredEpisode(**values)


def test_alerts_and_annotations_say_values_as_the_panel_does():
    for text in (describe(_episode()), annotation_text(_episode())):
        assert "87.3%" in text and "[22%, 41%]" in text
        assert "percentunit" not in text and "0.8734" not in text


def test_large_values_in_alerts_are_readable():
    text = describe(_episode(unit="bytes", peak_value=5.5 * 2**30, yhat=2 * 2**30, yhat_lower=2**30,
                             yhat_upper=3 * 2**30))
    assert "5.5 GiB" in text and "[1 GiB, 3 GiB]" in text


def test_alerts_and_annotations_do_not_repeat_numbers_the_reason_already_says():
    reason = ("web-1: 87.3% is 4.3x the usual spread above the expected 31% for Tuesday 14:00 UTC "
              "(band 22% to 41%; score 2.40, model iforest)")
    episode = _episode(reason=reason)
    for text in (describe(episode), annotation_text(episode)):
        assert reason in text
        assert text.count("87.3%") == 1 and text.count("2.40") == 1
        assert "UTC (" in text  # when, in words: "... to ... UTC (10m)" or "since ... (still going on)"
