"""The service's own Prometheus metrics (``/metrics``), in a registry passed in.

:class:`ServiceMetrics` holds every metric of one service app in its own ``CollectorRegistry``
(prometheus_client's registry model: nothing lands on the library's default registry, so two apps
in one process, such as two tests, never share a counter). ``create_app`` makes one and hands its
``record_*`` methods to the parts that count (Prometheus client, model cache, detection).

Under gunicorn every worker process counts for itself. :func:`count_across_processes` (called by
``vigil serve`` before the app is made) switches prometheus_client to its multi-process mode: each
metric then writes its value to files in a directory, and ``/metrics`` adds up all workers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

__all__ = ["ServiceMetrics", "count_across_processes", "multiprocess_dir", "CONTENT_TYPE_LATEST"]

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def count_across_processes(directory: str) -> None:
    """From now on, metrics made in this process and in the processes it forks count in files under
    ``directory``, so that ``/metrics`` adds up every gunicorn worker.

    prometheus_client chooses how a metric holds its value when the metric is made, from
    ``$PROMETHEUS_MULTIPROC_DIR`` as it was when the library was first imported. Setting the
    variable (for the forked workers and ``mark_process_dead``) and choosing again here makes the
    order explicit: call this before ``create_app``; when the library was imported does not matter.
    """
    os.environ[_MULTIPROC_ENV] = directory
    values.ValueClass = values.get_value_class()


def multiprocess_dir() -> str | None:
    """The directory set by :func:`count_across_processes` (or by whoever started us), if any."""
    return os.environ.get(_MULTIPROC_ENV) or None


class ServiceMetrics:
    """Every metric of one service app.

    ``registry``: where the metrics live (a new one by default). ``multiprocess_path``: when set,
    :meth:`exposition` adds up the files every worker process writes there instead.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, multiprocess_path: str | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess_path = multiprocess_path
        r = self.registry
        if registry is None and multiprocess_path is None:
            # What the default registry showed before: process memory/CPU, Python GC and version.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                r.register(collector)
        self.http_requests = Counter("vigil_http_requests_total", "HTTP requests answered", ["endpoint", "status"],
                                     registry=r)
        self.http_duration = Histogram("vigil_http_request_duration_seconds", "Time to answer an HTTP request",
                                       ["endpoint"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25),
                                       registry=r)
        self.http_shed = Counter("vigil_http_requests_shed_total", "Requests answered 429 at once because this "
                                 "process was already scoring server.max_inflight", registry=r)
        self.model_fits = Counter("vigil_model_fits_total", "Detectors fitted", ["model"], registry=r)
        self.fit_duration = Histogram("vigil_model_fit_duration_seconds", "Time to fit one detector", ["model"],
                                      buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=r)
        self.cache_hits = Counter("vigil_model_cache_hits_total", "Fitted detectors reused from the cache", registry=r)
        self.cache_misses = Counter("vigil_model_cache_misses_total", "Detector look-ups that needed a fit", registry=r)
        self.upstream_duration = Histogram("vigil_prometheus_request_duration_seconds",
                                           "Time of requests to Prometheus/Loki",
                                           buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.upstream_errors = Counter("vigil_prometheus_errors_total", "Failed requests to Prometheus/Loki",
                                       ["reason"], registry=r)

    def record_fit(self, model: str, duration_s: float) -> None:
        self.model_fits.labels(model).inc()
        self.fit_duration.labels(model).observe(duration_s)

    def record_upstream(self, outcome: str, duration_s: float) -> None:
        self.upstream_duration.observe(duration_s)
        if outcome != "ok":
            self.upstream_errors.labels(outcome).inc()

    def record_cache(self, hit: bool) -> None:
        (self.cache_hits if hit else self.cache_misses).inc()

    def record_request(self, endpoint: str, status: int, duration_s: float) -> None:
        self.http_requests.labels(endpoint, str(status)).inc()
        self.http_duration.labels(endpoint).observe(duration_s)

    def exposition(self) -> bytes:
        """The text a scrape of ``/metrics`` gets."""
        if self.multiprocess_path:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_path)
            return generate_latest(registry)
        return generate_latest(self.registry)
