"""The one way through: fetch series -> fit or reuse a detector -> score -> episodes.

Used by the HTTP service for every panel and by the worker for every job run. It never imports
Flask and never writes to Grafana or Alertmanager. A query's models are trained on the history
*before* the viewed range (``train_window`` long, ending at the start of the current refit slot),
fetched once per query at a bounded resolution, and cached per series so that a dashboard
refresh does not retrain.
"""

from __future__ import annotations

import logging
import math
import re
import time as _clock
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from .config import MODELS, SENSITIVITIES, ExcludeWindow, Settings
from .detectors import Detector, Scores, fit_detector, is_learned
from .episodes import Episode, find_episodes, quiet_points_for
from .errors import BadRequest, VigilError
from .explain import explain
from .model_cache import ModelCache
from .presets import resolve
from .prometheus import LokiClient, PrometheusClient
from .promql import Matcher, inject_matchers
from .series import Series, series_key, series_name
from .units import format_duration, ms_to_s

__all__ = ["Query", "ScoredSeries", "DetectionResult", "Detection"]

log = logging.getLogger("vigil.pipeline")

_COUNTER_SELECTOR = re.compile(r"^\s*[a-zA-Z_:][a-zA-Z0-9_:]*_(total|count|sum|bucket)\s*(\{[^}]*\})?\s*$")


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


@dataclass
class ScoredSeries:
    labels: dict[str, str]
    times_ms: np.ndarray
    values: np.ndarray
    scores: Scores
    is_anomaly: np.ndarray
    episodes: list[Episode]
    model: str
    unit: str | None = None
    name: str = ""

    @property
    def key(self) -> str:
        return series_key(self.labels)


@dataclass
class DetectionResult:
    series: list[ScoredSeries]
    notices: list[str] = field(default_factory=list)
    expr: str = ""
    step_s: float = 0.0


