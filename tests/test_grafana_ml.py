"""``vigil ml-sync`` against a recording HTTP server that speaks the grafana-ml-app job API.

The server is real HTTP on 127.0.0.1 (PROTOCOLS.md section 8, and the plugin's Go client for the
``{status, data}`` envelope and ``POST /jobs/<id>`` updates): it checks the bearer token, rejects
bodies the real API would reject, stores jobs, and records every request.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from vigil.cli import main
from vigil.worker.grafana_ml import API_PREFIX

TOKEN = "glsa_test_token"
REQUIRED = ("name", "metric", "datasourceUid", "datasourceType", "queryParams", "interval", "trainingWindow",
            "trainingFrequency", "algorithm", "grafanaUrl")


class MlApi:
    """State and request log of the fake plugin API."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []

    def writes(self) -> list[tuple[str, str, Any]]:
        return [r for r in self.requests if r[0] != "GET"]


class _Handler(BaseHTTPRequestHandler):
    api: MlApi

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.api.requests.append((method, self.path, body))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._answer(401, {"message": "Unauthorized"})
        if not self.path.startswith(API_PREFIX + "/jobs"):
            return self._answer(404, {"message": "Not found"})
        rest = self.path[len(API_PREFIX + "/jobs"):].strip("/")
        jobs = self.api.jobs
        if method == "GET" and not rest:
            return self._answer(200, {"status": "success", "data": list(jobs.values())})
        if method == "POST":
            problem = _invalid(body, jobs, rest or None)
            if problem:
                return self._answer(400, {"status": "error", "error": problem})
            job_id = rest or str(uuid.uuid4())
            if rest and rest not in jobs:
                return self._answer(404, {"status": "error", "error": "job not found"})
            jobs[job_id] = {**body, "id": job_id}
            return self._answer(200, {"status": "success", "data": jobs[job_id]})
        if method == "DELETE" and rest in jobs:
            del jobs[rest]
            return self._answer(200, {"status": "success"})
        return self._answer(404, {"status": "error", "error": "job not found"})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


def _invalid(body: Any, jobs: dict[str, dict[str, Any]], job_id: str | None) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if "id" in body:
        return "id must not be set in the body"
    missing = [k for k in REQUIRED if not body.get(k)]
    if missing:
        return f"missing fields: {missing}"
    if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", body["metric"]):
        return f"invalid metric name {body['metric']!r}"
    if not body["queryParams"].get("expr"):
        return "queryParams.expr is required"
    if body["trainingWindow"] / body["interval"] > 50_000:
        return "too many training points"
    if any(j["metric"] == body["metric"] and j["id"] != job_id for j in jobs.values()):
        return "metric already in use"
    return None


