"""Fitted models reused across requests, so a dashboard refresh does not retrain.

An LRU map from a key (source, query, series, model, parameters, refit slot) to a fitted
detector. Thread-safe; one per process (each gunicorn worker process has its own).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

__all__ = ["ModelCache"]


class ModelCache:
    def __init__(self, max_entries: int = 4096, on_lookup: Callable[[bool], None] | None = None):
        self.max_entries = max_entries
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
        with self._lock:
            self._entries[key] = model
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
