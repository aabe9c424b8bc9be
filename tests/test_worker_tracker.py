"""Episode lifecycle across runs: start, extend, end, and no duplicates when runs overlap."""

from __future__ import annotations

from vigil.store.audit import AuditStore
from vigil.detection.episodes import Episode
from vigil.worker.tracker import ObservedSeries, track

STEP_MS = 60_000
T0 = 1_735_711_200_000
TOL = 2 * STEP_MS


def ep(start, end=None, peak_score=2.0, peak=None):
    peak = start if peak is None else peak
    return Episode(start, end, peak, peak_score, 5.0, 1.0, 0.5, 1.5, "far above the expected level")


def series(episodes, last_ms, key="instance=a"):
    return ObservedSeries(key, {"instance": key.split("=")[1]}, last_ms, episodes, "iforest", None)


class Store:
    """A real AuditStore plus the worker's way of applying changes (kept minimal here)."""

    def __init__(self, tmp_path):
        self.store = AuditStore(tmp_path / "a.db")

    def apply(self, changes, now_ms):
        with self.store.transaction() as db:
            for c in changes:
                values = c.fields()
                if c.kind == "start":
                    self.store.insert_episode(db, values, now_ms)
                else:
                    self.store.update_episode(db, c.episode_id, values, now_ms)

    def relevant(self, since):
        return self.store.relevant_episodes("cpu", since)


def run(store, observed, now_ms, lookback_ms=3_600_000):
    changes = track("cpu", store.relevant(now_ms - lookback_ms - TOL), observed, tolerance_ms=TOL)
    store.apply(changes, now_ms)
    return [c.kind for c in changes]


def test_start_extend_end(tmp_path):
    s = Store(tmp_path)
    assert run(s, [series([ep(T0)], T0)], T0) == ["start"]
    # Next run: the same episode, start shifted by one step after a refit, higher peak.
    assert run(s, [series([ep(T0 + STEP_MS, peak_score=3.0, peak=T0 + 2 * STEP_MS)], T0 + 2 * STEP_MS)],
               T0 + 2 * STEP_MS) == ["extend"]
    [stored] = s.store.episodes(since_ms=0)
    assert stored.start_ms == T0 and stored.last_ms == T0 + 2 * STEP_MS and stored.peak_score == 3.0
    # It closes.
    assert run(s, [series([ep(T0, T0 + 3 * STEP_MS)], T0 + 8 * STEP_MS)], T0 + 8 * STEP_MS) == ["end"]
    # Later runs still see the closed episode inside the lookback: nothing new.
    for k in range(9, 15):
        assert run(s, [series([ep(T0, T0 + 3 * STEP_MS)], T0 + k * STEP_MS)], T0 + k * STEP_MS) == []
    [stored] = s.store.episodes(since_ms=0)
    assert stored.end_ms == T0 + 3 * STEP_MS


def test_unchanged_open_episode_writes_nothing(tmp_path):
    s = Store(tmp_path)
    run(s, [series([ep(T0)], T0)], T0)
    assert run(s, [series([ep(T0)], T0)], T0 + 1000) == []


def test_back_in_band_and_series_gone_close_open_episodes(tmp_path):
    s = Store(tmp_path)
    run(s, [series([ep(T0)], T0, "instance=a"), series([ep(T0)], T0, "instance=b")], T0)
    # a: its points are back in band (no episode any more); b: the series is gone.
    assert sorted(run(s, [series([], T0 + 5 * STEP_MS, "instance=a")], T0 + 5 * STEP_MS)) == ["end", "end"]
    assert all(e.end_ms == T0 for e in s.store.episodes(since_ms=0))


def test_blip_between_runs_is_recorded_closed(tmp_path):
    s = Store(tmp_path)
    assert run(s, [series([ep(T0, T0 + STEP_MS)], T0 + 10 * STEP_MS)], T0 + 10 * STEP_MS) == ["start"]
    [stored] = s.store.episodes(since_ms=0)
    assert stored.end_ms == T0 + STEP_MS and not stored.is_open


def test_new_episode_after_a_closed_one(tmp_path):
    s = Store(tmp_path)
    run(s, [series([ep(T0, T0 + STEP_MS)], T0 + 10 * STEP_MS)], T0 + 10 * STEP_MS)
    later = T0 + 20 * STEP_MS
    assert run(s, [series([ep(T0, T0 + STEP_MS), ep(later)], later)], later) == ["start"]
    assert len(s.store.episodes(since_ms=0)) == 2


def test_open_episode_ends_and_another_starts_in_one_run(tmp_path):
    s = Store(tmp_path)
    run(s, [series([ep(T0)], T0 + STEP_MS)], T0 + STEP_MS)
    now = T0 + 30 * STEP_MS
    kinds = run(s, [series([ep(T0, T0 + 2 * STEP_MS), ep(T0 + 25 * STEP_MS)], now)], now)
    assert kinds == ["end", "start"]
    episodes = sorted(s.store.episodes(since_ms=0), key=lambda e: e.start_ms)
    assert episodes[0].end_ms == T0 + 2 * STEP_MS and episodes[1].is_open


def test_anomaly_that_comes_back_after_a_recorded_end_is_new(tmp_path):
    s = Store(tmp_path)
    run(s, [series([ep(T0, T0 + 2 * STEP_MS)], T0 + 10 * STEP_MS)], T0 + 10 * STEP_MS)
    # After a refit the run sees one long open episode spanning the recorded one and going on.
    now = T0 + 20 * STEP_MS
    assert run(s, [series([ep(T0)], now)], now) == ["start"]
    new = [e for e in s.store.episodes(since_ms=0) if e.is_open]
    assert new and new[0].start_ms > T0 + 2 * STEP_MS


def test_episode_longer_than_the_lookback_stays_one(tmp_path):
    s = Store(tmp_path)
    run(s, [series([ep(T0)], T0)], T0)
    lookback = 3_600_000
    for k in range(1, 5):  # hours later, the run only sees the episode from the window start
        now = T0 + k * lookback
        assert run(s, [series([ep(now - lookback)], now)], now, lookback) == ["extend"]
    [stored] = s.store.episodes(since_ms=0)
    assert stored.start_ms == T0 and stored.last_ms == T0 + 4 * lookback
