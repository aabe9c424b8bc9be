"""``create_app(settings)``: the Flask application, read top to bottom like a table of contents."""

from __future__ import annotations

import importlib
import json
import logging
import time as _clock
import uuid
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from vigil.config import Settings
from vigil.errors import Overloaded, VigilError
from vigil.logs import request_id_var
from vigil.pipeline.model_cache import ModelCache
from vigil.pipeline.core import Detection
from vigil.sources.prometheus import LokiClient, PrometheusClient
from vigil.http.telemetry import ServiceMetrics, multiprocess_dir
from vigil.http.admission import make_slots, register_admission
from vigil.http.encoding import OrjsonProvider, register_compression
from vigil.http.health import health_blueprint
from vigil.http.infinity import infinity_blueprint
from vigil.http.json_datasource import json_datasource_blueprint
from vigil.http.prometheus_api import prometheus_api_blueprint

__all__ = ["create_app"]

log = logging.getLogger("vigil.http")
#: the longest error message answered or logged (head and tail kept, the middle cut)
MAX_MESSAGE_CHARS = 1000


def create_app(settings: Settings | None = None, *, detection: Detection | None = None,
               metrics: ServiceMetrics | None = None) -> Flask:
    """The app for ``settings``; ``detection`` and ``metrics`` are made from them unless given
    (metrics are summed across processes when ``vigil serve`` asked for that)."""
    settings = settings or Settings()
    metrics = metrics or ServiceMetrics(multiprocess_path=multiprocess_dir())
    app = Flask("vigil")
    app.config["VIGIL_SETTINGS"] = settings
    app.json = OrjsonProvider(app)  # compact, keys in order, numpy arrays written directly
    app.config["MAX_CONTENT_LENGTH"] = settings.server.max_body_bytes  # 413 before the body is read
    app.extensions["vigil.metrics"] = metrics
    app.extensions["vigil.detection"] = detection or build_detection(settings, metrics)
    register_request_hooks(app, metrics)
    register_compression(app)
    # Training holds at most max_inflight - reserved_light_slots of the scoring slots (also set on
    # a ``detection`` given: the app that serves it bounds its training).
    register_admission(app, settings, metrics, make_slots(settings))
    register_blueprints(app, settings, metrics)
    register_openapi(app)
    register_error_handlers(app)
    return app


def build_detection(settings: Settings, metrics: ServiceMetrics | None = None) -> Detection:
    metrics = metrics or ServiceMetrics()
    prometheus = PrometheusClient.from_settings(settings.prometheus, on_request=metrics.record_upstream)
    loki = LokiClient.from_settings(settings.loki, on_request=metrics.record_upstream) if settings.loki.url else None
    cache = ModelCache(settings.detection.cache_size, on_lookup=metrics.record_cache,
                       max_bytes=settings.detection.cache_max_mb * 2**20)
    return Detection(settings, prometheus, loki, cache, on_fit=metrics.record_fit)


def register_blueprints(app: Flask, settings: Settings, metrics: ServiceMetrics) -> None:
    app.register_blueprint(health_blueprint(settings, metrics))
    app.register_blueprint(json_datasource_blueprint(settings), url_prefix="/json")
    app.register_blueprint(infinity_blueprint(settings), url_prefix="/api/v1")
    app.register_blueprint(prometheus_api_blueprint(settings), url_prefix="/prometheus")
    try:  # the audit table is served when the worker's audit module is installed
        audit = importlib.import_module("vigil.http.audit")
    except ModuleNotFoundError:
        return
    app.register_blueprint(audit.audit_blueprint(settings), url_prefix="/api/v1")


def register_openapi(app: Flask) -> None:
    """``GET /openapi.json``: the description of this HTTP API kept in the repository."""
    text = (Path(__file__).with_name("openapi.json")).read_text(encoding="utf-8")
    json.loads(text)  # fail at start-up, not on the first request, if it is broken

    @app.get("/openapi.json")
    def openapi():
        return Response(text, mimetype="application/json")


def register_request_hooks(app: Flask, metrics: ServiceMetrics) -> None:
    @app.before_request
    def start() -> None:
        g.started = _clock.monotonic()
        request_id = request.headers.get("X-Request-Id", "")
        if not (0 < len(request_id) <= 64 and request_id.isprintable()):
            request_id = uuid.uuid4().hex[:16]
        g.request_id = request_id
        g.token = request_id_var.set(g.request_id)

    @app.after_request
    def finish(response):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        duration_s = _clock.monotonic() - g.get("started", _clock.monotonic())
        metrics.record_request(endpoint, response.status_code, duration_s)
        response.headers["X-Request-Id"] = g.get("request_id", "")
        if endpoint not in ("/healthz", "/readyz", "/metrics"):
            log.info("request", extra={"method": request.method, "path": _excerpt(request.path, 200),
                                       "status": response.status_code, "duration_ms": round(duration_s * 1000, 1)})
        return response

    @app.teardown_request
    def reset(_exc: Any) -> None:
        token = g.pop("token", None)
        if token is not None:
            request_id_var.reset(token)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(VigilError)
    def vigil_error(exc: VigilError):
        level = logging.WARNING if exc.http_status < 500 else logging.ERROR
        message = _bounded(exc.message)
        log.log(level, "request failed", extra={"error": exc.code, "reason": message,
                                                "path": _excerpt(request.path, 200)})
        body = exc.body(g.get("request_id", ""))
        body["message"] = message
        response = jsonify(body)
        if isinstance(exc, Overloaded):
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        return response, exc.http_status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        body = {"error": (exc.name or "error").lower().replace(" ", "_"),
                "message": _bounded(f"{request.method} {_excerpt(request.path, 200)}: {exc.description}"),
                "trace_id": g.get("request_id", "")}
        return jsonify(body), exc.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unexpected error", extra={"path": _excerpt(request.path, 200)})
        body = {"error": "internal_error",
                "message": f"{_excerpt(request.path, 200)}: an unexpected error happened; see the service log for trace "
                           f"{g.get('request_id', '')}",
                "trace_id": g.get("request_id", "")}
        return jsonify(body), 500


def _excerpt(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _bounded(message: str) -> str:
    """An error message of at most ~``MAX_MESSAGE_CHARS``: its head (what and where) and its tail
    (why), never a whole multi-megabyte input echoed back."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    head, tail = message[:MAX_MESSAGE_CHARS * 2 // 3], message[-MAX_MESSAGE_CHARS // 3:]
    return f"{head} ... [{len(message) - len(head) - len(tail)} characters cut] ... {tail}"
