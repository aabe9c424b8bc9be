"""How answers are encoded: compact JSON through orjson (numpy arrays written directly, NaN and
infinities as ``null``), and gzip when the client accepts it (Grafana and Infinity do).

Panels of 100 series x 720 points are megabytes of numbers: the standard library's encoder spent
more time on them than scoring did, and on the wire gzip makes them several times smaller. Level
1: most of the gain for a fraction of the CPU. Must not: know what an answer contains.
"""

from __future__ import annotations

import gzip
from typing import Any

import orjson
from flask import Flask, Response, request
from flask.json.provider import JSONProvider

__all__ = ["OrjsonProvider", "register_compression", "accepts_gzip", "GZIP_MIN_BYTES", "GZIP_LEVEL"]

#: answers smaller than this are sent as they are (gzip's header would be most of the gain)
GZIP_MIN_BYTES = 1400
GZIP_LEVEL = 1
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    """What orjson does not know: numpy arrays it refuses (not contiguous), sets, other objects."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class OrjsonProvider(JSONProvider):
    """Flask's JSON (``jsonify``, ``request.get_json``) through orjson: compact, keys in order."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, default=_default, option=_OPTIONS).decode("utf-8")

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        return Response(orjson.dumps(obj, default=_default, option=_OPTIONS), mimetype="application/json")


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` header accepts gzip (``gzip;q=0`` refuses it)."""
    for part in header.lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("gzip", "*"):
            q = params.strip()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


def register_compression(app: Flask) -> None:
    @app.after_request
    def compress(response: Response) -> Response:
        if (response.direct_passthrough or response.is_streamed or "Content-Encoding" in response.headers
                or not 200 <= response.status_code < 300):
            return response
        response.vary.add("Accept-Encoding")
        if not accepts_gzip(request.headers.get("Accept-Encoding", "")):
            return response
        body = response.get_data()
        if len(body) < GZIP_MIN_BYTES:
            return response
        response.set_data(gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0))
        response.headers["Content-Encoding"] = "gzip"
        return response
