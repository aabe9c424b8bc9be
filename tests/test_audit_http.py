"""``/api/v1/audit`` in the service: rows for Infinity, from the store the worker writes."""

from __future__ import annotations

import time

from flask import Flask

from vigil.store.audit import AuditStore
from vigil.config import Settings
from vigil.errors import VigilError
from vigil.http.audit import audit_blueprint


def make_app(settings: Settings) -> Flask:
    app = Flask("test")
    app.register_blueprint(audit_blueprint(settings), url_prefix="/api/v1")

    @app.errorhandler(VigilError)
    def error(exc):  # what the service's own handler does
        return exc.body("t"), exc.http_status

    return app


def test_rows_for_infinity(tmp_path):
    settings = Settings().replace(audit={"path": str(tmp_path / "audit.db")}, server={"token": "s3cret"})
    client = make_app(settings).test_client()
    auth = {"Authorization": "Bearer s3cret"}
    assert client.get("/api/v1/audit", headers=auth).get_json() == []  # no worker yet: no rows
    now = int(time.time() * 1000)
    store = AuditStore(tmp_path / "audit.db")
    with store.transaction() as db:
        store.insert_episode(db, {"job": "cpu", "series_key": "instance=a", "labels": {"instance": "a"},
                                  "start_ms": now - 60_000, "end_ms": None, "last_ms": now, "peak_ms": now,
                                  "peak_score": 1.8, "reason": "CPU above the usual"}, now)
    [row] = client.get("/api/v1/audit?since=1h", headers=auth).get_json()
    assert row["job"] == "cpu" and row["start_ms"] == now - 60_000 and row["end"] is None
    # Infinity posts its macros as text/plain.
    body = f'{{"from": {now - 3_600_000}, "to": {now}}}'
    response = client.post("/api/v1/audit", data=body, headers={**auth, "Content-Type": "text/plain"})
    assert response.status_code == 200 and len(response.get_json()) == 1
    bad = client.get("/api/v1/audit?since=never", headers=auth)
    assert bad.status_code == 400 and "since" in bad.get_json()["message"] and "status" not in bad.get_json()
    assert client.get("/api/v1/audit").status_code == 401
