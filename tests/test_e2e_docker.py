"""The whole docker-compose demo against a real Grafana (``make test-docker``; needs a Docker engine).

``testcontainers`` brings docker-compose.yml up (Grafana with both plugins at their pinned
versions, the provisioned bundle, Prometheus with backfilled history, Loki + Fluent Bit, the Vigil
service and worker, the demo workload) and then, through Grafana's own APIs, the way a person's
browser would: every provisioned datasource exists, every dashboard's panel, variable and
annotation query answers (backend datasources through ``/api/ds/query``, the frontend-only simPod
datasource through Grafana's data proxy, as the plugin does), the worker's anomaly annotations are
visible, its alerts reach Alertmanager, and Vigil's JSON logs are searchable in Loki.

Skipped when no Docker engine answers (``docker.errors.DockerException``); our CI has none, so it
is kept out of ``make test`` by the ``docker`` marker.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent
GRAFANA = "http://127.0.0.1:3000"
ALERTMANAGER = "http://127.0.0.1:9093"
HTTP_TIMEOUT_S = 30.0
ANNOTATION_DEADLINE_S = 300.0
PLUGINS = ("yesoreyeram-infinity-datasource",)
FRONTEND_ONLY = {"simpod-json-datasource"}
#: Dashboard variables -> what a person would pick first.
VARIABLE_VALUES = {"model": "auto", "sensitivity": "medium", "instance": ".+", "namespace": ".+"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    docker = pytest.importorskip("docker")
    try:
        docker.from_env().ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker engine: {exc}")
    from testcontainers.compose import DockerCompose

    env_file = tmp_path_factory.mktemp("compose") / ".env"
    secrets_ = {"GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(12), "VIGIL_SERVER_TOKEN": secrets.token_urlsafe(24)}
    lines = []
    for line in (REPO / ".env.example").read_text().splitlines():
        key = line.split("=", 1)[0]
        lines.append(f"{key}={secrets_[key]}" if key in secrets_ else line)
    env_file.write_text("\n".join(lines) + "\n")
    compose = DockerCompose(REPO, compose_file_name="docker-compose.yml", env_file=str(env_file), build=True, wait=True)
    compose.start()
    try:
        yield {"user": "admin", **secrets_}
    finally:
        compose.stop(down=True)  # keep_volumes=False: the demo's volumes go too


def _request(url: str, stack: dict[str, str], body: Any | None = None, method: str | None = None) -> tuple[int, Any]:
    auth = base64.b64encode(f"{stack['user']}:{stack['GRAFANA_ADMIN_PASSWORD']}".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw)
        except ValueError:
            return error.code, raw.decode(errors="replace")


def _wait(predicate, deadline_s: float, what: str):
    deadline = time.monotonic() + deadline_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {deadline_s:.0f} s")
        time.sleep(2)


def _interpolate(text: str) -> str:
    for name, value in VARIABLE_VALUES.items():
        text = re.sub(r"\$\{" + name + r"(?::[a-z]+)?\}|\$" + name + r"\b", value, text)
    return text


def _dashboards() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((REPO / "dashboards").glob("*.json"))]


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, query) for every panel target, variable query and annotation query."""
    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            query = {**target, "datasource": target.get("datasource") or panel.get("datasource")}
            yield f"{dashboard['uid']} panel {panel.get('title')!r} {target.get('refId')}", query
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            yield f"{dashboard['uid']} variable {variable['name']}", {
                "refId": variable["name"], "datasource": variable["datasource"], "_variable": variable["query"]}
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("datasource", {}).get("uid") not in ("-- Grafana --", "grafana"):
            yield f"{dashboard['uid']} annotation {annotation['name']!r}", {
                **(annotation.get("target") or {}), "refId": "Anno", "datasource": annotation["datasource"]}


def test_plugins_are_installed_at_the_pinned_versions(stack):
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    pinned = dict(item.strip().split(" ") for item in
                  compose["services"]["grafana"]["environment"]["GF_INSTALL_PLUGINS"].split(","))
    for plugin in PLUGINS:
        status, settings = _request(f"{GRAFANA}/api/plugins/{plugin}/settings", stack)
        assert status == 200, settings
        assert settings["info"]["version"] == pinned[plugin]


def test_every_datasource_the_dashboards_use_is_provisioned(stack):
    uids = {q["datasource"]["uid"] for d in _dashboards() for _, q in _queries(d) if q.get("datasource")}
    for uid in uids - {"-- Grafana --", "grafana", "-- Mixed --"}:
        status, body = _request(f"{GRAFANA}/api/datasources/uid/{uid}", stack)
        assert status == 200, f"datasource {uid}: {body}"


