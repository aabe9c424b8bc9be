"""The exact request bodies Grafana and its plugins send to Vigil (PROTOCOLS.md sections 1 and 2).

Shapes recorded from simpod-json-datasource 0.6.x on Grafana 11 and Infinity 3.x, with their
extra keys kept: the service must ignore what it does not use.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def simpod_query(start_ms: int, end_ms: int, targets: list[dict[str, Any]], *, interval_ms: int = 60_000,
                 max_data_points: int = 720, filters: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """``POST /query`` as the simPod plugin sends it through Grafana's data proxy."""
    full_targets = []
    for t in targets:
        full_targets.append({
            "refId": t.get("refId", "A"),
            "datasource": {"type": "simpod-json-datasource", "uid": "vigil-json"},
            "editorMode": "code",
            "payload": t.get("payload", {}),
            "target": t["target"],
            **({"hide": t["hide"]} if "hide" in t else {}),
        })
    return {
        "app": "dashboard",
        "requestId": "SQR101",
        "timezone": "browser",
        "panelId": 2,
        "dashboardUID": "vigil-nodes",
        "range": {"from": iso(start_ms), "to": iso(end_ms), "raw": {"from": "now-12h", "to": "now"}},
        "timeInfo": "",
        "interval": f"{interval_ms // 1000}s",
        "intervalMs": interval_ms,
        "targets": full_targets,
        "maxDataPoints": max_data_points,
        "scopedVars": {"__interval": {"text": f"{interval_ms // 1000}s", "value": f"{interval_ms // 1000}s"},
                       "__interval_ms": {"text": str(interval_ms), "value": interval_ms}},
        "startTime": end_ms,
        "rangeRaw": {"from": "now-12h", "to": "now"},
        "adhocFilters": filters or [],
        "filters": filters or [],
    }


def infinity_body(query: str, start_ms: int, end_ms: int, **extra: Any) -> str:
    """Infinity's ``url_options.data`` after its macros are filled in: a string, sent as text/plain."""
    fields = "".join(f', "{k}": {value_json(v)}' for k, v in extra.items())
    return f'{{"query": {value_json(query)}, "from": {start_ms}, "to": {end_ms}{fields}}}'


def value_json(value: Any) -> str:
    import json

    return json.dumps(value)


# --- Grafana's built-in Prometheus datasource (grafana/grafana pkg/promlib, Grafana 12.x main) ---
#
# client/client.go: with the default ``httpMethod: POST`` a query is a form-encoded POST
# (``Content-Type: application/x-www-form-urlencoded``) to <datasource URL>/api/v1/query_range with
# query, start, end (unix seconds, shortest float text) and step (seconds), plus ``timeout`` when the
# datasource sets a query timeout; an instant query posts query and time to /api/v1/query. With GET
# the same parameters go on the URL. healthcheck.go ("Save & test"): the instant query "1+1" at
# time.Unix(4, 0); heuristics.go then GETs /api/v1/status/buildinfo.

PROMETHEUS_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def prometheus_range_form(expr: str, start_s: float, end_s: float, step_s: float, *,
                          timeout: str | None = "30s") -> dict[str, str]:
    """``Client.QueryRange``'s form body."""
    form = {"query": expr, "start": f"{start_s:g}" if start_s % 1 else str(int(start_s)),
            "end": f"{end_s:g}" if end_s % 1 else str(int(end_s)), "step": f"{step_s:g}"}
    if timeout:
        form["timeout"] = timeout
    return form


def prometheus_instant_form(expr: str, time_s: float) -> dict[str, str]:
    """``Client.QueryInstant``'s form body (alert rules, "Instant" queries, Save & test)."""
    return {"query": expr, "time": f"{time_s:g}" if time_s % 1 else str(int(time_s))}


PROMETHEUS_HEALTHCHECK = prometheus_instant_form("1+1", 4)
