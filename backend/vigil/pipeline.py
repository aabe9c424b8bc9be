"""The one way through: fetch series -> fit or reuse a detector -> score -> episodes.

Used by the HTTP service for every panel and by the worker for every job run. It never imports
Flask and never writes to Grafana or Alertmanager. A query's models are trained on the
``train_window`` before the start of the refit slot the query *ends* in (so every view of the same
moment uses the same model), and every point is scored at ``detection.score_step`` from the
detector's fixed context before it (so a point's verdict does not depend on the view). Training
history is fetched once per query at a bounded resolution, and models are cached per series so
that a dashboard refresh does not retrain. A query with ``group_by`` is scored per group of series by one
multivariate model instead (``vigil.grouping``), on the same fetched view and training plan.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time as _clock
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping

import numpy as np

from .config import LABEL_NAME, MODELS, SENSITIVITIES, ExcludeWindow, Settings
from .detectors import CONTEXT_S, Detector, Scores, fit_detector, is_learned
from .emptiness import why_empty
from .episodes import Episode, find_episodes, quiet_points_for
from .errors import BadRequest, VigilError
from .explain import explain
from .model_cache import ModelCache
from .presets import resolve
from .prometheus import LokiClient, PrometheusClient
from .promql import Matcher, inject_matchers
from .series import Series, series_key, series_name
from .units import MinDeviation, format_duration, ms_to_s, parse_min_deviation

if TYPE_CHECKING:
    from .grouping import ScoredGroup

__all__ = ["Query", "ScoredSeries", "DetectionResult", "FetchedView", "Detection", "exclude_windows", "downsample"]

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
    #: seconds of learned-model fitting one call may spend; past it, series are scored by the
    #: baseline and their models finish in the background (panels). None: no limit (the worker).
    fit_budget_s: float | None = None
    #: label names whose values group the series; each group is scored by one multivariate
    #: model (``vigil.grouping``). Empty: every series on its own.
    group_by: tuple[str, ...] = ()
    #: the smallest deviation that may alarm; None: ``detection.min_deviation``
    min_deviation: MinDeviation | None = None


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
    #: the key of the group this series was scored in (``group_by`` queries), else ""
    group: str = ""

    @property
    def key(self) -> str:
        return series_key(self.labels)


@dataclass
class DetectionResult:
    #: every series; in a ``group_by`` query, the members of ``groups`` (scored by their group)
    series: list[ScoredSeries]
    notices: list[str] = field(default_factory=list)
    expr: str = ""
    step_s: float = 0.0
    #: ``group_by`` queries only: the groups, which own the episodes
    groups: list["ScoredGroup"] = field(default_factory=list)


@dataclass
class FetchedView:
    """What one query fetched and how: shared by the per-series and the per-group scoring."""

    query: Query
    expr: str
    source: str
    unit: str | None
    legend: str | None
    where: str
    client: PrometheusClient
    step_s: float
    view_start_ms: int
    series: list[Series]
    notices: list[str]
    remaining_s: Callable[[], float]
    #: the step the answer is returned at: the scoring step, or the coarser one the query asked for
    view_step_s: float = 0.0


class Detection:
    """Scores queries. One per process; thread-safe (the cache locks, the rest is per call)."""

    def __init__(self, settings: Settings, prometheus: PrometheusClient, loki: LokiClient | None = None,
                 cache: ModelCache | None = None, on_fit: Callable[[str, float], None] | None = None):
        self.settings = settings
        self.prometheus = prometheus
        self.loki = loki
        # ``is None``, not ``or``: an empty cache is falsy (it has a length), and the worker's
        # own, larger cache was silently replaced by the service default.
        self.cache = cache if cache is not None else ModelCache(settings.detection.cache_size,
                                         max_bytes=settings.detection.cache_max_mb * 2**20)
        #: called as ``on_fit(model_name, duration_s)`` after every fit (metrics hook)
        self.on_fit = on_fit
        # Learned models that did not fit within a panel's budget finish here, one at a time.
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-fit")
        self._pending: set[tuple] = set()
        self._pending_lock = threading.Lock()

    def run(self, query: Query, *, deadline_s: float | None = None) -> DetectionResult:
        fetched = self.fetch_view(query, deadline_s=deadline_s)
        if not fetched.series:
            # An empty answer says why (unknown metric, or no history yet): a notice, not an error.
            # (Not for a shard's filtered view: there, another shard may have the series.)
            if query.series_filter is None:
                fetched.notices.append(why_empty(
                    fetched.expr, query.start_ms, query.end_ms, shown_as=query.expr.strip(),
                    client=fetched.client if fetched.source == "prometheus" else None))
            return DetectionResult([], fetched.notices, fetched.expr, fetched.step_s)
        if query.group_by:
            from .grouping import score_groups  # grouping builds on this module

            return score_groups(self, fetched)
        detectors = self.detectors(fetched, fetched.series)
        out = []
        for s in fetched.series:
            scored = self.score_series(fetched, s, detectors.get(series_key(s.labels)))
            if scored is not None:
                out.append(scored)
        return DetectionResult(out, fetched.notices, fetched.expr, fetched.step_s)

    def fetch_view(self, query: Query, *, deadline_s: float | None = None) -> FetchedView:
        """Validate ``query``, resolve its expression and step, and fetch what it views (plus the context)."""
        started = _clock.monotonic()
        budget_s = deadline_s if deadline_s is not None else self.settings.server.request_timeout_s

        def remaining_s() -> float:
            return max(1.0, budget_s - (_clock.monotonic() - started))

        expr, preset = resolve(query.expr)
        where = f"refId {query.ref_id} (query {query.expr!r})" if query.ref_id else f"query {query.expr!r}"
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
        # A point's verdict must not depend on how it is viewed. So every point is scored at one
        # step (detection.score_step, raised only to stay within the points cap), by the model of
        # the refit slot the query *ends* in, from the points of a fixed context before it (the
        # detector's trailing level and shift windows): the same score and decision for a
        # timestamp whether a panel shows 30 minutes or 7 days, and in the worker. Panels that
        # asked for a coarser step get the scores downsampled to it (score_series).
        context_ms = int(CONTEXT_S * 1000)
        step_s = self._step_s(query.end_ms - query.start_ms + context_ms,
                              max(self.settings.detection.score_step_s, 1.0))
        if step_s > self.settings.detection.score_step_s:
            notices.append(f"scored at a {format_duration(step_s)} step to stay within "
                           f"{self.settings.prometheus.max_points_per_series} points per series")
        step_ms = int(step_s * 1000)
        view_start_ms = -(-query.start_ms // step_ms) * step_ms  # on the step grid, like Grafana
        fetch_start_ms = view_start_ms - (-(-context_ms // step_ms)) * step_ms

        try:
            view = client.query_range(expr, ms_to_s(fetch_start_ms), ms_to_s(query.end_ms), step_s,
                                      deadline_s=remaining_s())
        except VigilError as exc:
            raise type(exc)(f"{where}: {exc.message}", code=exc.code) from None
        view = [s for s in view if s.times_ms.size and (query.series_filter is None or query.series_filter(s.labels))]
        max_series = query.max_series or self.settings.server.max_series
        if len(view) > max_series:
            raise BadRequest(f"{where} returned {len(view)} series; at most {max_series} "
                             "can be scored at once: aggregate it (sum by, topk) or filter it", code="too_many_series")
        return FetchedView(query, expr, source, unit, legend, where, client, step_s, view_start_ms, view, notices,
                           remaining_s, max(step_s, float(query.step_s)))

    def score_series(self, fetched: FetchedView, s: Series, detector: Detector | None) -> ScoredSeries | None:
        """One series scored by its detector (None: too little history), cut to the viewed range."""
        name = series_name(s.labels, fetched.legend)
        keep = s.times_ms >= fetched.view_start_ms
        if detector is None:
            nan = np.full(int(keep.sum()), np.nan)
            return ScoredSeries(s.labels, s.times_ms[keep], s.values[keep], Scores(nan, nan, nan, nan),
                                np.zeros(nan.size, np.int8), [], "none (too little history)", fetched.unit, name)
        scores = detector.score(s.times_ms, s.values)
        is_anomaly, episodes = find_episodes(s.times_ms, s.values, scores, quiet_points=quiet_points_for(fetched.step_s))
        # Only what was asked for is returned; an episode that began in the context keeps its start.
        if not keep.any():
            return None
        episodes = [e._replace(reason=explain(e, detector, unit=fetched.unit, series=name)) for e in episodes
                    if e.end_ms is None or e.end_ms >= fetched.view_start_ms]
        times, values, cut, flags = s.times_ms[keep], s.values[keep], Scores(*(a[keep] for a in scores)), is_anomaly[keep]
        if fetched.view_step_s > fetched.step_s:
            times, values, cut, flags = downsample(times, values, cut, flags, int(fetched.view_step_s * 1000))
        return ScoredSeries(s.labels, times, values, cut, flags, episodes, detector.name, fetched.unit, name)

    def detectors(self, fetched: FetchedView, series: list[Series]) -> dict[str, Detector]:
        """Fitted (or cached) per-series detectors for ``series`` of ``fetched``, keyed by series key."""
        return self._detectors(fetched.query, fetched.source, fetched.expr, fetched.client, series, fetched.step_s,
                               fetched.where, fetched.remaining_s, fetched.notices)

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
        if isinstance(query.group_by, str) or not all(isinstance(n, str) and LABEL_NAME.match(n)
                                                      for n in query.group_by):
            raise BadRequest(f"{where}: group_by must be a list of label names such as ['instance']; "
                             f"got {query.group_by!r}", code="bad_group_by")
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

    def _step_s(self, range_ms: int, wanted_step_s: float) -> float:
        floor_s = ms_to_s(range_ms) / max(self.settings.prometheus.max_points_per_series - 1, 1)
        return float(max(1, math.ceil(max(wanted_step_s, floor_s))))

    def _detectors(self, query: Query, source: str, expr: str, client: PrometheusClient, view: list[Series],
                   step_s: float, where: str, remaining_s: Callable[[], float],
                   notices: list[str]) -> dict[str, Detector]:
        plan = _TrainingPlan.for_query(query, self.settings, step_s)
        floor = self.min_deviation(query)
        # The score's meaning depends on the scoring step (false alarms per week), so it is keyed.
        common = (source, expr, query.model, query.sensitivity, query.train_window_s, plan.train_step_s, step_s,
                  query.exclude, floor)
        panel = query.fit_budget_s is not None
        found: dict[str, Detector] = {}
        missing: list[Series] = []
        stale: list[str] = []
        for s in view:
            key = series_key(s.labels)
            model = self.cache.get((*common, key, plan.slot))
            if model is None and panel:
                # A panel may use the model of an earlier refit slot (never a later one: that would
                # have been trained on what is being viewed) while the new one trains.
                latest = self.cache.get((*common, key, "latest"), count=False)
                if latest is not None and plan.slot - self._max_stale_slots <= latest < plan.slot:
                    model = self.cache.get((*common, key, latest), count=False)
                    if model is not None:
                        stale.append(key)
            if model is None:
                missing.append(s)
            else:
                found[key] = model
        if stale:
            self._refit_later(query, client, expr, common, plan, step_s, stale)
        if not missing:
            return found
        history, recent = self._fetch_training(query, client, expr, plan, step_s, where, remaining_s)
        cold = deferred = 0
        fit_started = _clock.monotonic()
        for s in missing:
            key = series_key(s.labels)
            times, values, recent_pair = _training_arrays(history.get(key), recent.get(key), query.exclude)
            t0 = _clock.monotonic()
            if np.isfinite(values).sum() >= self.settings.detection.min_train_points:
                over_budget = (query.fit_budget_s is not None and is_learned(query.model)
                               and _clock.monotonic() - fit_started > query.fit_budget_s)
                if over_budget:
                    # Answer now with the baseline; the learned model is cached for the next refresh.
                    model = fit_detector("seasonal", times, values, sensitivity=query.sensitivity, step_s=step_s,
                                         min_deviation=floor)
                    model.name = f"seasonal (while {query.model} trains)"
                    self._refit_later(query, client, expr, common, plan, step_s, [key])
                    deferred += 1
                else:
                    model = fit_detector(query.model, times, values, sensitivity=query.sensitivity, step_s=step_s,
                                         recent=recent_pair, previous=self._previous(common, key, plan.slot),
                                         min_deviation=floor)
                    self.store_model(common, key, plan.slot, model)
            else:
                # Cold start: a series with little history is scored by the baseline fitted on
                # the first part of what is viewed (not cached: it depends on the view).
                head = max(self.settings.detection.min_train_points, s.values.size // 4)
                if np.isfinite(s.values[:head]).sum() < min(self.settings.detection.min_train_points, 8):
                    continue
                model = fit_detector("seasonal", s.times_ms[:head], s.values[:head],
                                     sensitivity=query.sensitivity, step_s=step_s, min_deviation=floor)
                model.name = "seasonal (cold start: little history)"
                cold += 1
            if self.on_fit is not None:
                self.on_fit(model.name.split(" ")[0], _clock.monotonic() - t0)
            found[key] = model
        if deferred:
            notices.append(f"{deferred} series are scored by the seasonal baseline while their {query.model} models "
                           "train in the background: refresh in a few seconds")
        if cold:
            notices.append(f"{cold} series had less than {self.settings.detection.min_train_points} points of history "
                           "before the range and are scored by the seasonal baseline fitted on the start of the range")
        if len(found) < len(view):
            notices.append(f"{len(view) - len(found)} series have too little data to score")
        return found

    def min_deviation(self, query: Query) -> MinDeviation:
        """The query's own smallest alarming deviation, else the configured default."""
        if query.min_deviation is not None:
            return query.min_deviation
        return parse_min_deviation(self.settings.detection.min_deviation)

    #: how many refit slots old a model a panel may use while its replacement trains
    _max_stale_slots = 24

    def _previous(self, common: tuple, key: str, slot: int) -> Detector | None:
        """The model of the latest earlier slot: a learned refit reuses its estimator (cheap refits)."""
        latest = self.cache.get((*common, key, "latest"), count=False)
        if latest is None or latest >= slot:
            return None
        return self.cache.get((*common, key, latest), count=False)

    def store_model(self, common: tuple, key: Hashable, slot: int, model: Any) -> None:
        """Cache ``model`` for ``slot``; the newest slot's model replaces older ones of the same key."""
        self.cache.put((*common, key, slot), model)
        latest = self.cache.get((*common, key, "latest"), count=False)
        if latest is None or latest < slot:
            self.cache.put((*common, key, "latest"), slot)
            if latest is not None:
                # The newest slot's model is all the next refits and panels need; an older one
                # is refitted on demand if someone scrolls back.
                self.cache.discard((*common, key, latest))

    def _fetch_training(self, query: Query, client: PrometheusClient, expr: str, plan: "_TrainingPlan",
                        step_s: float, where: str, remaining_s: Callable[[], float] | None = None,
                        *, recent: bool | None = None) -> tuple[dict[str, Series], dict[str, Series]]:
        """History before the range at the coarse step, and (for learned models) the latest part
        of it at the scoring step: learned patterns are step-dependent."""
        def budget() -> float | None:
            return remaining_s() if remaining_s is not None else None

        want_recent = is_learned(query.model) if recent is None else recent
        try:
            history = client.query_range(expr, ms_to_s(plan.start_ms), ms_to_s(plan.end_ms), plan.train_step_s,
                                         deadline_s=budget())
            latest: list[Series] = []
            if want_recent and plan.train_step_s > step_s:
                latest = client.query_range(expr, ms_to_s(plan.recent_start_ms(step_s)), ms_to_s(plan.end_ms),
                                            step_s, deadline_s=budget())
        except VigilError as exc:
            raise type(exc)(f"{where}: fetching training history: {exc.message}", code=exc.code) from None
        return ({series_key(h.labels): h for h in history}, {series_key(r.labels): r for r in latest})

    def training_plan(self, fetched: FetchedView, *, before_view: bool = False) -> "_TrainingPlan":
        """Where the models of ``fetched`` train: ``train_window`` before the start of the refit
        slot the query ends in, or (``before_view``) the one it starts in."""
        return _TrainingPlan.for_query(fetched.query, self.settings, fetched.step_s, before_view=before_view)

    def fetch_training(self, fetched: FetchedView, plan: "_TrainingPlan", *, recent: bool
                       ) -> tuple[dict[str, Series], dict[str, Series]]:
        """The history of ``plan`` by series key (and, with ``recent``, its latest part at the scoring step)."""
        return self._fetch_training(fetched.query, fetched.client, fetched.expr, plan, fetched.step_s,
                                    fetched.where, fetched.remaining_s, recent=recent)

    def _refit_later(self, query: Query, client: PrometheusClient, expr: str, common: tuple,
                     plan: "_TrainingPlan", step_s: float, keys: list[str]) -> None:
        """Fit ``keys`` for the current slot in the background (one worker thread per process)."""
        with self._pending_lock:
            todo = [k for k in keys if (*common, k, plan.slot) not in self._pending]
            self._pending.update((*common, k, plan.slot) for k in todo)
        if not todo:
            return

        def work() -> None:
            try:
                history, recent = self._fetch_training(query, client, expr, plan, step_s, f"background fit of {expr!r}")
                for key in todo:
                    times, values, recent_pair = _training_arrays(history.get(key), recent.get(key), query.exclude)
                    if np.isfinite(values).sum() < self.settings.detection.min_train_points:
                        continue
                    t0 = _clock.monotonic()
                    model = fit_detector(query.model, times, values, sensitivity=query.sensitivity, step_s=step_s,
                                         recent=recent_pair, previous=self._previous(common, key, plan.slot),
                                         min_deviation=self.min_deviation(query))
                    self.store_model(common, key, plan.slot, model)
                    if self.on_fit is not None:
                        self.on_fit(model.name.split(" ")[0], _clock.monotonic() - t0)
            except Exception:  # noqa: BLE001 - the next request retries
                log.exception("background fit failed", extra={"query": query.expr})
            finally:
                with self._pending_lock:
                    self._pending.difference_update((*common, k, plan.slot) for k in todo)

        self._background.submit(work)


