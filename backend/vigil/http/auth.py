"""Bearer-token check between Grafana and the service (when ``server.token`` is configured)."""

from __future__ import annotations

import hmac

from flask import request

from vigil.errors import Unauthorized

__all__ = ["require_token"]


def require_token(token: str | None) -> None:
    """Raise :class:`Unauthorized` unless the request carries ``Authorization: Bearer <token>``.

    Compared in constant time; the token is never logged or echoed.
    """
    if not token:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("this Vigil requires 'Authorization: Bearer <token>': set the token in the "
                           "datasource's secure settings", code="missing_token")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("the bearer token does not match this Vigil's server.token", code="bad_token")
