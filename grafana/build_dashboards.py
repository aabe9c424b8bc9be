"""Writes ``dashboards/*.json`` from the panel recipes below (the JSON files are committed).

Why a generator: the four dashboards repeat the same few patterns (a value with its expected band
and red anomaly points, a score with its 1.0 threshold, a Prometheus stat), and hand-edited JSON
drifts. Run ``python grafana/build_dashboards.py`` after changing this file;
``tests/test_dashboards.py`` fails when the committed JSON differs from what this writes.

Conventions every dashboard keeps: a fixed ``uid``; datasources only as ``{"type", "uid"}`` of the
provisioned UIDs (grafana/provisioning/datasources/vigil.yaml); no hosts; no ``null`` values
(Grafana's own dashboard schema rejects them). No community plugin for anomalies: the panels,
variables and annotation queries use Grafana's built-in Prometheus datasource on Vigil's
``/prometheus`` API (``anomaly_score(<PromQL>)``, ``yhat_lower(...)``, ...); Infinity shows the
tables, the audit and multivariate contributions; the legacy simPod datasource is not used.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "dashboards"

VIGIL = {"type": "prometheus", "uid": "vigil-prometheus"}
INFINITY = {"type": "yesoreyeram-infinity-datasource", "uid": "vigil-infinity"}
PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
GRAFANA = {"type": "grafana", "uid": "-- Grafana --"}
SCHEMA_VERSION = 39
TAGS = ["vigil", "anomaly-detection"]

RED = "red"
BAND_COLOUR = "#8AB8FF"
EXPECTED_COLOUR = "#7F7F7F"

Json = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Queries


#: The model and sensitivity variables, as the anomaly functions' optional string arguments.
MODEL_OPTIONS = ('"model=$model"', '"sensitivity=$sensitivity"')


def anomaly_expr(function: str, expr: str, options: tuple[str, ...] = MODEL_OPTIONS) -> str:
    """``anomaly_score(<expr>, "model=$model", "sensitivity=$sensitivity")`` for Vigil's /prometheus API."""
    return f"{function}({', '.join((expr, *options))})"


def vigil_target(ref: str, function: str | None, expr: str, legend: str) -> Json:
    """A query of the Vigil datasource (built-in Prometheus type): an anomaly function of ``expr``,
    or ``expr`` itself (``function=None``: Vigil passes plain PromQL to Prometheus)."""
    text = anomaly_expr(function, expr) if function else expr
    return {**prom_target(ref, text, legend), "datasource": VIGIL, "interval": "60s"}


def band_targets(expr: str, legend: str, *, band: bool = True) -> list[Json]:
    """Value, expected, (band edges,) anomalous points: display names "<legend>", "<legend> expected", ..."""
    targets = [vigil_target("A", None, expr, legend), vigil_target("B", "yhat", expr, f"{legend} expected")]
    if band:
        targets += [vigil_target("C", "yhat_lower", expr, f"{legend} expected low"),
                    vigil_target("D", "yhat_upper", expr, f"{legend} expected high")]
    return [*targets, vigil_target("E", "anomalies", expr, f"{legend} anomaly")]


def prom_target(ref: str, expr: str, legend: str = "__auto", *, instant: bool = False,
                table: bool = False) -> Json:
    target: Json = {"refId": ref, "datasource": PROMETHEUS, "expr": expr, "legendFormat": legend,
                    "range": not instant, "instant": instant, "editorMode": "code"}
    if table:
        target["format"] = "table"
    return target


def infinity_target(ref: str, url: str, columns: list[tuple[str, str, str]], *, method: str = "GET",
                    body: str = "", params: list[tuple[str, str]] = (), fmt: str = "table") -> Json:
    """An Infinity query with the backend parser (the one that also works in alert rules)."""
    url_options: Json = {"method": method, "params": [{"key": k, "value": v} for k, v in params]}
    if method == "POST":
        url_options.update(body_type="raw", body_content_type="application/json", data=body)
    return {"refId": ref, "datasource": INFINITY, "type": "json", "source": "url", "parser": "backend",
            "format": fmt, "url": url, "url_options": url_options, "root_selector": "",
            "columns": [{"selector": s, "text": t, "type": ty} for s, t, ty in columns], "filters": []}


# ---------------------------------------------------------------------------------------------
# Field config pieces


def thresholds(*steps: tuple[float | None, str]) -> Json:
    """Absolute thresholds; ``None`` marks the base step.

    Grafana saves the base step's value as ``null`` and reads it back as -Infinity whatever it
    holds (``validateFieldConfig``), but its generated JSON Schema wants a number there: the base
    step is written with value 0, which every panel here treats the same way.
    """
    return {"mode": "absolute",
            "steps": [{"color": colour, "value": 0 if value is None else value} for value, colour in steps]}


