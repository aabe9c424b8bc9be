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

Must not: score anything or write the store. The server is stdlib ``http.server`` in a daemon thread.
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import parse_qs, urlparse

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric

from .audit import AuditStore, audit_rows

__all__ = ["WorkerMetrics", "MetricsServer"]

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


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/api/v1/audit`` on ``host:port`` (port 0 = any free port)."""

    def __init__(self, metrics: WorkerMetrics, *, host: str = "0.0.0.0", port: int = 9108,
                 store: AuditStore | None = None, healthy: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
                 token: str | None = None) -> None:
        self.metrics = metrics
        self.token = token
        self.store = store
        self.healthy = healthy or (lambda: (True, {}))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vigil-metrics", daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        url = urlparse(request.path)
        if url.path == "/metrics":
            self._send(request, 200, self.metrics.exposition(), CONTENT_TYPE_LATEST)
        elif url.path == "/healthz":
            ok, detail = self.healthy()
            self._json(request, 200 if ok else 503, {"ok": ok, **detail})
        elif url.path == "/api/v1/audit":
            refusal = self._refusal(request.headers.get("Authorization", ""))
            if refusal:
                self._json(request, 401, {"error": refusal[0], "message": refusal[1], "trace_id": ""})
                return
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                rows = audit_rows(self.store, params)
            except ValueError as exc:
                self._json(request, 400, {"error": "bad_request", "message": str(exc)[:500], "trace_id": ""})
                return
            self._json(request, 200, rows)
        else:
            self._json(request, 404, {"error": "not_found", "message": f"no such path: {url.path}", "trace_id": ""})

    def _refusal(self, header: str) -> tuple[str, str] | None:
        """(code, message) when the audit needs a token the request lacks; None when it may pass."""
        if not self.token:
            return None
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return ("missing_token", "this Vigil worker requires 'Authorization: Bearer <token>' (server.token) "
                    "for /api/v1/audit")
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return ("bad_token", "the bearer token does not match this Vigil's server.token")
        return None

    @staticmethod
    def _json(request: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        MetricsServer._send(request, status, json.dumps(body).encode(), "application/json")

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
