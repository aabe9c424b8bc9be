"""``/healthz`` (liveness: the process answers), ``/readyz`` (Prometheus reachable), ``/metrics``.

These routes never take a scoring slot (see ``app.register_admission``) and answer in
milliseconds: ``/readyz`` asks Prometheus with its own short timeout (``READY_TIMEOUT_S``), at
most one probe at a time per process; probes that arrive while one is in flight get the last
answer at once, so a burst of probes during a Prometheus outage is never queued.
"""

from __future__ import annotations

import threading

import requests
from flask import Blueprint, Response, current_app, jsonify

from vigil.config import Settings
from vigil.errors import UpstreamUnavailable
from vigil.http.telemetry import CONTENT_TYPE_LATEST, ServiceMetrics

__all__ = ["health_blueprint", "READY_TIMEOUT_S"]

READY_TIMEOUT_S = 1.0


def health_blueprint(settings: Settings, service_metrics: ServiceMetrics) -> Blueprint:
    bp = Blueprint("health", __name__)
    state = {"ready": False}
    probing = threading.Lock()

    def prometheus_ready(url: str, session: requests.Session) -> bool:
        if not probing.acquire(blocking=False):
            return bool(state["ready"])  # another thread is asking right now: its last answer
        try:
            try:
                ready = session.get(f"{url}/-/ready", timeout=READY_TIMEOUT_S).status_code == 200
            except requests.RequestException:
                ready = False
            state["ready"] = ready
            return ready
        finally:
            probing.release()

    @bp.get("/healthz")
    def healthz():
        return jsonify({"ok": True})

    @bp.get("/readyz")
    def readyz():
        detection = current_app.extensions["vigil.detection"]
        if not prometheus_ready(detection.prometheus.url, detection.prometheus.session):
            raise UpstreamUnavailable(f"Prometheus at {detection.prometheus.url} is not reachable or not ready")
        return jsonify({"ok": True, "prometheus": detection.prometheus.url})

    @bp.get("/metrics")
    def metrics():
        return Response(service_metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)

    return bp