SCORE_THRESHOLDS = thresholds((None, "green"), (0.8, "yellow"), (1.0, RED))


def override(matcher_id: str, option: str, *properties: tuple[str, Any]) -> Json:
    return {"matcher": {"id": matcher_id, "options": option},
            "properties": [{"id": k, "value": v} for k, v in properties]}


def fixed(colour: str) -> Json:
    return {"mode": "fixed", "fixedColor": colour}


def band_overrides(name: str) -> list[Json]:
    """The service names a series' fields "<name>", "<name> expected", "<name> expected low", ...

    The band is the area between "expected high" and "expected low" (``fillBelowTo`` needs the
    exact display name, hence the fixed ``legendFormat`` of those panels' queries); the expected value
    is a dashed grey line; anomalous points are red dots; ``is anomaly`` is not drawn.
    """
    return [
        expected_override(),
        override("byRegexp", "/ expected high$/", ("custom.fillBelowTo", f"{name} expected low"),
                 ("custom.lineWidth", 0), ("custom.fillOpacity", 20), ("color", fixed(BAND_COLOUR)),
                 ("displayName", "expected band")),
        override("byRegexp", "/ expected low$/", ("custom.lineWidth", 0), ("custom.fillOpacity", 0),
                 ("color", fixed(BAND_COLOUR)),
                 ("custom.hideFrom", {"legend": True, "tooltip": False, "viz": False})),
        *anomaly_overrides(),
    ]


