"""Bad input and faults: clear JSON errors, bounded time, recovery without a restart."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from grafana_bodies import simpod_query
from vigil.config import Settings
from vigil.http.app import create_app

pytestmark = pytest.mark.real


def assert_json_error(response, status, needle):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error", "message", "trace_id"}
    assert needle in body["message"], body["message"]
    return body


def test_malformed_json_names_the_problem(client):
    assert_json_error(client.post("/json/query", data="{not json", content_type="application/json"),
                      400, "not valid JSON")


def test_invalid_promql_names_the_ref_id_and_query(client, seeded_prometheus):
    end_ms = seeded_prometheus.end_ms
    body = simpod_query(end_ms - 3600_000, end_ms, [{"refId": "Z", "target": "rate(x[5m"}])
    error = assert_json_error(client.post("/json/query", json=body), 422, "refId Z (query 'rate(x[5m')")
    assert error["error"] == "query_error"


def test_unknown_payload_field_and_unknown_model(client, seeded_prometheus):
    end_ms = seeded_prometheus.end_ms
    body = simpod_query(end_ms - 3600_000, end_ms, [{"target": "vigil_test_cpu", "payload": {"modle": "iforest"}}])
    assert_json_error(client.post("/json/query", json=body), 400, "unknown field 'modle'")
    body = simpod_query(end_ms - 3600_000, end_ms, [{"target": "vigil_test_cpu", "payload": {"model": "lstm"}}])
    assert_json_error(client.post("/json/query", json=body), 400, "model must be one of auto, seasonal, iforest, ocsvm")


def test_huge_range_is_refused_and_long_one_is_clamped(client, seeded_prometheus):
    end_ms = seeded_prometheus.end_ms
    body = simpod_query(end_ms - 400 * 86400_000, end_ms, [{"target": "vigil_test_cpu"}], interval_ms=1000,
                        max_data_points=100_000)
    assert_json_error(client.post("/json/query", json=body), 400, "longer than the 31d allowed")
    # Ten days at a 1 s interval: the step is raised to stay under 11,000 points per series.
    body = simpod_query(end_ms - 10 * 86400_000, end_ms, [{"target": "vigil_test_cpu", "payload": {"model": "seasonal"}}],
                        interval_ms=1000, max_data_points=1_000_000)
    response = client.post("/json/query", json=body)
    assert response.status_code == 200
    for frame in response.get_json():
        assert len(frame["fields"][0]["values"]) <= 11_000


def test_nan_inf_and_gaps_do_not_break_scoring(client, seeded_prometheus):
    end_ms = seeded_prometheus.end_ms
    # Division by zero gives +Inf/NaN samples; the range before the data gives gaps.
    expr = "vigil_test_cpu / (vigil_test_cpu - vigil_test_cpu)"
    body = simpod_query(end_ms - 3600_000, end_ms, [{"target": expr}])
    response = client.post("/json/query", json=body)
    assert response.status_code == 200
    for frame in response.get_json():
        values = [f for f in frame["fields"] if f["name"] == "value"]
        assert not values or all(v is None for v in values[0]["values"])


def test_too_little_history_is_a_notice_not_an_error(client, seeded_prometheus):
    # The first 20 minutes of the series: the hour they end in has less history than training needs.
    start_ms = seeded_prometheus.start_ms
    body = simpod_query(start_ms, start_ms + 20 * 60_000, [{"target": "vigil_test_cpu", "payload": {"model": "seasonal"}}])
    response = client.post("/json/query", json=body)
    assert response.status_code == 200
    frames = response.get_json()
    notices = frames[0]["meta"].get("notices", [])
    assert any("history" in n["text"] for n in notices)


def test_raw_counter_gets_a_notice(client, seeded_prometheus):
    import time as _t

    end_ms = int(_t.time() * 1000)
    body = simpod_query(end_ms - 600_000, end_ms, [{"target": "node_cpu_seconds_total"}], interval_ms=15_000)
    frames = client.post("/json/query", json=body).get_json()
    assert any("raw counter" in n["text"] for f in frames for n in f.get("meta", {}).get("notices", []))


def test_auth_when_a_token_is_configured(seeded_prometheus):
    settings = Settings().replace(prometheus={"url": seeded_prometheus.url}, server={"token": "s3cret"})
    client = create_app(settings).test_client()
    assert_json_error(client.post("/json/metrics", json={}), 401, "Authorization: Bearer")
    assert_json_error(client.post("/json/metrics", json={}, headers={"Authorization": "Bearer nope"}),
                      401, "does not match")
    assert client.post("/json/metrics", json={}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/api/v1/anomalies?query=up", headers={"Authorization": "Basic x"}).status_code == 401
    # Health and metrics stay open for probes and scrapers.
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_unreachable_prometheus_is_a_fast_503(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings().replace(prometheus={"url": f"http://127.0.0.1:{port}", "retries": 1})
    client = create_app(settings).test_client()
    end_ms = int(time.time() * 1000)
    started = time.monotonic()
    error = assert_json_error(client.post("/json/query", json=simpod_query(end_ms - 3600_000, end_ms,
                                                                           [{"target": "up"}])),
                              503, "Prometheus at http://127.0.0.1")
    assert time.monotonic() - started < 5
    assert "unavailable" in error["message"]
    assert_json_error(client.get("/readyz"), 503, "not reachable")


def test_slow_prometheus_is_a_504_within_the_budget():
    """A server that accepts and never answers: the answer comes within the request budget."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        settings = Settings().replace(prometheus={"url": f"http://127.0.0.1:{port}", "request_timeout_s": 1.0},
                                      server={"request_timeout_s": 3.0})
        client = create_app(settings).test_client()
        end_ms = int(time.time() * 1000)
        started = time.monotonic()
        assert_json_error(client.post("/json/query", json=simpod_query(end_ms - 3600_000, end_ms, [{"target": "up"}])),
                          504, "did not answer")
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def test_prometheus_stopped_then_restarted_recovers_without_restarting_vigil(prometheus_factory, node_exporter):
    prometheus = prometheus_factory(scrape_targets=[("node", f"127.0.0.1:{node_exporter.port}")])
    client = create_app(Settings().replace(prometheus={"url": prometheus.url, "retries": 0})).test_client()
    assert client.get("/readyz").status_code == 200
    prometheus.stop()
    end_ms = int(time.time() * 1000)
    body = simpod_query(end_ms - 600_000, end_ms, [{"target": "up"}], interval_ms=15_000)
    assert_json_error(client.post("/json/query", json=body), 503, "unavailable")
    assert client.get("/readyz").status_code == 503
    prometheus.start()
    assert client.get("/readyz").status_code == 200
    assert client.post("/json/query", json=body).status_code == 200
