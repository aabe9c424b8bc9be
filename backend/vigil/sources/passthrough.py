"""Forwarding one Prometheus API request unchanged (plain PromQL, labels, series, metadata).

Owns the one HTTP call that relays a request to the configured Prometheus with the client's own
session (its bearer token, never the caller's) and a bounded timeout, and the mapping of a
failed connection to :mod:`vigil.errors`. The answer comes back as Prometheus wrote it: status,
bytes and content type, so its envelope, warnings and errors reach the caller untouched.

Must not: import Flask, parse or rewrite PromQL, or build a path from unvalidated text (callers
pass fixed paths and validated label names).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import requests

from vigil.errors import UpstreamTimeout, UpstreamUnavailable
from vigil.sources.prometheus import PrometheusClient

__all__ = ["Upstream", "forward"]


class Upstream(NamedTuple):
    status: int
    body: bytes
    content_type: str


def forward(client: PrometheusClient, method: str, path: str, params: Sequence[tuple[str, str]]) -> Upstream:
    """``method`` ``path`` on ``client``'s Prometheus with ``params`` (form body for POST, query for GET)."""
    if not path.startswith("/api/v1/"):
        raise ValueError(f"The 'path' parameter of forward must start with /api/v1/. Got {path!r} instead.")
    url = f"{client.url}{path}"
    try:
        if method == "POST":
            response = client.session.post(url, data=list(params), timeout=client.request_timeout_s)
        else:
            response = client.session.get(url, params=list(params), timeout=client.request_timeout_s)
    except requests.Timeout:
        raise UpstreamTimeout(f"Prometheus at {client.url} did not answer {path} within "
                              f"{client.request_timeout_s:.1f}s") from None
    except requests.RequestException as exc:
        raise UpstreamUnavailable(f"Prometheus at {client.url} is unavailable: {str(exc)[:160]}") from None
    content_type = response.headers.get("Content-Type", "application/json")
    return Upstream(response.status_code, response.content, content_type)
