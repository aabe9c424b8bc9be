"""The last range fetched per (source, expression, step), so a refresh fetches only what is new.

A dashboard refresh asks for the same range shifted by a few steps. Every fetch is on the
absolute step grid (``vigil.pipeline.core`` aligns its starts), so the points of the part both ranges
share are the same points: :meth:`ViewCache.fetch` asks Prometheus only for the range from
``overlap_ms`` before the end of the stored one (late samples and slow scrapes land there) to the
new end, and returns the stored points of the shared part with the fresh ones after them. A range
that starts before the stored one, or past its end, is fetched whole and replaces it; otherwise
the entry keeps the longest range asked for, sliding forward with the newest end. Bounded in
bytes (least recently used first). Thread-safe. Must not: score, or know what a source is.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np

from vigil.series import Series, series_key

__all__ = ["ViewCache"]


@dataclass(frozen=True)
class _Entry:
    start_ms: int
    end_ms: int
    series: list[Series]

    @property
    def nbytes(self) -> int:
        return sum(int(s.times_ms.nbytes + s.values.nbytes) for s in self.series)


class ViewCache:
    def __init__(self, max_bytes: int = 32 * 2**20, *, overlap_ms: int = 300_000):
        self.max_bytes = max_bytes
        self.overlap_ms = overlap_ms
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        #: fetches answered partly from a stored range (tests, metrics)
        self.partial = 0

    def knows(self, key: Hashable) -> bool:
        """A range of ``key`` is stored (a fetch of it is a refresh)."""
        with self._lock:
            return key in self._entries

    def fetch(self, key: Hashable, start_ms: int, end_ms: int, step_ms: int,
              fetch: Callable[[int, int], list[Series]]) -> list[Series]:
        """The series of ``[start_ms, end_ms]`` (``start_ms`` on the step grid); ``fetch(a, b)``
        asks the source for ``[a, b]``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is None or not entry.start_ms <= start_ms <= entry.end_ms <= end_ms:
            fresh = fetch(start_ms, end_ms)
            self._put(key, _Entry(start_ms, end_ms, fresh))
            return fresh
        from_ms = max(start_ms, -(-(entry.end_ms - self.overlap_ms) // step_ms) * step_ms)
        fresh = fetch(from_ms, end_ms)
        self.partial += 1
        # The entry keeps the longest range asked for, sliding forward: panels of one expression
        # showing 1 hour and 12 hours both refresh from it.
        kept_ms = max(entry.start_ms, end_ms - max(entry.end_ms - entry.start_ms, end_ms - start_ms))
        kept_ms = min(kept_ms, start_ms)
        new = {series_key(s.labels): s for s in fresh}
        stored: list[Series] = []
        for old in entry.series:
            keep = (old.times_ms >= kept_ms) & (old.times_ms < from_ms)
            s = new.pop(series_key(old.labels), None)
            if s is None:
                if keep.any():
                    stored.append(Series(old.labels, old.times_ms[keep], old.values[keep]))
                continue
            stored.append(Series(s.labels, np.concatenate([old.times_ms[keep], s.times_ms]),
                                 np.concatenate([old.values[keep], s.values])))
        stored.extend(new.values())  # series that appeared since
        self._put(key, _Entry(kept_ms, end_ms, stored))
        if kept_ms == start_ms:
            return stored
        out = []
        for s in stored:
            shown = s.times_ms >= start_ms
            if shown.any():
                out.append(Series(s.labels, s.times_ms[shown], s.values[shown]))
        return out

    def _put(self, key: Hashable, entry: _Entry) -> None:
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self.nbytes -= previous.nbytes
            self._entries[key] = entry
            self.nbytes += entry.nbytes
            while len(self._entries) > 1 and self.nbytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.nbytes -= dropped.nbytes
