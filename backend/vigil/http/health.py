"""``/healthz`` (liveness: the process answers), ``/readyz`` (Prometheus reachable), ``/metrics``."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from .. import telemetry
from ..config import Settings
from ..errors import UpstreamUnavailable

__all__ = ["health_blueprint"]


def health_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("health", __name__)

    @bp.get("/healthz")
    def healthz():
        return jsonify({"ok": True})

    @bp.get("/readyz")
    def readyz():
        detection = current_app.extensions["vigil.detection"]
        if not detection.prometheus.ready():
            raise UpstreamUnavailable(f"Prometheus at {detection.prometheus.url} is not reachable or not ready")
        return jsonify({"ok": True, "prometheus": detection.prometheus.url})

    @bp.get("/metrics")
    def metrics():
        return Response(telemetry.render(), mimetype=telemetry.CONTENT_TYPE_LATEST)

    return bp
