"""From anomalous points to episodes: one incident is one episode, not a hundred points.

Hysteresis: an episode starts at the first point whose ``anomaly_score`` reaches 1.0 (outside
the band) and lasts until the series has been back inside ``exit_score`` for ``quiet_points``
points in a row; its end is the last point still above ``exit_score``. Gaps (NaN) neither start
nor end an episode. ``is_anomaly`` is 1 on every point of an episode.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["Episode", "find_episodes", "quiet_points_for"]


class Episode(NamedTuple):
    start_ms: int
    end_ms: int | None          # None while the episode is still open at the last point
    peak_ms: int
    peak_score: float
    peak_value: float
    yhat: float                 # expected value at the peak
    yhat_lower: float
    yhat_upper: float
    reason: str = ""


def quiet_points_for(step_s: float, quiet_s: float = 300.0) -> int:
    """Points back in band that end an episode: five minutes' worth, at least two points."""
    return max(2, int(math.ceil(quiet_s / max(step_s, 1.0))))


def find_episodes(times_ms: np.ndarray, values: np.ndarray, scores, *, exit_score: float = 0.8,
                  quiet_points: int = 2, min_points: int = 1) -> tuple[np.ndarray, list[Episode]]:
    """``(is_anomaly, episodes)`` for one scored series. ``scores`` is a :class:`Scores`."""
    score = np.asarray(scores.anomaly_score, dtype=np.float64)
    n = score.size
    is_anomaly = np.zeros(n, dtype=np.int8)
    episodes: list[Episode] = []
    i = 0
    while i < n:
        if not score[i] >= 1.0:  # also skips NaN
            i += 1
            continue
        start = i
        last_hot = i
        quiet = 0
        j = i + 1
        while j < n:
            s = score[j]
            if s != s:  # gap
                j += 1
                continue
            if s >= exit_score:
                last_hot = j
                quiet = 0
            else:
                quiet += 1
                if quiet >= quiet_points:
                    break
            j += 1
        open_end = j >= n and quiet < quiet_points
        span = slice(start, last_hot + 1)
        if last_hot - start + 1 >= min_points:
            segment = np.where(np.isfinite(score[span]), score[span], -np.inf)
            peak = start + int(np.argmax(segment))
            is_anomaly[span] = 1
            episodes.append(Episode(
                start_ms=int(times_ms[start]),
                end_ms=None if open_end else int(times_ms[last_hot]),
                peak_ms=int(times_ms[peak]),
                peak_score=float(score[peak]),
                peak_value=float(values[peak]),
                yhat=float(scores.yhat[peak]),
                yhat_lower=float(scores.yhat_lower[peak]),
                yhat_upper=float(scores.yhat_upper[peak]),
            ))
        i = max(j, last_hot + 1)
    return is_anomaly, episodes
