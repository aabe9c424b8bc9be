"""The real-data benchmark's scoring rules (``bench/realdata.py``), on hand-made series."""

import numpy as np

from bench.realdata import Labelled, flags_at, runs, score_flags

STEP_MS = 60_000


def series(n: int, events: list[tuple[int, int]], train_rows: int = 10) -> Labelled:
    ev = np.zeros(n, dtype=np.int8)
    for lo, hi in events:
        ev[lo:hi + 1] = 1
    t = np.arange(n, dtype=np.int64) * STEP_MS
    return Labelled("kpi", "s", t, np.zeros(n), ev, ev.copy(), train_rows)


def test_runs_are_maximal_and_inclusive():
    assert runs(np.array([0, 1, 1, 0, 1])) == [(1, 2), (4, 4)]
    assert runs(np.zeros(3)) == []


def test_an_event_flagged_within_seven_steps_of_its_start_is_detected_and_far_flags_are_false_alarms():
    s = series(10_090, [(100, 102), (500, 500), (2000, 2005)])
    flags = np.zeros(10_090, dtype=np.int8)
    flags[106] = 1               # 6 steps after the first event starts
    flags[3000] = 1              # nowhere near an event: a false alarm
    flags[4000:4003] = 1  # another, three rows long: still one episode
    out = score_flags(s, flags, "d")
    assert (out.events, out.detected, out.detected_early) == (3, 1, 1)
    assert (out.episodes, out.true_episodes) == (3, 1)
    assert out.delays_min == [6.0]
    assert abs(out.weeks - (10_079 * STEP_MS) / (7 * 86_400_000)) < 1e-9


def test_training_rows_are_not_scored():
    s = series(200, [(100, 101)], train_rows=150)  # the event lies in the training part
    flags = np.zeros(200, dtype=np.int8)
    flags[100] = 1
    out = score_flags(s, flags, "d")
    assert (out.events, out.episodes) == (0, 0)


def test_a_higher_threshold_multiple_flags_a_subset():
    rng = np.random.default_rng(0)
    s = series(2000, [])
    score = np.abs(rng.normal(0, 0.6, 2000))
    low, default, high = (flags_at(s, score, k) for k in (0.8, 1.0, 1.5))
    assert low.sum() > default.sum() > high.sum() > 0
    assert not (high.astype(bool) & ~default.astype(bool)).any()