@dataclass(frozen=True)
class _TrainingPlan:
    """Where a query's training history lies: ``train_window`` before the start of its refit slot."""

    slot: int
    start_ms: int
    end_ms: int
    train_step_s: float
    max_points: int

    @classmethod
    def for_query(cls, query: Query, settings: Settings, step_s: float, *,
                  before_view: bool = False) -> "_TrainingPlan":
        det = settings.detection
        refit_ms = int(det.refit_every_s * 1000)
        # The slot the query ends in: every view of the same moment uses the same model. Group
        # models (no incident search of their own) train before the view instead.
        slot = (query.start_ms if before_view else query.end_ms) // refit_ms
        end_ms = slot * refit_ms
        return cls(slot=slot, start_ms=end_ms - int(query.train_window_s * 1000), end_ms=end_ms,
                   train_step_s=float(max(step_s, math.ceil(query.train_window_s / det.max_train_points))),
                   max_points=det.max_train_points)

    def recent_start_ms(self, step_s: float) -> int:
        return max(self.start_ms, self.end_ms - int(self.max_points * step_s * 1000))


def downsample(times_ms: np.ndarray, values: np.ndarray, scores: Scores, is_anomaly: np.ndarray,
               step_ms: int) -> tuple[np.ndarray, np.ndarray, Scores, np.ndarray]:
    """Scores at a coarser step for a panel that asked for one: each bucket ``(t - step, t]`` of the
    step grid is shown by its most anomalous point (so no anomaly is hidden by the panel's
    resolution), at the bucket's grid time, and is anomalous if any of its points is."""
    if times_ms.size == 0:
        return times_ms, values, scores, is_anomaly
    bucket = -(-times_ms // step_ms)
    starts = np.flatnonzero(np.concatenate([[True], bucket[1:] != bucket[:-1]]))
    rank = np.where(np.isfinite(scores.anomaly_score), scores.anomaly_score, -np.inf)
    # The last point of a bucket wins ties (what Prometheus itself would show at the grid time).
    pick = np.array([a + int(np.flatnonzero(rank[a:b] == rank[a:b].max())[-1])
                     for a, b in zip(starts, np.append(starts[1:], times_ms.size))], dtype=np.int64)
    flags = np.maximum.reduceat(is_anomaly, starts)
    return (bucket[starts] * step_ms, values[pick], Scores(*(np.asarray(a)[pick] for a in scores)), flags)


def _training_arrays(history: Series | None, recent: Series | None, exclude: tuple[ExcludeWindow, ...]):
    if history is None:
        return np.empty(0, np.int64), np.empty(0), None
    recent_pair = (recent.times_ms, exclude_windows(recent, exclude)) if recent is not None else None
    return history.times_ms, exclude_windows(history, exclude), recent_pair


def exclude_windows(series: Series, windows: tuple[ExcludeWindow, ...]) -> np.ndarray:
    values = series.values
    if not windows:
        return values
    values = values.copy()
    for w in windows:
        values[(series.times_ms >= w.start_ms) & (series.times_ms <= w.end_ms)] = np.nan
    return values
