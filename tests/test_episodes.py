"""Episodes: hysteresis, one incident one episode, decided causally."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.detection.baseline import Scores
from vigil.detection.episodes import Hysteresis, find_episodes, quiet_points_for


def _scores(a):
    a = np.asarray(a, dtype=float)
    return Scores(a, np.zeros_like(a), -np.ones_like(a), np.ones_like(a))


def _run(a, **kw):
    a = np.asarray(a, dtype=float)
    t = np.arange(a.size, dtype=np.int64) * 60_000
    return find_episodes(t, a * 10, _scores(a), **kw)


def test_one_incident_is_one_episode_through_short_dips():
    flags, eps = _run([0, 1.5, 0.9, 0.5, 1.2, 0.85, 0.2, 0.2, 0, 0], quiet_points=2)
    assert len(eps) == 1
    assert flags.tolist() == [0, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert eps[0].start_ms == 60_000 and eps[0].end_ms == 5 * 60_000  # last point above exit
    assert eps[0].peak_ms == 60_000 and eps[0].peak_score == 1.5


def test_quiet_run_ends_an_episode_and_a_new_one_can_start():
    flags, eps = _run([1.1, 0.1, 0.1, 1.3, 0, 0], quiet_points=2)
    assert [e.start_ms for e in eps] == [0, 180_000]
    assert flags.tolist() == [1, 1, 0, 1, 1, 0]


def test_below_the_entry_nothing_starts_and_gaps_carry_state():
    flags, eps = _run([0.95, 0.99, np.nan, 0.9], quiet_points=2)
    assert eps == [] and not flags.any()
    flags, eps = _run([1.2, np.nan, np.nan, 0.1, 0.1, 0.0], quiet_points=2)
    assert flags.tolist() == [1, 1, 1, 1, 0, 0] and eps[0].end_ms == 0


def test_an_episode_open_at_the_end_has_no_end():
    _, eps = _run([0, 0, 1.4, 1.1], quiet_points=2)
    assert eps[0].end_ms is None


@pytest.mark.parametrize("split", [1, 3, 7, 11])
def test_streaming_in_chunks_gives_the_same_flags_and_past_flags_never_change(split):
    rng = np.random.default_rng(split)
    a = np.abs(rng.standard_normal(400)) * 0.6
    whole = Hysteresis(quiet_points=3).update(a)
    state = Hysteresis(quiet_points=3)
    parts = [state.update(chunk) for chunk in np.array_split(a, split)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    for i in range(0, 400, 37):  # flags up to i do not depend on what follows
        b = a.copy()
        b[i + 1:] = 5.0
        np.testing.assert_array_equal(Hysteresis(quiet_points=3).update(b)[: i + 1], whole[: i + 1])


def test_quiet_points_are_five_minutes_but_at_least_two():
    assert quiet_points_for(60) == 5
    assert quiet_points_for(300) == 2
    assert quiet_points_for(15) == 20
