"""From anomalous points to episodes: one incident is one episode, not a hundred points.

Hysteresis, decided causally (point ``i`` only looks at points ``<= i``, so a replay and a live
worker agree): an episode opens at a point whose ``anomaly_score`` reaches ``enter_score`` (1.0,
the band edge) and stays open until ``quiet_points`` finite points in a row are back below
``exit_score``; the point that completes the quiet run closes it. ``is_anomaly`` is 1 while an
episode is open, so the alert keeps firing through short dips back into the band. The episode's
``end_ms`` is the last point still at or above ``exit_score`` (when the incident really ended).
Gaps (NaN) neither open, extend nor close an episode. Must not: score or explain.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["Episode", "Hysteresis", "find_episodes", "quiet_points_for"]


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


class Hysteresis:
    """Streaming episode state: feed scores chunk by chunk, get ``is_anomaly`` for each chunk.

    ``update`` over the whole series in one call and over any split of it gives the same result.
    ``open_start`` is the index (in points fed so far) where the open episode started, or None.
    """

    #: whether points back below ``exit_score`` inside an open episode keep ``is_anomaly`` 1
    hold_flags = True

    def __init__(self, *, enter_score: float = 1.0, exit_score: float = 0.8, quiet_points: int = 2):
        if not 0 < exit_score <= enter_score:
            raise ValueError(f"The 'exit_score' parameter of Hysteresis must be in (0, enter_score]. Got {exit_score!r} instead.")
        if quiet_points < 1:
            raise ValueError(f"The 'quiet_points' parameter of Hysteresis must be >= 1. Got {quiet_points!r} instead.")
        self.enter_score = enter_score
        self.exit_score = exit_score
        self.quiet_points = quiet_points
        self.n_seen = 0
        self.open_start: int | None = None
        self.last_hot: int | None = None
        self.quiet = 0
        #: closed episodes as (start index, last hot index)
        self.closed: list[tuple[int, int]] = []

    def update(self, score: np.ndarray) -> np.ndarray:
        score = np.asarray(score, dtype=np.float64)
        out = np.zeros(score.size, dtype=np.int8)
        enter, leave, need = self.enter_score, self.exit_score, self.quiet_points
        hot = np.flatnonzero(score >= enter)  # NaN compares False
        k = 0
        i = 0
        n = score.size
        while i < n:
            if self.open_start is None:
                # Jump to the next point that opens an episode.
                while k < hot.size and hot[k] < i:
                    k += 1
                if k == hot.size:
                    break
                i = int(hot[k])
                self.open_start = self.last_hot = self.n_seen + i
                self.quiet = 0
                out[i] = 1
                i += 1
                continue
            s = score[i]
            if s != s:  # a gap: the state carries over
                out[i] = 1
            elif s >= leave:
                self.last_hot = self.n_seen + i
                self.quiet = 0
                out[i] = 1
            else:
                self.quiet += 1
                if self.quiet >= need:
                    self.closed.append((self.open_start, int(self.last_hot)))  # type: ignore[arg-type]  # set while open
                    self.open_start = self.last_hot = None
                    self.quiet = 0
                elif self.hold_flags:
                    out[i] = 1
            i += 1
        self.n_seen += n
        return out


def find_episodes(times_ms: np.ndarray, values: np.ndarray, scores, *, exit_score: float = 0.8,
                  quiet_points: int = 2, min_points: int = 1) -> tuple[np.ndarray, list[Episode]]:
    """``(is_anomaly, episodes)`` for one scored series. ``scores`` is a :class:`Scores`.

    ``min_points`` drops episodes with fewer points at or above ``exit_score`` (their
    ``is_anomaly`` is cleared too; that part is not causal, so the service keeps the default 1).
    """
    score = np.asarray(scores.anomaly_score, dtype=np.float64)
    state = Hysteresis(exit_score=exit_score, quiet_points=quiet_points)
    is_anomaly = state.update(score)
    spans = list(state.closed)
    if state.open_start is not None:
        spans.append((state.open_start, -1))
    episodes: list[Episode] = []
    for start, last_hot in spans:
        open_end = last_hot < 0
        stop = score.size if open_end else last_hot + 1
        segment = np.where(np.isfinite(score[start:stop]), score[start:stop], -np.inf)
        if int((segment >= exit_score).sum()) < min_points:
            close = stop if open_end else min(score.size, _close_index(score, last_hot, exit_score, quiet_points))
            is_anomaly[start:close] = 0
            continue
        peak = start + int(np.argmax(segment))
        end = None if open_end else int(times_ms[last_hot])
        episodes.append(Episode(
            start_ms=int(times_ms[start]),
            end_ms=end,
            peak_ms=int(times_ms[peak]),
            peak_score=float(score[peak]),
            peak_value=float(values[peak]),
            yhat=float(scores.yhat[peak]),
            yhat_lower=float(scores.yhat_lower[peak]),
            yhat_upper=float(scores.yhat_upper[peak]),
        ))
    return is_anomaly, episodes


def _close_index(score: np.ndarray, last_hot: int, exit_score: float, quiet_points: int) -> int:
    quiet = 0
    for j in range(last_hot + 1, score.size):
        if score[j] == score[j] and score[j] < exit_score:
            quiet += 1
            if quiet >= quiet_points:
                return j
    return score.size
