"""Why an answer is empty, in words a user can act on (a notice, never an error).

A query that matches nothing is answered 200 with no series; on its own that looks like "no
anomalies". This module says which it is: a metric Prometheus has never seen (a typo?), a metric
that exists but has no samples in the viewed range (no history yet: right after start-up, or
``rate()`` waiting for its second sample), or, when that cannot be told, both possibilities.

Must not: raise. Asking Prometheus is best effort; a failure only makes the notice less specific.
"""

from __future__ import annotations

from typing import Protocol

from vigil.display import format_instant
from vigil.errors import VigilError
from vigil.sources.promql import metric_names

__all__ = ["why_empty"]


class _LabelSource(Protocol):
    def label_values(self, label: str, match: list[str] = ..., start_s: float | None = None,
                     end_s: float | None = None) -> list[str]: ...


def why_empty(expr: str, start_ms: int, end_ms: int, *, shown_as: str | None = None,
              client: _LabelSource | None = None) -> str:
    """The notice for ``expr`` answering no series between ``start_ms`` and ``end_ms``.

    ``shown_as`` is the name the user typed (a preset) when it differs from ``expr``; ``client``
    (a Prometheus client) lets the notice tell an unknown metric from one without samples yet.
    """
    what = f"{shown_as} ({expr})" if shown_as and shown_as != expr else expr
    span = f"from {format_instant(start_ms)} to {format_instant(end_ms)}"
    names = metric_names(expr) if client is not None else []
    unknown: list[str] | None = None
    if names and client is not None:
        try:
            unknown = [n for n in names if n not in client.label_values("__name__", match=[n])]
        except (VigilError, OSError, ValueError):
            unknown = None
    if unknown:
        return (f"no series matched {what} {span}: Prometheus has no metric named {', '.join(unknown)}; "
                "check the name for a typo (the query editor lists the presets)")
    if unknown == []:
        return (f"no series matched {what} {span}: {', '.join(names)} exists but has no samples in this range "
                "yet (no history yet: after start-up, wait a few scrapes; rate() needs two samples in its window), "
                "or its label matchers select nothing")
    return (f"no series matched {what} {span}: check the metric name and label matchers for a typo, "
            "or, right after start-up, wait until Prometheus has some history")
