"""Scores kept per point, so a refresh scores only the points that are new.

A point's score and band are a pure function of (the model, the series, the timestamp and the
``context_ms`` of points before it): every view of the same moment uses the model of the same
refit slot and the same scoring step (``vigil.pipeline.core``). So :class:`ScoreStore` keeps, per
(model key, series, scoring step), a **tape**: the times, values and :class:`Scores` of the points
that were scored with their whole context. :meth:`ScoreStore.score` takes a fetched series, reuses
every point the tape has (same timestamp and same value: a late sample that changed a value is
scored again), and scores the rest from the context before the first of them only. The tape is
bounded in points (the most recent are kept) and the store in bytes (least recently used tapes
go first). Thread-safe. ``is_anomaly`` and episodes are decided again from the stored scores on
each call: the hysteresis is cheap, causal, and needs the scores before the view anyway.

Must not: fit, fetch, or know which model it is (it is handed the detector and its key).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np

from vigil.detection.baseline import Scores

__all__ = ["ScoreStore", "Tape"]


@dataclass(frozen=True)
class Tape:
    """The points of one series scored with their whole context (times strictly increasing)."""

    times_ms: np.ndarray
    values: np.ndarray
    scores: Scores

    @property
    def nbytes(self) -> int:
        return int(self.times_ms.nbytes + self.values.nbytes + sum(a.nbytes for a in self.scores))


class ScoreStore:
    """Per-point scores by ``(model key, series, step)``; at most ``max_bytes`` of arrays."""

    def __init__(self, max_bytes: int = 64 * 2**20, *, max_points: int = 11_000):
        self.max_bytes = max_bytes
        self.max_points = max_points
        self._tapes: OrderedDict[Hashable, Tape] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        #: points answered from a tape, and points scored (tests, metrics)
        self.reused_points = 0
        self.scored_points = 0

    def score(self, key: Hashable, score: Callable[[np.ndarray, np.ndarray], Scores], times_ms: np.ndarray,
              values: np.ndarray, *, context_ms: int, from_ms: int | None = None) -> Scores:
        """Scores of the points of ``(times_ms, values)`` from ``from_ms`` on (NaN before it, where
        no tape has them: those points are only context); ``score`` is the detector's, called on
        the points not in the tape and the ``context_ms`` before them. Points of the first
        ``context_ms`` of a series that starts later are scored from the context there is."""
        n = times_ms.size
        with self._lock:
            tape = self._tapes.get(key)
            if tape is not None:
                self._tapes.move_to_end(key)
        known = np.zeros(n, dtype=bool)
        where = np.zeros(n, dtype=np.int64)
        if tape is not None and tape.times_ms.size and n:
            where = np.minimum(np.searchsorted(tape.times_ms, times_ms), tape.times_ms.size - 1)
            same_value = (tape.values[where] == values) | (np.isnan(tape.values[where]) & np.isnan(values))
            known = (tape.times_ms[where] == times_ms) & same_value
        needed = ~known if from_ms is None else ~known & (times_ms >= from_ms)
        if not needed.any():
            self.reused_points += int(known.sum())
            if tape is None:
                return Scores(*(np.full(n, np.nan) for _ in range(4)))
            return Scores(*(np.where(known, a[where], np.nan) for a in tape.scores))
        first = int(np.flatnonzero(needed)[0])
        # The points a new one's score looks at: ``context_ms`` before it (one step more, for
        # a window that counts its points from the step).
        step_ms = int(np.median(np.diff(times_ms))) if n > 1 else 0
        lo = int(np.searchsorted(times_ms, times_ms[first] - context_ms - step_ms, "left"))
        fresh = score(times_ms[lo:], values[lo:])
        out = [np.empty(n) for _ in range(4)]
        for j in range(4):
            if tape is not None:
                out[j][known] = tape.scores[j][where[known]]
            out[j][lo:] = np.where(known[lo:], out[j][lo:], fresh[j])
            out[j][:lo] = np.where(known[:lo], out[j][:lo], np.nan) if lo else out[j][:lo]
        scores = Scores(*out)
        self.scored_points += n - lo
        self.reused_points += int(known.sum())
        # What the tape may keep: the points scored with their whole context, or taken from it.
        full = known.copy()
        full[lo:] |= times_ms[lo:] >= times_ms[lo] + context_ms
        self._store(key, tape, times_ms[full], values[full], Scores(*(a[full] for a in scores)))
        return scores

    def _store(self, key: Hashable, old: Tape | None, times_ms: np.ndarray, values: np.ndarray,
               scores: Scores) -> None:
        if old is not None and old.times_ms.size and times_ms.size:
            # Keep what the old tape had before and after the new points (another panel's range).
            before = old.times_ms < times_ms[0]
            after = old.times_ms > times_ms[-1]
            if before.any() or after.any():
                times_ms = np.concatenate([old.times_ms[before], times_ms, old.times_ms[after]])
                values = np.concatenate([old.values[before], values, old.values[after]])
                scores = Scores(*(np.concatenate([o[before], a, o[after]]) for o, a in zip(old.scores, scores)))
        if times_ms.size > self.max_points:
            cut = times_ms.size - self.max_points
            times_ms, values, scores = times_ms[cut:], values[cut:], Scores(*(a[cut:] for a in scores))
        tape = Tape(times_ms, values, scores)
        with self._lock:
            previous = self._tapes.pop(key, None)
            if previous is not None:
                self.nbytes -= previous.nbytes
            self._tapes[key] = tape
            self.nbytes += tape.nbytes
            while len(self._tapes) > 1 and self.nbytes > self.max_bytes:
                _, dropped = self._tapes.popitem(last=False)
                self.nbytes -= dropped.nbytes

    def __len__(self) -> int:
        return len(self._tapes)
