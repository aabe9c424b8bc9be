"""The few error types, each mapped once to an HTTP status and a JSON body.

Every error body is ``{"error": code, "message": text, "trace_id": id}``. There is never a string
``status`` key: Grafana's Infinity plugin would show it instead of the message.

The worker's deliveries have their own two types (:class:`DeliveryError` and its
:class:`DeliveryTimeout`): they are never answered over HTTP, the outbox retries them, and a
timeout is told apart by its type (the sink may still be completing the request).
"""

from __future__ import annotations

__all__ = [
    "VigilError",
    "BadRequest",
    "Unauthorized",
    "NotFound",
    "Overloaded",
    "QueryError",
    "UpstreamUnavailable",
    "UpstreamTimeout",
    "UpstreamError",
    "DeliveryError",
    "DeliveryTimeout",
]


class VigilError(Exception):
    """Base: an error a user can read. ``code`` is a stable machine word, ``message`` a sentence."""

    http_status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code

    def body(self, trace_id: str) -> dict[str, str]:
        return {"error": self.code, "message": self.message, "trace_id": trace_id}


class BadRequest(VigilError):
    """The request itself is wrong: malformed JSON, unknown model, absurd range."""

    http_status = 400
    code = "bad_request"


class Unauthorized(VigilError):
    http_status = 401
    code = "unauthorized"


class NotFound(VigilError):
    http_status = 404
    code = "not_found"


class Overloaded(VigilError):
    """A limit on concurrent work was reached: retry after ``retry_after_s`` (sent as ``Retry-After``).

    Answered at once instead of queueing, so that Grafana sees it well within its proxy timeout
    and health probes are never stuck behind scoring.
    """

    http_status = 429
    code = "overloaded"

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: float = 2.0):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class QueryError(VigilError):
    """Prometheus or Loki could not run the query (bad PromQL, 400/422)."""

    http_status = 422
    code = "query_error"


class UpstreamError(VigilError):
    """Prometheus answered with something we cannot use (5xx, not JSON)."""

    http_status = 502
    code = "upstream_error"


class UpstreamUnavailable(VigilError):
    """Prometheus (or Loki, Grafana, Alertmanager) cannot be reached or is overloaded."""

    http_status = 503
    code = "upstream_unavailable"


class UpstreamTimeout(VigilError):
    http_status = 504
    code = "upstream_timeout"


class DeliveryError(RuntimeError):
    """A sink (Grafana annotations, Alertmanager) refused or could not take a delivery; the
    outbox retries it."""


class DeliveryTimeout(DeliveryError):
    """A sink did not answer within its ``request_timeout_s``. It may still complete the request,
    so the outbox waits longer before the retry looks for what it made."""
