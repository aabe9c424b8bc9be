"""The service's metrics live in the registry each app is given, never on the library's default one."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry

from vigil.config import Settings
from vigil.http.app import create_app
from vigil.http.telemetry import ServiceMetrics

UNREACHABLE = Settings().replace(prometheus={"url": "http://127.0.0.1:9", "retries": 0, "request_timeout_s": 0.5})


def _count(metrics, endpoint="/healthz"):
    return metrics.registry.get_sample_value("vigil_http_requests_total", {"endpoint": endpoint, "status": "200"})


def test_two_apps_count_their_own_requests():
    first, second = ServiceMetrics(CollectorRegistry()), ServiceMetrics(CollectorRegistry())
    a = create_app(UNREACHABLE, metrics=first).test_client()
    b = create_app(UNREACHABLE, metrics=second).test_client()
    for _ in range(3):
        assert a.get("/healthz").status_code == 200
    assert b.get("/healthz").status_code == 200
    assert (_count(first), _count(second)) == (3.0, 1.0)
    assert REGISTRY.get_sample_value("vigil_http_requests_total", {"endpoint": "/healthz", "status": "200"}) is None


def test_metrics_endpoint_shows_the_apps_registry_and_the_process():
    metrics = ServiceMetrics()
    client = create_app(UNREACHABLE, metrics=metrics).test_client()
    client.get("/healthz")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'vigil_http_requests_total{endpoint="/healthz",status="200"} 1.0' in text
    assert "process_resident_memory_bytes" in text or "python_info" in text  # what the default registry showed


def test_upstream_failures_are_counted_on_the_apps_metrics():
    metrics = ServiceMetrics(CollectorRegistry())
    client = create_app(UNREACHABLE, metrics=metrics).test_client()
    assert client.get("/readyz").status_code == 503  # /readyz uses its own probe, not the counted client
    client.post("/json/query", json={"range": {"from": "now-1h", "to": "now"},
                                     "targets": [{"refId": "A", "target": "up"}]})
    failures = sum(s.value for m in metrics.registry.collect() if m.name == "vigil_prometheus_errors"
                   for s in m.samples if s.name == "vigil_prometheus_errors_total")
    assert failures >= 1
