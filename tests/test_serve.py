"""``vigil serve`` for real: gunicorn on a free port, JSON logs on stdout, secrets never logged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import requests

from grafana_bodies import simpod_query
from realstack import free_port, wait_for

pytestmark = pytest.mark.real

TOKEN = "tok-3f9a-never-logged"


@pytest.fixture()
def served(seeded_prometheus, tmp_path):
    port = free_port()
    config = tmp_path / "vigil.yaml"
    config.write_text("server:\n  workers: 2\n  threads: 2\n  token: ${TEST_VIGIL_TOKEN}\n")
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "TEST_VIGIL_TOKEN": TOKEN}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vigil.cli", "serve", "--config", str(config), "--host", "127.0.0.1",
             "--port", str(port), "--prometheus-url", seeded_prometheus.url],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(f"{url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return proc.poll() is not None and pytest.fail(log_path.read_text())

    try:
        wait_for(up, deadline_s=30)
        yield url, proc, log_path
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


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