def expected_override() -> Json:
    return override("byRegexp", "/ expected$/", ("color", fixed(EXPECTED_COLOUR)),
                    ("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}), ("custom.lineWidth", 1))


def anomaly_overrides() -> list[Json]:
    return [
        override("byRegexp", "/ anomaly$/", ("custom.drawStyle", "points"), ("custom.pointSize", 9),
                 ("custom.showPoints", "always"), ("color", fixed(RED)), ("custom.lineWidth", 0)),
        override("byRegexp", "/ is anomaly$/",
                 ("custom.hideFrom", {"legend": True, "tooltip": True, "viz": True})),
        override("byRegexp", "/ anomaly score$/",
                 ("custom.hideFrom", {"legend": True, "tooltip": True, "viz": True})),
    ]


def timeseries_custom(**extra: Any) -> Json:
    custom = {"drawStyle": "line", "lineInterpolation": "linear", "lineWidth": 2, "fillOpacity": 0,
              "gradientMode": "none", "showPoints": "never", "pointSize": 4, "spanNulls": False,
              "axisPlacement": "auto", "axisBorderShow": False, "axisCenteredZero": False,
              "axisColorMode": "text", "axisLabel": "", "barAlignment": 0, "insertNulls": False,
              "scaleDistribution": {"type": "linear"}, "stacking": {"group": "A", "mode": "none"},
              "hideFrom": {"legend": False, "tooltip": False, "viz": False},
              "thresholdsStyle": {"mode": "off"}}
    custom.update(extra)
    return custom


# ---------------------------------------------------------------------------------------------
# Panels


def grid(x: int, y: int, w: int, h: int) -> Json:
    return {"x": x, "y": y, "w": w, "h": h}


def timeseries(pid: int, title: str, pos: Json, targets: list[Json], *, unit: str = "short",
               description: str = "", overrides: list[Json] = (), minimum: float | None = None,
               maximum: float | None = None, soft_max: float | None = None, custom: Json | None = None,
               threshold_steps: Json | None = None, legend: str = "list", decimals: int | None = None,
               datasource: Json = VIGIL) -> Json:
    defaults: Json = {"unit": unit, "color": {"mode": "palette-classic"},
                      "custom": custom or timeseries_custom(),
                      "thresholds": threshold_steps or thresholds((None, "green")), "mappings": []}
    for key, value in (("min", minimum), ("max", maximum), ("decimals", decimals)):
        if value is not None:
            defaults[key] = value
    if soft_max is not None:
        defaults["custom"]["axisSoftMax"] = soft_max
    return {"id": pid, "type": "timeseries", "title": title, "description": description, "gridPos": pos,
            "datasource": datasource, "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
            "options": {"legend": {"displayMode": legend, "placement": "bottom", "showLegend": True,
                                   "calcs": []},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def score_panel(pid: int, title: str, pos: Json, targets: list[Json], description: str,
                datasource: Json = VIGIL) -> Json:
    """Anomaly scores: 1.0 is the threshold for every model, drawn as a red dashed line."""
    custom = timeseries_custom(thresholdsStyle={"mode": "dashed"}, lineWidth=1, fillOpacity=10,
                               gradientMode="scheme")
    return timeseries(pid, title, pos, targets, unit="none", minimum=0, soft_max=2, custom=custom,
                      threshold_steps=thresholds((None, "green"), (1.0, RED)), description=description,
                      decimals=2, datasource=datasource,
                      overrides=[override("byRegexp", "/ (expected|expected low|expected high|anomaly|is anomaly)$/",
                                          ("custom.hideFrom", {"legend": True, "tooltip": True, "viz": True}))])


def stat(pid: int, title: str, pos: Json, targets: list[Json], *, unit: str = "short",
         steps: Json | None = None, description: str = "", decimals: int | None = None,
         datasource: Json = PROMETHEUS, colour_mode: str = "background") -> Json:
    defaults: Json = {"unit": unit, "color": {"mode": "thresholds"},
                      "thresholds": steps or thresholds((None, "green")), "mappings": []}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {"id": pid, "type": "stat", "title": title, "description": description, "gridPos": pos,
            "datasource": datasource, "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": colour_mode, "graphMode": "area", "justifyMode": "auto",
                        "orientation": "auto", "textMode": "auto", "wideLayout": True,
                        "showPercentChange": False, "percentChangeColorMode": "standard"}}


def table(pid: int, title: str, pos: Json, targets: list[Json], *, datasource: Json,
          overrides: list[Json] = (), description: str = "", transformations: list[Json] = (),
          sort_by: list[Json] = ()) -> Json:
    return {"id": pid, "type": "table", "title": title, "description": description, "gridPos": pos,
            "datasource": datasource, "targets": targets, "transformations": list(transformations),
            "fieldConfig": {"defaults": {"custom": {"align": "auto", "cellOptions": {"type": "auto"},
                                                    "inspect": False, "filterable": True},
                                         "thresholds": thresholds((None, "green")), "mappings": []},
                            "overrides": list(overrides)},
            "options": {"showHeader": True, "cellHeight": "sm", "sortBy": list(sort_by),
                        "footer": {"show": False, "reducer": ["sum"], "countRows": False, "fields": ""}}}


def score_cell(name: str) -> Json:
    return override("byName", name, ("custom.cellOptions", {"type": "color-background", "mode": "basic"}),
                    ("thresholds", SCORE_THRESHOLDS), ("decimals", 2), ("unit", "none"))


def state_timeline(pid: int, title: str, pos: Json, targets: list[Json], *, datasource: Json,
                   steps: Json, description: str = "", mappings: list[Json] = (), decimals: int = 2) -> Json:
    return {"id": pid, "type": "state-timeline", "title": title, "description": description, "gridPos": pos,
            "datasource": datasource, "targets": targets,
            "fieldConfig": {"defaults": {"color": {"mode": "thresholds"}, "thresholds": steps,
                                         "mappings": list(mappings), "decimals": decimals,
                                         "custom": {"fillOpacity": 80, "lineWidth": 0, "insertNulls": False,
                                                    "spanNulls": False,
                                                    "hideFrom": {"legend": False, "tooltip": False, "viz": False}}},
                            "overrides": []},
            "options": {"mergeValues": False, "showValue": "never", "alignValue": "left", "rowHeight": 0.9,
                        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "single", "sort": "none"}}}


def row(pid: int, title: str, y: int, repeat: str | None = None) -> Json:
    panel: Json = {"id": pid, "type": "row", "title": title, "collapsed": False, "gridPos": grid(0, y, 24, 1),
                   "panels": []}
    if repeat:
        panel["repeat"] = repeat
    return panel


def text(pid: int, pos: Json, content: str, title: str = "") -> Json:
    return {"id": pid, "type": "text", "title": title, "gridPos": pos,
            "options": {"mode": "markdown", "content": content,
                        "code": {"language": "plaintext", "showLineNumbers": False, "showMiniMap": False}}}


# ---------------------------------------------------------------------------------------------
# Variables and annotations


def vigil_variable(name: str, label: str, query: str, *, title: str) -> Json:
    """Label values through the Vigil datasource (``label_values``: Vigil relays it to Prometheus)."""
    definition = f"label_values({query}, {label})"
    return {"name": name, "label": title, "type": "query", "datasource": VIGIL,
            "query": {"qryType": 1, "query": definition, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "definition": definition, "refresh": 2, "multi": True, "includeAll": True,
            "allValue": ".+", "sort": 1, "options": [], "hide": 0, "regex": "",
            "current": {"text": ["All"], "value": ["$__all"], "selected": True}}


def custom_variable(name: str, title: str, values: list[str], default: str, description: str) -> Json:
    return {"name": name, "label": title, "type": "custom", "description": description,
            "query": ",".join(values), "multi": False, "includeAll": False, "hide": 0,
            "current": {"text": default, "value": default, "selected": True},
            "options": [{"text": v, "value": v, "selected": v == default} for v in values]}


MODEL_VARIABLES = [
    custom_variable("model", "Model", ["auto", "seasonal", "iforest", "ocsvm"], "auto",
                    "auto: the seasonal baseline until enough history, then Isolation Forest"),
    custom_variable("sensitivity", "Sensitivity", ["low", "medium", "high"], "medium",
                    "low ~ 1 false alarm per series per month, medium ~ per week, high ~ per day"),
]

BUILTIN_ANNOTATION = {"name": "Annotations & Alerts", "datasource": GRAFANA, "enable": True, "hide": True,
                      "iconColor": "rgba(0, 211, 255, 1)", "builtIn": 1,
                      "target": {"type": "dashboard", "limit": 100, "matchAny": False, "tags": []}}

WORKER_ANNOTATIONS = {"name": "Anomalies (Vigil worker)", "datasource": GRAFANA, "enable": True,
                      "iconColor": RED,
                      "target": {"type": "tags", "tags": ["anomaly"], "matchAny": True, "limit": 200}}


def on_demand_annotations(name: str, expr: str, title: str, tag_keys: str) -> Json:
    """Anomaly episodes computed by the service for this dashboard's range, from an ``is_anomaly``
    series of the Vigil datasource: Grafana's Prometheus annotations turn its runs of non-zero
    points into regions. Off by default: the worker's annotations already show the configured jobs."""
    # limit/matchAny/tags/type are required by the dashboard schema's AnnotationTarget; the
    # Prometheus datasource ignores them and runs target.expr every `step`.
    return {"name": name, "datasource": VIGIL, "enable": False, "iconColor": "orange",
            "step": "60s", "titleFormat": title, "tagKeys": tag_keys, "textFormat": "", "useValueForTime": False,
            "target": {"refId": "Anno", "expr": anomaly_expr("is_anomaly", expr), "interval": "60s",
                       "limit": 100, "matchAny": False, "tags": [], "type": "dashboard"}}


def dashboard(uid: str, title: str, description: str, panels: list[Json], *, variables: list[Json] = (),
              annotations: list[Json] = (), time_from: str = "now-6h", refresh: str = "1m",
              links: list[Json] = ()) -> Json:
    return _drop_nulls({
        "uid": uid, "title": title, "description": description, "tags": TAGS, "editable": True,
        "graphTooltip": 1, "schemaVersion": SCHEMA_VERSION, "version": 1, "refresh": refresh,
        "time": {"from": time_from, "to": "now"}, "timezone": "browser", "fiscalYearStartMonth": 0,
        "liveNow": False, "weekStart": "",
        "timepicker": {"refresh_intervals": ["30s", "1m", "5m", "15m", "1h"]},
        "templating": {"list": list(variables)},
        "annotations": {"list": [BUILTIN_ANNOTATION, *annotations]},
        "links": [{"title": "Vigil", "type": "dashboards", "tags": ["vigil"], "asDropdown": True,
                   "includeVars": False, "keepTime": True, "targetBlank": False, "icon": "external link",
                   "tooltip": "", "url": ""}, *links],
        "panels": panels,
    })


def _drop_nulls(value: Any) -> Any:
    """Optional settings left as ``None`` above are omitted (Grafana's dashboard schema rejects null)."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# The dashboards

# Variables on the Vigil (Prometheus-type) datasource go into double-quoted PromQL strings: Grafana's
# Prometheus datasource escapes a multi-value variable for exactly that (127\\.0\\.0\\.1:9100 in
# the text, 127\.0\.0\.1:9100 as the regex). Infinity fills a variable in as is, so its bodies use
# PromQL raw strings (backticks), where a backslash stays a backslash (see ``for_infinity``).
CPU_EXPR = '1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle", instance=~"$instance"}[5m]))'
MEMORY_EXPR = ('1 - node_memory_MemAvailable_bytes{instance=~"$instance"}'
               ' / node_memory_MemTotal_bytes{instance=~"$instance"}')
CPU_MODES_EXPR = 'sum by (instance, mode) (rate(node_cpu_seconds_total{mode!="idle", instance=~`$instance`}[5m]))'
RESTARTS_EXPR = ('sum by (namespace, pod) (increase(kube_pod_container_status_restarts_total'
                 '{namespace=~"$namespace"}[5m]))')
NOT_READY_EXPR = 'sum by (namespace) (kube_pod_status_ready{condition="false", namespace=~"$namespace"})'
ANOMALY_COLUMNS = [("time", "time", "timestamp_epoch"), ("series", "series", "string"),
                   ("value", "value", "number"), ("yhat", "expected", "number"),
                   ("yhat_lower", "expected low", "number"), ("yhat_upper", "expected high", "number"),
                   ("anomaly_score", "score", "number"), ("is_anomaly", "anomalous", "number")]
ANOMALOUS_MAPPING = [{"type": "value", "options": {"0": {"text": "normal", "color": "green", "index": 0},
                                                   "1": {"text": "anomalous", "color": RED, "index": 1}}}]


def for_infinity(expr: str) -> str:
    """``expr`` with its variables in PromQL raw strings, for an Infinity body (filled in as is)."""
    return expr.replace('"$instance"', "`$instance`").replace('"$namespace"', "`$namespace`")


def anomalies_now_body(query: str) -> str:
    """The POST body of /api/v1/anomalies; Infinity fills its own time macros in (also in alert rules)."""
    return json.dumps({"query": query, "from": 0, "to": 0, "step": "60s", "model": "$model",
                       "sensitivity": "$sensitivity", "latest": True}).replace(
        '"from": 0', '"from": ${__timeFrom}').replace('"to": 0', '"to": ${__timeTo}')


def contributions_body(expr: str) -> str:
    """/api/v1/anomalies with ``group_by``: each member's share of its group's score, per point."""
    return json.dumps({"query": expr, "from": 0, "to": 0, "step": "60s", "group_by": ["instance"],
                       "sensitivity": "$sensitivity"}).replace(
        '"from": 0', '"from": ${__timeFrom}').replace('"to": 0', '"to": ${__timeTo}')


def node_resources() -> Json:
    cpu = timeseries(
        2, "CPU busy: $instance", grid(0, 8, 12, 9), band_targets(CPU_EXPR, "CPU"),
        unit="percentunit", minimum=0, maximum=1, overrides=band_overrides("CPU"),
        description="Share of CPU time not idle. The blue band is what Vigil expected for this time "
                    "and load (yhat_lower .. yhat_upper); red dots are points it flags as anomalous (anomalies).")
    memory = timeseries(
        3, "Memory in use: $instance", grid(12, 8, 12, 9), band_targets(MEMORY_EXPR, "Memory"),
        unit="percentunit", minimum=0, maximum=1, overrides=band_overrides("Memory"),
        description="1 - MemAvailable / MemTotal, with the expected band and anomalous points.")
    score = score_panel(
        4, "Anomaly score: $instance", grid(0, 17, 12, 6),
        [vigil_target("A", "anomaly_score", CPU_EXPR, "CPU anomaly score"),
         vigil_target("B", "anomaly_score", MEMORY_EXPR, "Memory anomaly score")],
        "Above 1.0 (the dashed line) a point is anomalous, for every model.")
    flags = state_timeline(
        5, "Anomaly episodes: $instance", grid(12, 17, 12, 6),
        [vigil_target("A", "is_anomaly", CPU_EXPR, "CPU"), vigil_target("B", "is_anomaly", MEMORY_EXPR, "Memory")],
        datasource=VIGIL, steps=thresholds((None, "green"), (1, RED)), mappings=ANOMALOUS_MAPPING, decimals=0,
        description="Episodes with hysteresis: an episode opens above the threshold and closes only "
                    "after the score stays below it, so short dips do not split it.")
    drivers = timeseries(
        7, "What drove CPU: $instance (all modes as one group)", grid(0, 23, 24, 7),
        [infinity_target("A", "/api/v1/anomalies", [("time", "time", "timestamp_epoch"), ("member", "member", "string"),
                                                    ("contribution", "contribution", "number")],
                         method="POST", body=contributions_body(CPU_MODES_EXPR), fmt="timeseries")],
        unit="percentunit", minimum=0, maximum=1, decimals=2, datasource=INFINITY,
        custom=timeseries_custom(lineWidth=1, fillOpacity=40, stacking={"group": "A", "mode": "normal"}),
        description="The CPU modes of the node scored together by one multivariate model (group_by "
                    "instance, through Infinity): each mode's share of what made the combination unusual. "
                    "Read it where the on-demand \"CPU anomalies (computed now)\" annotations mark an episode.")
    fleet = score_panel(
        6, "Anomaly score, all selected instances", grid(0, 0, 18, 7),
        [vigil_target("A", "anomaly_score", CPU_EXPR, "{{instance}} CPU anomaly score"),
         vigil_target("B", "anomaly_score", MEMORY_EXPR, "{{instance}} memory anomaly score")],
        "Which instance to look at: every selected instance's CPU and memory score.")
    # An aggregation around an anomaly function, evaluated by Vigil as Prometheus would.
    anomalous_now = stat(
        8, "Instances anomalous now", grid(18, 0, 6, 7),
        [{**prom_target(ref, f"sum({anomaly_expr('is_anomaly', expr)})", legend, instant=True), "datasource": VIGIL}
         for ref, expr, legend in (("A", CPU_EXPR, "CPU"), ("B", MEMORY_EXPR, "memory"))],
        unit="none", decimals=0, datasource=VIGIL, steps=thresholds((None, "green"), (1, RED)),
        description="How many of the selected instances are inside an anomaly episode now: "
                    "sum(is_anomaly(...)) of the same queries as the panels below. Empty when none is scored yet.")
    return dashboard(
        "vigil-node", "Vigil / Node resources",
        "CPU and memory per node (node_exporter) with Vigil's expected band, anomalous points and scores.",
        [fleet, anomalous_now, row(1, "$instance", 7, repeat="instance"), cpu, memory, score, flags, drivers],
        variables=[vigil_variable("instance", "instance", "node_uname_info", title="Instance"), *MODEL_VARIABLES],
        annotations=[WORKER_ANNOTATIONS,
                     on_demand_annotations("CPU anomalies (computed now)", CPU_EXPR, "{{instance}} CPU anomalous",
                                           "instance"),
                     on_demand_annotations("Memory anomalies (computed now)", MEMORY_EXPR,
                                           "{{instance}} memory anomalous", "instance")])


def kubernetes_workloads() -> Json:
    restarts = timeseries(
        2, "Container restarts per pod (5m)", grid(0, 0, 12, 9),
        band_targets(RESTARTS_EXPR, "{{namespace}}/{{pod}}", band=False),
        unit="short", minimum=0, decimals=0, overrides=[expected_override(), *anomaly_overrides()],
        description="Restarts in the last 5 minutes per pod (kube-state-metrics); red dots are anomalous.")
    not_ready = timeseries(
        3, "Pods not ready per namespace", grid(12, 0, 12, 9),
        band_targets(NOT_READY_EXPR, "{{namespace}}", band=False),
        unit="short", minimum=0, decimals=0, overrides=[expected_override(), *anomaly_overrides()],
        description="Pods whose Ready condition is false (kube-state-metrics); red dots are anomalous.")
    score = score_panel(
        4, "Anomaly score", grid(0, 9, 24, 7),
        [vigil_target("A", "anomaly_score", RESTARTS_EXPR, "{{namespace}}/{{pod}} restarts anomaly score"),
         vigil_target("B", "anomaly_score", NOT_READY_EXPR, "{{namespace}} not ready anomaly score")],
        "Above 1.0 (the dashed line) a point is anomalous.")
    now = table(
        5, "Not-ready pods: latest point per namespace", grid(0, 16, 24, 8),
        [infinity_target("A", "/api/v1/anomalies", ANOMALY_COLUMNS, method="POST",
                         body=anomalies_now_body(for_infinity(NOT_READY_EXPR)))],
        datasource=INFINITY, overrides=[score_cell("score"),
                                        override("byName", "anomalous", ("mappings", ANOMALOUS_MAPPING),
                                                 ("custom.cellOptions", {"type": "color-text"}))],
        sort_by=[{"displayName": "score", "desc": True}],
        description="The newest scored point of each namespace, through Infinity (the same request "
                    "the alert rules make).")
    return dashboard(
        "vigil-k8s", "Vigil / Kubernetes workloads",
        "Pod restarts and not-ready pods (kube-state-metrics) with anomalies found by Vigil.",
        [restarts, not_ready, score, now],
        variables=[vigil_variable("namespace", "namespace", "kube_pod_info", title="Namespace"), *MODEL_VARIABLES],
        annotations=[WORKER_ANNOTATIONS,
                     on_demand_annotations("Not-ready anomalies (computed now)", NOT_READY_EXPR,
                                           "{{namespace}} not-ready pods anomalous", "namespace")])


def anomaly_overview() -> Json:
    anomalous = stat(2, "Series anomalous now", grid(0, 0, 6, 5),
                     [prom_target("A", "count(vigil_anomaly_score >= 1) or vector(0)", instant=True)],
                     steps=thresholds((None, "green"), (1, RED)), decimals=0,
                     description="Watched series whose latest score is at or above 1.0 (Vigil worker).")
    episodes = stat(3, "Episodes started", grid(6, 0, 6, 5),
                    [prom_target("A", "sum(increase(vigil_episodes_started_total[$__range])) or vector(0)",
                                 instant=True)],
                    steps=thresholds((None, "green"), (1, "orange")), decimals=0,
                    description="Anomaly episodes opened by the worker in the dashboard's time range.")
    worst = stat(4, "Highest score now", grid(12, 0, 6, 5),
                 [prom_target("A", "max(vigil_anomaly_score)", instant=True)],
                 steps=SCORE_THRESHOLDS, decimals=2, unit="none",
                 description="The most anomalous watched series right now; 1.0 is the threshold.")
    alerts = {"id": 5, "type": "alertlist", "title": "Vigil alerts", "gridPos": grid(18, 0, 6, 13),
              "description": "Grafana-managed alert rules of the bundle (label source=vigil), firing or pending.",
              "options": {"viewMode": "list", "groupMode": "default", "groupBy": [], "maxItems": 20,
                          "sortOrder": 3, "dashboardAlerts": False, "alertName": "", "showInstances": True,
                          "alertInstanceLabelFilter": '{source="vigil"}',
                          "stateFilter": {"firing": True, "pending": True, "noData": False, "normal": False,
                                          "error": True, "recovering": True}}}
    timeline = state_timeline(
        6, "Anomaly score across the fleet", grid(0, 5, 18, 8),
        [prom_target("A", "vigil_anomaly_score", "{{vigil_job}} {{instance}}{{namespace}} {{pod}}")],
        datasource=PROMETHEUS, steps=SCORE_THRESHOLDS,
        description="Every series the worker watches: green is normal, yellow close, red anomalous (score >= 1.0).")
    top = table(
        7, "Highest scores now", grid(0, 13, 10, 9),
        [prom_target("A", "topk(20, vigil_anomaly_score)", instant=True, table=True)],
        datasource=PROMETHEUS, overrides=[score_cell("score")], sort_by=[{"displayName": "score", "desc": True}],
        transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True},
                                                        "renameByName": {"Value": "score"}, "indexByName": {}}}],
        description="Latest score of the 20 most anomalous watched series.")
    audit = table(
        8, "Audit: anomaly episodes in range", grid(10, 13, 14, 9),
        [infinity_target("A", "/api/v1/audit",
                         [("start_ms", "start", "timestamp_epoch"), ("end_ms", "end", "timestamp_epoch"),
                          ("job", "job", "string"), ("series", "series", "string"),
                          ("peak_score", "peak score", "number"), ("peak_value", "peak value", "number"),
                          ("yhat", "expected", "number"), ("model", "model", "string"),
                          ("reason", "reason", "string"), ("severity", "severity", "string"),
                          ("alert_state", "alert", "string"), ("annotation_id", "annotation", "string")],
                         params=[("from", "${__from}"), ("to", "${__to}")])],
        datasource=INFINITY, overrides=[score_cell("peak score")], sort_by=[{"displayName": "start", "desc": True}],
        description="Every episode the worker recorded (durable audit): when, which series, how bad, why, "
                    "and whether its annotation and alert were delivered. An empty end means still open.")
    rates = timeseries(
        9, "Episodes started per job", grid(0, 22, 24, 7),
        [prom_target("A", "sum by (vigil_job) (increase(vigil_episodes_started_total[$__rate_interval]))",
                     "{{vigil_job}}")],
        unit="short", minimum=0, datasource=PROMETHEUS,
        custom=timeseries_custom(drawStyle="bars", fillOpacity=60, lineWidth=1),
        description="A job that opens many episodes is either noisy (lower its sensitivity) or broken.")
    return dashboard(
        "vigil-overview", "Vigil / Anomaly overview",
        "What is anomalous now, across everything Vigil watches, and what it recorded.",
        [anomalous, episodes, worst, alerts, timeline, top, audit, rates],
        annotations=[WORKER_ANNOTATIONS], time_from="now-24h")


def vigil_itself() -> Json:
    rate = "$__rate_interval"
    up = stat(2, "Vigil targets up", grid(0, 0, 6, 5),
              [prom_target("A", 'sum(up{job=~"vigil.*"}) or vector(0)', instant=True)],
              steps=thresholds((None, RED), (1, "green")), decimals=0,
              description="Scrape targets of the service and the worker that answer.")
    errors = stat(3, "Error ratio (5xx)", grid(6, 0, 6, 5),
                  [prom_target("A", f'sum(rate(vigil_http_requests_total{{status=~"5.."}}[{rate}])) / '
                                    f'sum(rate(vigil_http_requests_total[{rate}]))', instant=True)],
                  unit="percentunit", steps=thresholds((None, "green"), (0.01, "orange"), (0.05, RED)), decimals=2)
    cache = stat(4, "Model cache hit ratio", grid(12, 0, 6, 5),
                 [prom_target("A", f"sum(rate(vigil_model_cache_hits_total[{rate}])) / "
                                   f"(sum(rate(vigil_model_cache_hits_total[{rate}])) + "
                                   f"sum(rate(vigil_model_cache_misses_total[{rate}])))", instant=True)],
                 unit="percentunit", steps=thresholds((None, "orange"), (0.5, "green")), decimals=1,
                 description="Panels re-use fitted models; a low ratio means refits on every refresh.")
    lag_stat = stat(5, "Oldest job success", grid(18, 0, 6, 5),
                    [prom_target("A", "max(time() - vigil_job_last_success_timestamp_seconds)", instant=True)],
                    unit="s", steps=thresholds((None, "green"), (300, "orange"), (900, RED)), decimals=0,
                    description="Seconds since the least recent successful run of any worker job.")
    requests = timeseries(
        6, "Requests by endpoint and status", grid(0, 5, 12, 8),
        [prom_target("A", f"sum by (endpoint, status) (rate(vigil_http_requests_total[{rate}]))",
                     "{{endpoint}} {{status}}")],
        unit="reqps", minimum=0, datasource=PROMETHEUS,
        overrides=[override("byRegexp", "/ 5\\d\\d$/", ("color", fixed(RED)))])
    latency = timeseries(
        7, "Request latency (p50, p95, p99)", grid(12, 5, 12, 8),
        [prom_target(ref, f"histogram_quantile({q}, sum by (le) "
                          f"(rate(vigil_http_request_duration_seconds_bucket[{rate}])))", f"p{int(q * 100)}")
         for ref, q in (("A", 0.5), ("B", 0.95), ("C", 0.99))],
        unit="s", minimum=0, datasource=PROMETHEUS,
        custom=timeseries_custom(thresholdsStyle={"mode": "dashed"}),
        threshold_steps=thresholds((None, "green"), (25, RED)),
        description="The service answers within 25 s (the dashed line), inside Grafana's 30 s proxy timeout.")
    fits = timeseries(
        8, "Model fits by model", grid(0, 13, 8, 8),
        [prom_target("A", f"sum by (model) (rate(vigil_model_fits_total[{rate}]))", "{{model}}")],
        unit="ops", minimum=0, datasource=PROMETHEUS)
    backlog = timeseries(
        9, "Delivery outbox backlog", grid(8, 13, 8, 8),
        [prom_target("A", "sum by (sink) (vigil_outbox_backlog)", "{{sink}}"),
         prom_target("B", f"sum by (sink) (rate(vigil_delivery_failures_total[{rate}]))", "{{sink}} failures/s")],
        unit="short", minimum=0, datasource=PROMETHEUS,
        overrides=[override("byRegexp", "/failures/", ("color", fixed(RED)), ("unit", "ops"),
                            ("custom.axisPlacement", "right"))],
        description="Annotations and alerts waiting to be delivered (retried with backoff); grows when "
                    "Grafana or Alertmanager is unreachable.")
    prom_latency = timeseries(
        10, "Prometheus queries: p95 latency and errors", grid(16, 13, 8, 8),
        [prom_target("A", f"histogram_quantile(0.95, sum by (le) "
                          f"(rate(vigil_prometheus_request_duration_seconds_bucket[{rate}])))", "p95 latency"),
         prom_target("B", f"sum by (reason) (rate(vigil_prometheus_errors_total[{rate}]))", "errors: {{reason}}")],
        unit="s", minimum=0, datasource=PROMETHEUS,
        overrides=[override("byRegexp", "/^errors/", ("color", fixed(RED)), ("unit", "ops"),
                            ("custom.axisPlacement", "right"))])
    lag = timeseries(
        11, "Time since each job's last success", grid(0, 21, 12, 8),
        [prom_target("A", "time() - vigil_job_last_success_timestamp_seconds", "{{vigil_job}}")],
        unit="s", minimum=0, datasource=PROMETHEUS,
        custom=timeseries_custom(thresholdsStyle={"mode": "line+area"}),
        threshold_steps=thresholds((None, "transparent"), (900, RED)),
        description="A job is stale (alert VigilJobStale) after 15 minutes without a successful run.")
    duration = timeseries(
        12, "Job run duration (p95)", grid(12, 21, 12, 8),
        [prom_target("A", f"histogram_quantile(0.95, sum by (le, vigil_job) "
                          f"(rate(vigil_job_duration_seconds_bucket[{rate}])))", "{{vigil_job}}")],
        unit="s", minimum=0, datasource=PROMETHEUS)
    return dashboard(
        "vigil-self", "Vigil / Service and worker",
        "Vigil's own health: request rate, errors and latency, model fits and cache, Prometheus "
        "queries, delivery backlog and job lag.",
        [up, errors, cache, lag_stat, requests, latency, fits, backlog, prom_latency, lag, duration])


DASHBOARDS = {
    "anomaly-overview.json": anomaly_overview,
    "node-resources.json": node_resources,
    "kubernetes-workloads.json": kubernetes_workloads,
    "vigil-self.json": vigil_itself,
}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    OUT.mkdir(exist_ok=True)
    for name, content in render().items():
        (OUT / name).write_text(content, encoding="utf-8")
        print(f"wrote dashboards/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
