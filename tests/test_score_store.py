"""The score store: points already scored are reused, new ones scored from their context only."""

from __future__ import annotations

import numpy as np

from vigil.detection.baseline import Scores
from vigil.pipeline.score_store import ScoreStore

STEP_MS = 60_000
CONTEXT_MS = 10 * STEP_MS


def trailing_mean(times_ms: np.ndarray, values: np.ndarray) -> Scores:
    """A toy detector whose score at a point looks at the 10 points before it."""
    out = np.array([values[max(0, i - 10):i + 1].mean() for i in range(values.size)])
    return Scores(out, out, out - 1, out + 1)


def test_a_refresh_scores_only_new_points_and_gives_the_whole_answer():
    t = STEP_MS * np.arange(200, dtype=np.int64)
    x = np.random.default_rng(0).normal(size=200)
    calls: list[int] = []

    def counted(times_ms, values):
        calls.append(times_ms.size)
        return trailing_mean(times_ms, values)

    store = ScoreStore()
    store.score("k", counted, t[:150], x[:150], context_ms=CONTEXT_MS)
    second = store.score("k", counted, t[20:160], x[20:160], context_ms=CONTEXT_MS, from_ms=int(t[30]))
    assert calls[-1] <= 10 + 10 + 1, "old points were scored again"
    whole = trailing_mean(t, x)
    np.testing.assert_allclose(second.anomaly_score[10:], whole.anomaly_score[30:160])


def test_a_changed_value_is_scored_again_and_memory_is_bounded():
    t = STEP_MS * np.arange(100, dtype=np.int64)
    x = np.zeros(100)
    store = ScoreStore(max_bytes=20_000)
    store.score("k", trailing_mean, t, x, context_ms=CONTEXT_MS)
    y = x.copy()
    y[-1] = 11.0
    assert store.score("k", trailing_mean, t, y, context_ms=CONTEXT_MS).anomaly_score[-1] == 1.0
    for key in range(20):
        store.score(key, trailing_mean, t, x, context_ms=CONTEXT_MS)
    assert store.nbytes <= 20_000 or len(store) == 1
