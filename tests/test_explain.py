"""Explanations an on-call person can act on."""

from __future__ import annotations

import re

import numpy as np

from vigil.baseline import SeasonalBaseline
from vigil.episodes import Episode
from vigil.explain import explain, format_value
from vigil.synthetic import generate


def test_reason_names_value_expectation_spread_moment_band_and_model():
    s = generate("cpu", days=8, step_s=300, seed=0)
    model = SeasonalBaseline(step_s=300).fit(s.times_ms, s.values)
    tuesday_14h = int(s.times_ms[0]) + 8 * 86_400_000 + 14 * 3_600_000  # 2024-01-09 (a Tuesday)
    yhat = float(model.score(np.array([tuesday_14h]), np.array([np.nan])).yhat[0])
    spread = model.spread_at(tuesday_14h)
    value = yhat + 4.3 * spread
    e = Episode(tuesday_14h, None, tuesday_14h, 1.3, value, yhat, yhat - 3 * spread, yhat + 3 * spread)
    text = explain(e, model, unit="percentunit", series="node-1")
    assert text.startswith("node-1: ")
    assert "4.3x the usual spread above the expected" in text
    assert re.search(r"\d+(\.\d+)?% is", text)  # the unit is applied
    assert "14:00 UTC" in text and "Tuesday" in text
    assert "model seasonal" in text and "band" in text


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
    assert "1.5x the usual spread above" in text and "inside the band, flagged for the recent pattern" in text
