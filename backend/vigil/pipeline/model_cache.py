"""Fitted models reused across requests, so a dashboard refresh does not retrain.

An LRU map from a key (source, query, series, model, parameters, refit slot) to a fitted
detector, bounded in entries and in memory (the numpy arrays a model holds, measured once when it
is stored), so a large fleet cannot grow a process past its limit. Thread-safe; one per process
(each gunicorn worker process has its own).
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import numpy as np

__all__ = ["ModelCache", "approx_nbytes"]


def approx_nbytes(obj: Any, depth: int = 5) -> int:
    """The bytes of the numpy arrays an object holds (through attributes, lists and dicts)."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if depth == 0 or obj is None or isinstance(obj, (int, float, str, bool, bytes)):
        return sys.getsizeof(obj) if isinstance(obj, (str, bytes)) else 0
    if isinstance(obj, dict):
        return sum(approx_nbytes(v, depth - 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(approx_nbytes(v, depth - 1) for v in obj)
    attributes = getattr(obj, "__dict__", None)
    return approx_nbytes(attributes, depth - 1) if attributes else 0


class ModelCache:
    def __init__(self, max_entries: int = 4096, on_lookup: Callable[[bool], None] | None = None,
                 max_bytes: int = 192 * 2**20):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._sizes: dict[Hashable, int] = {}
        self.nbytes = 0
        #: called as ``on_lookup(hit)`` (metrics hook)
        self.on_lookup = on_lookup
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, *, count: bool = True) -> Any | None:
        """The entry, or None; ``count=False`` for look-ups that are not model fetches (stats)."""
        with self._lock:
            model = self._entries.get(key)
            if model is not None:
                self._entries.move_to_end(key)
            if not count:
                return model
            if model is None:
                self.misses += 1
            else:
                self.hits += 1
        if self.on_lookup is not None:
            self.on_lookup(model is not None)
        return model

    def put(self, key: Hashable, model: Any) -> None:
        size = approx_nbytes(model)
        with self._lock:
            self._drop(key)
            self._entries[key] = model
            self._sizes[key] = size
            self.nbytes += size
            while len(self._entries) > 1 and (len(self._entries) > self.max_entries or self.nbytes > self.max_bytes):
                self._drop(next(iter(self._entries)))

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: Hashable) -> None:
        if key in self._entries:
            del self._entries[key]
            self.nbytes -= self._sizes.pop(key, 0)

    def __len__(self) -> int:
        return len(self._entries)
