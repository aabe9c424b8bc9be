"""A Prometheus-compatible query API under ``/prometheus``, for Grafana's built-in Prometheus datasource.

Datasource URL ``http://vigil:8080/prometheus``: no community plugin. ``/api/v1/query_range`` and
``/api/v1/query`` (GET, and form-encoded POST as Grafana sends them by default) answer the
anomaly functions of :mod:`vigil.promql_functions` (``anomaly_score(<PromQL>)``, ``is_anomaly``,
``yhat``, ``yhat_lower``, ``yhat_upper``, ``anomalies``) from the same pipeline and models as
``/json/query`` and ``/api/v1/anomalies``; plain PromQL goes to Prometheus unchanged. The label
and metadata endpoints the query editor calls are relayed to Prometheus (label names validated,
fixed paths only). Checked against Grafana's ``pkg/promlib`` (``client/client.go``,
``healthcheck.go``, ``heuristics.go``, ``resource/resource.go``; main branch, Grafana 12.x).

Every answer is in Prometheus' envelope ``{status, data, errorType, error, warnings}``; errors
are mapped once, in :func:`_envelope_error`. Options go inside the function as string arguments
(``anomaly_score(x, "model=seasonal", "sensitivity=low", "train_window=14d")``; ``"source=loki"``
scores a LogQL metric query); the same names as query parameters (a datasource's custom query parameters) are refused with a message saying so.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from vigil.config import LABEL_NAME, Settings
from vigil.errors import (BadRequest, NotFound, Overloaded, QueryError, Unauthorized, UpstreamError, UpstreamTimeout,
                      VigilError)
from vigil.sources.passthrough import forward
from vigil.pipeline.core import Detection, DetectionResult, Query, ScoredSeries
from vigil.sources.promql import match_all_selector
from vigil.pipeline.promql_functions import OPTION_NAMES, AnomalyCall
from vigil.pipeline.promql_outer import Outer, VectorSeries, anomaly_call, evaluate, parse_query
from vigil.units import MAX_INSTANT_MS, parse_duration_s, parse_instant_ms
from vigil.http.auth import require_token
from vigil.http.body import detection_options, excerpt

__all__ = ["prometheus_api_blueprint", "INSTANT_STEP_S", "INSTANT_VIEW_S", "LOOKBACK_S"]

log = logging.getLogger("vigil.http")

#: An instant query scores the last point of this view at this step (Prometheus' default
#: lookback is 5 minutes: a point older than that is not "now").
INSTANT_STEP_S = 60.0
INSTANT_VIEW_S = 3600.0
LOOKBACK_S = 300.0

#: Prometheus' own limit: a range query may return at most this many points per series.
_MAX_POINTS = 11_000


def prometheus_api_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("prometheus_api", __name__)

    @bp.before_request
    def authenticate() -> None:
        require_token(settings.server.token)

    def detection() -> Detection:
        return current_app.extensions["vigil.detection"]

    @bp.route("/api/v1/query_range", methods=["GET", "POST"])
    def query_range():
        text = _query_text(settings)
        outer = _parse(text)
        if outer is None:
            return _relay_query("/api/v1/query_range", text)
        start_ms = _time_ms("start")
        end_ms = _time_ms("end")
        step_s = _step_s()
        _timeout_s()
        if end_ms < start_ms:
            raise BadRequest("end timestamp must not be before start time")
        if (end_ms - start_ms) / 1000.0 / step_s > _MAX_POINTS:
            raise BadRequest(f"exceeded maximum resolution of {_MAX_POINTS:,} points per timeseries. "
                             "Try decreasing the query resolution (?step=XX)")
        if end_ms == start_ms:  # one point asked for: score it like an instant query
            return _success("matrix", *_instant(detection(), settings, outer, end_ms, as_matrix=True))
        result = _run(detection(), settings, anomaly_call(outer), start_ms, end_ms, step_s)
        return _success("matrix", _matrix(outer, result), result.notices)

    @bp.route("/api/v1/query", methods=["GET", "POST"])
    def query():
        text = _query_text(settings)
        outer = _parse(text)
        if outer is None:
            return _relay_query("/api/v1/query", text)
        at_ms = _time_ms("time", default_now=True)
        _timeout_s()
        return _success("vector", *_instant(detection(), settings, outer, at_ms, as_matrix=False))

    @bp.route("/api/v1/query_exemplars", methods=["GET", "POST"])
    def query_exemplars():
        text = _query_text(settings)
        if _parse(text) is None:
            return _relay_query("/api/v1/query_exemplars", text)
        return jsonify({"status": "success", "data": []})  # scores have no exemplars

    @bp.route("/api/v1/format_query", methods=["GET", "POST"])
    def format_query():
        text = _query_text(settings)
        if _parse(text) is None:
            return _relay("/api/v1/format_query")
        return jsonify({"status": "success", "data": text.strip()})

    @bp.route("/api/v1/labels", methods=["GET", "POST"])
    def labels():
        return _relay("/api/v1/labels")

    @bp.route("/api/v1/series", methods=["GET", "POST"])
    def series():
        return _relay("/api/v1/series")

    @bp.route("/api/v1/label/<name>/values", methods=["GET"])
    def label_values(name: str):
        if not LABEL_NAME.match(name):
            raise BadRequest(f"invalid label name: {name!r}; a label name matches [a-zA-Z_][a-zA-Z0-9_]*")
        return _relay(f"/api/v1/label/{name}/values", method="GET")

    @bp.route("/api/v1/metadata", methods=["GET"])
    def metadata():
        return _relay("/api/v1/metadata", method="GET")

    @bp.route("/api/v1/status/buildinfo", methods=["GET"])
    def buildinfo():
        upstream = forward(detection().prometheus, "GET", "/api/v1/status/buildinfo", [])
        try:
            body = json.loads(upstream.body)
        except ValueError:
            raise UpstreamError(f"Prometheus answered buildinfo with HTTP {upstream.status} and no JSON") from None
        if upstream.status == 200 and isinstance(body, dict) and isinstance(body.get("data"), dict):
            # No "features": Grafana would take us for Mimir and call a ruler API we do not serve.
            body["data"].pop("features", None)
        return jsonify(body), upstream.status

    @bp.route("/api/v1/rules", methods=["GET"])
    def rules():
        # Vigil evaluates no Prometheus rules. Grafana's alert list asks every Prometheus
        # datasource whose "Manage alerts via Alerting UI" is on (the default for a new one): an
        # empty list, not an error banner on that page.
        return jsonify({"status": "success", "data": {"groups": []}})

    @bp.route("/api/v1/alerts", methods=["GET"])
    def alerts():
        return jsonify({"status": "success", "data": {"alerts": []}})

    @bp.route("/api/v1/<path:rest>", methods=["GET", "POST"])
    def unknown(rest: str):
        raise NotFound(f"Vigil's Prometheus API does not serve /api/v1/{rest}; it serves query, query_range, "
                       "query_exemplars, format_query, labels, label/<name>/values, series, metadata, "
                       "status/buildinfo, and rules and alerts (always empty)")

    @bp.errorhandler(VigilError)
    def vigil_error(exc: VigilError):
        return _envelope_error(exc)

    @bp.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _envelope_error(BadRequest(f"{request.method} {request.path}: {exc.description}"), exc.code)

    @bp.errorhandler(Exception)
    def unexpected(exc: Exception):
        # Still a bug to fix, but answered in the envelope Grafana reads, with the trace to look for.
        log.exception("unexpected error", extra={"path": excerpt(request.path, 200, quote=False)})
        trace = g.get("request_id", "")
        return jsonify({"status": "error", "errorType": "internal",
                        "error": f"an unexpected error happened; see the service log for trace {trace}"}), 500

    return bp


# -- requests ----------------------------------------------------------------------------------

def _query_text(settings: Settings) -> str:
    refused = sorted(set(request.values) & set(OPTION_NAMES))
    if refused:
        raise BadRequest(f"{', '.join(refused)} must be given inside the anomaly function, as in "
                         f"anomaly_score(<PromQL>, \"{refused[0]}=...\"), not as a query parameter "
                         "(remove it from the datasource's custom query parameters)")
    text = request.values.get("query", "")
    if not text.strip():
        raise BadRequest('invalid parameter "query": the query is empty')
    limit = settings.server.max_query_chars
    if len(text) > limit:  # as for /json and /api/v1: a megabyte of PromQL is not a query
        raise BadRequest(f'invalid parameter "query": the query has {len(text)} characters; at most {limit} are '
                         f"accepted (server.max_query_chars): {excerpt(text)}", code="value_too_long")
    if "\x00" in text:
        raise BadRequest(f'invalid parameter "query": the query contains a NUL character: {excerpt(text)}',
                         code="bad_text")
    return text


def _parse(text: str) -> Outer | None:
    try:
        return parse_query(text)
    except ValueError as exc:
        raise BadRequest(f"invalid parameter \"query\": {exc}") from None


def _time_ms(name: str, *, default_now: bool = False) -> int:
    raw = request.values.get(name, "")
    if not raw.strip():
        if default_now:
            return parse_instant_ms("now")
        raise BadRequest(f'invalid parameter "{name}": a time is required (unix seconds or RFC 3339)')
    try:
        value = float(raw)
    except ValueError:
        value = None
    try:
        # Prometheus reads a number as unix SECONDS, however large.
        time_ms = int(round(value * 1000)) if value is not None else parse_instant_ms(raw)
    except (ValueError, OverflowError):
        raise BadRequest(f'invalid parameter "{name}": cannot parse {excerpt(raw)} to a valid timestamp') from None
    if not 0 <= time_ms <= MAX_INSTANT_MS:
        raise BadRequest(f'invalid parameter "{name}": {excerpt(raw)} is outside the times an anomaly function can '
                         "score (1970-01-01 to 9999-12-31)")
    return time_ms


def _step_s() -> float:
    raw = request.values.get("step", "")
    try:
        step_s = parse_duration_s(raw)
    except ValueError:
        raise BadRequest(f'invalid parameter "step": cannot parse {excerpt(raw)} to a valid duration') from None
    if not (step_s > 0 and math.isfinite(step_s)):
        raise BadRequest("zero or negative query resolution step widths are not accepted. Try a positive integer")
    return step_s


def _timeout_s() -> float | None:
    """Prometheus' ``timeout`` parameter, checked as Prometheus does (a bad one is a 400)."""
    raw = request.values.get("timeout", "")
    if not raw.strip():
        return None
    try:
        return parse_duration_s(raw)
    except ValueError:
        raise BadRequest(f'invalid parameter "timeout": cannot parse {excerpt(raw)} to a valid duration') from None


