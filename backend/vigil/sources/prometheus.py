"""Reading series from Prometheus (and Loki, which answers metric queries in the same shape).

Owns the HTTP calls, their bounded timeouts and retries, and the translation of every failure
into one of :mod:`vigil.errors`. Never scores anything.

Prometheus is protected from what Vigil asks of it: at most ``max_concurrent_queries`` queries
of one process run at once (the rest wait within their deadline, then get a 429); every range
query carries Prometheus' own ``timeout`` parameter, set to what is left of Vigil's deadline, so
that Prometheus stops a query Vigil has given up on; selectors that match every series are
refused before they are sent; label names are checked against Prometheus' grammar and
URL-quoted, so no request text ever becomes part of an API path.
"""

from __future__ import annotations

import logging
import re
import threading
import time as _clock
from typing import Any, Iterable
from urllib.parse import quote

import numpy as np
import requests

from vigil.config import LokiSettings, PrometheusSettings
from vigil.errors import BadRequest, Overloaded, QueryError, UpstreamError, UpstreamTimeout, UpstreamUnavailable, VigilError
from vigil.sources.promql import match_all_selector
from vigil.series import Series

__all__ = ["PrometheusClient", "LokiClient"]

log = logging.getLogger("vigil.prometheus")

_RETRY_PAUSES_S = (0.2, 0.6, 1.5)
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class PrometheusClient:
    """A small client of Prometheus's HTTP API v1.

    ``request_timeout_s`` bounds each attempt; ``retries`` more attempts are made on connection
    errors and 503s only (a bad query is never retried). ``deadline_s`` on a call bounds all its
    attempts together, so a panel is answered within Grafana's proxy timeout.
    """

    backend = "Prometheus"
    query_range_path = "/api/v1/query_range"
    instant_path = "/api/v1/query"
    #: Prometheus stops a query after its ``timeout`` parameter; Loki has no such parameter
    sends_timeout = True
    refuses_match_all = True

    def __init__(
        self,
        url: str,
        *,
        request_timeout_s: float = 10.0,
        retries: int = 2,
        bearer_token: str | None = None,
        session: requests.Session | None = None,
        on_request: Any = None,
        max_concurrent_queries: int = 4,
    ):
        self.url = url.rstrip("/")
        self.max_concurrent_queries = max_concurrent_queries
        self._slots = threading.BoundedSemaphore(max_concurrent_queries)
        self.request_timeout_s = request_timeout_s
        self.retries = retries
        self.session = session or requests.Session()
        if bearer_token:
            self.session.headers["Authorization"] = f"Bearer {bearer_token}"
        self.session.headers.setdefault("User-Agent", "vigil")
        #: called as ``on_request(outcome: str, duration_s: float)`` (metrics hook)
        self.on_request = on_request

    @classmethod
    def from_settings(cls, settings: PrometheusSettings, **kwargs: Any) -> "PrometheusClient":
        return cls(settings.url, request_timeout_s=settings.request_timeout_s, retries=settings.retries,
                   bearer_token=settings.bearer_token, max_concurrent_queries=settings.max_concurrent_queries, **kwargs)

    # -- public API ------------------------------------------------------------------------

    def query_range(self, expr: str, start_s: float, end_s: float, step_s: float, *,
                    deadline_s: float | None = None) -> list[Series]:
        shown = _excerpt(expr)
        self._refuse_match_all(expr)
        data = self._call("POST", self.query_range_path, self._range_params(expr, start_s, end_s, step_s),
                          deadline_s=deadline_s, what=f"query {shown}")
        if not isinstance(data, dict) or data.get("resultType") != "matrix":
            kind = data.get("resultType") if isinstance(data, dict) else type(data).__name__
            raise QueryError(f"{self.backend} query {shown} returned {kind}, not a range of series (matrix)")
        return [_parse_matrix_series(item) for item in data.get("result") or []]

    def series_count(self, expr: str, at_s: float, *, deadline_s: float | None = None) -> int | None:
        """``count((expr))`` at ``at_s``: one evaluation step, so the series of a query are counted
        before its range is fetched (a broad selector is refused at the cost of one step, not of
        its whole range). None when it cannot be counted (a scalar, a range vector: the range query
        then gives Prometheus' own error)."""
        self._refuse_match_all(expr)  # counting every series costs what reading them does
        try:
            data = self._call("POST", self.instant_path, {"query": f"count(({expr}))", "time": f"{at_s:.3f}"},
                              deadline_s=deadline_s, what=f"count of {_excerpt(expr)}")
        except QueryError:
            return None
        result = data.get("result") if isinstance(data, dict) and data.get("resultType") == "vector" else None
        if result is None:
            return None
        return int(float(result[0]["value"][1])) if result else 0

    def label_names(self, match: Iterable[str] = (), start_s: float | None = None,
                    end_s: float | None = None) -> list[str]:
        params = self._match_params(match, start_s, end_s)
        return sorted(self._call("GET", "/api/v1/labels", params, what="label names") or [])

    def label_values(self, label: str, match: Iterable[str] = (), start_s: float | None = None,
                     end_s: float | None = None) -> list[str]:
        params = self._match_params(match, start_s, end_s)
        return sorted(self._call("GET", f"/api/v1/label/{_label_segment(label)}/values", params,
                                 what=f"values of {label!r}") or [])

    def ready(self) -> bool:
        try:
            response = self.session.get(f"{self.url}/-/ready", timeout=min(self.request_timeout_s, 3.0))
        except requests.RequestException:
            return False
        return response.status_code == 200

    # -- internals -------------------------------------------------------------------------

    def _refuse_match_all(self, expr: str) -> None:
        broad = match_all_selector(expr) if self.refuses_match_all else None
        if broad is not None:
            raise BadRequest(f"the selector {_excerpt(broad, 60)} matches every series {self.backend} has: name a "
                             "metric or add a label matcher", code="selector_too_broad")

    def _range_params(self, expr: str, start_s: float, end_s: float, step_s: float) -> dict[str, Any]:
        return {"query": expr, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}", "step": f"{step_s:g}"}

    @staticmethod
    def _match_params(match: Iterable[str], start_s: float | None, end_s: float | None) -> dict[str, Any]:
        params: dict[str, Any] = {"match[]": list(match)}
        if start_s is not None:
            params["start"] = f"{start_s:.3f}"
        if end_s is not None:
            params["end"] = f"{end_s:.3f}"
        return params

    def _call(self, method: str, path: str, params: dict[str, Any], *, what: str,
              deadline_s: float | None = None) -> Any:
        started = _clock.monotonic()
        budget_s = deadline_s if deadline_s is not None else self.request_timeout_s * (self.retries + 1)
        attempt = 0
        while True:
            remaining_s = budget_s - (_clock.monotonic() - started)
            timeout_s = max(0.5, min(self.request_timeout_s, remaining_s))
            try:
                return self._attempt(method, path, params, timeout_s, what)
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                pause_s = _RETRY_PAUSES_S[min(attempt, len(_RETRY_PAUSES_S) - 1)]
                attempt += 1
                elapsed_s = _clock.monotonic() - started
                if attempt > self.retries or elapsed_s + pause_s + 0.5 > budget_s or isinstance(exc, UpstreamTimeout):
                    raise
                log.warning("retrying %s", self.backend, extra={"attempt": attempt, "reason": exc.message})
                _clock.sleep(pause_s)

    def _attempt(self, method: str, path: str, params: dict[str, Any], timeout_s: float, what: str) -> Any:
        url = f"{self.url}{path}"
        t0 = _clock.monotonic()
        if not self._slots.acquire(timeout=timeout_s):
            raise Overloaded(f"{self.backend}: {self.max_concurrent_queries} queries of this Vigil process are "
                             f"already running (prometheus.max_concurrent_queries); {what} was not sent: retry shortly",
                             code="too_many_queries")
        waited_s = _clock.monotonic() - t0
        timeout_s = max(0.5, timeout_s - waited_s)
        if self.sends_timeout and path in (self.query_range_path, self.instant_path):
            # Prometheus stops the query itself a little before Vigil would stop waiting for it,
            # so its own "query timed out" answer arrives in time to be shown.
            params = {**params, "timeout": f"{max(0.1, timeout_s * 0.8):.3f}"}
        outcome = "ok"
        try:
            if method == "POST":
                response = self.session.post(url, data=params, timeout=timeout_s)
            else:
                response = self.session.get(url, params=params, timeout=timeout_s)
        except requests.Timeout:
            outcome = "timeout"
            raise UpstreamTimeout(f"{self.backend} at {self.url} did not answer {what} within {timeout_s:.1f}s") from None
        except requests.RequestException as exc:
            outcome = "unreachable"
            raise UpstreamUnavailable(
                f"{self.backend} at {self.url} is unavailable: {_short(exc)}") from None
        finally:
            self._slots.release()
            if self.on_request is not None and outcome != "ok":
                self.on_request(outcome, _clock.monotonic() - t0)
        try:
            body = response.json()
        except ValueError:
            body = None
        status = response.status_code
        outcome = "ok" if status == 200 else f"http_{status}"
        if self.on_request is not None:
            self.on_request(outcome, _clock.monotonic() - t0)
        error_text = ""
        if isinstance(body, dict) and body.get("status") == "error":
            error_text = _excerpt(f"{body.get('errorType', 'error')}: {body.get('error', '')}".strip(), 400, quote=False)
        if status == 200 and isinstance(body, dict) and body.get("status") == "success":
            for warning in body.get("warnings") or []:
                log.warning("%s warning", self.backend, extra={"warning": _excerpt(warning, 300, quote=False),
                                                              "query": what})
            return body.get("data")
        if status in (400, 422):
            raise QueryError(f"{self.backend} rejected {what}: {error_text or response.text[:200]}")
        if status == 503 or (isinstance(body, dict) and body.get("errorType") == "timeout"):
            if isinstance(body, dict) and body.get("errorType") == "timeout":
                raise UpstreamTimeout(f"{self.backend} timed out running {what}: {error_text}")
            raise UpstreamUnavailable(f"{self.backend} at {self.url} is unavailable (HTTP 503) for {what}")
        if status in (401, 403):
            raise UpstreamError(f"{self.backend} at {self.url} refused our credentials (HTTP {status})")
        if status == 200:
            raise UpstreamError(f"{self.backend} at {self.url} answered {what} with an unexpected body")
        raise UpstreamError(f"{self.backend} at {self.url} answered HTTP {status} for {what}"
                            + (f": {error_text}" if error_text else ""))