def test_every_dashboard_query_answers_through_grafana(stack):
    # Wait until the worker has run once, so the audit and anomaly tables have rows to show.
    _wait(lambda: _request(f"{GRAFANA}/api/annotations?tags=anomaly&limit=1", stack)[1], ANNOTATION_DEADLINE_S,
          "a first anomaly annotation")
    now_ms = int(time.time() * 1000)
    failures = []
    for dashboard in _dashboards():
        status, stored = _request(f"{GRAFANA}/api/dashboards/uid/{dashboard['uid']}", stack)
        assert status == 200, f"dashboard {dashboard['uid']} is not provisioned: {stored}"
        for where, query in _queries(dashboard):
            datasource = query["datasource"]
            if datasource.get("uid") in ("-- Grafana --", "grafana", "-- Mixed --"):
                continue
            if datasource.get("type") in FRONTEND_ONLY:
                status, body = _simpod(stack, datasource["uid"], query, now_ms)
                ok = status == 200 and isinstance(body, list)
            else:
                status, body = _request(f"{GRAFANA}/api/ds/query", stack, {
                    "from": str(now_ms - 3_600_000), "to": str(now_ms),
                    "queries": [{**json.loads(_interpolate(json.dumps(query))), "intervalMs": 15000,
                                 "maxDataPoints": 240}]})
                results = (body or {}).get("results", {}) if isinstance(body, dict) else {}
                ok = status == 200 and all(not r.get("error") for r in results.values())
            if not ok:
                failures.append(f"{where}: {status} {str(body)[:300]}")
    assert not failures, "\n".join(failures)


def _simpod(stack: dict[str, str], uid: str, query: dict[str, Any], now_ms: int) -> tuple[int, Any]:
    """What the simPod plugin's frontend sends through Grafana's data proxy."""
    proxy = f"{GRAFANA}/api/datasources/proxy/uid/{uid}"
    range_ = {"from": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000 - 3600)),
              "to": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000))}
    if "_variable" in query:
        raw = query["_variable"]
        payload = json.loads(raw["query"] if isinstance(raw, dict) else raw)
        return _request(f"{proxy}/variable", stack, {"payload": payload, "range": range_})
    payload = query.get("payload") or {}
    if isinstance(payload, str):
        payload = json.loads(_interpolate(payload) or "{}")
    return _request(f"{proxy}/query", stack, {
        "range": range_, "interval": "15s", "intervalMs": 15000, "maxDataPoints": 240,
        "targets": [{"refId": query.get("refId", "A"), "target": _interpolate(query.get("target", "")),
                     "payload": payload, "datasource": query["datasource"]}]})


def test_worker_annotations_are_visible_in_grafana(stack):
    annotations = _wait(lambda: _request(f"{GRAFANA}/api/annotations?tags=anomaly&limit=100", stack)[1],
                        ANNOTATION_DEADLINE_S, "an anomaly annotation written by the worker")
    demo = [a for a in annotations if any(t.startswith("demo-") for t in a.get("tags", []))]
    assert demo, annotations
    assert all(a["text"] for a in demo)


def test_worker_alerts_reach_alertmanager(stack):
    def alerts():
        with urllib.request.urlopen(f"{ALERTMANAGER}/api/v2/alerts", timeout=HTTP_TIMEOUT_S) as response:
            return [a for a in json.load(response) if a["labels"].get("alertname") == "VigilAnomaly"]

    assert _wait(alerts, ANNOTATION_DEADLINE_S, "a VigilAnomaly alert in Alertmanager")


def test_vigil_logs_are_searchable_in_loki(stack):
    def lines():
        now_ms = int(time.time() * 1000)
        status, body = _request(f"{GRAFANA}/api/ds/query", stack, {
            "from": str(now_ms - 900_000), "to": str(now_ms),
            "queries": [{"refId": "L", "datasource": {"type": "loki", "uid": "loki"},
                         "expr": '{container=~".*vigil-worker.*"} | json | logger="vigil.worker"',
                         "queryType": "range", "maxLines": 20}]})
        frames = body.get("results", {}).get("L", {}).get("frames", []) if status == 200 else []
        return [f for f in frames if f.get("data", {}).get("values") and f["data"]["values"][0]]

    assert _wait(lines, 120, "the worker's JSON log lines in Loki")
