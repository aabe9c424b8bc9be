"""Every query of the bundle runs against the live service and returns what its panel or rule expects.

The stack is real: Prometheus (two days of backfilled node and kube-state-metrics history, then
scraping a real node_exporter and the service's own /metrics) and the Vigil service over HTTP on
127.0.0.1. Each query is sent the way Grafana would send it (the Vigil datasource is Grafana's
built-in Prometheus datasource: form-encoded POSTs to /prometheus/api/v1/query_range and /query
with variables filled in; Infinity's URL, method and body with its macros filled in; Prometheus
queries with Grafana's interval variables), and the answer is checked against what the panel or
rule reads from it: series whose legends give the display names the overrides match, rows with
the columns the Infinity query selects, 0/1 annotation series, label values.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from werkzeug.serving import make_server

from realstack import Process, wait_for
from vigil.config import Settings
from vigil.http.app import create_app

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "live-test-token"
HISTORY_S = 2 * 86400
STEP_S = 60
RANGE_S = 6 * 3600


def _openmetrics(end_s: int) -> str:
    """Two days of node and kube-state-metrics history for a synthetic node and two namespaces."""
    start_s = end_s - HISTORY_S
    families: dict[str, list[str]] = {}

    def add(name: str, labels: str, value: float, t: int) -> None:
        families.setdefault(name, []).append(f"{name}{{{labels}}} {value:.6f} {t}")

    idle = user = system = 0.0
    for i, t in enumerate(range(start_s, end_s, STEP_S)):
        day = math.sin(2 * math.pi * (t % 86400) / 86400)
        busy = 0.35 + 0.15 * day + 0.02 * math.sin(i * 0.7)
        idle += STEP_S * (1 - busy)
        user += STEP_S * busy * (0.7 + 0.01 * math.sin(i * 0.3))
        system += STEP_S * busy * (0.3 - 0.01 * math.sin(i * 0.3))
        inst = 'instance="backfilled:9100",job="node"'
        add("node_cpu_seconds_total", f'cpu="0",mode="idle",{inst}', idle, t)
        add("node_cpu_seconds_total", f'cpu="0",mode="user",{inst}', user, t)
        add("node_cpu_seconds_total", f'cpu="0",mode="system",{inst}', system, t)
        add("node_memory_MemTotal_bytes", inst, 8e9, t)
        add("node_memory_MemAvailable_bytes", inst, 8e9 * (0.55 - 0.1 * day), t)
        add("node_uname_info", f'{inst},nodename="backfilled"', 1, t)
        for ns in ("shop", "payments"):
            add("kube_pod_info", f'namespace="{ns}",pod="{ns}-0",job="ksm"', 1, t)
            add("kube_pod_container_status_restarts_total", f'namespace="{ns}",pod="{ns}-0",container="app",job="ksm"',
                i // 240, t)
            add("kube_pod_status_ready", f'namespace="{ns}",pod="{ns}-0",condition="false",job="ksm"',
                1 if (ns == "shop" and i % 300 < 5) else 0, t)
    text = []
    for name, lines in families.items():
        text.append(f"# TYPE {name} gauge")
        text.extend(lines)
    text.append("# EOF")
    return "\n".join(text) + "\n"


@pytest.fixture(scope="module")
def service_port() -> int:
    from realstack import free_port
    return free_port()


@pytest.fixture
def stack(prometheus_factory, node_exporter: Process, service_port: int) -> Iterator[dict[str, Any]]:
    end_s = int(time.time()) // STEP_S * STEP_S - 120
    prometheus = prometheus_factory(openmetrics=_openmetrics(end_s),
                                    scrape_targets=[("node", f"127.0.0.1:{node_exporter.port}"),
                                                    ("vigil", f"127.0.0.1:{service_port}")])
    settings = Settings().replace(prometheus={"url": prometheus.url}, server={"token": TOKEN})
    server = make_server("127.0.0.1", service_port, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    live_instance = f"127.0.0.1:{node_exporter.port}"
    try:
        wait_for(lambda: prometheus.get_json("/api/v1/query", query=f'node_uname_info{{instance="{live_instance}"}}')
                 ["data"]["result"], deadline_s=30, what="the first scrape of node_exporter")
        yield {"prometheus": prometheus, "url": f"http://127.0.0.1:{service_port}", "live_instance": live_instance,
               "now_ms": int(time.time() * 1000), "history_end_ms": end_s * 1000}
    finally:
        server.shutdown()
        server.server_close()


def prom(stack: dict[str, Any], path: str, form: dict[str, Any]) -> Any:
    """What Grafana's Prometheus datasource sends with ``httpMethod: POST``: a form body."""
    data = urllib.parse.urlencode(form, doseq=True).encode()
    request = urllib.request.Request(f"{stack['url']}/prometheus{path}", data=data, method="POST", headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"POST {path} {form}: HTTP {exc.code}: {exc.read().decode()[:500]}") from None
    assert body["status"] == "success", body
    return body["data"]


