"""Detection on excerpts of real labelled operations data (../shared/data) and on the shapes real
metrics have: alarms an on-call engineer can trust, replayed causally as ``vigil detect`` does.

Each excerpt is two weeks of one real KPI: the first week trains, the second is scored (the
numbers in the comments were measured with the defaults; the bounds leave room for noise, not
for a flood).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from vigil.detection.baseline import MAX_SCORE
from vigil.pipeline.replay import replay
from vigil.units import MinDeviation

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DAY = 1440  # rows of a 1-minute KPI


def _kpi(prefix: str, days: int = 14) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    files = sorted((DATA / "kpi").glob(f"{prefix}*.csv.gz"))
    if not files:
        pytest.fail(f"the labelled data is missing: {DATA / 'kpi'} (CI has ../shared/data)")
    raw = np.loadtxt(files[0], delimiter=",", skiprows=1, max_rows=days * DAY)
    return (raw[:, 0] * 1000).astype(np.int64), raw[:, 1], raw[:, 2].astype(np.int8)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), (np.flatnonzero(d == -1) - 1).tolist()))


def _score(labels: np.ndarray, flags: np.ndarray, start: int) -> tuple[int, int, int, int]:
    """(events, detected, episodes, false episodes) on rows from ``start``, by the data README's rules."""
    labels, flags = labels[start:], flags[start:]
    events = _runs(labels)
    detected = sum(bool(flags[a:max(b, a + 7) + 1].any()) for a, b in events)
    near = np.zeros(labels.size, dtype=bool)
    for a, b in events:
        near[max(0, a - 7):b + 8] = True
    episodes = _runs(flags)
    false = sum(1 for a, b in episodes if not near[a:b + 1].any())
    return len(events), detected, len(episodes), false


def test_a_counter_that_is_zero_most_of_the_time_does_not_flood():
    # KPI 7103fa0f is 0 in 95 % of its minutes, with bursts every day. Before: 324 false alarms
    # per week on this series alone. Bursts as common as these are its normal.
    t, x, labels = _kpi("7103fa0f")
    result = replay(t, x, train_rows=7 * DAY)
    events, detected, episodes, false = _score(labels, result.is_anomaly, 7 * DAY)
    assert false <= 2, f"{false} false alarms in a week"  # measured: 0
    assert detected >= 1


def test_a_rarely_nonzero_counter_keeps_its_alarms_few_and_ordered_by_sensitivity():
    # KPI 57051487 is 0 in 99 % of its minutes. Before: 565 of the corpus' 880 false alarms.
    t, x, labels = _kpi("57051487")
    false_by = {}
    for sensitivity in ("low", "medium", "high"):
        result = replay(t, x, sensitivity=sensitivity, train_rows=7 * DAY)
        events, detected, episodes, false_by[sensitivity] = _score(labels, result.is_anomaly, 7 * DAY)
        assert detected == events == 2
        finite = np.isfinite(result.scores.anomaly_score)
        assert np.all(result.scores.anomaly_score[finite] <= MAX_SCORE)  # a readable scale
    assert false_by["low"] <= false_by["medium"] <= false_by["high"]
    assert false_by["medium"] <= 8, false_by  # measured: 6 (a known gap: the target is 1)


def test_a_busy_kpi_with_many_incidents_has_them_found_and_little_else():
    # KPI 431a8542: 12 labelled incidents in the scored week.
    t, x, labels = _kpi("431a8542")
    result = replay(t, x, train_rows=7 * DAY)
    events, detected, episodes, false = _score(labels, result.is_anomaly, 7 * DAY)
    assert events == 12
    assert detected >= 10, detected  # measured: 12
    assert false <= 2, false  # measured: 0


# -- shapes real metrics have (synthetic: kinds the real data lacks) ---------------------------

_START = 1_767_225_600_000  # Thursday 2026-01-01 00:00 UTC
_T = _START + 60_000 * np.arange(14 * DAY, dtype=np.int64)


def _episodes(x: np.ndarray, **kw) -> list:
    """The episodes of the scored week (the training week is scored in-sample: not counted)."""
    found = replay(_T[: x.size], x, train_rows=7 * DAY, **kw).episodes
    return [e for e in found if e.start_ms >= _T[7 * DAY]]


def test_a_noiseless_daily_wave_is_never_anomalous():
    wave = np.sin(2 * math.pi * (_T % 86_400_000) / 86_400_000)
    assert _episodes(wave) == []  # before: 35 episodes in 14 days


def test_a_daily_job_at_the_same_minute_is_learned_as_normal_and_something_bigger_is_not():
    # The EC2 CPU series of the issue: a job spikes at the same minute every day (before: flagged
    # every day). Known limit: 15-minute profile bins cannot hold a 5-minute job, so the band
    # learns its size; a spike of that size at another time of day is not flagged either.
    rng = np.random.default_rng(1)
    x = 0.13 + 0.005 * rng.standard_normal(_T.size)
    minute = (_T % 86_400_000) // 60_000
    x[(minute >= 120) & (minute < 125)] += 0.6  # a backup at 02:00 every day
    assert _episodes(x) == []
    odd = x.copy()
    odd[10 * DAY + 15 * 60: 10 * DAY + 15 * 60 + 5] += 3.0  # five times the job, at 15:00
    found = _episodes(odd)
    assert [e.start_ms for e in found] == [int(_T[10 * DAY + 15 * 60])]


def test_a_metric_with_a_tiny_range_is_quiet_and_a_normalised_one_jumping_from_zero_is_caught():
    rng = np.random.default_rng(2)
    tiny = np.abs(0.004 + 0.001 * rng.standard_normal(_T.size)).round(4)  # lives in 0..0.008
    assert len(_episodes(tiny)) <= 2
    zeros = np.zeros(_T.size)
    zeros[10 * DAY:10 * DAY + 30] = 0.5  # a 0..1 metric: a week of zeros, then half
    found = _episodes(zeros)
    assert found and found[0].start_ms == int(_T[10 * DAY])  # before: missed (band -3..+3)


def test_a_deviation_too_small_to_matter_never_alarms_unless_asked():
    rng = np.random.default_rng(3)
    x = 100 + 0.01 * rng.standard_normal(_T.size)
    x[10 * DAY:10 * DAY + 60] += 0.5  # 50 spreads, but half a percent of the level
    assert _episodes(x) == []  # the default min_deviation is 1 % of the level
    assert len(_episodes(x, min_deviation=MinDeviation(absolute=0.1, relative=0.0))) == 1


def test_an_episode_ends_within_minutes_of_the_series_being_back_in_its_band():
    rng = np.random.default_rng(4)
    x = 10 + 0.2 * rng.standard_normal(_T.size)
    spike = slice(10 * DAY + 600, 10 * DAY + 620)  # 20 minutes far outside the band
    x[spike] += 5
    result = replay(_T, x, train_rows=7 * DAY)
    flagged = np.flatnonzero(result.is_anomaly[7 * DAY:]) + 7 * DAY
    assert flagged.min() == spike.start
    # Back in band at the spike's end; the episode closes after five quiet minutes (documented).
    assert flagged.max() < spike.stop + 5
    assert np.all(result.scores.anomaly_score[spike.stop + 1: spike.stop + 60] < 1)
