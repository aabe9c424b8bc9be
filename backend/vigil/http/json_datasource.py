"""The simPod JSON datasource protocol (``simpod-json-datasource`` 0.6.x), under ``/json``.

``GET /`` (Save & test), ``POST /metrics``, ``/metric-payload-options``, ``/query`` (panels and
annotations), ``/variable``, ``/tag-keys``, ``/tag-values``. Bodies are Grafana's; unknown
top-level keys are ignored (Grafana adds them), unknown payload keys are errors (the user wrote
them). Every answer to ``/query`` is a top-level JSON array.
"""

from __future__ import annotations

import math
from typing import Any

from flask import Blueprint, current_app, jsonify

from vigil.config import MODELS, Settings
from vigil.errors import BadRequest, VigilError
from vigil.pipeline.frames import FIELDS, to_annotation_frames, to_dataframes
from vigil.pipeline.core import Detection, Query
from vigil.sources.presets import PRESETS, resolve
from vigil.units import ms_to_s, parse_instant_ms, parse_time_ms, query_step_s
from vigil.http.admission import remaining_s
from vigil.http.auth import require_token
from vigil.http.body import OPTION_KEYS, as_bool, detection_options, excerpt, label_name, read_json, reject_unknown, text_field

__all__ = ["json_datasource_blueprint"]

PAYLOAD_KEYS = (*OPTION_KEYS, "annotations")
_OPERATORS = {"=": "=", "!=": "!=", "=~": "=~", "!~": "!~"}

_PAYLOADS = [
    {"name": "model", "label": "Model", "type": "select", "width": 20,
     "placeholder": "auto (Isolation Forest; baseline on cold start)",
     "options": [{"label": m, "value": m} for m in MODELS]},
    {"name": "sensitivity", "label": "Sensitivity", "type": "select", "width": 20, "placeholder": "medium",
     "options": [{"label": "low (~1 false alarm a month)", "value": "low"},
                 {"label": "medium (~1 false alarm a week)", "value": "medium"},
                 {"label": "high (~1 false alarm a day)", "value": "high"}]},
    {"name": "train_window", "label": "Training window", "type": "input", "width": 14, "placeholder": "7d"},
    {"name": "fields", "label": "Return", "type": "multi-select", "width": 40,
     "placeholder": "value, expected band, score, anomalies",
     "options": [{"label": f, "value": f} for f in FIELDS]},
    {"name": "legend", "label": "Legend", "type": "input", "width": 20, "placeholder": "{{instance}}"},
    {"name": "source", "label": "Source", "type": "select", "width": 14, "placeholder": "prometheus",
     "options": [{"label": "Prometheus", "value": "prometheus"}, {"label": "Loki", "value": "loki"}]},
    {"name": "group_by", "label": "Group by (multivariate)", "type": "input", "width": 20, "placeholder": "instance"},
]