def _relay_query(path: str, text: str) -> Response:
    """Plain PromQL, with the protection Vigil gives Prometheus everywhere else: a selector
    matching every series is refused before it is sent (see :func:`vigil.promql.match_all_selector`)."""
    broad = match_all_selector(text)
    if broad is not None:
        raise BadRequest(f'invalid parameter "query": the selector {excerpt(broad, 60, quote=False)} matches every '
                         "series Prometheus has: name a metric or add a label matcher", code="selector_too_broad")
    return _relay(path)


def _relay(path: str, *, method: str | None = None) -> Response:
    """Plain PromQL and metadata calls: Prometheus' own answer, status and envelope included.

    Each parameter is bounded like a query (``server.max_query_chars``); an error Prometheus (or
    its HTTP server, e.g. a 431 for a huge URL) answers without its envelope is put in one.
    """
    limit = current_app.config["VIGIL_SETTINGS"].server.max_query_chars
    params = [(k, v) for k, values in request.values.lists() for v in values]
    for key, value in params:
        if len(key) > limit or len(value) > limit:
            raise BadRequest(f"invalid parameter {excerpt(key, 60)}: it has {max(len(key), len(value))} characters; "
                             f"at most {limit} are accepted (server.max_query_chars)", code="value_too_long")
    upstream = forward(current_app.extensions["vigil.detection"].prometheus, method or request.method, path, params)
    if upstream.status >= 400 and not _is_envelope(upstream.body):
        text = upstream.body[:300].decode("utf-8", "replace").strip()
        message = f"Prometheus answered {path} with HTTP {upstream.status} and no JSON: {excerpt(text, 200)}"
        raise BadRequest(message) if upstream.status < 500 else UpstreamError(message)
    return Response(upstream.body, status=upstream.status, content_type=upstream.content_type)


