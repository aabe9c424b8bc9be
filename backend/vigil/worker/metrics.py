"""The worker's own metrics and its small HTTP server (``/metrics``, ``/healthz``, ``/api/v1/audit``).

Metrics (per-job labels are named ``vigil_job``, so that they never collide with the ``job`` label
Prometheus adds for the scrape target, nor with a watched series' own ``job`` label):

- ``vigil_anomaly_score{vigil_job, <series labels>}``: latest score of every watched series
  (a custom collector, since label sets differ per job); Prometheus alert rules can use it;
- ``vigil_episodes_started_total{vigil_job}``, ``vigil_episodes_ended_total{vigil_job}``;
- ``vigil_outbox_backlog{sink}`` (read from the store at scrape time),
  ``vigil_delivery_failures_total{sink}``;
- ``vigil_job_duration_seconds{vigil_job}`` (histogram), ``vigil_job_last_success_timestamp_seconds{vigil_job}``,
  ``vigil_job_failures_total{vigil_job}``.

Must not: score anything or write the store. The HTTP surface is a WSGI app (``worker_app``; ``/metrics``
is prometheus_client's ``make_wsgi_app``) served by the stdlib's ``wsgiref`` in a daemon thread:
the worker never loads Flask.
It listens on ``worker.metrics_host`` (127.0.0.1 unless configured; 0.0.0.0 in a pod).
``/api/v1/audit`` needs ``Authorization: Bearer <server.token>`` when a token is configured, like
the service's; ``/metrics`` and ``/healthz`` need none (a Prometheus scrape and the kubelet's probe
carry no token: restrict who reaches the port with a NetworkPolicy, as ``k8s/`` does).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import threading
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, make_wsgi_app
from prometheus_client.core import Metric

from vigil.store.audit import AuditStore, audit_rows

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication as WSGIApp

__all__ = ["WorkerMetrics", "MetricsServer", "worker_app"]

log = logging.getLogger("vigil.worker")
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def _label_name(name: str) -> str:
    if name == "__name__":
        return "metric"
    clean = _INVALID.sub("_", name) or "_"
    if clean[0].isdigit():
        clean = "_" + clean
    if clean.startswith("__"):
        clean = "series" + clean
    return "series_vigil_job" if clean == "vigil_job" else clean


class _ScoreCollector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scores: dict[str, dict[str, tuple[dict[str, str], float]]] = {}

    def set_job(self, job: str, scores: Mapping[str, tuple[Mapping[str, str], float]]) -> None:
        """Replace the latest scores of ``job``'s series (series no longer seen disappear)."""
        clean = {}
        for key, (labels, score) in scores.items():
            out = {_label_name(k): str(v) for k, v in labels.items() if v != ""}
            out["vigil_job"] = job
            clean[key] = (out, float(score))
        with self._lock:
            self._scores[job] = clean

    def collect(self) -> Iterator[Metric]:
        metric = Metric("vigil_anomaly_score", "Latest anomaly score of each watched series (1.0 is the threshold).",
                        "gauge")
        with self._lock:
            items = [v for job in self._scores.values() for v in job.values()]
        for labels, score in items:
            if math.isfinite(score):
                metric.add_sample("vigil_anomaly_score", labels, score)
        yield metric


class _BacklogCollector:
    def __init__(self, backlog: Callable[[], Mapping[str, int]]) -> None:
        self._backlog = backlog

    def collect(self) -> Iterator[Metric]:
        metric = Metric("vigil_outbox_backlog", "Deliveries owed to each sink.", "gauge")
        try:
            counts = self._backlog()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the store is busy
            counts = {}
        for sink, count in counts.items():
            metric.add_sample("vigil_outbox_backlog", {"sink": sink}, float(count))
        yield metric


class WorkerMetrics:
    """Every metric of one worker, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 backlog: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.scores = _ScoreCollector()
        self.registry.register(self.scores)
        if backlog is not None:
            self.registry.register(_BacklogCollector(backlog))
        r = self.registry
        self.episodes_started = Counter("vigil_episodes_started_total", "Anomaly episodes started.", ["vigil_job"], registry=r)
        self.episodes_ended = Counter("vigil_episodes_ended_total", "Anomaly episodes ended.", ["vigil_job"], registry=r)
        self.delivery_failures = Counter("vigil_delivery_failures_total", "Failed delivery attempts.", ["sink"], registry=r)
        self.deliveries = Counter("vigil_deliveries_total", "Successful deliveries.", ["sink"], registry=r)
        self.job_duration = Histogram("vigil_job_duration_seconds", "Duration of one run of a job.", ["vigil_job"],
                                      buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=r)
        self.job_last_success = Gauge("vigil_job_last_success_timestamp_seconds",
                                      "When a job last ran successfully (UNIX seconds).", ["vigil_job"], registry=r)
        self.job_failures = Counter("vigil_job_failures_total", "Runs of a job that failed.", ["vigil_job"], registry=r)
        self.series_watched = Gauge("vigil_series_watched", "Series a job scored in its last run (this shard).",
                                    ["vigil_job"], registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def worker_app(metrics: WorkerMetrics, *, store: AuditStore | None = None,
               healthy: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
               token: str | None = None) -> WSGIApp:
    """The worker's HTTP surface as a WSGI app: ``/metrics`` is prometheus_client's own app over the
    worker's registry; ``/healthz``; ``/api/v1/audit`` (the same rows and parameters as the
    service's, through :func:`vigil.audit.audit_rows`). Errors are JSON ``{error, message, trace_id}``."""
    exposition = make_wsgi_app(metrics.registry)
    is_healthy = healthy or (lambda: (True, {}))

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return exposition(environ, start_response)
        if path == "/healthz":
            ok, detail = is_healthy()
            return _json(start_response, 200 if ok else 503, {"ok": ok, **detail})
        if path != "/api/v1/audit":
            return _json(start_response, 404, _error("not_found", f"no such path: {path[:200]}"))
        refusal = _refusal(token, environ.get("HTTP_AUTHORIZATION", ""))
        if refusal:
            return _json(start_response, 401, _error(*refusal))
        params = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        try:
            rows = audit_rows(store, params)
        except ValueError as exc:
            return _json(start_response, 400, _error("bad_request", str(exc)[:500]))
        return _json(start_response, 200, rows)

    return app


def _refusal(token: str | None, header: str) -> tuple[str, str] | None:
    """(code, message) when the audit needs a token the request lacks; None when it may pass."""
    if not token:
        return None
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return ("missing_token", "this Vigil worker requires 'Authorization: Bearer <token>' (server.token) "
                "for /api/v1/audit")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return ("bad_token", "the bearer token does not match this Vigil's server.token")
    return None


def _error(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message, "trace_id": ""}


def _json(start_response: StartResponse, status: int, body: Any) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - no access log (tokens in URLs)
        pass


class MetricsServer:
    """:func:`worker_app` on ``host:port`` (port 0 = any free port), in a daemon thread."""

    def __init__(self, metrics: WorkerMetrics, *, host: str = "0.0.0.0", port: int = 9108,
                 store: AuditStore | None = None, healthy: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
                 token: str | None = None) -> None:
        self.httpd = make_server(host, port, worker_app(metrics, store=store, healthy=healthy, token=token),
                                 server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vigil-metrics", daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