@pytest.fixture
def ml_api() -> Iterator[tuple[MlApi, str]]:
    api = MlApi()
    handler = type("Handler", (_Handler,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


CONFIG = """
prometheus:
  url: http://prometheus:9090
detection:
  train_window: 14d
jobs:
  - name: node-cpu
    query: node_cpu_usage
    every: 1m
  - name: pods_not_ready
    query: {not_ready}
    every: 5m
    labels:
      team: platform
"""


def write_config(tmp_path: Path, not_ready: str = "pods_not_ready") -> Path:
    path = tmp_path / "vigil.yaml"
    path.write_text(CONFIG.format(not_ready=not_ready))
    return path


def sync(tmp_path: Path, url: str, config: Path, *extra: str, token: str = TOKEN) -> int:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    return main(["ml-sync", "--config", str(config), "--grafana-url", url, "--token-file", str(token_file), *extra])


def test_first_sync_creates_one_forecast_job_per_configured_job(ml_api, tmp_path, capsys):
    api, url = ml_api
    assert sync(tmp_path, url, write_config(tmp_path)) == 0
    jobs = {j["metric"]: j for j in api.jobs.values()}
    assert set(jobs) == {"vigil_node_cpu", "vigil_pods_not_ready"}
    cpu = jobs["vigil_node_cpu"]
    assert cpu["queryParams"]["expr"].startswith("1 - avg by (instance)"), "presets are resolved to PromQL"
    assert cpu["datasourceUid"] == "prometheus" and cpu["datasourceType"] == "prometheus"
    assert cpu["interval"] == 60 and cpu["trainingWindow"] == 14 * 86400 and cpu["trainingFrequency"] >= 3600
    assert cpu["grafanaUrl"] == url + "/"
    assert jobs["vigil_pods_not_ready"]["customLabels"] == {"vigil_job": "pods_not_ready", "team": "platform"}
    assert [m for m, _, _ in api.writes()] == ["POST", "POST"]
    assert "create vigil_node_cpu" in capsys.readouterr().out


def test_second_sync_changes_nothing(ml_api, tmp_path, capsys):
    api, url = ml_api
    config = write_config(tmp_path)
    assert sync(tmp_path, url, config) == 0
    before = len(api.writes())
    assert sync(tmp_path, url, config) == 0
    assert len(api.writes()) == before, "idempotent: no writes when nothing changed"
    assert "unchanged vigil_node_cpu" in capsys.readouterr().out


def test_a_changed_query_updates_only_that_job(ml_api, tmp_path, capsys):
    api, url = ml_api
    assert sync(tmp_path, url, write_config(tmp_path)) == 0
    ids = {j["metric"]: j["id"] for j in api.jobs.values()}
    api.requests.clear()
    changed = write_config(tmp_path, not_ready="'sum by (namespace) (kube_pod_status_ready{condition=\"false\"}) > 0'")
    assert sync(tmp_path, url, changed) == 0
    (write,) = api.writes()
    assert write[0] == "POST" and write[1] == f"{API_PREFIX}/jobs/{ids['vigil_pods_not_ready']}"
    assert "id" not in write[2]
    assert api.jobs[ids["vigil_pods_not_ready"]]["queryParams"]["expr"].endswith("> 0")
    assert len(api.jobs) == 2
    assert "update vigil_pods_not_ready: queryParams changed" in capsys.readouterr().out


def test_dry_run_writes_nothing(ml_api, tmp_path, capsys):
    api, url = ml_api
    assert sync(tmp_path, url, write_config(tmp_path), "--dry-run") == 0
    assert api.writes() == [] and api.jobs == {}
    assert "would create vigil_node_cpu" in capsys.readouterr().out


def test_jobs_not_in_the_configuration_are_left_alone_unless_pruned(ml_api, tmp_path):
    api, url = ml_api
    api.jobs["theirs"] = {"id": "theirs", "metric": "checkout_latency", "description": "someone else's"}
    assert sync(tmp_path, url, write_config(tmp_path)) == 0
    api.jobs["old"] = {"id": "old", "metric": "vigil_gone", "description": "Managed by vigil ml-sync: ..."}
    assert sync(tmp_path, url, write_config(tmp_path), "--json") == 0
    assert {"theirs", "old"} <= set(api.jobs)
    assert sync(tmp_path, url, write_config(tmp_path), "--prune") == 0
    assert "old" not in api.jobs and "theirs" in api.jobs


def test_a_rejected_token_is_an_error_naming_the_status(ml_api, tmp_path, capsys):
    api, url = ml_api
    assert sync(tmp_path, url, write_config(tmp_path), token="wrong") == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "Unauthorized" in err
    assert api.jobs == {}


def test_a_grafana_without_the_plugin_is_explained(ml_api, tmp_path, capsys):
    _, url = ml_api
    assert sync(tmp_path, url + "/not-grafana", write_config(tmp_path)) == 1
    assert "Grafana Cloud only" in capsys.readouterr().err


def test_json_output_summarises_the_sync(ml_api, tmp_path, capsys):
    _, url = ml_api
    assert sync(tmp_path, url, write_config(tmp_path), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert sorted(result["created"]) == ["vigil_node_cpu", "vigil_pods_not_ready"] and result["updated"] == []


def test_configuration_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs: [{name: x}]\n")
    assert main(["ml-sync", "--config", str(bad), "--grafana-url", "http://127.0.0.1:9"]) == 2
    assert "jobs[0].query" in capsys.readouterr().err
