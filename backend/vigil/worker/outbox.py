"""Deliveries owed to Grafana and Alertmanager, retried with exponential backoff until they succeed.

An outbox row says "make sink S reflect episode E"; the payload is built from the episode's row at
delivery time, so a row that waited through an outage delivers the latest state, once. Rows are
coalesced per (episode, sink) by the store; a version number keeps a delivery of an older state
from marking a newer change done.

Idempotence per sink:

- Grafana: an episode without an annotation id first looks for an annotation tagged
  ``vigil_episode:<id>`` and creates one only if none exists; the id is committed at once, then
  later changes PATCH it. A crash between Grafana's answer and our commit is repaired by the lookup.
- Alertmanager: an alert is identified by its labels (which carry the episode id); posting the same
  state again is a re-send, which Alertmanager expects and deduplicates.

Must not: score, or hold the store's lock while waiting on the network.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from vigil.store.audit import AuditStore, OutboxItem, StoredEpisode
from vigil.config import JobSettings
from vigil.errors import DeliveryTimeout
from vigil.sinks.base import Remember, Sink
from vigil.worker.metrics import WorkerMetrics

__all__ = ["Outbox", "DeliveryReport", "backoff_s"]

log = logging.getLogger("vigil.outbox")

#: First retry after about this long; doubles per failed attempt up to ``max_backoff_s``.
BASE_BACKOFF_S = 1.0


def backoff_s(attempts: int, *, base_s: float = BASE_BACKOFF_S, max_s: float = 300.0,
              rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait after ``attempts`` failures: ``base * 2**(attempts-1)``, +-20% jitter, capped."""
    raw = base_s * (2 ** max(attempts - 1, 0))
    return min(max_s, raw * (0.8 + 0.4 * rng()))


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed: int = 0


def _now_ms() -> int:
    return int(time.time() * 1000)


class Outbox:
    """Delivers what the store owes. ``sinks`` maps a sink's name (``"grafana"``, ``"alertmanager"``)
    to the :class:`~vigil.sinks.Sink` that delivers to it."""

    def __init__(
        self,
        store: AuditStore,
        sinks: Mapping[str, Sink],
        *,
        jobs: Mapping[str, JobSettings] | None = None,
        max_backoff_s: float = 300.0,
        base_backoff_s: float = BASE_BACKOFF_S,
        resend_every_s: float | None = 60.0,
        metrics: WorkerMetrics | None = None,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.store = store
        self.sinks = dict(sinks)
        self.jobs = dict(jobs or {})
        self.max_backoff_s = max_backoff_s
        self.base_backoff_s = base_backoff_s
        self.resend_every_s = resend_every_s
        self.metrics = metrics
        self.clock_ms = clock_ms

    def deliver_due(self, *, limit: int = 100) -> DeliveryReport:
        """Try every delivery that is due now (and schedule the re-sends of firing alerts)."""
        now_ms = self.clock_ms()
        if self.resend_every_s and "alertmanager" in self.sinks:
            self.store.enqueue_resends(now_ms, self.resend_every_s)
        report = DeliveryReport()
        for item in self.store.due(now_ms, limit=limit):
            if self._deliver(item):
                report.delivered += 1
            else:
                report.failed += 1
        return report

    def drain(self, deadline_s: float, *, poll_s: float = 0.1) -> bool:
        """Deliver until nothing is owed or ``deadline_s`` passed; True when the backlog is empty."""
        end = time.monotonic() + deadline_s
        while True:
            self.deliver_due()
            if sum(self.store.backlog().values()) == 0:
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(poll_s)

    # -- one delivery --------------------------------------------------------------------------

    def _deliver(self, item: OutboxItem) -> bool:
        episode = self.store.episode(item.episode_id)
        sink = self.sinks.get(item.sink)
        if episode is None or sink is None:
            # The sink was unconfigured since (or the row is orphaned): nothing can be owed to it.
            with self.store.transaction() as db:
                self.store.mark_delivered(db, item, self.clock_ms())
                self.store.log_event(db, "delivery_dropped", self.clock_ms(), episode_id=item.episode_id,
                                     sink=item.sink, detail={"why": "sink not configured"})
            return True
        job = self.jobs.get(episode.job)
        try:
            action, detail, fields = sink.deliver(episode, job, self.clock_ms(), self._remember(episode, sink.name))
        except Exception as exc:  # noqa: BLE001 - any failure is retried; the reason is recorded
            return self._failed(item, episode, exc)
        now_ms = self.clock_ms()
        with self.store.transaction() as db:
            if fields:
                self.store.update_episode(db, episode.id, fields, now_ms)
            done = self.store.mark_delivered(db, item, now_ms)
            self.store.log_event(db, "delivered", now_ms, episode_id=episode.id, sink=item.sink,
                                 detail={"action": action, **detail})
        if self.metrics is not None:
            self.metrics.deliveries.labels(item.sink).inc()
        log.info("delivered %s %s for episode %s", item.sink, action, episode.id,
                 extra={"event": "delivered", "sink": item.sink, "action": action, "episode_id": episode.id,
                        "vigil_job": episode.job, "series": episode.series_key, "superseded": not done, **detail})
        return True

    def _failed(self, item: OutboxItem, episode: StoredEpisode, exc: Exception) -> bool:
        attempts = item.attempts + 1
        wait_s = backoff_s(attempts, base_s=self.base_backoff_s, max_s=self.max_backoff_s)
        sink = self.sinks.get(item.sink)
        if isinstance(exc, DeliveryTimeout) and sink is not None:
            # The sink may still be working on the request that timed out: give it time to finish,
            # so that the retry's lookup by tag sees what it made.
            sink_timeout_s = sink.request_timeout_s
            wait_s = max(wait_s, min(self.max_backoff_s, 3 * sink_timeout_s))
        now_ms = self.clock_ms()
        error = f"{type(exc).__name__}: {_short(exc)}"
        with self.store.transaction() as db:
            self.store.mark_failed(db, item, error, now_ms + int(wait_s * 1000))
            self.store.log_event(db, "delivery_failed", now_ms, episode_id=episode.id, sink=item.sink,
                                 detail={"error": error, "attempt": attempts, "retry_in_s": round(wait_s, 2)})
        if self.metrics is not None:
            self.metrics.delivery_failures.labels(item.sink).inc()
        log.warning("delivery to %s failed for episode %s (attempt %d, retry in %.1fs): %s", item.sink, episode.id,
                    attempts, wait_s, error,
                    extra={"event": "delivery_failed", "sink": item.sink, "episode_id": episode.id,
                           "vigil_job": episode.job, "attempt": attempts, "retry_in_s": round(wait_s, 2),
                           "error": error})
        return False

    def _remember(self, episode: StoredEpisode, sink: str) -> Remember:
        def remember(fields: Mapping[str, Any], event: str, detail: Mapping[str, Any]) -> None:
            now_ms = self.clock_ms()
            with self.store.transaction() as db:
                self.store.update_episode(db, episode.id, fields, now_ms)
                self.store.log_event(db, event, now_ms, episode_id=episode.id, sink=sink, detail=detail)
        return remember


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text[:300]
