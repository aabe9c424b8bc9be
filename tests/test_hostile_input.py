"""Hostile and absurd input: every answer a 4xx JSON error naming the field, never a 500, never a
leak of Prometheus endpoints, and bounded work on Prometheus (issue 14).

Each test here failed before the fix it pins: the cause is named in its docstring.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import warnings

import pytest
import requests

from grafana_bodies import simpod_query
from realstack import wait_for
from vigil.config import Settings
from vigil.errors import BadRequest, Overloaded, UpstreamTimeout
from vigil.http.app import create_app
from vigil.logs import JsonFormatter
from vigil.sources.prometheus import PrometheusClient
from vigil.units import parse_duration_s, parse_instant_ms

pytestmark = pytest.mark.real

JSON_ENDPOINTS = ["/json/query", "/json/variable", "/json/metrics", "/json/metric-payload-options",
                  "/json/tag-values", "/api/v1/anomalies", "/api/v1/audit"]


def assert_json_error(response, status, needle=""):
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert set(body) == {"error", "message", "trace_id"}, body
    assert needle in body["message"], body["message"]
    assert len(body["message"]) <= 1200
    return body


def query_body(seeded, targets, **kwargs):
    end_ms = seeded.end_ms
    return simpod_query(end_ms - 3600_000, end_ms, targets, **kwargs)


# -- body shape -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", JSON_ENDPOINTS)
def test_deeply_nested_json_is_a_400_on_every_endpoint(client, path):
    """Was a RecursionError -> 500: body reading caught ValueError only."""
    deep = "[" * 5000 + "]" * 5000
    error = assert_json_error(client.post(path, data=deep, content_type="text/plain"), 400, "nests")
    assert error["error"] == "body_too_deep"


@pytest.mark.parametrize("targets", [5, True, "A", {"refId": "A"}])
def test_targets_of_the_wrong_type_are_a_400(client, seeded_prometheus, targets):
    """Was a TypeError in json_datasource.query -> 500."""
    body = query_body(seeded_prometheus, [])
    body["targets"] = targets
    assert_json_error(client.post("/json/query", json=body), 400, "targets must be a list")


def test_target_fields_of_the_wrong_type_are_a_400(client, seeded_prometheus):
    body = query_body(seeded_prometheus, [{"target": "up"}])
    body["targets"][0]["target"] = {"expr": "up"}
    assert_json_error(client.post("/json/query", json=body), 400, "target must be a query string")
    body = query_body(seeded_prometheus, [{"target": "up", "payload": {"model": ["iforest"]}}])
    assert_json_error(client.post("/json/query", json=body), 400, "model must be one of")
    body = query_body(seeded_prometheus, [{"target": "up", "payload": {"sensitivity": {"a": 1}}}])
    assert_json_error(client.post("/json/query", json=body), 400, "sensitivity must be one of")
    body = query_body(seeded_prometheus, [{"target": "up"}])
    body["range"]["from"] = {"nested": True}
    assert_json_error(client.post("/json/query", json=body), 400, "range.from must be")


def test_too_many_targets_and_too_large_bodies_are_refused_before_any_work(client, seeded_prometheus):
    """Was 64,726 targets in one 5 MB body run one after another for 45 s."""
    body = query_body(seeded_prometheus, [{"refId": f"R{i}", "target": "up"} for i in range(100)])
    assert_json_error(client.post("/json/query", json=body), 400, "at most 26 are accepted")
    huge = json.dumps(query_body(seeded_prometheus, [{"target": "up" + " " * 2_000_000}]))
    error = assert_json_error(client.post("/json/query", data=huge, content_type="application/json"), 413)
    assert error["error"] == "request_entity_too_large"


def test_a_long_value_is_quoted_as_a_short_excerpt(client, seeded_prometheus):
    """Was a 5 MB error body repeating the whole query."""
    body = query_body(seeded_prometheus, [{"target": "x" * 100_000}])
    error = assert_json_error(client.post("/json/query", json=body), 400, "100000 characters")
    assert error["error"] == "value_too_long"


# -- strings and numbers ------------------------------------------------------------------------

def _raw_query(seeded, target_json: str, extra: str = "") -> str:
    end_ms = seeded.end_ms
    return ('{"range": {"from": "%d", "to": "%d"}, "targets": [{"refId": "A", "target": %s}]%s}'
            % (end_ms - 3600_000, end_ms, target_json, extra))


def test_lone_surrogates_are_a_400_wherever_they_appear(client, seeded_prometheus):
    """Was a UnicodeEncodeError building the Prometheus request -> 500."""
    cases = [
        ("/json/query", _raw_query(seeded_prometheus, '"up\\ud800"')),
        ("/json/query", _raw_query(seeded_prometheus, '"up"', ', "filters": [{"key": "job", "operator": "=", '
                                                              '"value": "\\udfff"}]')),
        ("/json/variable", '{"payload": {"label": "job", "query": "up{job=\\"\\ud800\\"}"}}'),
        ("/json/tag-values", '{"key": "\\ud800"}'),
        ("/api/v1/anomalies", '{"query": "\\ud800"}'),
    ]
    for path, raw in cases:
        error = assert_json_error(client.post(path, data=raw, content_type="text/plain"), 400, "surrogate")
        assert error["error"] == "bad_text"


@pytest.mark.parametrize("field, value, needle", [
    ("step", "1e306", "step must be"),
    ("from", "now-1e306", "from must be"),
    ("to", 10 ** 400, "to must be"),
    ("from", "99999999999999999999999", "from must be"),
])
def test_huge_numbers_in_infinity_bodies_are_a_400(client, field, value, needle):
    """Were OverflowErrors (pipeline.py step, infinity.py now-1e306, units.parse_instant_ms) -> 500."""
    body = json.dumps({"query": "up", field: value})
    assert_json_error(client.post("/api/v1/anomalies", data=body, content_type="text/plain"), 400, needle)


def test_huge_numbers_elsewhere_are_a_400(client, seeded_prometheus):
    assert_json_error(client.post("/api/v1/audit", data='{"since": "1e306"}', content_type="text/plain"),
                      400, "since")
    body = query_body(seeded_prometheus, [{"target": "up"}])
    body["intervalMs"] = 1e300
    assert_json_error(client.post("/json/query", json=body), 400, "intervalMs")
    raw = _raw_query(seeded_prometheus, '"up"', ', "maxDataPoints": 1e999')
    assert_json_error(client.post("/json/query", data=raw, content_type="application/json"), 400, "not valid JSON")
    raw = _raw_query(seeded_prometheus, '"up"', ', "intervalMs": NaN')
    assert_json_error(client.post("/json/query", data=raw, content_type="application/json"), 400, "not valid JSON")


def test_units_refuse_out_of_range_values_with_a_value_error():
    for bad in (10 ** 400, "1e400", -5, "9" * 30):
        with pytest.raises(ValueError):
            parse_instant_ms(bad)
    for bad in ("1e306", 1e306, 10 ** 400, "99999999999999y"):
        with pytest.raises(ValueError):
            parse_duration_s(bad)
    assert parse_duration_s("90d") == 90 * 86400


# -- label names and Prometheus paths ------------------------------------------------------------

@pytest.mark.parametrize("key", ["../../../api/v1/status/config?x=", "../status/flags#", "job/../../x", "a b", "1abc"])
def test_label_names_never_reach_a_prometheus_path(client, key):
    """Was: tag-values with key ../../../api/v1/status/config?x= answered Prometheus' configuration."""
    response = client.post("/json/tag-values", json={"key": key})
    error = assert_json_error(response, 400, "label name")
    assert error["error"] == "bad_label_name"
    response = client.post("/json/variable", json={"payload": {"label": key}})
    assert_json_error(response, 400, "payload.label must be a label name")
    body = {"range": {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"},
            "targets": [{"target": "up"}], "filters": [{"key": key, "operator": "=", "value": "x"}]}
    assert_json_error(client.post("/json/query", json=body), 400, "label name")


def test_the_client_itself_refuses_a_label_name_that_is_path_text(seeded_prometheus):
    client = PrometheusClient(seeded_prometheus.url)
    with pytest.raises(BadRequest, match="label name"):
        client.label_values("../../../api/v1/status/config?x=")
    assert "vigil-test" in client.label_values("job")


# -- Prometheus protected ---------------------------------------------------------------------------

@pytest.mark.parametrize("expr", ['{__name__=~".+"}', 'label_replace({__name__=~".+"}, "a", "$1", "job", "(.*)")',
                                  'count_over_time({__name__=~".+"}[31d])', '{__name__=~".*", job=~".*"}'])
def test_selectors_matching_every_series_are_refused(client, seeded_prometheus, expr):
    """Were passed through and cost Prometheus 5-7.7 CPU-seconds each."""
    body = query_body(seeded_prometheus, [{"target": expr}])
    error = assert_json_error(client.post("/json/query", json=body), 400, "matches every series")
    assert error["error"] == "selector_too_broad"
    raw = json.dumps({"query": expr})
    assert_json_error(client.post("/api/v1/anomalies", data=raw, content_type="text/plain"), 400,
                      "matches every series")


def test_a_narrow_regex_on_the_metric_name_still_works(client, seeded_prometheus):
    body = query_body(seeded_prometheus, [{"target": '{__name__=~"vigil_test_.+", instance="quiet"}',
                                           "payload": {"model": "seasonal"}}])
    assert client.post("/json/query", json=body).status_code == 200


def test_vigils_deadline_is_passed_to_prometheus_which_stops_the_query(seeded_prometheus):
    """Was: after Vigil's 504 Prometheus kept computing for 8-18 s. Now Prometheus is sent
    ``timeout`` and answers its own timeout error before Vigil's HTTP read gives up."""
    client = PrometheusClient(seeded_prometheus.url, request_timeout_s=2.0, retries=0)
    end_s = seeded_prometheus.end_ms / 1000
    # Ten comparisons evaluated at every second of a day, eight times over: Prometheus checks its
    # deadline at each step of each (so it stops within a few ms of it); the whole takes ~16 s on
    # this machine unloaded (two terms, ~4 s, once finished inside 1.6 s on a faster CI machine),
    # far longer than the 1.6 s (80% of 2 s) Prometheus is given.
    inner = seeded_prometheus.metric
    for _ in range(10):
        inner = f"({inner} > -1)"
    heavy = " + ".join([f"sum_over_time({inner}[1d:1s])"] * 8)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as caught:
        client.query_range(heavy, end_s - 3600, end_s, 60.0)
    assert "timed out running" in caught.value.message, caught.value.message  # Prometheus' own answer
    assert time.monotonic() - started < 10


def test_concurrent_queries_per_process_are_bounded(seeded_prometheus):
    client = PrometheusClient(seeded_prometheus.url, request_timeout_s=1.0, retries=0, max_concurrent_queries=1)
    assert client._slots.acquire(timeout=1)  # one query of this process is running
    try:
        started = time.monotonic()
        with pytest.raises(Overloaded) as caught:
            client.label_names()
        assert caught.value.http_status == 429 and "max_concurrent_queries" in caught.value.message
        assert time.monotonic() - started < 3
    finally:
        client._slots.release()
    assert "job" in client.label_names()


# -- load shedding ------------------------------------------------------------------------------

def test_saturated_process_sheds_with_429_and_health_still_answers_at_once():
    """Was: /healthz over 3 s in 27 of 37 probes under 50 panels (liveness would restart the pod)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]  # accepts and never answers: a query that takes its whole budget
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    settings = Settings().replace(prometheus={"url": f"http://127.0.0.1:{port}", "request_timeout_s": 3.0,
                                              "retries": 0},
                                  server={"threads": 2, "request_timeout_s": 3.0})
    app = create_app(settings)
    end_ms = int(time.time() * 1000)
    body = simpod_query(end_ms - 3600_000, end_ms, [{"target": "up"}])
    slow = threading.Thread(target=lambda: app.test_client().post("/json/query", json=body), daemon=True)
    try:
        slow.start()
        wait_for(lambda: held, what="the first query reached 'Prometheus'")
        started = time.monotonic()
        response = app.test_client().post("/json/query", json=body)
        error = assert_json_error(response, 429, "server.max_inflight")
        assert error["error"] == "overloaded" and response.headers["Retry-After"] == "2"
        assert app.test_client().get("/healthz").status_code == 200
        assert time.monotonic() - started < 1.0
    finally:
        slow.join(timeout=15)
        stop.set()
        acceptor.join()
        for conn in held:
            conn.close()
        listener.close()


def test_one_request_with_many_targets_stays_within_one_deadline():
    """Was: targets ran one after another, each with the whole budget (651 queries in 45 s)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(32)
    port = listener.getsockname()[1]  # accepts and never answers
    settings = Settings().replace(prometheus={"url": f"http://127.0.0.1:{port}", "request_timeout_s": 2.0,
                                              "retries": 0},
                                  server={"request_timeout_s": 3.0})
    client = create_app(settings).test_client()
    end_ms = int(time.time() * 1000)
    body = simpod_query(end_ms - 3600_000, end_ms, [{"refId": f"R{i}", "target": f"up{i}"} for i in range(6)])
    started = time.monotonic()
    try:
        response = client.post("/json/query", json=body)
    finally:
        listener.close()
    assert response.status_code == 504 and response.get_json()["message"]
    assert time.monotonic() - started < 6.0  # one budget (3 s), not six of them


def test_slots_leave_a_thread_for_probes():
    from vigil.http.admission import slot_counts

    assert slot_counts(Settings()) == (4, 59)  # 64 threads: 4 score, 59 may wait, 1 always free
    assert slot_counts(Settings().replace(server={"threads": 8})) == (4, 3)
    assert slot_counts(Settings().replace(server={"threads": 2})) == (1, 0)


# -- logs ------------------------------------------------------------------------------------------

def _format(msg: str, **extra) -> dict:
    record = logging.LogRecord("vigil.test", logging.INFO, __file__, 1, msg, (), None)
    record.__dict__.update(extra)
    return json.loads(JsonFormatter().format(record))


def test_log_lines_are_bounded_and_carry_no_token():
    """Was a 5,243,196-byte log line, and wrong bearer tokens from URLs in gunicorn's access log."""
    out = _format("GET /api/v1/anomalies?query=up&token=sekrit-1 Authorization: Bearer sekrit-2",
                  reason="x" * 5_000_000, path="\ud800")
    line = json.dumps(out)
    assert len(line) < 5000 and "5000000 characters" in out["reason"]
    assert "sekrit" not in line


def test_python_warnings_go_through_the_json_logger(capsys):
    """Was: scikit-learn warnings on stderr as non-JSON lines."""
    from vigil.logs import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("X does not have valid feature names", UserWarning)
        out, err = capsys.readouterr()
        assert "valid feature names" not in err
        [record] = [json.loads(line) for line in out.splitlines() if "valid feature names" in line]
        assert record["logger"] == "py.warnings" and record["level"] == "warning"
    finally:
        logging.captureWarnings(False)
        root.handlers[:], level = saved
        root.setLevel(level)


# -- OpenAPI ---------------------------------------------------------------------------------------

def test_openapi_describes_every_route(client):
    """The description kept in the repository is what the app serves, and names every route."""
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    # Flask's <name> and <path:rest> are OpenAPI's {name} and {rest}.
    routes = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule.rstrip("/") or "/"), method.lower())
              for rule in client.application.url_map.iter_rules() if rule.endpoint != "static"
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    described = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert routes == described, (routes - described, described - routes)


