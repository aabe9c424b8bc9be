"""``vigil worker``: run the configured jobs on a schedule and hand their episodes to the sinks.

Owns the schedule (each job every ``every_s``, first run jittered, never two runs of one job at
once, one range query per job per run), sharding (a series belongs to shard
``crc32(job + series_key) % shard_count``; with ``group_by``, a whole group belongs to the shard of
its group key, and the group is the unit of episodes), and the order of side effects: a run's episode changes
and the deliveries they cause are committed to the audit store in ONE transaction before anything
is sent; a separate thread then works through the outbox. A failing job (Prometheus down, a bad
query) changes nothing in the store: its open episodes stay open until a run succeeds.

Must not: run inside the HTTP service (every gunicorn worker would repeat the side effects), or
compute scores itself (``vigil.pipeline.Detection`` does).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import signal
import sys
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from vigil.store.audit import AuditStore
from vigil.config import ConfigError, JobSettings, Settings, config_path, load_settings
from vigil.logs import configure_logging
from vigil.worker.outbox import Outbox
from vigil.series import series_key
from vigil.sinks.base import Sink
from vigil.worker.tracker import Change, Extended, ObservedSeries, Started, track
from vigil.units import parse_min_deviation
from vigil.worker.metrics import MetricsServer, WorkerMetrics

if TYPE_CHECKING:  # the pipeline (scikit-learn) is imported when a worker is made, not with this module
    from vigil.pipeline.core import Detection

__all__ = ["Worker", "JobOutcome", "in_shard", "add_arguments", "run"]

log = logging.getLogger("vigil.worker")

#: A job's first run starts after a random delay of up to this (or ``every_s`` if shorter).
MAX_START_JITTER_S = 15.0


def in_shard(job: str, key: str, shard_index: int, shard_count: int) -> bool:
    """A series belongs to shard ``crc32(job + series_key) % shard_count``."""
    if shard_count <= 1:
        return True
    return zlib.crc32((job + key).encode("utf-8")) % shard_count == shard_index


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class JobOutcome:
    job: str
    ok: bool
    series: int = 0
    started: int = 0
    extended: int = 0
    ended: int = 0
    duration_s: float = 0.0
    error: str | None = None


@dataclass
class _JobState:
    job: JobSettings
    next_run_s: float
    future: Future | None = None
    last_success_ms: int | None = None
    last_error: str | None = None
    runs: int = 0


class Worker:
    """One worker process: the jobs of one shard, their audit trail and their deliveries."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: AuditStore | None = None,
        detection: Detection | None = None,
        sinks: Mapping[str, Sink] | None = None,
        metrics: WorkerMetrics | None = None,
        shard_index: int | None = None,
        shard_count: int | None = None,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.settings = settings
        self.clock_ms = clock_ms
        self.shard_index = settings.worker.shard_index if shard_index is None else shard_index
        self.shard_count = settings.worker.shard_count if shard_count is None else shard_count
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"The 'shard_index' parameter of Worker must be in [0, {self.shard_count}). "
                             f"Got {self.shard_index} instead.")
        self.store = store or AuditStore(settings.audit.path)
        self.detection = detection if detection is not None else _make_detection(settings)
        self.sinks = dict(sinks) if sinks is not None else _make_sinks(settings)
        self.metrics = metrics or WorkerMetrics(backlog=self.store.backlog)
        self.jobs = {j.name: j for j in settings.jobs}
        self.outbox = Outbox(self.store, self.sinks, jobs=self.jobs, max_backoff_s=settings.worker.max_backoff_s,
                             resend_every_s=settings.alertmanager.resend_every_s, metrics=self.metrics,
                             clock_ms=clock_ms)
        self._states: dict[str, _JobState] = {}
        #: jobs whose last run matched no series: warned about once, then quiet until that changes
        self._matched_nothing: set[str] = set()
        self._stop = threading.Event()

    # -- one run of one job ---------------------------------------------------------------------

    def run_job(self, job: JobSettings) -> JobOutcome:
        """Score the last ``worker.lookback`` of ``job``, record what changed, owe the deliveries."""
        from vigil.pipeline.grouping import group_key
        from vigil.pipeline.core import Query

        t0 = time.monotonic()
        now_ms = self.clock_ms()
        lookback_ms = int(self.settings.worker.lookback_s * 1000)
        det = self.settings.detection

        def unit_key(labels: Mapping[str, str]) -> str:
            """What is tracked and sharded: the series, or with ``group_by`` its group."""
            return group_key(labels, job.group_by) if job.group_by else series_key(labels)

        query = Query(
            expr=job.query, start_ms=now_ms - lookback_ms, end_ms=now_ms, step_s=job.every_s,
            model=job.model or det.model, train_window_s=job.train_window_s or det.train_window_s,
            sensitivity=job.sensitivity or det.sensitivity, source=job.source, exclude=job.exclude, ref_id=job.name,
            # Shard before scoring, so each shard fits models for its own series only.
            series_filter=lambda labels: in_shard(job.name, unit_key(labels), self.shard_index, self.shard_count),
            max_series=self.settings.worker.max_series, group_by=job.group_by,
            min_deviation=parse_min_deviation(job.min_deviation) if job.min_deviation is not None else None,
        )
        try:
            result = self.detection.run(query, deadline_s=max(job.every_s, 10.0))
        except Exception as exc:  # noqa: BLE001 - a failing job must not stop the others
            return self._job_failed(job, exc, time.monotonic() - t0)
        observed: list[ObservedSeries] = []
        scores: dict[str, tuple[Mapping[str, str], float]] = {}
        # A group is watched like one series: its key and labels are the group's, its episodes
        # name the members that drove them.
        units = ([(g.labels, g.times_ms, g.episodes, g.model, g.unit, g.anomaly_score) for g in result.groups]
                 if job.group_by else
                 [(s.labels, s.times_ms, s.episodes, s.model, s.unit, s.scores.anomaly_score) for s in result.series])
        for labels, times_ms, episodes, model, unit, anomaly_score in units:
            key = series_key(labels)
            if not in_shard(job.name, key, self.shard_index, self.shard_count):
                continue
            last_ms = int(times_ms[-1]) if len(times_ms) else now_ms
            observed.append(ObservedSeries(key, dict(labels), last_ms, list(episodes), model, unit))
            scores[key] = (labels, _last_finite(anomaly_score))
        tolerance_ms = int(2 * job.every_s * 1000)
        stored = self.store.relevant_episodes(job.name, now_ms - lookback_ms - tolerance_ms)
        changes = track(job.name, stored, observed, tolerance_ms=tolerance_ms, severity=job.severity)
        applied = self._apply(job, changes, now_ms)
        duration_s = time.monotonic() - t0
        self.metrics.scores.set_job(job.name, scores)
        self.metrics.series_watched.labels(job.name).set(len(observed))
        self.metrics.job_duration.labels(job.name).observe(duration_s)
        self.metrics.job_last_success.labels(job.name).set(now_ms / 1000.0)
        state = self._states.get(job.name)
        if state is not None:
            state.last_success_ms, state.last_error = now_ms, None
        outcome = JobOutcome(job.name, True, len(observed), started=applied["started"], extended=applied["extended"],
                             ended=applied["ended"], duration_s=duration_s)
        extra = {"event": "job_run", "vigil_job": job.name, "series": len(observed), "duration_s": round(duration_s, 3),
                 "started": outcome.started, "extended": outcome.extended, "ended": outcome.ended,
                 "notices": result.notices}
        if not observed and job.name not in self._matched_nothing:
            # Said once at warning (a typo, or a metric not scraped yet), then at debug until it changes:
            # a log line every minute that says the same thing would bury the ones that matter.
            self._matched_nothing.add(job.name)
            reason = self._why_nothing(job, query.start_ms, query.end_ms)
            log.warning("job %s: %s (said once, until it matches again)", job.name, reason,
                        extra={**extra, "event": "job_matched_nothing", "reason": reason})
        elif not observed:
            log.debug("job %s still matches no series", job.name, extra={**extra, "event": "job_matched_nothing"})
        else:
            if job.name in self._matched_nothing:
                self._matched_nothing.discard(job.name)
                log.info("job %s matches series again", job.name, extra={**extra, "event": "job_matches_again"})
            log.info("job %s scored %d series in %.2fs: %d started, %d extended, %d ended", job.name,
                     len(observed), duration_s, outcome.started, outcome.extended, outcome.ended, extra=extra)
        return outcome

    def _why_nothing(self, job: JobSettings, start_ms: int, end_ms: int) -> str:
        """Why a job's run matched no series: an unknown metric, no samples yet, or another shard's series."""
        from vigil.sources.emptiness import why_empty
        from vigil.sources.presets import resolve

        expr, _ = resolve(job.query)
        client = getattr(self.detection, "prometheus", None) if job.source == "prometheus" else None
        reason = why_empty(expr, start_ms, end_ms, shown_as=job.query.strip(), client=client)
        if self.shard_count > 1:
            reason += f" (or every series it has belongs to another shard than {self.shard_index}/{self.shard_count})"
        return reason

    def _job_failed(self, job: JobSettings, exc: Exception, duration_s: float) -> JobOutcome:
        error = f"{type(exc).__name__}: {exc}"  # a VigilError's str is its message
        self.metrics.job_failures.labels(job.name).inc()
        self.metrics.job_duration.labels(job.name).observe(duration_s)
        state = self._states.get(job.name)
        if state is not None:
            state.last_error = error
        log.error("job %s failed: %s", job.name, error,
                  extra={"event": "job_failed", "vigil_job": job.name, "error": error})
        return JobOutcome(job.name, False, duration_s=duration_s, error=error)

    def _apply(self, job: JobSettings, changes: list[Change], now_ms: int) -> dict[str, int]:
        """All of one run's changes and the deliveries they owe: one transaction, committed."""
        sinks = [s for s in ("grafana", "alertmanager") if s in self.sinks]
        counts = {"started": 0, "extended": 0, "ended": 0}
        logs: list[tuple[str, str, Mapping[str, Any]]] = []
        if not changes:
            return counts
        with self.store.transaction() as db:
            for change in changes:
                values = change.fields()
                if isinstance(change, Started):
                    values["alert_state"] = "pending" if "alertmanager" in sinks else "off"
                    episode_id = self.store.insert_episode(db, values, now_ms)
                    self.store.log_event(db, "episode_started", now_ms, episode_id=episode_id,
                                         detail=_event_detail(values))
                    counts["started"] += 1
                    logs.append(("episode_started", episode_id, values))
                    if change.episode.end_ms is not None:
                        self.store.log_event(db, "episode_ended", now_ms, episode_id=episode_id,
                                             detail={"end_ms": change.episode.end_ms, "cause": "closed"})
                        counts["ended"] += 1
                        logs.append(("episode_ended", episode_id, values))
                    for sink in sinks:
                        self.store.enqueue(db, episode_id, sink, now_ms)
                elif isinstance(change, Extended):
                    self.store.update_episode(db, change.episode_id, values, now_ms)
                    counts["extended"] += 1
                    if "grafana" in sinks:
                        self.store.enqueue(db, change.episode_id, "grafana", now_ms)
                else:
                    self.store.update_episode(db, change.episode_id, values, now_ms)
                    self.store.log_event(db, "episode_ended", now_ms, episode_id=change.episode_id,
                                         detail={"end_ms": change.update.end_ms, "cause": change.cause})
                    counts["ended"] += 1
                    logs.append(("episode_ended", change.episode_id,
                                 {**values, "series_key": change.series_key, "cause": change.cause}))
                    for sink in sinks:
                        self.store.enqueue(db, change.episode_id, sink, now_ms)
        for kind, episode_id, logged in logs:  # after the commit: a log line never claims what is not stored
            (self.metrics.episodes_started if kind == "episode_started" else self.metrics.episodes_ended).labels(job.name).inc()
            log.info("%s %s %s %s", kind.replace("_", " "), episode_id, job.name, logged.get("series_key", ""),
                     extra={"event": kind, "episode_id": episode_id, "vigil_job": job.name, **_event_detail(logged)})
        return counts

    # -- the schedule ---------------------------------------------------------------------------

    def run_once(self, *, drain_s: float = 30.0) -> int:
        """Every job once, then deliver what is owed for up to ``drain_s``. 0 ok, 1 a job failed, 3 backlog left."""
        failed = [o for o in (self.run_job(j) for j in self.settings.jobs) if not o.ok]
        drained = self.outbox.drain(drain_s)
        return 1 if failed else (0 if drained else 3)

    def serve(self, *, max_parallel_jobs: int = 2, poll_s: float = 0.2) -> None:
        """Run until :meth:`stop`: jobs on their schedule in a small pool, deliveries in a thread."""
        now = time.monotonic()
        for job in self.settings.jobs:
            jitter_s = random.uniform(0, min(job.every_s, MAX_START_JITTER_S))
            self._states[job.name] = _JobState(job, now + jitter_s)
        delivery = threading.Thread(target=self._deliver_forever, args=(poll_s,), name="vigil-outbox", daemon=True)
        delivery.start()
        with ThreadPoolExecutor(max_workers=max(1, min(max_parallel_jobs, len(self._states))),
                                thread_name_prefix="vigil-job") as pool:
            while not self._stop.is_set():
                now = time.monotonic()
                for state in self._states.values():
                    if now < state.next_run_s:
                        continue
                    if state.future is not None and not state.future.done():
                        # Never two runs of one job at once: skip this slot, try the next one.
                        log.warning("job %s is still running; skipping a run", state.job.name,
                                    extra={"event": "job_skipped", "vigil_job": state.job.name})
                    else:
                        state.future = pool.submit(self.run_job, state.job)
                        state.runs += 1
                    # Fixed rate, without catching up on missed slots.
                    state.next_run_s += state.job.every_s * max(1, math.ceil((now - state.next_run_s) / state.job.every_s + 1e-9))
                wake = min((s.next_run_s for s in self._states.values()), default=now + 1.0)
                self._stop.wait(max(0.01, min(poll_s * 5, wake - time.monotonic())))
        delivery.join(timeout=10)

    def _deliver_forever(self, poll_s: float) -> None:
        while not self._stop.is_set():
            try:
                report = self.outbox.deliver_due()
            except Exception:  # noqa: BLE001 - the delivery loop must survive anything (a locked store)
                log.exception("outbox pass failed", extra={"event": "outbox_error"})
                report = None
            if report is None or (report.delivered == 0 and report.failed == 0):
                self._stop.wait(poll_s)

    def stop(self) -> None:
        self._stop.set()

    def health(self) -> tuple[bool, dict[str, Any]]:
        jobs = {
            name: {"last_success_ms": s.last_success_ms, "last_error": s.last_error, "runs": s.runs}
            for name, s in self._states.items()
        }
        try:
            backlog = self.store.backlog()
        except Exception as exc:  # noqa: BLE001
            return False, {"error": f"audit store: {exc}", "jobs": jobs}
        return True, {"jobs": jobs, "backlog": backlog, "shard": f"{self.shard_index}/{self.shard_count}"}