def json_datasource_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("json_datasource", __name__)

    @bp.before_request
    def authenticate() -> None:
        require_token(settings.server.token)

    def detection() -> Detection:
        return current_app.extensions["vigil.detection"]

    @bp.get("")
    @bp.get("/")
    def save_and_test():
        return jsonify({"ok": True, "message": "Vigil is answering", "presets": sorted(PRESETS)})

    @bp.post("/metrics")
    def metrics():
        body = read_json(default={})
        out = [{"label": f"{p.name} — {p.description}", "value": p.name, "payloads": _PAYLOADS}
               for p in PRESETS.values()]
        typed = body.get("metric") if isinstance(body, dict) else None
        if isinstance(typed, str) and typed.strip() and typed not in PRESETS:
            out.insert(0, {"label": typed, "value": typed, "payloads": _PAYLOADS})
        return jsonify(out)

    @bp.post("/metric-payload-options")
    def payload_options():
        body = read_json(default={})
        name = body.get("name") if isinstance(body, dict) else None
        for payload in _PAYLOADS:
            if payload["name"] == name:
                return jsonify(payload.get("options", []))
        return jsonify([])

    @bp.post("/query")
    def query():
        body = read_json()
        if not isinstance(body, dict):
            raise BadRequest("POST /json/query: the body must be a JSON object (Grafana's query request)",
                             code="bad_body")
        start_ms, end_ms = _range(body, "POST /json/query")
        range_s = ms_to_s(end_ms - start_ms)
        step_s = query_step_s(range_s, interval_ms=_number(body.get("intervalMs"), "intervalMs"),
                              max_data_points=_int(body.get("maxDataPoints"), "maxDataPoints"),
                              max_points_per_series=settings.prometheus.max_points_per_series)
        filters = _filters(body.get("filters") or body.get("adhocFilters") or [])
        targets = body.get("targets") or []
        if not isinstance(targets, list):
            raise BadRequest(f"POST /json/query: targets must be a list of queries; got {type(targets).__name__} "
                             f"{excerpt(targets, 40)}", code="bad_targets")
        if len(targets) > settings.server.max_targets:
            raise BadRequest(f"POST /json/query: {len(targets)} targets in one request; at most "
                             f"{settings.server.max_targets} are accepted (server.max_targets)", code="too_many_targets")
        frames: list[dict[str, Any]] = []
        for target in targets:
            if not isinstance(target, dict) or target.get("hide"):
                continue
            ref_id = target.get("refId") or "A"
            if not isinstance(ref_id, (str, int)) or isinstance(ref_id, bool) or len(str(ref_id)) > 64:
                raise BadRequest(f"POST /json/query: refId must be a short string; got {excerpt(ref_id, 40)}",
                                 code="bad_targets")
            ref_id = str(ref_id)
            expr = target.get("target")
            if expr is not None and not isinstance(expr, str):
                raise BadRequest(f"refId {ref_id}: target must be a query string; got {type(expr).__name__} "
                                 f"{excerpt(expr, 40)}", code="bad_targets")
            if not expr or not expr.strip():
                continue  # a panel still being edited: nothing to show, not an error
            where = f"refId {ref_id} (query {excerpt(expr)})"
            payload = target.get("payload") or {}
            if not isinstance(payload, dict):
                raise BadRequest(f"{where}: payload must be a JSON object; got {excerpt(payload, 40)}",
                                 code="bad_payload")
            reject_unknown(payload, PAYLOAD_KEYS, f"{where}: payload")
            opts = detection_options(payload, settings, where, prefix="payload.")
            result = detection().run(deadline_s=remaining_s(where), query=Query(
                expr=expr, start_ms=start_ms, end_ms=end_ms, step_s=step_s, model=opts.model,
                train_window_s=opts.train_window_s, sensitivity=opts.sensitivity, source=opts.source,
                filters=filters, ref_id=ref_id, legend=opts.legend, group_by=opts.group_by,
                min_deviation=opts.min_deviation, fit_budget_s=settings.detection.fit_budget_s))
            if as_bool(payload.get("annotations", False), f"{where}: payload.annotations"):
                frames.extend(to_annotation_frames(result, ref_id))
            else:
                frames.extend(to_dataframes(result, ref_id, opts.fields, arrays=True))
        return jsonify(frames)

    @bp.post("/variable")
    def variable():
        body = read_json(default={})
        payload = body.get("payload") if isinstance(body, dict) else None
        if isinstance(payload, str):  # older plugin versions send the raw text
            payload = {"label": payload}
        if not isinstance(payload, dict) or not payload.get("label"):
            raise BadRequest('POST /json/variable: payload must be {"label": "<label name>", "query"?: '
                             '"<preset or PromQL>"}', code="bad_payload")
        reject_unknown(payload, ("label", "query"), "POST /json/variable: payload")
        label = label_name(payload["label"], "POST /json/variable: payload.label")
        prometheus = detection().prometheus
        start_ms, end_ms = _range(body, "POST /json/variable", required=False)
        expr = text_field(payload.get("query"), "POST /json/variable: payload.query")
        if expr:
            expr, _ = resolve(expr)
            step_s = max(60.0, math.ceil(ms_to_s(end_ms - start_ms) / 20))
            try:
                found = prometheus.query_range(expr, ms_to_s(start_ms), ms_to_s(end_ms), step_s,
                                               deadline_s=remaining_s("POST /json/variable"))
            except VigilError as exc:
                raise type(exc)(f"variable query {excerpt(payload.get('query'))}: {exc.message}", code=exc.code) from None
            values = sorted({s.labels[label] for s in found if label in s.labels})
        else:
            values = prometheus.label_values(label, start_s=ms_to_s(start_ms), end_s=ms_to_s(end_ms))
        return jsonify([{"__text": v, "__value": v} for v in values])

    @bp.post("/tag-keys")
    def tag_keys():
        names = detection().prometheus.label_names()
        return jsonify([{"type": "string", "text": n} for n in names if n != "__name__"])

    @bp.post("/tag-values")
    def tag_values():
        body = read_json(default={})
        key = body.get("key") if isinstance(body, dict) else None
        if not isinstance(key, str) or not key:
            raise BadRequest('POST /json/tag-values: body must name the label: {"key": "<label>"}', code="bad_body")
        key = label_name(key, "POST /json/tag-values: key")
        return jsonify([{"text": v} for v in detection().prometheus.label_values(key)])

    return bp