# -- a real gunicorn, with its own errors ---------------------------------------------------------

def test_gunicorn_answers_its_own_errors_as_json(served_plain):
    """Were HTML 414/431/400 written by gunicorn before the app saw the request."""
    url, _proc, _log = served_plain
    cases = {
        414: f"GET /api/v1/anomalies?query={'x' * 9000} HTTP/1.1\r\nHost: a\r\n\r\n".encode(),
        431: b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n",
        400: b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Bad: a\x00b\r\n\r\n",
    }
    host, port = url.rsplit(":", 1)[0].split("//")[1], int(url.rsplit(":", 1)[1])
    for status, raw in cases.items():
        with socket.create_connection((host, port), timeout=10) as conn:
            conn.sendall(raw)
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == str(status).encode(), data[:300]
        assert b"application/json" in head
        body = json.loads(payload)
        assert set(body) == {"error", "message", "trace_id"} and body["message"], body


def test_no_access_log_no_token_and_no_metrics_dir_left(served_plain, tmp_path):
    """Were: gunicorn's access log with query strings (tokens), and a vigil-metrics-* dir per start."""
    url, proc, log_path = served_plain
    requests.get(f"{url}/api/v1/audit?since=1h&token=leaked-in-url-77", timeout=10)
    requests.get(f"{url}/healthz", headers={"Authorization": "Bearer leaked-in-header-78"}, timeout=10)
    assert list((tmp_path / "tmp").glob("vigil-metrics-*"))  # made while running
    proc.terminate()
    proc.wait(timeout=30)
    text = log_path.read_text()
    assert "leaked-in-url-77" not in text and "leaked-in-header-78" not in text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert not [r for r in records if r["logger"] == "gunicorn.access"]
    assert not list((tmp_path / "tmp").glob("vigil-metrics-*"))