def vigil_range(stack: dict[str, Any], expr: str, variables: dict[str, str]) -> list[dict[str, Any]]:
    now_s = stack["now_ms"] // 1000
    data = prom(stack, "/api/v1/query_range", {"query": interpolate(expr, variables, stack["now_ms"]),
                                               "start": now_s - RANGE_S, "end": now_s, "step": STEP_S})
    assert data["resultType"] == "matrix"
    return data["result"]


def legend(fmt: str, metric: dict[str, str]) -> str:
    """Grafana's legendFormat: ``{{label}}`` replaced by the series' label values."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)


def is_vigil(target: dict[str, Any]) -> bool:
    return target.get("datasource", {}).get("uid") == "vigil-prometheus"


def call(url: str, method: str = "GET", body: Any = None, params: dict[str, str] | None = None) -> Any:
    if params:
        url += "?" + urllib.parse.urlencode(params)
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain" if isinstance(body, bytes) else "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{method} {url}: HTTP {exc.code}: {exc.read().decode()[:500]}") from None


# --- what Grafana fills in ---------------------------------------------------------------------


def interpolate(text: str, variables: dict[str, str], now_ms: int) -> str:
    values = {"__timeFrom": str(now_ms - RANGE_S * 1000), "__timeTo": str(now_ms),
              "__from": str(now_ms - RANGE_S * 1000), "__to": str(now_ms),
              "__rate_interval": "4m", "__interval": "1m", "__range": "6h", **variables}
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def dashboards() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((ROOT / "dashboards").glob("*.json"))]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel.get("targets"):
            yield panel


def grafana_query_body(targets: list[dict[str, Any]], variables: dict[str, str], now_ms: int) -> dict[str, Any]:
    """simPod's POST /query body: targets interpolated, payload text parsed (as processTarget does)."""
    iso = lambda ms: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ms / 1000))
    return {"range": {"from": iso(now_ms - RANGE_S * 1000), "to": iso(now_ms), "raw": {"from": "now-6h", "to": "now"}},
            "interval": "1m", "intervalMs": 60000, "maxDataPoints": 800, "panelId": 1, "dashboardUID": "x",
            "targets": [{**t, "target": interpolate(t["target"], variables, now_ms),
                         "payload": json.loads(interpolate(t["payload"], variables, now_ms))} for t in targets]}


