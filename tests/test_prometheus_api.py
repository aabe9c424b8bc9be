"""Vigil's Prometheus-compatible API (``/prometheus``) with the request shapes Grafana's built-in
Prometheus datasource sends (grafana/grafana ``pkg/promlib/client/client.go``,
``healthcheck.go``, ``heuristics.go``), with promtool as an independent client, on real Prometheus data.
"""

from __future__ import annotations

import json
import subprocess
import threading

import numpy as np
import pytest
import requests
from werkzeug.serving import make_server

from grafana_bodies import (PROMETHEUS_FORM, PROMETHEUS_HEALTHCHECK, prometheus_instant_form, prometheus_range_form,
                            simpod_query)
from realstack import require_binary, wait_for
from vigil.config import Settings
from vigil.http.app import create_app

pytestmark = pytest.mark.real

VIEW_H = 12
STEP_S = 60
FORM = PROMETHEUS_FORM


def view_s(seeded):
    end_s = seeded.end_ms // 1000
    return end_s - VIEW_H * 3600, end_s


def grafana_range(client, expr, start_s, end_s, step_s=STEP_S, **extra):
    """``QueryRange`` as Grafana sends it with the default ``httpMethod: POST``: a form body."""
    form = {**prometheus_range_form(expr, start_s, end_s, step_s), **extra}
    return client.post("/prometheus/api/v1/query_range", data=form, headers=FORM)


def by_instance(result):
    return {item["metric"]["instance"]: item for item in result}


def in_events(times_ms, events):
    t = np.asarray(times_ms)
    mask = np.zeros(t.size, bool)
    for start, end in events:
        mask |= (t >= start) & (t <= end)
    return mask