class Detection:
    """Scores queries. One per process; thread-safe (the cache locks, the rest is per call)."""

    def __init__(self, settings: Settings, prometheus: PrometheusClient, loki: LokiClient | None = None,
                 cache: ModelCache | None = None, on_fit: Callable[[str, float], None] | None = None):
        self.settings = settings
        self.prometheus = prometheus
        self.loki = loki
        self.cache = cache or ModelCache(settings.detection.cache_size)
        #: called as ``on_fit(model_name, duration_s)`` after every fit (metrics hook)
        self.on_fit = on_fit

    def run(self, query: Query, *, deadline_s: float | None = None) -> DetectionResult:
        started = _clock.monotonic()
        budget_s = deadline_s if deadline_s is not None else self.settings.server.request_timeout_s

        def remaining_s() -> float:
            return max(1.0, budget_s - (_clock.monotonic() - started))

        expr, preset = resolve(query.expr)
        where = f"refId {query.ref_id} (query {query.expr!r})"
        source = preset.source if preset else query.source
        unit = preset.unit if preset else None
        legend = query.legend or (preset.legend if preset else None)
        self._validate(query, where)
        notices: list[str] = []
        if query.filters:
            if source == "prometheus":
                try:
                    expr = inject_matchers(expr, query.filters)
                except ValueError as exc:
                    raise BadRequest(f"{where}: an ad hoc filter must use {exc}", code="bad_filters") from None
            else:
                notices.append("ad hoc filters apply to Prometheus queries only; ignored for Loki")
        if _COUNTER_SELECTOR.match(expr):
            notices.append(f"{expr.strip()} looks like a raw counter: it only grows and resets on restarts; "
                           f"score rate({expr.strip()}[5m]) instead")
        client = self._client(source, where)
        step_s = self._step_s(query)
        if step_s > query.step_s:
            notices.append(f"step raised to {format_duration(step_s)} to stay within "
                           f"{self.settings.prometheus.max_points_per_series} points per series")

        try:
            view = client.query_range(expr, ms_to_s(query.start_ms), ms_to_s(query.end_ms), step_s,
                                      deadline_s=remaining_s())
        except VigilError as exc:
            raise type(exc)(f"{where}: {exc.message}") from None
        view = [s for s in view if s.times_ms.size and (query.series_filter is None or query.series_filter(s.labels))]
        max_series = query.max_series or self.settings.server.max_series
        if len(view) > max_series:
            raise BadRequest(f"{where} returned {len(view)} series; at most {max_series} "
                             "can be scored at once: aggregate it (sum by, topk) or filter it", code="too_many_series")
        if not view:
            return DetectionResult([], notices, expr, step_s)

        detectors = self._detectors(query, source, expr, client, view, step_s, where, remaining_s, notices)
        out = []
        quiet = quiet_points_for(step_s)
        for s in view:
            name = series_name(s.labels, legend)
            detector = detectors.get(series_key(s.labels))
            if detector is None:
                nan = np.full(s.values.size, np.nan)
                scores = Scores(nan, nan, nan, nan)
                out.append(ScoredSeries(s.labels, s.times_ms, s.values, scores, np.zeros(s.values.size, np.int8),
                                        [], "none (too little history)", unit, name))
                continue
            scores = detector.score(s.times_ms, s.values)
            is_anomaly, episodes = find_episodes(s.times_ms, s.values, scores, quiet_points=quiet)
            episodes = [e._replace(reason=explain(e, detector, unit=unit, series=name)) for e in episodes]
            out.append(ScoredSeries(s.labels, s.times_ms, s.values, scores, is_anomaly, episodes,
                                    detector.name, unit, name))
        return DetectionResult(out, notices, expr, step_s)

    # -- steps -------------------------------------------------------------------------------

    def _validate(self, query: Query, where: str) -> None:
        if query.model not in MODELS:
            raise BadRequest(f"{where}: model must be one of {', '.join(MODELS)}; got {query.model!r}",
                             code="unknown_model")
        if query.sensitivity not in SENSITIVITIES:
            raise BadRequest(f"{where}: sensitivity must be one of {', '.join(SENSITIVITIES)}; "
                             f"got {query.sensitivity!r}", code="bad_sensitivity")
        if not query.expr.strip():
            raise BadRequest(f"refId {query.ref_id}: the query is empty: name a preset or write PromQL",
                             code="empty_query")
        if query.end_ms <= query.start_ms:
            raise BadRequest(f"{where}: the time range ends before it starts", code="bad_range")
        range_s = ms_to_s(query.end_ms - query.start_ms)
        if range_s > self.settings.server.max_range_s:
            raise BadRequest(f"{where}: the time range {format_duration(range_s)} is longer than the "
                             f"{format_duration(self.settings.server.max_range_s)} allowed (server.max_range)",
                             code="range_too_long")
        if not (query.step_s > 0 and math.isfinite(query.step_s)):
            raise BadRequest(f"{where}: step must be a positive duration; got {query.step_s!r}", code="bad_step")
        if not 3600 <= query.train_window_s <= 90 * 86400:
            raise BadRequest(f"{where}: train_window must be between 1h and 90d; got "
                             f"{format_duration(query.train_window_s)}", code="bad_train_window")

    def _client(self, source: str, where: str) -> PrometheusClient:
        if source == "loki":
            if self.loki is None:
                raise BadRequest(f"{where}: Loki is not configured (loki.url)", code="loki_not_configured")
            return self.loki
        if source != "prometheus":
            raise BadRequest(f"{where}: source must be prometheus or loki; got {source!r}", code="bad_source")
        return self.prometheus

    def _step_s(self, query: Query) -> float:
        range_s = ms_to_s(query.end_ms - query.start_ms)
        floor_s = range_s / max(self.settings.prometheus.max_points_per_series - 1, 1)
        return float(max(1, math.ceil(max(query.step_s, floor_s))))

    def _detectors(self, query: Query, source: str, expr: str, client: PrometheusClient, view: list[Series],
                   step_s: float, where: str, remaining_s: Callable[[], float],
                   notices: list[str]) -> dict[str, Detector]:
        det = self.settings.detection
        refit_ms = int(det.refit_every_s * 1000)
        slot = query.start_ms // refit_ms
        train_end_ms = slot * refit_ms
        train_start_ms = train_end_ms - int(query.train_window_s * 1000)
        train_step_s = float(max(step_s, math.ceil(query.train_window_s / det.max_train_points)))
        # The score's meaning depends on the scoring step (false alarms per week), so it is keyed.
        common = (source, expr, query.model, query.sensitivity, query.train_window_s, train_step_s, step_s,
                  slot, query.exclude)
        found: dict[str, Detector] = {}
        missing: list[Series] = []
        for s in view:
            key = series_key(s.labels)
            model = self.cache.get((*common, key))
            if model is None:
                missing.append(s)
            else:
                found[key] = model
        if not missing:
            return found
        try:
            history = client.query_range(expr, ms_to_s(train_start_ms), ms_to_s(train_end_ms), train_step_s,
                                         deadline_s=remaining_s())
        except VigilError as exc:
            raise type(exc)(f"{where}: fetching training history: {exc.message}") from None
        by_key = {series_key(h.labels): h for h in history}
        recent_by_key: dict[str, Series] = {}
        if is_learned(query.model) and train_step_s > step_s:
            # Learned patterns are step-dependent: learn them at the scoring step, on the latest
            # history that fits the same point budget (one more bounded query).
            recent_start_ms = max(train_start_ms, train_end_ms - int(det.max_train_points * step_s * 1000))
            try:
                recent = client.query_range(expr, ms_to_s(recent_start_ms), ms_to_s(train_end_ms), step_s,
                                            deadline_s=remaining_s())
            except VigilError as exc:
                raise type(exc)(f"{where}: fetching recent history: {exc.message}") from None
            recent_by_key = {series_key(r.labels): r for r in recent}
        cold = 0
        for s in missing:
            key = series_key(s.labels)
            h = by_key.get(key)
            times, values = (h.times_ms, _exclude(h, query.exclude)) if h is not None else (np.empty(0, np.int64), np.empty(0))
            t0 = _clock.monotonic()
            if np.isfinite(values).sum() >= det.min_train_points:
                r = recent_by_key.get(key)
                model = fit_detector(query.model, times, values, sensitivity=query.sensitivity, step_s=step_s,
                                     recent=(r.times_ms, _exclude(r, query.exclude)) if r is not None else None)
                self.cache.put((*common, key), model)
            else:
                # Cold start: a series with little history is scored by the baseline fitted on
                # the first part of what is viewed (not cached: it depends on the view).
                head = max(det.min_train_points, s.values.size // 4)
                if np.isfinite(s.values[:head]).sum() < min(det.min_train_points, 8):
                    continue
                model = fit_detector("seasonal", s.times_ms[:head], s.values[:head],
                                     sensitivity=query.sensitivity, step_s=step_s)
                model.name = "seasonal (cold start: little history)"
                cold += 1
            if self.on_fit is not None:
                self.on_fit(model.name.split(" ")[0], _clock.monotonic() - t0)
            found[key] = model
        if cold:
            notices.append(f"{cold} series had less than {det.min_train_points} points of history before the range "
                           "and are scored by the seasonal baseline fitted on the start of the range")
        if len(found) < len(view):
            notices.append(f"{len(view) - len(found)} series have too little data to score")
        return found


def _exclude(series: Series, windows: tuple[ExcludeWindow, ...]) -> np.ndarray:
    values = series.values
    if not windows:
        return values
    values = values.copy()
    for w in windows:
        values[(series.times_ms >= w.start_ms) & (series.times_ms <= w.end_ms)] = np.nan
    return values