def prometheus_regex_value(value: str) -> str:
    """A multi-value variable as Grafana's Prometheus datasource fills it in
    (``prometheusSpecialRegexEscape``): escaped for a regex inside a double-quoted PromQL string."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def variables_for(stack: dict[str, Any], instance: str | None = None, *, infinity: bool = False) -> dict[str, str]:
    """The dashboard variables filled in: ``$instance`` as the Prometheus datasource escapes a
    multi-value variable, or as is for Infinity; ``$namespace`` is "All" (its allValue ``.+``)."""
    instance = instance or stack["live_instance"]
    return {"model": "auto", "sensitivity": "medium", "namespace": ".+",
            "instance": instance if infinity else prometheus_regex_value(instance)}


# --- the tests ---------------------------------------------------------------------------------


def test_variables_list_label_values(stack):
    for dashboard in dashboards():
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            assert variable["datasource"]["uid"] == "vigil-prometheus"
            match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"])
            metric, label = match.groups()
            now_s = stack["now_ms"] // 1000
            # The query editor's label_values(metric, label): GET label/<label>/values?match[]=metric.
            url = f"{stack['url']}/prometheus/api/v1/label/{label}/values"
            body = call(url, "GET", None, {"match[]": metric, "start": str(now_s - RANGE_S), "end": str(now_s)})
            assert body["status"] == "success"
            if variable["name"] == "instance":
                assert {stack["live_instance"], "backfilled:9100"} <= set(body["data"])
            if variable["name"] == "namespace":
                assert {"shop", "payments"} <= set(body["data"])


@pytest.mark.parametrize("instance", ["backfilled:9100", "live"])
def test_node_panels_return_the_fields_their_overrides_match(stack, instance):
    """Two days of history answer with every series; the live node_exporter (seconds of history)
    must answer too, with whatever it has: an empty result is success with no series, not an error."""
    backfilled = instance != "live"
    instance = stack["live_instance"] if instance == "live" else instance
    dashboard = next(d for d in dashboards() if d["uid"] == "vigil-node")
    memory_values = []
    for panel in panels(dashboard):
        names = set()
        for target in panel["targets"]:
            if not is_vigil(target):
                # Infinity fills a single-valued variable in as is (no regex escaping: the body is JSON).
                rows = check_infinity_target(stack, target, variables_for(stack, instance, infinity=True))
                if backfilled:  # the CPU modes scored together, one contribution each
                    assert {r["member"] for r in rows} >= {"mode=system", "mode=user"}, panel["title"]
                continue
            if target.get("instant"):
                # A stat's instant query, as Grafana sends it: "Instances anomalous now" is
                # sum(is_anomaly(...)): one series without labels, a count of the selected instances.
                query = interpolate(target["expr"], variables_for(stack, instance), stack["now_ms"])
                now = prom(stack, "/api/v1/query", {"query": query, "time": stack["now_ms"] // 1000})
                assert now["resultType"] == "vector"
                assert all(s["metric"] == {} and 0 <= float(s["value"][1]) <= 1 for s in now["result"]), now
                if backfilled:  # two days of history: scored, so one count
                    assert len(now["result"]) == 1, now
            for series in vigil_range(stack, target["expr"], variables_for(stack, instance)):
                assert all(isinstance(t, (int, float)) and isinstance(v, str) for t, v in series["values"])
                names.add(legend(target["legendFormat"], series["metric"]))
                if panel["id"] == 3 and target["legendFormat"] == "Memory":
                    memory_values.append(series)
        if not backfilled or not any(is_vigil(t) for t in panel["targets"]):
            continue
        assert names, panel["title"]
        for override in panel["fieldConfig"]["overrides"]:
            props = {p["id"]: p["value"] for p in override["properties"]}
            if "custom.fillBelowTo" in props:
                assert props["custom.fillBelowTo"] in names, f"{panel['title']}: band edge missing in {names}"
                pattern = override["matcher"]["options"].strip("/")
                assert any(re.search(pattern, n) for n in names), f"{panel['title']}: nothing matches {pattern}"
        if "score" in panel["title"].lower():
            assert all(n.endswith(" anomaly score") for n in names)
    # The escaped variable (127\\.0\\.0\\.1:port) selects the instance, live or backfilled; the live
    # one has a scrape or two, maybe after the range's last step: ask for it at this moment.
    if backfilled:
        assert [s["metric"]["instance"] for s in memory_values] == [instance]
    else:
        memory = next(p for p in panels(dashboard) if p["id"] == 3)
        expr = next(t["expr"] for t in memory["targets"] if t["legendFormat"] == "Memory")
        now = prom(stack, "/api/v1/query", {"query": interpolate(expr, variables_for(stack, instance), 0)})
        assert [s["metric"]["instance"] for s in now["result"]] == [instance]


def test_kubernetes_panels_answer(stack):
    dashboard = next(d for d in dashboards() if d["uid"] == "vigil-k8s")
    for panel in panels(dashboard):
        namespaces = set()
        for target in panel["targets"]:
            if is_vigil(target):
                namespaces |= {s["metric"].get("namespace") for s in vigil_range(stack, target["expr"],
                                                                                 variables_for(stack))}
            else:
                check_infinity_target(stack, target)
        if any(is_vigil(t) for t in panel["targets"]):
            assert {"shop", "payments"} <= namespaces, panel["title"]


def check_infinity_target(stack: dict[str, Any], target: dict[str, Any],
                          variables: dict[str, str] | None = None) -> list[dict[str, Any]]:
    variables = variables or variables_for(stack, infinity=True)
    options = target["url_options"]
    params = {p["key"]: interpolate(p["value"], variables, stack["now_ms"]) for p in options.get("params", [])}
    url = stack["url"] + target["url"]
    if options["method"] == "POST":
        body = interpolate(options["data"], variables, stack["now_ms"]).encode()
        rows = call(url, "POST", body, params)  # Infinity's default content type: text/plain
    else:
        rows = call(url, "GET", None, params)
    assert isinstance(rows, list)
    for row in rows:
        for column in target["columns"]:
            assert column["selector"] in row, f"{target['url']}: no {column['selector']} in {sorted(row)}"
            value = row[column["selector"]]
            if column["type"] in ("number", "timestamp_epoch") and value is not None:
                assert isinstance(value, (int, float))
            if column["type"] == "timestamp_epoch" and value is not None:
                assert value > 1e12, "epoch milliseconds"
    return rows


def test_infinity_panels_answer_with_their_columns(stack):
    for dashboard in dashboards():
        for panel in panels(dashboard):
            for target in panel["targets"]:
                if target["datasource"]["type"] != "yesoreyeram-infinity-datasource":
                    continue
                if target["url"] == "/api/v1/audit":
                    pytest.importorskip("vigil.http.audit", reason="the service does not serve /api/v1/audit yet")
                check_infinity_target(stack, target)


def test_prometheus_panels_are_valid_queries(stack):
    prometheus = stack["prometheus"]
    for dashboard in dashboards():
        for panel in panels(dashboard):
            for target in panel["targets"]:
                if target["datasource"]["uid"] != "prometheus":
                    continue
                expr = interpolate(target["expr"], variables_for(stack), stack["now_ms"])
                now_s = stack["now_ms"] / 1000
                body = prometheus.get_json("/api/v1/query_range", query=expr, start=now_s - 3600, end=now_s, step=60)
                assert body["status"] == "success", (panel["title"], expr)
    # The service's own metrics are scraped: the Vigil dashboard's request panel has data.
    wait_for(lambda: prometheus.get_json("/api/v1/query", query="vigil_http_requests_total")["data"]["result"],
             deadline_s=30, what="a scrape of the service's /metrics")


def test_annotation_queries_return_is_anomaly_series(stack):
    """Grafana's Prometheus annotations: runs of non-zero points of target.expr become regions."""
    checked = 0
    for dashboard in dashboards():
        for annotation in dashboard["annotations"]["list"]:
            if annotation["datasource"]["uid"] != "vigil-prometheus":
                continue
            assert annotation["target"]["expr"].startswith("is_anomaly(")
            result = vigil_range(stack, annotation["target"]["expr"], variables_for(stack, "backfilled:9100"))
            for series in result:
                assert {v for _, v in series["values"]} <= {"0", "1"}
                assert annotation["tagKeys"] in series["metric"]
            checked += bool(result)
    assert checked >= 2


