"""Explanations an on-call person can act on."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.detection.baseline import SeasonalBaseline
from vigil.detection.episodes import Episode
from vigil.detection.explain import compare, explain, format_value
from vigil_dev.synthetic import generate


def test_reason_names_series_value_expectation_ratio_moment_range_and_model():
    s = generate("cpu", days=8, step_s=300, seed=0)
    model = SeasonalBaseline(step_s=300).fit(s.times_ms, s.values)
    tuesday_14h = int(s.times_ms[0]) + 8 * 86_400_000 + 14 * 3_600_000  # 2024-01-09 (a Tuesday)
    yhat = float(model.score(np.array([tuesday_14h]), np.array([np.nan])).yhat[0])
    spread = model.spread_at(tuesday_14h)
    value = 2 * yhat + 4 * spread
    e = Episode(tuesday_14h, None, tuesday_14h, 1.3, value, yhat, yhat - 3 * spread, yhat + 3 * spread)
    text = explain(e, model, unit="percentunit", series="node_cpu_usage{instance=\"node-1\"}")
    ratio = value / yhat
    assert text.startswith(f'node_cpu_usage{{instance="node-1"}} at {format_value(value, "percentunit")}, '
                           f"about {ratio:.{1 if ratio < 3 else 0}f}x the expected {format_value(yhat, 'percentunit')}")
    assert "spread" not in text  # jargon a person on call does not need
    assert "14:00 UTC" in text and "Tuesday" in text
    assert f"usual range {format_value(yhat - 3 * spread, 'percentunit')} to" in text
    assert "anomaly score 1.30 where 1.0 is the threshold, model seasonal" in text


@pytest.mark.parametrize("value, expected, unit, said", [
    (6.2, 1.2, "reqps", "about 5x the expected 1.2 req/s"),
    (1.9, 1.2, "reqps", "about 1.6x the expected 1.2 req/s"),
    (1.4, 1.2, "reqps", "above the expected 1.2 req/s"),
    (0.5, 1.2, "reqps", "about 42% of the expected 1.2 req/s"),
    (0.001, 1.2, None, "almost nothing of the expected 1.2"),
    (4.5e6, 1e3, None, "over 1000x the expected 1k"),
    (5.5 * 2**30, 2 * 2**30, "bytes", "about 2.8x the expected 2 GiB"),
    (-3.0, 2.0, None, "below the expected 2"),
    (5.0, 0.0, None, "above the expected 0"),
])
def test_comparisons_are_plain_ratios_with_units_and_readable_numbers(value, expected, unit, said):
    assert compare(value, expected, unit) == said


def test_units_are_human():
    assert format_value(0.8123, "percentunit") == "81.2%"
    assert format_value(3 * 2**30, "bytes") == "3 GiB"
    assert format_value(0.25, "s") == "250 ms"
    assert format_value(float("nan")) == "no data"


def test_a_pattern_inside_the_band_is_called_a_pattern():
    s = generate("cpu", days=8, step_s=300, seed=0)
    model = SeasonalBaseline(step_s=300).fit(s.times_ms, s.values)
    t = int(s.times_ms[-1]) + 300_000
    spread = model.spread_at(t)
    e = Episode(t, None, t, 1.1, 0.5 + 1.5 * spread, 0.5, 0.5 - 4 * spread, 0.5 + 4 * spread)
    text = explain(e, model)
    assert "inside its usual range" in text and "flagged for its recent pattern" in text
    assert "expected 0.5" in text
