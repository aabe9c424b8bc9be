"""JSON rows for the Infinity datasource (``yesoreyeram-infinity-datasource``): ``/api/v1/anomalies``.

Infinity's backend parser works in alert rules, so Grafana-managed alerts can use these rows.
The body is JSON even when it arrives as ``text/plain`` (Infinity's default); GET with query
parameters works too. ``from``/``to`` are epoch ms (``${__timeFrom}``/``${__timeTo}``), epoch
seconds, ISO-8601, or ``now-6h``-style relative times. ``group_by`` (a list of label names, or
``"instance,job"``, also as a GET parameter) scores each group of series as one multivariate
model; its rows then carry ``group``, ``member`` and ``contribution`` (see ``frames.to_rows``).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from vigil.config import Settings
from vigil.errors import BadRequest
from vigil.pipeline.frames import to_rows
from vigil.pipeline.core import Query
from vigil.units import ms_to_s, parse_duration_s, parse_time_ms, query_step_s
from vigil.http.admission import remaining_s
from vigil.http.auth import require_token
from vigil.http.body import OPTION_KEYS, as_bool, check_json, detection_options, excerpt, read_json, reject_unknown

__all__ = ["infinity_blueprint", "NOTICE_HEADER"]

#: one header per notice on /api/v1/anomalies answers (``curl -i`` shows them)
NOTICE_HEADER = "X-Vigil-Notice"

KEYS = ("query", "from", "to", "step", "latest", "only_anomalies", *OPTION_KEYS)
_DEFAULT_RANGE_S = 3600.0
_DEFAULT_POINTS = 720


def infinity_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("infinity", __name__)

    @bp.before_request
    def authenticate() -> None:
        require_token(settings.server.token)

    @bp.route("/anomalies", methods=["GET", "POST"])
    def anomalies():
        where = f"{request.method} /api/v1/anomalies"
        if request.method == "POST":
            body = read_json()
            if not isinstance(body, dict):
                raise BadRequest(f"{where}: the body must be a JSON object such as "
                                 '{"query": "node_cpu_usage", "from": ${__timeFrom}, "to": ${__timeTo}}',
                                 code="bad_body")
        else:
            body = request.args.to_dict()
            check_json(body, where, max_depth=1, max_chars=settings.server.max_query_chars)
        reject_unknown(body, KEYS, where)
        expr = body.get("query")
        if not isinstance(expr, str) or not expr.strip():
            raise BadRequest(f"{where}: 'query' is required: a preset name or a PromQL expression", code="empty_query")
        where = f"{where} (query {excerpt(expr)})"
        now_ms = parse_time_ms("now")
        end_ms = _instant(body.get("to"), now_ms, f"{where}: to")
        start_ms = _instant(body.get("from"), end_ms, f"{where}: from", now_ms=now_ms)
        if "from" not in body:
            start_ms = end_ms - int(_DEFAULT_RANGE_S * 1000)
        range_s = ms_to_s(end_ms - start_ms)
        if body.get("step") not in (None, ""):
            try:
                step_s = max(1.0, parse_duration_s(body["step"]))
            except ValueError as exc:
                raise BadRequest(f"{where}: step must be {exc}", code="bad_step") from None
        else:
            step_s = query_step_s(max(range_s, 1.0), max_data_points=_DEFAULT_POINTS,
                                  max_points_per_series=settings.prometheus.max_points_per_series)
        opts = detection_options(body, settings, where)
        result = current_app.extensions["vigil.detection"].run(deadline_s=remaining_s(where), query=Query(
            expr=expr, start_ms=start_ms, end_ms=end_ms, step_s=step_s, model=opts.model,
            train_window_s=opts.train_window_s, sensitivity=opts.sensitivity, source=opts.source,
            ref_id="", legend=opts.legend, group_by=opts.group_by,
            min_deviation=opts.min_deviation, fit_budget_s=settings.detection.fit_budget_s))
        rows = to_rows(result, latest=as_bool(body.get("latest", False), f"{where}: latest"),
                       only_anomalies=as_bool(body.get("only_anomalies", False), f"{where}: only_anomalies"))
        response = jsonify(rows)
        # Rows have no place for notices (why an answer is empty, a raised step): a header does.
        for text in result.notices:
            response.headers.add(NOTICE_HEADER, _header_text(text))
        return response

    return bp


def _header_text(text: str) -> str:
    """A notice as a header value: one line of printable ASCII."""
    return " ".join(text.encode("ascii", "replace").decode("ascii").split())


def _instant(value: Any, default_ms: int, where: str, *, now_ms: int | None = None) -> int:
    """Epoch ms/s, ISO-8601, ``now`` or ``now-6h`` (``units.parse_time_ms``); ``default_ms`` when absent."""
    if value is None or value == "":
        return default_ms
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRequest(f"{where} must be a time (epoch ms or s, ISO-8601, now or now-6h); got {excerpt(value)}",
                         code="bad_range")
    try:
        return parse_time_ms(value, now_ms=now_ms if now_ms is not None else default_ms)
    except ValueError as exc:
        raise BadRequest(f"{where} must be {exc}", code="bad_range") from None
