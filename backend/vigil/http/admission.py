"""Admission: how many requests one process scores at once, and the deadline each one has.

A process has ``server.threads`` threads. At most ``server.max_inflight`` of them score at once
(default: 4, or half the threads if fewer: scoring is CPU-bound and one process runs one thread of
Python at a time, so more slots only slow every answer down; identical queries wait on one
another's work, not on a slot's CPU); up to ``threads - max_inflight - 1`` more requests may wait for a slot,
at most ``server.queue_wait`` each; anything beyond is answered 429 with ``Retry-After`` at once.
So at least one thread is always free for ``/healthz``, ``/readyz`` and the cheap routes in
``UNMETERED``, which never take a slot, and nothing queues past Grafana's 30 s proxy timeout:
the time spent waiting is taken from the request's deadline (``remaining_s``).
Must not: know what a request does beyond its path.
"""

from __future__ import annotations

import threading
import time as _clock
from typing import Any

from flask import Flask, g, request

from vigil.config import Settings
from vigil.errors import Overloaded, UpstreamTimeout
from vigil.http.telemetry import ServiceMetrics

__all__ = ["register_admission", "remaining_s", "UNMETERED", "slot_counts", "DEFAULT_INFLIGHT"]

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


def register_admission(app: Flask, settings: Settings, metrics: ServiceMetrics) -> None:
    inflight, queue = slot_counts(settings)
    slots = threading.BoundedSemaphore(inflight)
    lock = threading.Lock()
    waiting = [0]

    def shed() -> Overloaded:
        metrics.http_shed.inc()
        return Overloaded(f"{request.method} {request.path[:80]}: this process is already scoring {inflight} "
                          f"requests with {queue} waiting (server.max_inflight, server.threads); retry in "
                          f"{settings.server.retry_after_s:g}s", code="overloaded",
                          retry_after_s=settings.server.retry_after_s)

    @app.before_request
    def admit() -> None:
        g.deadline = _clock.monotonic() + settings.server.request_timeout_s
        if request.path in UNMETERED or request.url_rule is None:
            return
        if not slots.acquire(blocking=False):
            with lock:
                if waiting[0] >= queue:
                    raise shed()
                waiting[0] += 1
            try:
                admitted = slots.acquire(timeout=settings.server.queue_wait_s)
            finally:
                with lock:
                    waiting[0] -= 1
            if not admitted:
                raise shed()
        g.admitted = True

    @app.teardown_request
    def release(_exc: Any) -> None:
        if g.pop("admitted", False):
            slots.release()


def remaining_s(where: str) -> float:
    """What is left of this request's deadline (``server.request_timeout`` from its arrival,
    time spent waiting for a slot included); UpstreamTimeout when nothing is."""
    left = g.get("deadline", _clock.monotonic() + 25.0) - _clock.monotonic()
    if left < 0.5:
        raise UpstreamTimeout(f"{where}: the request used up its time (server.request_timeout) before this "
                              "query could run", code="deadline_exceeded")
    return left
