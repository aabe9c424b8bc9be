"""The view cache: a refresh asks only for what is new, and answers what a whole fetch would."""

from __future__ import annotations

import numpy as np

from fakesource import FakeSource
from vigil.series import Series
from vigil.pipeline.view_cache import ViewCache

STEP_MS = 60_000


def series(name: str, start_ms: int, n: int) -> Series:
    t = start_ms + STEP_MS * np.arange(n, dtype=np.int64)
    return Series({"instance": name}, t, np.sin(t / 3.6e6) + len(name))


def fetcher(source: FakeSource):
    return lambda a_ms, b_ms: source.query_range("m", a_ms / 1000, b_ms / 1000, 60)


def as_dict(found: list[Series]) -> dict:
    return {s.labels["instance"]: (s.times_ms.tolist(), s.values.tolist()) for s in found}


def test_a_moved_view_fetches_only_its_new_points_and_answers_like_a_whole_fetch():
    source = FakeSource([series("a", 0, 600), series("bb", 0, 600)])
    cache = ViewCache(overlap_ms=300_000)
    cache.fetch("k", 60 * STEP_MS, 300 * STEP_MS, STEP_MS, fetcher(source))
    moved = cache.fetch("k", 63 * STEP_MS, 303 * STEP_MS, STEP_MS, fetcher(source))
    _, start_s, end_s, _ = source.calls[-1]
    assert (start_s, end_s) == (295 * 60, 303 * 60)
    assert as_dict(moved) == as_dict(FakeSource(source.series).query_range("m", 63 * 60, 303 * 60, 60))


def test_a_series_that_appears_is_answered_and_one_that_stops_keeps_its_points():
    # (Prometheus answers a series for 5 minutes after its last sample: to 254.)
    source = FakeSource([series("a", 0, 300), series("gone", 0, 250)])
    cache = ViewCache()
    cache.fetch("k", 100 * STEP_MS, 299 * STEP_MS, STEP_MS, fetcher(source))
    source.series = [series("a", 0, 320), series("gone", 0, 250), series("new", 310 * STEP_MS, 10)]
    found = as_dict(cache.fetch("k", 110 * STEP_MS, 319 * STEP_MS, STEP_MS, fetcher(source)))
    assert found["new"][0] == [t * STEP_MS for t in range(310, 320)]
    assert found["gone"][0][-1] == 254 * STEP_MS and found["gone"][0][0] == 110 * STEP_MS
    assert found["a"][0] == [t * STEP_MS for t in range(110, 320)]


def test_an_earlier_range_is_fetched_whole_and_memory_is_bounded():
    source = FakeSource([series("a", 0, 600)])
    cache = ViewCache(max_bytes=10_000)
    cache.fetch("k", 300 * STEP_MS, 500 * STEP_MS, STEP_MS, fetcher(source))
    cache.fetch("k", 100 * STEP_MS, 400 * STEP_MS, STEP_MS, fetcher(source))
    assert source.calls[-1][1:3] == (100 * 60, 400 * 60)
    for key in range(10):
        cache.fetch(key, 0, 500 * STEP_MS, STEP_MS, fetcher(source))
    assert cache.nbytes <= 10_000 or len(cache._entries) == 1