def test_alert_rule_queries_return_one_latest_point_per_series(stack):
    rules = [r for g in yaml.safe_load((ROOT / "alerting" / "grafana" / "rules.yaml").read_text())["groups"]
             for r in g["rules"]]
    checked = 0
    for rule in rules:
        for item in rule["data"]:
            if item["datasourceUid"] == "vigil-prometheus":
                # Grafana alerting's instant query: POST /api/v1/query with query and time. The time
                # is one the backfilled history covers: its last sample is a step before
                # history_end, and when the wall clock had crossed a minute boundary since
                # history_end was chosen, the last rate(...[5m]) point of the query's grid fell
                # more than 5 minutes before "now", outside the instant query's lookback (the test
                # failed whenever it started in the last seconds of a minute).
                at_ms = min(stack["now_ms"], stack["history_end_ms"] + STEP_S * 1000)
                data = prom(stack, "/api/v1/query", {"query": item["model"]["expr"], "time": at_ms / 1000})
                assert data["resultType"] == "vector" and data["result"], f"{rule['uid']} {item['refId']}: no series"
                labels = [tuple(sorted(r["metric"].items())) for r in data["result"]]
                assert len(labels) == len(set(labels)), "one point per series (one alert instance each)"
                checked += 1
            elif item["datasourceUid"] == "prometheus":
                body = stack["prometheus"].get_json("/api/v1/query", query=item["model"]["expr"])
                assert body["status"] == "success"
    assert checked >= 2