@pytest.fixture(scope="module")
def served(service_app):
    """The module's app on a real socket, for promtool."""
    server = make_server("127.0.0.1", 0, service_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/prometheus"
    finally:
        server.shutdown()


# -- Save & test, heuristics, the query editor ----------------------------------------------------

def test_save_and_test_is_grafanas_instant_1_plus_1(client):
    # healthcheck.go: Expr "1+1", Instant, evaluated at time.Unix(4, 0): QueryInstant sends time=4.
    for response in (client.post("/prometheus/api/v1/query", data=PROMETHEUS_HEALTHCHECK, headers=FORM),
                     client.get("/prometheus/api/v1/query?query=1%2B1&time=4")):
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        assert body["status"] == "success" and body["data"]["resultType"] == "scalar"
        assert body["data"]["result"][1] == "2"


def test_buildinfo_says_prometheus_without_features(client):
    body = client.get("/prometheus/api/v1/status/buildinfo").get_json()
    assert body["status"] == "success" and body["data"]["version"]
    assert "features" not in body["data"]  # heuristics.go: features present would mean Mimir + ruler API


def test_label_and_metadata_calls_of_the_query_editor(client, seeded_prometheus):
    start_s, end_s = view_s(seeded_prometheus)
    labels = client.post("/prometheus/api/v1/labels", data={"start": start_s, "end": end_s}, headers=FORM).get_json()
    assert labels["status"] == "success" and {"instance", "job", "__name__"} <= set(labels["data"])
    values = client.get(f"/prometheus/api/v1/label/instance/values?match[]={seeded_prometheus.metric}"
                        f"&start={start_s}&end={end_s}").get_json()
    assert sorted(values["data"]) == ["quiet", "shifted", "spiky"]
    names = client.get("/prometheus/api/v1/label/__name__/values").get_json()["data"]
    assert seeded_prometheus.metric in names
    series = client.post("/prometheus/api/v1/series", headers=FORM,
                         data={"match[]": f'{seeded_prometheus.metric}{{instance="spiky"}}',
                               "start": start_s, "end": end_s}).get_json()
    assert series["data"] == [{"__name__": seeded_prometheus.metric, "instance": "spiky", "job": seeded_prometheus.job}]
    metadata = client.get("/prometheus/api/v1/metadata?limit=10").get_json()
    assert metadata["status"] == "success" and isinstance(metadata["data"], dict)


# -- anomaly functions -----------------------------------------------------------------------------

def test_anomaly_score_gives_the_same_numbers_as_json_query(client, seeded_prometheus):
    start_s, end_s = view_s(seeded_prometheus)
    for model in ("seasonal", "iforest"):
        expr = f'anomaly_score({seeded_prometheus.metric}, "model={model}")'
        # A learned model that misses a panel's fit budget is trained in the background (the
        # answer says so in "warnings"): wait until every series has its own cached model.
        wait_for(lambda: not any("train in the background" in w for w in
                                 grafana_range(client, expr, start_s, end_s).get_json().get("warnings", [])),
                 deadline_s=120, what=f"{model} models to be trained and cached")
        body = simpod_query(start_s * 1000, end_s * 1000,
                            [{"target": seeded_prometheus.metric, "payload": {"model": model}}],
                            interval_ms=STEP_S * 1000, max_data_points=VIEW_H * 60)
        frames = client.post("/json/query", json=body).get_json()
        expected = {}
        for frame in frames:
            fields = {f["name"]: f for f in frame["fields"]}
            instance = fields["value"]["labels"]["instance"]
            expected[instance] = {t: v for t, v in zip(fields["time"]["values"], fields["anomaly_score"]["values"])
                                  if v is not None}
        response = grafana_range(client, expr, start_s, end_s)
        assert response.status_code == 200, response.get_json()
        got = by_instance(response.get_json()["data"]["result"])
        assert set(got) == set(expected) == {"spiky", "shifted", "quiet"}
        for instance, item in got.items():
            assert item["metric"] == {"instance": instance, "job": seeded_prometheus.job}  # __name__ dropped
            scores = {int(t * 1000): float(v) for t, v in item["values"]}
            assert scores == expected[instance], f"{model} {instance}"


def test_planted_anomalies_are_flagged_and_anomalies_keeps_only_them(client, seeded_prometheus):
    start_s, end_s = view_s(seeded_prometheus)
    expr = seeded_prometheus.metric
    flags = by_instance(grafana_range(client, f"is_anomaly({expr})", start_s, end_s).get_json()["data"]["result"])
    spiky = flags["spiky"]["values"]
    times_ms = [int(t * 1000) for t, _ in spiky]
    flagged = np.array([v == "1" for _, v in spiky])
    assert set(v for _, v in spiky) <= {"0", "1"}
    assert flagged[in_events(times_ms, seeded_prometheus.events_ms["spiky"])].any(), "planted spike not flagged"
    assert sum(v == "1" for _, v in flags["quiet"]["values"]) <= 10
    points = by_instance(grafana_range(client, f"anomalies({expr})", start_s, end_s).get_json()["data"]["result"])
    raw = grafana_range(client, f'{expr}{{instance="spiky"}}', start_s, end_s).get_json()["data"]["result"][0]
    raw_values = {t: v for t, v in raw["values"]}
    flagged_times = {t for t, v in spiky if v == "1"}
    assert {t for t, _ in points["spiky"]["values"]} == flagged_times
    assert all(float(raw_values[t]) == float(v) for t, v in points["spiky"]["values"])


def test_aggregations_and_comparisons_around_a_function_follow_prometheus(client, seeded_prometheus):
    start_s, end_s = view_s(seeded_prometheus)
    expr = f'{seeded_prometheus.metric}, "model=seasonal"'

    def matrix(query: str) -> list[dict]:
        response = grafana_range(client, query, start_s, end_s)
        assert response.status_code == 200, response.get_json()
        return response.get_json()["data"]["result"]

    scores = {s["metric"]["instance"]: {t: float(v) for t, v in s["values"]}
              for s in matrix(f"anomaly_score({expr})")}
    flags = {s["metric"]["instance"]: {t: float(v) for t, v in s["values"]} for s in matrix(f"is_anomaly({expr})")}
    times = sorted(set().union(*(set(v) for v in scores.values())))
    # sum(is_anomaly): the number of anomalous series at each step, one series without labels.
    [total] = matrix(f"sum(is_anomaly({expr}))")
    assert total["metric"] == {}
    assert {t: float(v) for t, v in total["values"]} == {
        t: sum(f[t] for f in flags.values() if t in f) for t in sorted(set().union(*(set(f) for f in flags.values())))}
    # max by (job) keeps the job label; the worst score of the three at each step.
    [worst] = matrix(f"max by (job) (anomaly_score({expr}))")
    assert worst["metric"] == {"job": seeded_prometheus.job}
    assert {t: float(v) for t, v in worst["values"]} == pytest.approx(
        {t: max(s[t] for s in scores.values() if t in s) for t in times})
    # A comparison keeps the samples for which it holds: the points at or above the threshold.
    above = {s["metric"]["instance"]: {t for t, _ in s["values"]} for s in matrix(f"anomaly_score({expr}) >= 1")}
    assert above.get("spiky") == {t for t, v in scores["spiky"].items() if v >= 1} != set()
    assert "quiet" not in above or len(above["quiet"]) <= 10
    # bool: 1 or 0 at every sample; a number on the left flips the comparison.
    as_bool = {s["metric"]["instance"]: s["values"] for s in matrix(f"1 <= bool anomaly_score({expr})")}
    assert {t: float(v) for t, v in as_bool["spiky"]} == {t: float(v >= 1) for t, v in scores["spiky"].items()}
    # count without (instance) of the flagged points, and avg, agree with the parts.
    [count] = matrix(f"count without (instance) (is_anomaly({expr}) == 1)")
    assert count["metric"] == {"job": seeded_prometheus.job}
    assert sum(float(v) for _, v in count["values"]) == sum(v for f in flags.values() for v in f.values())
    [avg] = matrix(f"(avg(anomaly_score({expr})))")
    assert {t: float(v) for t, v in avg["values"]} == pytest.approx(
        {t: float(np.mean([s[t] for s in scores.values() if t in s])) for t in times})


def test_an_alert_rule_written_the_prometheus_way(client, seeded_prometheus):
    """``max(is_anomaly(...)) > 0`` as an instant query: one sample while a series is anomalous."""
    start_s, end_s = view_s(seeded_prometheus)
    expr = f'is_anomaly({seeded_prometheus.metric}, "model=seasonal")'
    flags = by_instance(grafana_range(client, expr, start_s, end_s).get_json()["data"]["result"])
    during = next(t for t, v in flags["spiky"]["values"] if v == "1")  # inside the planted spike
    for at_s, firing in ((during, True), (end_s, False)):
        now = client.post("/prometheus/api/v1/query", headers=FORM, data={"query": expr, "time": str(at_s)}).get_json()
        anomalous = sorted(s["metric"]["instance"] for s in now["data"]["result"] if s["value"][1] == "1")
        response = client.post("/prometheus/api/v1/query", headers=FORM,
                               data={"query": f"max({expr}) > 0", "time": str(at_s)})
        assert response.status_code == 200, response.get_json()
        result = response.get_json()["data"]["result"]
        assert (result == [{"metric": {}, "value": [at_s, "1"]}]) == bool(anomalous), (at_s, result, anomalous)
        if firing:
            assert "spiky" in anomalous and result


def test_band_functions_enclose_yhat(client, seeded_prometheus):
    start_s, end_s = view_s(seeded_prometheus)
    expr = f'sum by (instance) ({seeded_prometheus.metric}{{instance=~"quiet|spiky"}})'
    got = {}
    for fn in ("yhat_lower", "yhat", "yhat_upper"):
        response = grafana_range(client, f'{fn}({expr}, "model=seasonal", "sensitivity=low", "train_window=3d")',
                                 start_s, end_s)
        assert response.status_code == 200, response.get_json()
        got[fn] = {i["metric"]["instance"]: np.array([float(v) for _, v in i["values"]])
                   for i in response.get_json()["data"]["result"]}
    for instance in ("quiet", "spiky"):
        assert (got["yhat_lower"][instance] <= got["yhat"][instance]).all()
        assert (got["yhat"][instance] <= got["yhat_upper"][instance]).all()


def test_instant_query_scores_the_last_point(client, seeded_prometheus):
    at_s = seeded_prometheus.end_ms // 1000
    expr = f'anomaly_score({seeded_prometheus.metric}, "model=seasonal")'
    response = client.post("/prometheus/api/v1/query", data=prometheus_instant_form(expr, at_s), headers=FORM)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["data"]["resultType"] == "vector"
    vector = by_instance(body["data"]["result"])
    window = grafana_range(client, expr, at_s - 3600, at_s).get_json()["data"]["result"]
    for instance, item in by_instance(window).items():
        assert vector[instance]["value"] == [at_s, item["values"][-1][1]]


def test_get_requests_and_interpolated_grafana_variables(client, seeded_prometheus):
    """httpMethod GET puts the same parameters on the URL; $__rate_interval arrives filled in."""
    start_s, end_s = view_s(seeded_prometheus)
    expr = f'anomaly_score(avg by (instance) (avg_over_time({seeded_prometheus.metric}{{instance=~"spiky|quiet"}}[4m])))'
    response = client.get("/prometheus/api/v1/query_range", query_string={
        "query": expr, "start": start_s, "end": end_s, "step": "60", "timeout": "30s"})
    assert response.status_code == 200, response.get_json()
    result = response.get_json()["data"]["result"]
    assert sorted(r["metric"]["instance"] for r in result) == ["quiet", "spiky"]
    assert all(len(r["values"]) > VIEW_H * 50 for r in result)


def test_alert_rule_instant_query_and_refused_custom_query_parameters(client, seeded_prometheus):
    at_s = seeded_prometheus.end_ms // 1000
    # Grafana alerting evaluates an instant query (QueryInstant: query and time only).
    form = prometheus_instant_form(f"is_anomaly({seeded_prometheus.metric})", at_s)
    vector = client.post("/prometheus/api/v1/query", data=form, headers=FORM).get_json()["data"]["result"]
    assert sorted(v["metric"]["instance"] for v in vector) == ["quiet", "shifted", "spiky"]
    assert all(v["value"][0] == at_s and v["value"][1] in ("0", "1") for v in vector)
    # A datasource's "custom query parameters" are appended to the URL, also on POST.
    refused = client.post("/prometheus/api/v1/query?sensitivity=low", data=form, headers=FORM)
    assert refused.status_code == 400
    assert 'anomaly_score(<PromQL>, "sensitivity=...")' in refused.get_json()["error"]


def test_plain_promql_is_passed_through_unchanged(client, seeded_prometheus):
    start_s, end_s = view_s(seeded_prometheus)
    expr = f'rate({seeded_prometheus.metric}{{instance="quiet"}}[5m]) * 60'
    ours = grafana_range(client, expr, start_s, end_s)
    theirs = requests.post(f"{seeded_prometheus.url}/api/v1/query_range", timeout=10,
                           data={"query": expr, "start": start_s, "end": end_s, "step": STEP_S})
    assert ours.status_code == 200 and ours.get_json() == theirs.json()
    bad = grafana_range(client, "sum(", start_s, end_s)
    assert bad.status_code == 400 and bad.get_json()["errorType"] == "bad_data"


@pytest.mark.parametrize("params, status, error_type, needle", [
    ({"query": "abs(anomaly_score(x))"}, 400, "bad_data", "abs(...) around an anomaly function is not supported"),
    ({"query": "anomaly_score(x) + 1"}, 400, "bad_data", "only by a comparison with a number"),
    ({"query": "anomaly_score(x) > vigil_test_cpu"}, 400, "bad_data", "with a number"),
    ({"query": "topk(3, anomaly_score(x))"}, 400, "bad_data", "sum, min, max, avg or count"),
    ({"query": 'anomaly_score(vigil_test_cpu, "model=prophet")'}, 400, "bad_data", "model must be one of"),
    ({"query": 'anomaly_score(vigil_test_cpu, "colour=red")'}, 400, "bad_data", "model, sensitivity, train_window"),
    ({"query": "anomaly_score(vigil_test_cpu)", "model": "seasonal"}, 400, "bad_data", "inside the anomaly function"),
    ({"query": "anomaly_score(vigil_test_cpu)", "step": "0"}, 400, "bad_data", "zero or negative"),
    ({"query": "anomaly_score(vigil_test_cpu)", "start": "yesterday"}, 400, "bad_data", 'parameter "start"'),
    ({"query": "anomaly_score(sum(vigil_test_cpu)"}, 400, "bad_data", "never closed"),
    ({"query": "anomaly_score(vigil_test_cpu{)"}, 400, "bad_data", "unbalanced brackets"),
    ({"query": "anomaly_score(rate(vigil_test_cpu))"}, 400, "bad_data", "range vector"),
])
def test_errors_come_in_prometheus_envelope(client, seeded_prometheus, params, status, error_type, needle):
    start_s, end_s = view_s(seeded_prometheus)
    form = {"start": str(start_s), "end": str(end_s), "step": "60", **params}
    response = client.post("/prometheus/api/v1/query_range", data=form, headers=FORM)
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "error" and body["errorType"] == error_type
    assert needle in body["error"]


def test_unknown_endpoints_and_bad_label_names(client):
    missing = client.get("/prometheus/api/v1/targets")
    assert missing.status_code == 404 and missing.get_json()["errorType"] == "not_found"
    # Grafana's alert list reads rules and alerts of Prometheus datasources that manage alerts:
    # Vigil has none, and says so in the shape Grafana parses.
    assert client.get("/prometheus/api/v1/rules").get_json() == {"status": "success", "data": {"groups": []}}
    assert client.get("/prometheus/api/v1/alerts").get_json() == {"status": "success", "data": {"alerts": []}}
    bad = client.get("/prometheus/api/v1/label/in-stance/values")
    assert bad.status_code == 400 and bad.get_json()["errorType"] == "bad_data"


def test_bearer_token_guards_the_api(seeded_prometheus):
    settings = Settings().replace(prometheus={"url": seeded_prometheus.url}, server={"token": "s3cret"})
    client = create_app(settings).test_client()
    refused = client.post("/prometheus/api/v1/query", data={"query": "1+1", "time": "4"}, headers=FORM)
    assert refused.status_code == 401
    assert refused.get_json()["status"] == "error" and "Bearer" in refused.get_json()["error"]
    allowed = client.post("/prometheus/api/v1/query", data={"query": "1+1", "time": "4"},
                          headers={**FORM, "Authorization": "Bearer s3cret"})
    assert allowed.status_code == 200


# -- promtool, a Prometheus API client nobody on the team wrote --------------------------------------

def test_promtool_query_range_and_instant_show_the_anomaly_series(served, seeded_prometheus):
    promtool = require_binary("promtool")
    start_s, end_s = view_s(seeded_prometheus)
    expr = f'anomaly_score({seeded_prometheus.metric}, "model=seasonal")'
    ran = subprocess.run([promtool, "query", "range", "--start", str(start_s), "--end", str(end_s), "--step", "60s",
                          served, expr], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    for instance in ("spiky", "shifted", "quiet"):
        assert f'instance="{instance}"' in ran.stdout
    as_json = subprocess.run([promtool, "query", "range", "-o", "json", "--start", str(start_s), "--end", str(end_s),
                              "--step", "60s", served, f"is_anomaly({seeded_prometheus.metric})"],
                             capture_output=True, text=True, timeout=120)
    assert as_json.returncode == 0, as_json.stderr
    matrix = {s["metric"]["instance"]: s["values"] for s in json.loads(as_json.stdout)}
    spiky_ms = [int(t * 1000) for t, v in matrix["spiky"] if v == "1"]
    assert in_events(spiky_ms, seeded_prometheus.events_ms["spiky"]).any()
    instant = subprocess.run([promtool, "query", "instant", "--time", str(end_s), served, expr],
                             capture_output=True, text=True, timeout=120)
    assert instant.returncode == 0, instant.stderr
    assert instant.stdout.count("=>") == 3 and 'instance="spiky"' in instant.stdout
    # The shape of a Prometheus-style alert rule: an aggregation and a threshold around the function.
    rule = subprocess.run([promtool, "query", "instant", "--time", str(end_s), served,
                           f'max by (job) (anomaly_score({seeded_prometheus.metric}, "model=seasonal")) >= 0'],
                          capture_output=True, text=True, timeout=120)
    assert rule.returncode == 0, rule.stderr
    assert rule.stdout.count("=>") == 1 and f'job="{seeded_prometheus.job}"' in rule.stdout
    wrong = subprocess.run([promtool, "query", "instant", served, "abs(anomaly_score(x))"],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0 and "not supported" in (wrong.stderr + wrong.stdout)


def test_exemplars_and_format_query_of_the_editor(client, seeded_prometheus):
    start_s, end_s = view_s(seeded_prometheus)
    window = {"start": str(start_s), "end": str(end_s)}
    ours = client.post("/prometheus/api/v1/query_exemplars", headers=FORM,
                       data={"query": f"anomaly_score({seeded_prometheus.metric})", **window}).get_json()
    assert ours == {"status": "success", "data": []}
    relayed = client.post("/prometheus/api/v1/query_exemplars", headers=FORM,
                          data={"query": seeded_prometheus.metric, **window}).get_json()
    assert relayed["status"] == "success" and relayed["data"] == []
    formatted = client.get("/prometheus/api/v1/format_query", query_string={"query": "sum(rate(x[5m]))by(job)"})
    assert formatted.get_json() == {"status": "success", "data": "sum by (job) (rate(x[5m]))"}
    kept = client.get("/prometheus/api/v1/format_query", query_string={"query": " yhat(x) "}).get_json()
    assert kept == {"status": "success", "data": "yhat(x)"}


# -- hostile parameters: always Prometheus' envelope, 400 bad_data, never a 500 ---------------------

def assert_envelope_error(response, status, error_type, needle=""):
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert body["status"] == "error" and body["errorType"] == error_type, body
    assert needle in body["error"], body["error"]
    assert len(body["error"]) <= 1200 and len(response.get_data()) < 2000
    return body


@pytest.mark.parametrize("path, params, needle", [
    # Were ValueError "year 318857 is out of range" (emptiness.why_empty formatting the range) -> 500.
    ("query", {"time": "9999999999999"}, 'parameter "time"'),
    ("query_range", {"start": "9999999999000", "end": "9999999999999", "step": "60"}, 'parameter "start"'),
    ("query_range", {"start": "-100", "end": "0", "step": "60"}, 'parameter "start"'),
    ("query", {"time": "-62135596800"}, 'parameter "time"'),
    ("query", {"time": "NaN"}, 'parameter "time"'),
    ("query", {"time": "1e306"}, 'parameter "time"'),
    ("query_range", {"start": "-Inf", "end": "+Inf", "step": "60"}, 'parameter "start"'),
    ("query_range", {"start": "1", "end": "1e999", "step": "60"}, 'parameter "end"'),
    ("query_range", {"start": "1", "end": "3600", "step": "NaN"}, 'parameter "step"'),
    ("query_range", {"start": "1", "end": "3600", "step": "1e306"}, 'parameter "step"'),
    ("query_range", {"start": "1", "end": "3600", "step": "-60"}, 'parameter "step"'),
    ("query_range", {"start": "1", "end": "3600", "step": "0s"}, "zero or negative"),
    ("query_range", {"start": "3600", "end": "1", "step": "60"}, "before start"),
    ("query_range", {"start": "1", "end": "3600000", "step": "1e-300"}, "maximum resolution"),
    # Was ignored; Prometheus refuses a timeout it cannot parse.
    ("query_range", {"start": "1", "end": "3600", "step": "60", "timeout": "soon"}, 'parameter "timeout"'),
    ("query", {"time": "4", "timeout": "1e306s"}, 'parameter "timeout"'),
])
def test_absurd_times_steps_and_timeouts_are_bad_data(client, path, params, needle):
    for response in (client.get(f"/prometheus/api/v1/{path}", query_string={"query": "anomaly_score(up)", **params}),
                     client.post(f"/prometheus/api/v1/{path}", data={"query": "anomaly_score(up)", **params},
                                 headers=FORM)):
        assert_envelope_error(response, 400, "bad_data", needle)


@pytest.mark.parametrize("query", ["anomaly_score(" + "x" * 1_000_000 + ")", "x" * 1_000_000,
                                   "anomaly_score(up)" + " " * 9000])
def test_a_megabyte_query_is_refused_and_not_echoed(client, query):
    """Was accepted (server.max_query_chars did not apply here): scored, sent to Prometheus, and its
    warning repeated the whole query in a 2 MB answer."""
    form = {"query": query, "start": "1", "end": "3600", "step": "60"}
    for path in ("query", "query_range", "query_exemplars", "format_query"):
        response = client.post(f"/prometheus/api/v1/{path}", data=form, headers=FORM)
        assert_envelope_error(response, 400, "bad_data", "server.max_query_chars")


def test_error_messages_quote_a_long_argument_briefly(client):
    """Was a 100 KB error answer quoting the whole unknown option argument."""
    query = 'anomaly_score(up, "' + "x" * 7000 + '=1")'
    response = client.post("/prometheus/api/v1/query", data={"query": query, "time": "4"}, headers=FORM)
    assert_envelope_error(response, 400, "bad_data", "characters cut")


@pytest.mark.parametrize("query", ["up\x00", "anomaly_score(up\x00)"])
def test_nul_in_a_query_is_bad_data(client, query):
    response = client.post("/prometheus/api/v1/query", data={"query": query, "time": "4"}, headers=FORM)
    assert_envelope_error(response, 400, "bad_data", "NUL")


@pytest.mark.parametrize("query", ['{__name__=~".+"}', 'count_over_time({__name__=~".*", job=~".*"}[31d])'])
def test_plain_selectors_matching_every_series_are_not_relayed(client, query):
    """Were relayed unchanged: /prometheus bypassed the refusal /json and /api/v1 make (issue 14)."""
    for path in ("query", "query_range", "query_exemplars"):
        response = client.post(f"/prometheus/api/v1/{path}", headers=FORM,
                               data={"query": query, "time": "4", "start": "1", "end": "3600", "step": "60"})
        assert_envelope_error(response, 400, "bad_data", "matches every series")


def test_deep_parentheses_and_odd_arguments_are_answered_in_the_envelope(client, seeded_prometheus):
    start_s, end_s = view_s(seeded_prometheus)
    window = {"start": str(start_s), "end": str(end_s), "step": "60"}
    deep = "(" * 3000 + seeded_prometheus.metric + ")" * 3000
    for query in (f"anomaly_score({deep})", deep):
        response = client.post("/prometheus/api/v1/query_range", data={"query": query, **window}, headers=FORM)
        assert response.status_code < 500 and response.get_json()["status"] in ("success", "error")
    for query, needle in (("anomaly_score(up, 5)", "optional arguments are strings"),
                          ("anomaly_score(up, )", "optional arguments are strings"),
                          ('anomaly_score(up, "train_window=1e306d")', "train_window")):
        response = client.post("/prometheus/api/v1/query_range", data={"query": query, **window}, headers=FORM)
        assert_envelope_error(response, 400, "bad_data", needle)


@pytest.mark.parametrize("path", ["/prometheus/api/v1/label/..%2F..%2Fstatus%2Fconfig/values",
                                  "/prometheus/api/v1/label/a%00/values", "/prometheus/api/v1/label/%C3%A9/values",
                                  "/prometheus/api/v1/../../-/quit"])
def test_label_names_with_path_text_never_reach_prometheus(client, path):
    response = client.get(path)
    assert response.status_code in (400, 404), response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert body.get("status") == "error" or body.get("error"), body
    assert "global:" not in response.get_data(as_text=True)  # Prometheus' configuration


def test_an_overloaded_prometheus_is_a_429_with_retry_after(seeded_prometheus):
    """Was a 503 'unavailable' without Retry-After: Overloaded was missing from the error table."""
    settings = Settings().replace(prometheus={"url": seeded_prometheus.url, "request_timeout_s": 1.0, "retries": 0,
                                              "max_concurrent_queries": 1})
    app = create_app(settings)
    slots = app.extensions["vigil.detection"].prometheus._slots
    assert slots.acquire(timeout=1)
    try:
        response = app.test_client().post("/prometheus/api/v1/query", headers=FORM,
                                          data={"query": f"anomaly_score({seeded_prometheus.metric})"})
    finally:
        slots.release()
    assert_envelope_error(response, 429, "unavailable", "max_concurrent_queries")
    assert response.headers["Retry-After"].isdigit()


def test_an_unexpected_error_is_still_answered_in_the_envelope(seeded_prometheus, monkeypatch):
    app = create_app(Settings().replace(prometheus={"url": seeded_prometheus.url}))
    monkeypatch.setattr(app.extensions["vigil.detection"], "run",
                        lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("boom")))
    response = app.test_client().post("/prometheus/api/v1/query", headers=FORM, data={"query": "anomaly_score(up)"})
    body = assert_envelope_error(response, 500, "internal", "see the service log for trace")
    assert "boom" not in body["error"]


def test_relayed_parameters_are_bounded_and_prometheus_errors_without_json_are_enveloped(client):
    """Were relayed as they came: a 1 MB parameter reached Prometheus, whose HTTP server answered
    '431 Request Header Fields Too Large' in plain text, passed on as is (found by the fuzz run)."""
    huge = client.get("/prometheus/api/v1/series", query_string={"match[]": "up", "end": "x" * 1_000_000})
    assert_envelope_error(huge, 400, "bad_data", "server.max_query_chars")
    many = client.get("/prometheus/api/v1/label/job/values",
                      query_string=[("match[]", f'up{{job="{i:04d}{"x" * 8000}"}}') for i in range(140)])
    body = assert_envelope_error(many, 400, "bad_data", "HTTP 431")
    assert "no JSON" in body["error"]
