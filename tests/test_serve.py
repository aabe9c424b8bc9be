"""``vigil serve`` for real: gunicorn on a free port, JSON logs on stdout, secrets never logged."""

from __future__ import annotations

import json
import signal

import pytest
import requests

from grafana_bodies import simpod_query
from realstack import running_serve

pytestmark = pytest.mark.real

TOKEN = "tok-3f9a-never-logged"


@pytest.fixture()
def served(seeded_prometheus, tmp_path):
    config = "server:\n  workers: 2\n  threads: 2\n  token: ${TEST_VIGIL_TOKEN}\n"
    with running_serve(tmp_path, config, seeded_prometheus.url, env={"TEST_VIGIL_TOKEN": TOKEN}) as served:
        yield served


def test_serve_answers_grafana_and_logs_json_without_secrets(served, seeded_prometheus):
    url, proc, log_path = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(f"{url}/json", headers=auth, timeout=5).status_code == 200
    assert requests.get(f"{url}/json", timeout=5).status_code == 401
    assert requests.get(f"{url}/readyz", timeout=5).status_code == 200
    end_ms = seeded_prometheus.end_ms
    body = simpod_query(end_ms - 6 * 3600_000, end_ms, [{"target": seeded_prometheus.metric}])
    for _ in range(3):  # spread over both workers
        response = requests.post(f"{url}/json/query", json=body, headers=auth, timeout=30)
        assert response.status_code == 200
        assert len(response.json()) == 3
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    assert 'vigil_http_requests_total{endpoint="/json/query",status="200"} 3.0' in metrics
    assert "vigil_model_fits_total" in metrics

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is a JSON object
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any(r["logger"] == "vigil.serve" and r["msg"] == "starting" for r in records)
    assert any(r["logger"].startswith("gunicorn") for r in records)
    requests_logged = [r for r in records if r["msg"] == "request" and r.get("path") == "/json/query"]
    assert len(requests_logged) == 3 and all(r.get("request_id") for r in requests_logged)
    assert TOKEN not in log_path.read_text()
