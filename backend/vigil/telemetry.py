"""The service's own Prometheus metrics (``/metrics``).

Under gunicorn every worker process counts for itself; when ``PROMETHEUS_MULTIPROC_DIR`` is set
(``vigil serve`` sets it) ``/metrics`` adds up all workers.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client import CONTENT_TYPE_LATEST

__all__ = ["HTTP_REQUESTS", "HTTP_DURATION", "MODEL_FITS", "FIT_DURATION", "CACHE_HITS", "CACHE_MISSES",
           "UPSTREAM_DURATION", "UPSTREAM_ERRORS", "HTTP_SHED", "render", "CONTENT_TYPE_LATEST"]

HTTP_REQUESTS = Counter("vigil_http_requests_total", "HTTP requests answered", ["endpoint", "status"])
HTTP_DURATION = Histogram("vigil_http_request_duration_seconds", "Time to answer an HTTP request", ["endpoint"],
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25))
HTTP_SHED = Counter("vigil_http_requests_shed_total",
                    "Requests answered 429 at once because this process was already scoring server.max_inflight")
MODEL_FITS = Counter("vigil_model_fits_total", "Detectors fitted", ["model"])
FIT_DURATION = Histogram("vigil_model_fit_duration_seconds", "Time to fit one detector", ["model"],
                         buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
CACHE_HITS = Counter("vigil_model_cache_hits_total", "Fitted detectors reused from the cache")
CACHE_MISSES = Counter("vigil_model_cache_misses_total", "Detector look-ups that needed a fit")
UPSTREAM_DURATION = Histogram("vigil_prometheus_request_duration_seconds", "Time of requests to Prometheus/Loki",
                              buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
UPSTREAM_ERRORS = Counter("vigil_prometheus_errors_total", "Failed requests to Prometheus/Loki", ["reason"])


def record_fit(model: str, duration_s: float) -> None:
    MODEL_FITS.labels(model).inc()
    FIT_DURATION.labels(model).observe(duration_s)


def record_upstream(outcome: str, duration_s: float) -> None:
    UPSTREAM_DURATION.observe(duration_s)
    if outcome != "ok":
        UPSTREAM_ERRORS.labels(outcome).inc()


def record_cache(hit: bool) -> None:
    (CACHE_HITS if hit else CACHE_MISSES).inc()


def render() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
