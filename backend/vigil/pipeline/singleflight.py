"""Single-flight: identical work requested by several threads at once is done once.

``flight.do(key, fn)`` runs ``fn()`` unless another thread is already running the work of the
same ``key``; then it waits for that result (or exception) and returns it too. Nothing is kept
once the work is done: caching is the caller's business (the model store, the score store).
Used for Prometheus fetches and model fits, so eight identical cold panel queries arriving
together fetch and fit once. Must not: know what the work is.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable, Hashable, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class SingleFlight:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, Future] = {}
        #: how many calls were answered by another thread's work (tests, metrics)
        self.shared = 0

    def do(self, key: Hashable, fn: Callable[[], T], *, timeout_s: float | None = None) -> T:
        with self._lock:
            future = self._flights.get(key)
            leader = future is None
            if leader:
                future = self._flights[key] = Future()
            else:
                self.shared += 1
        assert future is not None
        if not leader:
            return future.result(timeout=timeout_s)
        try:
            result = fn()
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(result)
            return result
        finally:
            with self._lock:
                self._flights.pop(key, None)

    def __len__(self) -> int:
        return len(self._flights)