def _last_finite(values: Any) -> float:
    for v in reversed(list(values)):
        if v == v and math.isfinite(v):
            return float(v)
    return float("nan")


def _event_detail(values: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("job", "series_key", "start_ms", "end_ms", "peak_ms", "peak_score", "peak_value", "yhat", "yhat_lower",
            "yhat_upper", "reason", "model", "cause")
    return {k: values[k] for k in keys if k in values}


def _make_detection(settings: Settings) -> Detection:
    from vigil.pipeline.model_cache import ModelCache
    from vigil.pipeline.core import Detection
    from vigil.sources.prometheus import LokiClient, PrometheusClient

    loki = LokiClient.from_settings(settings.loki) if settings.loki.url else None
    # The worker keeps one model per watched series for a whole refit slot: a cache that cannot
    # hold them all would refit every run. Bounded by memory, not by count.
    cache = ModelCache(max_entries=10**9, max_bytes=settings.worker.cache_max_mb * 2**20)
    return Detection(settings, PrometheusClient.from_settings(settings.prometheus), loki, cache=cache)


def _make_sinks(settings: Settings) -> dict[str, Sink]:
    sinks: dict[str, Sink] = {}
    if settings.grafana.url:
        from vigil.sinks.annotations import GrafanaSink

        sinks["grafana"] = GrafanaSink(settings.grafana)
    if settings.alertmanager.url:
        from vigil.sinks.alerts import AlertmanagerSink

        sinks["alertmanager"] = AlertmanagerSink(settings.alertmanager, settings.grafana)
    return sinks


# ---------------------------------------------------------------------------------------------
# ``vigil worker``


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="the YAML configuration (default: $VIGIL_CONFIG; VIGIL_* variables override it)")
    parser.add_argument("--shard-index", type=int, default=None, help="this worker's shard (default worker.shard_index)")
    parser.add_argument("--shard-count", type=int, default=None, help="number of shards (default worker.shard_count)")
    parser.add_argument("--once", action="store_true",
                        help="run every job once, deliver what is owed, and exit (0 ok, 1 a job failed, 3 deliveries left)")
    parser.add_argument("--drain-timeout", default=30.0, type=float,
                        help="with --once: seconds to keep retrying deliveries before exiting")
    parser.add_argument("--metrics-host", default=None,
                        help="address of the /metrics server (default worker.metrics_host, 127.0.0.1)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="port of the /metrics server (default worker.metrics_port; 0 = any free port)")
    parser.add_argument("--log-level", default=os.environ.get("VIGIL_LOG_LEVEL", "info"),
                        help="debug, info, warning or error (default $VIGIL_LOG_LEVEL, else info)")


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    path = config_path(args.config)
    if path is None:
        print("vigil worker: --config or $VIGIL_CONFIG: must name the YAML configuration with the jobs; got neither",
              file=sys.stderr)
        return 2
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not settings.jobs:
        print(f"{path}: jobs: must list at least one job for the worker; got none", file=sys.stderr)
        return 2
    try:
        worker = Worker(settings, shard_index=args.shard_index, shard_count=args.shard_count)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.once:
        return worker.run_once(drain_s=args.drain_timeout)
    port = settings.worker.metrics_port if args.metrics_port is None else args.metrics_port
    host = settings.worker.metrics_host if args.metrics_host is None else args.metrics_host
    server = MetricsServer(worker.metrics, host=host, port=port, store=worker.store,
                           healthy=worker.health, token=settings.server.token).start()
    log.info("worker started: %d jobs, shard %d/%d, metrics on %s:%d", len(settings.jobs), worker.shard_index,
             worker.shard_count, host, server.port,
             extra={"event": "worker_started", "jobs": [j.name for j in settings.jobs], "metrics_port": server.port,
                    "shard_index": worker.shard_index, "shard_count": worker.shard_count,
                    "sinks": sorted(worker.sinks), "audit_path": settings.audit.path})

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("stopping on signal %d", signum, extra={"event": "worker_stopping"})
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.serve()
    finally:
        server.stop()
        worker.store.close()
    return 0
