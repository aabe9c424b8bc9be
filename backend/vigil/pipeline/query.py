"""What to score: the :class:`Query` value, the one function that validates it, and what a
query fetched (:class:`FetchedView`).

Every caller (panels through ``vigil.http``, the worker, groups, benchmarks) builds its query with
:func:`build_query` or hands one to ``Detection.run``, which checks it with :func:`validate_query`:
one place says what a scorable query is. Must not: fetch, fit or score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from vigil.config import LABEL_NAME, MODELS, SENSITIVITIES, ExcludeWindow, Settings
from vigil.errors import BadRequest
from vigil.sources.promql import Matcher
from vigil.series import Series
from vigil.units import MinDeviation, format_duration, ms_to_s

__all__ = ["Query", "FetchedView", "Source", "build_query", "validate_query", "query_where"]


@dataclass(frozen=True)
class Query:
    """What to score: an expression (or preset name) over ``[start_ms, end_ms]`` at ``step_s``."""

    expr: str
    start_ms: int
    end_ms: int
    step_s: float
    model: str = "auto"
    train_window_s: float = 7 * 86400.0
    sensitivity: str = "medium"
    source: str = "prometheus"
    exclude: tuple[ExcludeWindow, ...] = ()
    filters: tuple[Matcher, ...] = ()
    ref_id: str = "A"
    legend: str | None = None
    #: keep only the series this returns true for, before any model is fitted (worker shards)
    series_filter: Callable[[Mapping[str, str]], bool] | None = field(default=None, compare=False)
    #: most series to score; defaults to ``server.max_series``
    max_series: int | None = None
    #: seconds of learned-model fitting one call may spend; past it, series are scored by the
    #: baseline and their models finish in the background (panels). None: no limit (the worker).
    fit_budget_s: float | None = None
    #: label names whose values group the series; each group is scored by one multivariate
    #: model (``vigil.grouping``). Empty: every series on its own.
    group_by: tuple[str, ...] = ()
    #: the smallest deviation that may alarm; None: ``detection.min_deviation``
    min_deviation: MinDeviation | None = None


def query_where(query: Query) -> str:
    """How messages name ``query``: ``refId A (query 'up')``."""
    return f"refId {query.ref_id} (query {query.expr!r})" if query.ref_id else f"query {query.expr!r}"


def check_model(value: object, where: str, shown: str | None = None) -> str:
    """``value`` if it names a model, else BadRequest (``shown``: how to quote a bad value)."""
    if not isinstance(value, str) or value not in MODELS:
        raise BadRequest(f"{where}: model must be one of {', '.join(MODELS)}; got {shown or repr(value)}",
                         code="unknown_model")
    return value


def check_sensitivity(value: object, where: str, shown: str | None = None) -> str:
    """``value`` if it is a sensitivity word, else BadRequest."""
    if not isinstance(value, str) or value not in SENSITIVITIES:
        raise BadRequest(f"{where}: sensitivity must be one of {', '.join(SENSITIVITIES)}; got {shown or repr(value)}",
                         code="bad_sensitivity")
    return value


def validate_query(query: Query, settings: Settings, where: str | None = None) -> Query:
    """``query`` if it can be scored, else BadRequest naming what is wrong (the one check every
    caller's query goes through: panels, Infinity, /prometheus, the worker, ``build_query``)."""
    where = where or query_where(query)
    check_model(query.model, where)
    check_sensitivity(query.sensitivity, where)
    if not query.expr.strip():
        raise BadRequest(f"refId {query.ref_id}: the query is empty: name a preset or write PromQL",
                         code="empty_query")
    if query.end_ms <= query.start_ms:
        raise BadRequest(f"{where}: the time range ends before it starts", code="bad_range")
    range_s = ms_to_s(query.end_ms - query.start_ms)
    if range_s > settings.server.max_range_s:
        raise BadRequest(f"{where}: the time range {format_duration(range_s)} is longer than the "
                         f"{format_duration(settings.server.max_range_s)} allowed (server.max_range)",
                         code="range_too_long")
    if not (query.step_s > 0 and math.isfinite(query.step_s)):
        raise BadRequest(f"{where}: step must be a positive duration; got {query.step_s!r}", code="bad_step")
    if isinstance(query.group_by, str) or not all(isinstance(n, str) and LABEL_NAME.match(n)
                                                  for n in query.group_by):
        raise BadRequest(f"{where}: group_by must be a list of label names such as ['instance']; "
                         f"got {query.group_by!r}", code="bad_group_by")
    if not 3600 <= query.train_window_s <= 90 * 86400:
        raise BadRequest(f"{where}: train_window must be between 1h and 90d; got "
                         f"{format_duration(query.train_window_s)}", code="bad_train_window")
    return query


def build_query(settings: Settings, **fields: Any) -> Query:
    """A validated :class:`Query` from its fields (BadRequest naming what is wrong)."""
    return validate_query(Query(**fields), settings)


class Source(Protocol):
    """Where series come from: ``PrometheusClient``, ``LokiClient``, or a test's fake."""

    def query_range(self, expr: str, start_s: float, end_s: float, step_s: float, *,
                    deadline_s: float | None = None) -> list[Series]: ...

    def series_count(self, expr: str, at_s: float, *, deadline_s: float | None = None) -> int | None:
        """How many series ``expr`` has at ``at_s``, asked cheaply before a range is fetched
        (None: the source cannot tell; the range query then says why)."""
        ...


@dataclass
class FetchedView:
    """What one query fetched and how: shared by the per-series and the per-group scoring."""

    query: Query
    expr: str
    source: str
    unit: str | None
    legend: str | None
    where: str
    client: Source
    step_s: float
    view_start_ms: int
    series: list[Series]
    notices: list[str]
    remaining_s: Callable[[], float]
    #: the step the answer is returned at: the scoring step, or the coarser one the query asked for
    view_step_s: float = 0.0
    #: where the episodes' warm-up starts: one context before the view (the points before it are
    #: only the context of the warm-up's scores)
    warmup_start_ms: int = 0