def _range(body: dict[str, Any], where: str, *, required: bool = True) -> tuple[int, int]:
    rng = body.get("range")
    if not isinstance(rng, dict) or "from" not in rng or "to" not in rng:
        if not required:
            end_ms = parse_instant_ms("now")
            return end_ms - 6 * 3600 * 1000, end_ms
        raise BadRequest(f"{where}: range.from and range.to are required (ISO-8601 times)", code="bad_range")
    for end in ("from", "to"):
        if isinstance(rng[end], bool) or not isinstance(rng[end], (str, int, float)):
            raise BadRequest(f"{where}: range.{end} must be an ISO-8601 time or epoch ms; got "
                             f"{excerpt(rng[end], 40)}", code="bad_range")
    try:
        now_ms = parse_time_ms("now")  # one "now" for both ends
        return parse_time_ms(rng["from"], now_ms=now_ms), parse_time_ms(rng["to"], now_ms=now_ms)
    except ValueError as exc:
        raise BadRequest(f"{where}: range must be {exc}", code="bad_range") from None


def _filters(raw: Any) -> tuple[tuple[str, str, str], ...]:
    if not isinstance(raw, list):
        raise BadRequest(f"ad hoc filters must be a list of {{key, operator, value}}; got {excerpt(raw, 40)}",
                         code="bad_filters")
    if len(raw) > 64:
        raise BadRequest(f"ad hoc filters: {len(raw)} given; at most 64 are accepted", code="bad_filters")
    out = []
    for f in raw:
        if not isinstance(f, dict) or not f.get("key"):
            raise BadRequest(f"ad hoc filter {excerpt(f, 60)} must have key, operator and value", code="bad_filters")
        key = label_name(f["key"], "ad hoc filter key")
        op = _OPERATORS.get(f.get("operator", "=")) if isinstance(f.get("operator", "="), str) else None
        if op is None:
            raise BadRequest(f"ad hoc filter on {key!r}: operator must be one of =, !=, =~, !~; "
                             f"got {excerpt(f.get('operator'), 40)}", code="bad_filters")
        value = f.get("value", "")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise BadRequest(f"ad hoc filter on {key!r}: value must be a string; got {excerpt(value, 40)}",
                             code="bad_filters")
        out.append((key, op, str(value)))
    return tuple(out)


#: the largest intervalMs / maxDataPoints taken seriously (about 31 years in ms).
_MAX_NUMBER = 1e12


def _number(value: Any, name: str) -> float | None:
    """A positive finite number, or None when absent or not a number (Grafana may omit it)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number) or number > _MAX_NUMBER:
        raise BadRequest(f"POST /json/query: {name} must be a number up to {_MAX_NUMBER:.0e}; got "
                         f"{excerpt(value, 40)}", code="bad_field")
    return number if number > 0 else None


def _int(value: Any, name: str) -> int | None:
    number = _number(value, name)
    return int(number) if number else None
