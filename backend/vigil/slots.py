"""Slots: how much scoring one process does at once, and the share training may take of it.

A process runs at most ``total`` pieces of scoring work at once (``server.max_inflight``). Work is
light (a refresh whose models are stored: fetch the new points, score them) or heavy (fetch weeks
of training history and fit models: seconds). Heavy work may hold at most ``heavy`` of the slots,
so ``total - heavy`` are always left for light work: a dashboard refresh is never stuck behind
cold starts. Waiters belong to a **flow** (a dashboard, a client): a freed slot goes to the flow
served longest ago, first come first served within it, among the waiters that may run (a light
request passes heavy ones that wait for a heavy share; never the other way round). So a dashboard
of forty panels opened at once does not make a one-panel dashboard wait behind all forty; and
when the waiting places are full (``max_waiting``), the flow with the most waiters gives one up.

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


#: flows remembered (when served last); beyond this the memory starts over
MAX_FLOWS = 4096


@dataclass(eq=False)
class _Waiter:
    heavy: bool
    flow: str = ""
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
        self._served: dict[str, int] = {}  # flow -> the grant that served it last
        self._grants = 0
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def acquire(self, timeout_s: float | None, flow: str = "", *, max_waiting: int | None = None) -> bool:
        """A light slot within ``timeout_s`` (None: wait as long as it takes); False when none freed.

        With ``max_waiting``: when that many already wait, the newest waiter of the flow with the
        most waiters gives up its place (its own wait returns False at once) if that flow has more
        waiters than this request's; else this request is refused at once (False). So one flow may
        take every place while it is alone, and gives places back as other flows arrive."""
        return self._wait(_Waiter(heavy=False, flow=flow), timeout_s, max_waiting)

    def release(self) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        with self._lock:
            self.running -= 1
            self._grant()

    @contextlib.contextmanager
    def heavy(self, *, holding: bool, timeout_s: float | None, flow: str = "") -> Iterator[None]:
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
        if not now and not self._wait(_Waiter(heavy=True, flow=flow), timeout_s):
            raise SlotTimeout(f"no training share of the {self.total} slots freed in time")
        try:
            yield
        finally:
            with self._lock:
                self.running_heavy -= 1
                if not holding:
                    self.running -= 1
                self._grant()

    def _wait(self, waiter: _Waiter, timeout_s: float | None, max_waiting: int | None = None) -> bool:
        with self._lock:
            self._queue.append(waiter)
            self._grant()
            if not waiter.granted and max_waiting is not None and len(self._queue) > max_waiting:
                if not self._displace_for(waiter.flow):
                    self._queue.remove(waiter)
                    return False
        if waiter.event.wait(timeout_s):
            return waiter.granted  # False: its place went to a smaller flow (_displace_for)
        with self._lock:
            if waiter.granted:  # granted between the timeout and this lock
                return True
            if waiter in self._queue:
                self._queue.remove(waiter)
            self._grant()  # a heavy waiter leaving may unblock light ones behind it
            return False

    def _displace_for(self, flow: str) -> bool:
        """The newest waiter of the largest flow gives up its place, if that flow has more waiters
        than ``flow`` (whose newcomer is already queued); caller holds the lock."""
        counts: dict[str, int] = {}
        for w in self._queue:
            counts[w.flow] = counts.get(w.flow, 0) + 1
        largest = max(counts, key=lambda f: counts[f])
        if counts[largest] <= counts[flow]:
            return False
        victim = next(w for w in reversed(self._queue) if w.flow == largest)
        self._queue.remove(victim)
        victim.event.set()  # not granted: its wait returns False
        return True

    def _grant(self) -> None:
        """Wake waiters that may run while slots are free: each time the one whose flow was served
        longest ago, the earliest within a flow (caller holds the lock)."""
        while self.running < self.total:
            chosen: _Waiter | None = None
            for waiter in self._queue:  # in order of arrival
                if waiter.heavy and self.running_heavy >= self.heavy_max:
                    continue
                if chosen is None or self._served.get(waiter.flow, -1) < self._served.get(chosen.flow, -1):
                    chosen = waiter
            if chosen is None:
                return
            self._queue.remove(chosen)
            self.running += 1
            self.running_heavy += chosen.heavy
            if len(self._served) >= MAX_FLOWS:
                self._served.clear()
            self._served[chosen.flow] = self._grants
            self._grants += 1
            chosen.granted = True
            chosen.event.set()
