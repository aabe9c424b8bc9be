"""Loki metric queries (LogQL) against Loki's recorded response shape (no Loki binary exists here)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from grafana_bodies import simpod_query
from vigil.config import Settings
from vigil.http.app import create_app

RECORDED = json.loads((Path(__file__).parent / "recorded" / "loki_query_range_matrix.json").read_text())
LOGQL = 'sum by (app, level) (count_over_time({namespace="shop"} |= "error" [5m]))'


class RecordedLoki(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def log_message(self, *args):  # quiet
        pass

    def _answer(self, params: dict[str, list[str]]) -> None:
        type(self).requests.append({"path": urlparse(self.path).path, **{k: v[0] for k, v in params.items()}})
        if urlparse(self.path).path != "/loki/api/v1/query_range":
            self.send_response(404)
            self.end_headers()
            return
        if "|=" not in params.get("query", [""])[0]:
            body = {"status": "error", "errorType": "bad_data", "error": "parse error at line 1, col 1: syntax error"}
            status = 400
        else:
            start_ns, end_ns = int(params["start"][0]), int(params["end"][0])
            result = [{"metric": r["metric"],
                       "values": [v for v in r["values"] if start_ns <= v[0] * 1e9 <= end_ns]}
                      for r in RECORDED["data"]["result"]]
            body = {**RECORDED, "data": {**RECORDED["data"], "result": result}}
            status = 200
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._answer(parse_qs(urlparse(self.path).query))

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        self._answer(parse_qs(self.rfile.read(length).decode()))


@pytest.fixture()
def loki_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordedLoki)
    RecordedLoki.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_logql_metric_query_is_scored_like_prometheus(loki_url):
    settings = Settings().replace(loki={"url": loki_url}, prometheus={"url": "http://127.0.0.1:9"})
    client = create_app(settings).test_client()
    last_s = RECORDED["data"]["result"][0]["values"][-1][0]
    end_ms = (last_s + 1) * 1000
    body = simpod_query(end_ms - 6 * 3600_000, end_ms, [{"target": LOGQL, "payload": {
        "source": "loki", "model": "seasonal", "train_window": "2d", "legend": "{{app}}"}}], interval_ms=300_000)
    response = client.post("/json/query", json=body)
    assert response.status_code == 200, response.get_json()
    frames = {f["name"]: {x["name"]: x for x in f["fields"]} for f in response.get_json()}
    assert set(frames) == {"api", "worker"}
    api = frames["api"]
    # The planted error burst (20 steps before the end) is flagged; the quiet app is not.
    burst_ms = (RECORDED["data"]["result"][0]["values"][-20][0]) * 1000
    flagged = dict(zip(api["time"]["values"], api["is_anomaly"]["values"]))
    assert flagged[burst_ms] == 1
    assert sum(frames["worker"]["is_anomaly"]["values"]) <= 2
    # Loki got nanosecond epochs, and the training history came before the viewed range.
    calls = [r for r in RecordedLoki.requests if r["path"] == "/loki/api/v1/query_range"]
    assert len(calls) == 2
    assert all(len(c["start"]) >= 19 for c in calls)
    assert min(int(c["start"]) for c in calls) < (end_ms - 6 * 3600_000) * 1_000_000


def test_bad_logql_is_a_422_naming_loki(loki_url):
    settings = Settings().replace(loki={"url": loki_url})
    client = create_app(settings).test_client()
    response = client.post("/api/v1/anomalies", data='{"query": "not logql", "source": "loki"}')
    assert response.status_code == 422
    assert "Loki rejected" in response.get_json()["message"]


def test_loki_not_configured_is_a_clear_400():
    client = create_app(Settings()).test_client()
    response = client.post("/api/v1/anomalies", data='{"query": "x", "source": "loki"}')
    assert response.status_code == 400
    assert "Loki is not configured" in response.get_json()["message"]


def test_logql_through_the_prometheus_api_gives_the_same_flags(loki_url):
    """``is_anomaly(<LogQL>, "source=loki")`` on /prometheus: the numbers of /json/query."""
    settings = Settings().replace(loki={"url": loki_url}, prometheus={"url": "http://127.0.0.1:9"})
    client = create_app(settings).test_client()
    last_s = RECORDED["data"]["result"][0]["values"][-1][0]
    end_ms = (last_s + 1) * 1000
    body = simpod_query(end_ms - 6 * 3600_000, end_ms, [{"target": LOGQL, "payload": {
        "source": "loki", "model": "seasonal", "train_window": "2d"}}], interval_ms=300_000)
    frames = client.post("/json/query", json=body).get_json()
    expected = {}
    for frame in frames:
        fields = {f["name"]: f for f in frame["fields"]}
        expected[fields["value"]["labels"]["app"]] = {
            t: flag for t, flag, value in zip(fields["time"]["values"], fields["is_anomaly"]["values"],
                                              fields["value"]["values"]) if value is not None}
    query = f'is_anomaly({LOGQL}, "source=loki", "model=seasonal", "train_window=2d")'
    response = client.post("/prometheus/api/v1/query_range", data={
        "query": query, "start": str(end_ms // 1000 - 6 * 3600), "end": str(end_ms // 1000), "step": "300"})
    assert response.status_code == 200, response.get_json()
    got = {r["metric"]["app"]: {int(t * 1000): int(v) for t, v in r["values"]}
           for r in response.get_json()["data"]["result"]}
    assert set(got) == {"api", "worker"}
    assert got == expected
    burst_ms = (RECORDED["data"]["result"][0]["values"][-20][0]) * 1000
    assert got["api"][burst_ms] == 1