@pytest.fixture()
def served_plain(seeded_prometheus, tmp_path):
    from realstack import running_serve

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with running_serve(tmp_path, "server:\n  workers: 1\n  threads: 2\n", seeded_prometheus.url,
                       env={"TMPDIR": str(tmp)}) as served:
        yield served


# -- the worker's port ---------------------------------------------------------------------------

def test_worker_port_is_loopback_by_default_and_its_audit_needs_the_token():
    """Was: 0.0.0.0 and /api/v1/audit without a token even when server.token was set."""
    from vigil.worker.metrics import MetricsServer, WorkerMetrics

    assert Settings().worker.metrics_host == "127.0.0.1"
    server = MetricsServer(WorkerMetrics(), host="127.0.0.1", port=0, store=None, token="w0rker-t0ken").start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        for headers, code in (({}, "missing_token"), ({"Authorization": "Bearer nope"}, "bad_token")):
            response = requests.get(f"{base}/api/v1/audit", headers=headers, timeout=5)
            assert response.status_code == 401 and response.json()["error"] == code
        ok = requests.get(f"{base}/api/v1/audit", headers={"Authorization": "Bearer w0rker-t0ken"}, timeout=5)
        assert ok.status_code == 200 and ok.json() == []
        assert requests.get(f"{base}/metrics", timeout=5).status_code == 200  # a scrape carries no token
        assert requests.get(f"{base}/api/v1/audit?since=1e306", headers={"Authorization": "Bearer w0rker-t0ken"},
                            timeout=5).status_code == 400
    finally:
        server.stop()


def test_k8s_worker_listens_on_all_addresses_through_its_config():
    from pathlib import Path

    from vigil.config import load_settings

    config = Path(__file__).resolve().parent.parent / "k8s" / "base" / "vigil.yaml"
    env = {"VIGIL_SERVER_TOKEN": "x", "VIGIL_GRAFANA_TOKEN": "x"}
    assert load_settings(config, environ=env).worker.metrics_host == "0.0.0.0"
