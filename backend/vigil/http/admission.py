"""Admission: how many requests one process scores at once, and the deadline each one has.

A process has ``server.threads`` threads. At most ``server.max_inflight`` of them score at once
(default: 4, or half the threads if fewer: scoring is CPU-bound and one process runs one thread of
Python at a time, so more slots only slow every answer down; identical queries wait on one
another's work, not on a slot's CPU); up to ``threads - max_inflight - 1`` more requests may wait
for a slot, at most ``server.queue_wait`` each; anything beyond is answered 429 with ``Retry-After`` at once.
So at least one thread is always free for ``/healthz``, ``/readyz`` and the cheap routes in
``UNMETERED``, which never take a slot, and nothing queues past Grafana's 30 s proxy timeout:
the time spent waiting is taken from the request's deadline (``remaining_s``).

Waiting requests are queued per flow (:func:`flow_of`: the dashboard Grafana names in
``X-Dashboard-Uid``, else the user in ``X-Grafana-User``, else the client's address): a freed slot
goes to the flow served longest ago, and when the waiting places are full the flow with the most
waiters gives one up to a newcomer of a smaller flow, so a dashboard of forty panels opened at
once neither delays nor sheds another dashboard's panel (while alone, it may use every place).

Training (a view fetched for the first time, weeks of history fetched, models fitted) may hold
at most ``max_inflight - server.reserved_light_slots`` of the slots (:class:`vigil.slots.Slots`):
a request that finds it must train calls ``heavy_work()`` (the pipeline does, through its
``heavy_work`` hook), so cold panels never stall the refreshes of panels whose models are stored.
Must not: know what a request does beyond its path.
"""

from __future__ import annotations

import contextlib
import threading
import time as _clock
from typing import Any, Iterator

from flask import Flask, g, has_request_context, request

from vigil.config import Settings
from vigil.errors import Overloaded, UpstreamTimeout
from vigil.http.telemetry import ServiceMetrics
from vigil.slots import Slots, SlotTimeout

__all__ = ["register_admission", "remaining_s", "UNMETERED", "slot_counts", "DEFAULT_INFLIGHT", "make_slots",
           "flow_of"]

#: requests scored at once by default (``server.max_inflight``)
DEFAULT_INFLIGHT = 4

#: routes that never wait for, nor take, a scoring slot: probes, metrics, the API description and
#: the query editor's static lists
UNMETERED = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/json", "/json/",
                       "/json/metrics", "/json/metric-payload-options"})


def slot_counts(settings: Settings) -> tuple[int, int]:
    """(requests scored at once, requests that may wait for a slot) in one process."""
    threads = settings.server.threads
    inflight = settings.server.max_inflight or max(1, min(DEFAULT_INFLIGHT, threads // 2))
    return inflight, max(0, threads - inflight - 1)


def flow_of(headers: Any, remote_addr: str | None) -> str:
    """Whose request this is, for fair queueing: Grafana's dashboard, else its user, else the
    client's address (a hint, not an identity: bounded, never trusted for anything else)."""
    for name in ("X-Dashboard-Uid", "X-Grafana-User"):
        value = headers.get(name, "")
        if value:
            return f"{name[2:].lower()}:{value[:64]}"
    return f"addr:{remote_addr or ''}"


def make_slots(settings: Settings) -> Slots:
    """One process's slots: ``server.reserved_light_slots`` of them never train (none when the
    process scores one request at a time)."""
    inflight, _queue = slot_counts(settings)
    return Slots(inflight, max(1, inflight - settings.server.reserved_light_slots))


def register_admission(app: Flask, settings: Settings, metrics: ServiceMetrics, slots: Slots) -> None:
    inflight, queue = slot_counts(settings)
    training = threading.local()

    def shed(why: str) -> Overloaded:
        metrics.http_shed.inc()
        return Overloaded(f"{request.method} {request.path[:80]}: {why} (server.max_inflight {inflight}, "
                          f"server.threads); retry in {settings.server.retry_after_s:g}s", code="overloaded",
                          retry_after_s=settings.server.retry_after_s)

    @app.before_request
    def admit() -> None:
        g.deadline = _clock.monotonic() + settings.server.request_timeout_s
        if request.path in UNMETERED or request.url_rule is None:
            return
        g.flow = flow = flow_of(request.headers, request.remote_addr)
        if not slots.acquire(settings.server.queue_wait_s, flow, max_waiting=queue):
            raise shed(f"no scoring slot of this process freed in time ({slots.running} scoring, {slots.waiting} "
                       f"waiting, at most {settings.server.queue_wait_s:g}s each; when every waiting place is "
                       "taken, the dashboard or client with the most requests waiting gives places up first)")
        g.admitted = True

    @app.teardown_request
    def release(_exc: Any) -> None:
        if g.pop("admitted", False):
            slots.release()

    @contextlib.contextmanager
    def heavy_work() -> Iterator[None]:
        """Held while a query trains: a request's slot becomes one of the training shares (waiting
        for one, at most ``queue_wait`` and within its deadline, with its slot given back); outside
        a request (background fits) a slot and a share are taken and given back."""
        if getattr(training, "held", False):  # nested (a group's members): one share
            yield
            return
        holding = bool(g.get("admitted", False)) if has_request_context() else False
        timeout_s = (min(settings.server.queue_wait_s, remaining_s("training")) if has_request_context()
                     else None)
        try:
            flow = g.get("flow", "") if has_request_context() else "background"
            with slots.heavy(holding=holding, timeout_s=timeout_s, flow=flow):
                training.held = True
                try:
                    yield
                finally:
                    training.held = False
        except SlotTimeout:
            if holding:
                g.admitted = False  # the slot was given back while waiting
            metrics.http_shed.inc()
            raise Overloaded(f"{request.method} {request.path[:80]}: {inflight - slots.heavy_max} of this "
                             f"process's {inflight} scoring slots are kept for refreshes and the others are "
                             f"training models (server.reserved_light_slots); retry in "
                             f"{settings.server.retry_after_s:g}s", code="overloaded",
                             retry_after_s=settings.server.retry_after_s) from None

    app.extensions["vigil.detection"].heavy_work = heavy_work
    app.extensions["vigil.slots"] = slots  # (tests, diagnostics)


def remaining_s(where: str) -> float:
    """What is left of this request's deadline (``server.request_timeout`` from its arrival,
    time spent waiting for a slot included); UpstreamTimeout when nothing is."""
    left = g.get("deadline", _clock.monotonic() + 25.0) - _clock.monotonic()
    if left < 0.5:
        raise UpstreamTimeout(f"{where}: the request used up its time (server.request_timeout) before this "
                              "query could run", code="deadline_exceeded")
    return left
