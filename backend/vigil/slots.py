"""Slots: how much scoring one process does at once, and the share training may take of it.

A process runs at most ``total`` pieces of scoring work at once (``server.max_inflight``). Work is
light (a refresh whose models are stored: fetch the new points, score them) or heavy (fetch weeks
of training history and fit models: seconds). Heavy work may hold at most ``heavy`` of the slots,
so ``total - heavy`` are always left for light work: a dashboard refresh is never stuck behind
cold starts. Waiters are served first come, first served among those that may run (a light
request passes heavy ones that wait for a heavy share; never the other way round).

A request takes a light slot when admitted; when it finds it has to train, it asks for a heavy
share (:meth:`Slots.heavy`): granted at once when one is free, else it gives its slot back while it
waits, so the light work behind it runs. Background training (no request) takes a slot and a
heavy share together.

Must not: know about HTTP, requests or what the work is.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

__all__ = ["Slots", "SlotTimeout"]


class SlotTimeout(Exception):
    """No slot (or no heavy share) became free within the time given."""


@dataclass(eq=False)
class _Waiter:
    heavy: bool
    granted: bool = False
    event: threading.Event = field(default_factory=threading.Event)


class Slots:
    """``total`` slots of which heavy work may hold at most ``heavy``; thread-safe."""

    def __init__(self, total: int, heavy: int):
        if total < 1 or not 1 <= heavy <= total:
            raise ValueError(f"need 1 <= heavy ({heavy}) <= total ({total})")
        self.total = total
        self.heavy_max = heavy
        self.running = 0
        self.running_heavy = 0
        self._queue: deque[_Waiter] = deque()
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def acquire(self, timeout_s: float | None) -> bool:
        """A light slot within ``timeout_s`` (None: wait as long as it takes); False when none freed."""
        return self._wait(_Waiter(heavy=False), timeout_s)

    def release(self) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        with self._lock:
            self.running -= 1
            self._grant()

    @contextlib.contextmanager
    def heavy(self, *, holding: bool, timeout_s: float | None) -> Iterator[None]:
        """A heavy share for the block. ``holding``: the caller holds a light slot, which it keeps
        afterwards (the slot is given back while it waits, and taken again with the share). Else a
        slot is taken with the share and given back after. :class:`SlotTimeout` when none freed in
        ``timeout_s``; then a held slot is no longer held."""
        with self._lock:
            now = holding and self.running_heavy < self.heavy_max and not any(w.heavy for w in self._queue)
            if now:
                self.running_heavy += 1
            elif holding:
                self.running -= 1
                self._grant()
        if not now and not self._wait(_Waiter(heavy=True), timeout_s):
            raise SlotTimeout(f"no training share of the {self.total} slots freed in time")
        try:
            yield
        finally:
            with self._lock:
                self.running_heavy -= 1
                if not holding:
                    self.running -= 1
                self._grant()

    def _wait(self, waiter: _Waiter, timeout_s: float | None) -> bool:
        with self._lock:
            self._queue.append(waiter)
            self._grant()
        if waiter.event.wait(timeout_s):
            return True
        with self._lock:
            if waiter.granted:  # granted between the timeout and this lock
                return True
            self._queue.remove(waiter)
            self._grant()  # a heavy waiter leaving may unblock light ones behind it
            return False

    def _grant(self) -> None:
        """Wake, in order of arrival, every waiter that may run now (caller holds the lock)."""
        for waiter in list(self._queue):
            if self.running >= self.total:
                return
            if waiter.heavy and self.running_heavy >= self.heavy_max:
                continue
            self._queue.remove(waiter)
            self.running += 1
            self.running_heavy += waiter.heavy
            waiter.granted = True
            waiter.event.set()