class LokiClient(PrometheusClient):
    """Loki's metric queries (LogQL ``count_over_time`` and friends) answer the same matrix."""

    backend = "Loki"
    query_range_path = "/loki/api/v1/query_range"
    sends_timeout = False
    refuses_match_all = False  # Loki refuses selectors without a non-empty matcher itself

    @classmethod
    def from_settings(cls, settings: LokiSettings, **kwargs: Any) -> "LokiClient":  # type: ignore[override]
        if not settings.url:
            raise VigilError("Loki is not configured (loki.url)", code="loki_not_configured")
        return cls(settings.url, request_timeout_s=settings.request_timeout_s, retries=settings.retries, **kwargs)

    def _range_params(self, expr: str, start_s: float, end_s: float, step_s: float) -> dict[str, Any]:
        # Loki wants nanosecond epochs; step as seconds.
        return {"query": expr, "start": str(int(start_s * 1e9)), "end": str(int(end_s * 1e9)),
                "step": f"{step_s:g}", "limit": "5000"}

    def series_count(self, expr: str, at_s: float, *, deadline_s: float | None = None) -> int | None:
        return None  # a LogQL count reads the logs themselves: no cheap pre-count

    def label_names(self, match: Iterable[str] = (), start_s: float | None = None,
                    end_s: float | None = None) -> list[str]:
        return sorted(self._call("GET", "/loki/api/v1/labels", {}, what="label names") or [])

    def label_values(self, label: str, match: Iterable[str] = (), start_s: float | None = None,
                     end_s: float | None = None) -> list[str]:
        return sorted(self._call("GET", f"/loki/api/v1/label/{_label_segment(label)}/values", {},
                                 what=f"values of {label!r}") or [])


def _parse_matrix_series(item: dict[str, Any]) -> Series:
    values = item.get("values") or []
    if values:
        pairs = np.asarray(values, dtype=object)
        times_ms = np.rint(pairs[:, 0].astype(np.float64) * 1000.0).astype(np.int64)
        # float() understands "NaN", "+Inf", "-Inf"; Series.of turns non-finite into NaN gaps.
        vals = pairs[:, 1].astype(np.float64)
    else:
        times_ms, vals = np.empty(0, np.int64), np.empty(0, np.float64)
    return Series.of(item.get("metric") or {}, times_ms, vals)


def _label_segment(label: str) -> str:
    """A label name made safe to put in an API path: Prometheus' grammar, then URL-quoted."""
    if not isinstance(label, str) or not _LABEL_NAME.match(label):
        raise BadRequest(f"a label name must match [a-zA-Z_][a-zA-Z0-9_]*; got {_excerpt(label, 60)}",
                         code="bad_label_name")
    return quote(label, safe="")


def _excerpt(value: Any, limit: int = 120, *, quote: bool = True) -> str:
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _short(exc: Exception) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "Failed to resolve" in text or "nodename nor servname" in text:
        return "host name not found"
    return text[:160]