def _is_envelope(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(parsed, dict) and parsed.get("status") in ("success", "error")


# -- scoring -----------------------------------------------------------------------------------

def _run(detection: Detection, settings: Settings, call: AnomalyCall, start_ms: int, end_ms: int,
         step_s: float) -> DetectionResult:
    where = f"{call.function}(...)"
    opts = detection_options(call.options, settings, where)
    return detection.run(Query(
        expr=call.inner, start_ms=start_ms, end_ms=end_ms, step_s=step_s, model=opts.model,
        train_window_s=opts.train_window_s, sensitivity=opts.sensitivity, source=opts.source, ref_id=call.function,
        fit_budget_s=settings.detection.fit_budget_s))


def _values(function: str, s: ScoredSeries) -> np.ndarray:
    """The function's value per point; NaN where it has none (no sample is written there)."""
    present = np.isfinite(s.values)
    if function == "anomaly_score":
        return s.scores.anomaly_score
    if function == "is_anomaly":
        return np.where(present, s.is_anomaly.astype(np.float64), np.nan)
    if function == "anomalies":
        return np.where(s.is_anomaly == 1, s.values, np.nan)
    return getattr(s.scores, function)


def _metric(s: ScoredSeries) -> dict[str, str]:
    # Like every PromQL function that changes the value, the metric name is dropped.
    return {k: v for k, v in s.labels.items() if k != "__name__"}


def _matrix(outer: Outer, result: DetectionResult) -> list[dict[str, Any]]:
    function = anomaly_call(outer).function
    series = [VectorSeries(_metric(s), s.times_ms, _values(function, s)) for s in result.series]
    series = [s for s in series if not np.isnan(s.values).all()]
    _unique_labels(series)
    out = []
    for s in evaluate(outer, series):
        keep = ~np.isnan(s.values)
        if keep.any():
            out.append({"metric": s.labels, "values": [[_timestamp(t), _sample(v)] for t, v in
                                                       zip(s.times_ms[keep].tolist(), s.values[keep].tolist())]})
    return out


def _instant(detection: Detection, settings: Settings, outer: Outer, at_ms: int, *,
             as_matrix: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """The score of the last point at or before ``at_ms`` (within the 5-minute lookback)."""
    call = anomaly_call(outer)
    start_ms = at_ms - int(INSTANT_VIEW_S * 1000)
    result = _run(detection, settings, call, start_ms, at_ms, INSTANT_STEP_S)
    series = []
    at = np.array([at_ms], dtype=np.int64)
    for scored in result.series:
        values = _values(call.function, scored)
        recent = ((scored.times_ms <= at_ms) & (scored.times_ms >= at_ms - int(LOOKBACK_S * 1000))
                  & np.isfinite(scored.values))
        if not recent.any():
            continue
        last = float(values[int(np.flatnonzero(recent)[-1])])
        if math.isfinite(last):
            series.append(VectorSeries(_metric(scored), at, np.array([last])))
    _unique_labels(series)
    out = []
    for v in evaluate(outer, series):
        if np.isnan(v.values[0]):
            continue
        sample = [_timestamp(at_ms), _sample(float(v.values[0]))]
        out.append({"metric": v.labels, "values": [sample]} if as_matrix else {"metric": v.labels, "value": sample})
    return out, result.notices


def _unique_labels(series: list[VectorSeries]) -> None:
    seen: set[tuple] = set()
    for item in series:
        key = tuple(sorted(item.labels.items()))
        if key in seen:
            raise QueryError("vector cannot contain metrics with the same labelset: the inner expression's series "
                             "differ only by their metric name; aggregate it or filter it by __name__")
        seen.add(key)


# -- answers -----------------------------------------------------------------------------------

def _timestamp(time_ms: int) -> int | float:
    return time_ms // 1000 if time_ms % 1000 == 0 else time_ms / 1000.0


def _sample(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _success(result_type: str, result: list[dict[str, Any]], warnings: list[str] | None = None):
    body: dict[str, Any] = {"status": "success", "data": {"resultType": result_type, "result": result}}
    if warnings:
        body["warnings"] = list(warnings)
    return jsonify(body)


#: Our errors as Prometheus' errorType and status (web/api/v1/api.go).
_ERROR_TYPES: list[tuple[type[VigilError], str, int]] = [
    (BadRequest, "bad_data", 400),
    (Unauthorized, "unauthorized", 401),
    (Overloaded, "unavailable", 429),
    (NotFound, "not_found", 404),
    (QueryError, "execution", 422),
    (UpstreamTimeout, "timeout", 503),
    (UpstreamError, "internal", 502),
]


def _envelope_error(exc: VigilError, status: int | None = None):
    error_type, http_status = "unavailable", 503
    for kind, name, code in _ERROR_TYPES:
        if isinstance(exc, kind):
            error_type, http_status = name, code
            break
    if isinstance(exc, QueryError) and "bad_data" in exc.message:
        error_type, http_status = "bad_data", 400  # Prometheus could not parse the inner PromQL
    if type(exc) is VigilError:
        error_type, http_status = "internal", exc.http_status
    level = logging.WARNING if http_status < 500 else logging.ERROR
    log.log(level, "request failed", extra={"error": exc.code, "reason": exc.message,
                                            "path": excerpt(request.path, 200, quote=False)})
    from vigil.http.app import _bounded  # one bound for every error message (app.py imports this module)

    body = {"status": "error", "errorType": error_type, "error": _bounded(exc.message)}
    response = jsonify(body)
    if isinstance(exc, Overloaded):
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return response, status or http_status
