"""``GET|POST /api/v1/audit``: the worker's recorded anomaly episodes, as rows for an Infinity table.

Reads the audit store that ``vigil worker`` writes (read-only; SQLite's WAL lets it read while the
worker writes). Parameters as query string or, for Infinity's POST, a JSON body (any content
type): ``since`` (a duration, default 24h) or ``from``/``to`` (epoch ms or ISO-8601, e.g.
Infinity's ``${__timeFrom}``/``${__timeTo}``), ``job``, ``limit``. No store yet is no rows (200).
Must not: write the store or score anything.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from vigil.store.audit import audit_rows, open_for_reading
from vigil.config import Settings
from vigil.errors import BadRequest
from vigil.http.auth import require_token
from vigil.http.body import check_json, read_json

__all__ = ["audit_blueprint"]


def audit_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("audit", __name__)

    @bp.route("/audit", methods=["GET", "POST"])
    def audit():
        require_token(settings.server.token)
        params: dict[str, Any] = dict(request.args)
        check_json(params, f"{request.method} /api/v1/audit", max_depth=1,
                   max_chars=settings.server.max_query_chars)
        if request.method == "POST" and request.get_data(cache=True).strip():
            body = read_json()
            if not isinstance(body, dict):
                raise BadRequest("POST /api/v1/audit: the body must be a JSON object", code="bad_json")
            params.update({k: v for k, v in body.items() if v is not None})
        store = open_for_reading(settings.audit.path)
        try:
            rows = audit_rows(store, params)
        except ValueError as exc:
            raise BadRequest(f"/api/v1/audit: {exc}", code="bad_parameter") from None
        finally:
            if store is not None:
                store.close()
        return jsonify(rows)

    return bp
