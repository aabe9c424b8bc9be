"""The one way through: fetch series -> fit or reuse a detector -> score -> episodes.

Used by the HTTP service for every panel and by the worker for every job run. It never imports
Flask and never writes to Grafana or Alertmanager. A query's models are trained on the
``train_window`` before the start of the refit slot the query *ends* in (so every view of the same
moment uses the same model; ``vigil.model_store`` owns the plan, the keys and reuse), and every
point is scored at ``detection.score_step`` from the detector's fixed context before it (so a
point's verdict does not depend on the view). Points already scored by the same model are taken
from the score store (``vigil.score_store``): a refresh scores only the points that are new, and
fetches only them (``vigil.view_cache``).
Identical fetches and fits asked for at once by several threads run once (single-flight).
A query with ``group_by`` is scored per group of series by one multivariate model instead
(``vigil.grouping``), on the same fetched view and training plan.

Series are fetched through a :class:`Source` (``query_range``): a Prometheus or Loki client in
production, anything with that method in unit tests.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time as _clock
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, ContextManager

import numpy as np

from vigil.config import ExcludeWindow, Settings
from vigil.detection.detectors import CONTEXT_S, Detector, Scores, fit_detector, is_learned
from vigil.sources.emptiness import why_empty
from vigil.detection.episodes import find_episodes, quiet_points_for
from vigil.errors import BadRequest, VigilError
from vigil.detection.explain import explain
from vigil.pipeline.grouping import score_groups
from vigil.pipeline.model_cache import ModelCache
from vigil.pipeline.model_store import FitState, FittedModel, ModelKey, ModelStore, TrainingPlan
from vigil.sources.presets import resolve
from vigil.sources.promql import inject_matchers
from vigil.pipeline.query import FetchedView, Query, Source, build_query, query_where, validate_query
from vigil.pipeline.score_store import ScoreStore
from vigil.pipeline.scored import DetectionResult, ScoredSeries, downsample, exclude_windows
from vigil.series import Series, series_key, series_name
from vigil.pipeline.singleflight import SingleFlight
from vigil.units import MinDeviation, format_duration, ms_to_s, parse_min_deviation
from vigil.pipeline.view_cache import ViewCache

__all__ = ["Query", "ScoredSeries", "DetectionResult", "FetchedView", "Detection", "Source", "build_query",
           "exclude_windows", "downsample"]

log = logging.getLogger("vigil.pipeline")

_COUNTER_SELECTOR = re.compile(r"^\s*[a-zA-Z_:][a-zA-Z0-9_:]*_(total|count|sum|bucket)\s*(\{[^}]*\})?\s*$")


class Detection:
    """Scores queries. One per process; thread-safe (the stores lock, the rest is per call)."""

    def __init__(self, settings: Settings, prometheus: Source, loki: Source | None = None,
                 cache: ModelCache | None = None, on_fit: Callable[[str, float], None] | None = None,
                 scores: ScoreStore | None = None, heavy_work: Callable[[], ContextManager[None]] | None = None):
        self.settings = settings
        #: held around training (history fetched, models fitted): the service bounds how many of
        #: its scoring slots train at once (``vigil.http.admission``); nothing elsewhere
        self.heavy_work = heavy_work or contextlib.nullcontext
        self.prometheus = prometheus
        self.loki = loki
        # ``is None``, not ``or``: an empty cache is falsy (it has a length), and the worker's
        # own, larger cache was silently replaced by the service default.
        self.cache = cache if cache is not None else ModelCache(settings.detection.cache_size,
                                         max_bytes=settings.detection.cache_max_mb * 2**20)
        self.models = ModelStore(self.cache)
        # The scores and the fetched views get a quarter and an eighth of the models' memory
        # again (the worker's larger model cache gives them more too).
        self.scores = scores if scores is not None else ScoreStore(
            max_bytes=self.cache.max_bytes // 4,
            max_points=settings.prometheus.max_points_per_series + int(CONTEXT_S // max(settings.detection.score_step_s, 1)))
        self.views = ViewCache(max_bytes=self.cache.max_bytes // 8)
        #: called as ``on_fit(model_name, duration_s)`` after every fit (metrics hook)
        self.on_fit = on_fit
        # Identical Prometheus fetches asked for at once (eight viewers of one dashboard) run once.
        self._fetches = SingleFlight()
        # Learned models that did not fit within a panel's budget finish here, one at a time.
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-fit")
        self._pending: set[ModelKey] = set()
        self._pending_lock = threading.Lock()

    def run(self, query: Query, *, deadline_s: float | None = None) -> DetectionResult:
        with contextlib.ExitStack() as held:
            return self._run(query, deadline_s, held)

    def _run(self, query: Query, deadline_s: float | None, held: contextlib.ExitStack) -> DetectionResult:
        fetched = self.fetch_view(query, deadline_s=deadline_s, held=held)
        if not fetched.series:
            # An empty answer says why (unknown metric, or no history yet): a notice, not an error.
            # (Not for a shard's filtered view: there, another shard may have the series.)
            if query.series_filter is None:
                fetched.notices.append(why_empty(
                    fetched.expr, query.start_ms, query.end_ms, shown_as=query.expr.strip(),
                    client=fetched.client if fetched.source == "prometheus" else None))  # type: ignore[arg-type]
            return DetectionResult([], fetched.notices, fetched.expr, fetched.step_s)
        if query.group_by:
            return score_groups(self, fetched)
        models = self.detectors(fetched, fetched.series)
        out = []
        for s in fetched.series:
            scored = self.score_series(fetched, s, models.get(series_key(s.labels)))
            if scored is not None:
                out.append(scored)
        return DetectionResult(out, fetched.notices, fetched.expr, fetched.step_s)

    def fetch_view(self, query: Query, *, deadline_s: float | None = None,
                   held: contextlib.ExitStack | None = None) -> FetchedView:
        """Validate ``query``, resolve its expression and step, and fetch what it views (plus the
        context). A view never fetched before (a panel just opened: it fetches its whole range,
        scores every point, most often trains) enters ``heavy_work`` into ``held`` first."""
        started = _clock.monotonic()
        budget_s = deadline_s if deadline_s is not None else self.settings.server.request_timeout_s

        def remaining_s() -> float:
            return max(1.0, budget_s - (_clock.monotonic() - started))

        expr, preset = resolve(query.expr)
        where = query_where(query)
        source = preset.source if preset else query.source
        unit = preset.unit if preset else None
        legend = query.legend or (preset.legend if preset else None)
        validate_query(query, self.settings, where)
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
        # Two contexts are fetched before the view: the first gives the points of the second
        # their whole context, and the second is the episodes' warm-up (hysteresis is causal).
        # So every point the answer depends on is scored from its whole context, and is kept in
        # the score store for the next refresh, whose warm-up is then already scored.
        context_ms = int(CONTEXT_S * 1000)
        step_s = self._step_s(query.end_ms - query.start_ms + 2 * context_ms,
                              max(self.settings.detection.score_step_s, 1.0))
        if step_s > self.settings.detection.score_step_s:
            notices.append(f"scored at a {format_duration(step_s)} step to stay within "
                           f"{self.settings.prometheus.max_points_per_series} points per series")
        step_ms = int(step_s * 1000)
        view_start_ms = -(-query.start_ms // step_ms) * step_ms  # on the step grid, like Grafana
        warmup_start_ms = view_start_ms - (-(-context_ms // step_ms)) * step_ms
        fetch_start_ms = warmup_start_ms - (-(-context_ms // step_ms)) * step_ms

        max_series = query.max_series or self.settings.server.max_series
        first_fetch = not self.views.knows((source, expr, step_s))
        if first_fetch and held is not None:
            held.enter_context(self.heavy_work())
        if first_fetch and query.series_filter is None:
            # Counted at one instant first: a query matching far too many series costs Prometheus
            # one evaluation step to refuse, not its whole range. (Not a shard's query: the limit
            # applies to the series the shard keeps.)
            try:
                count = self._fetches.do(("count", source, expr, query.end_ms), lambda: client.series_count(
                    expr, ms_to_s(query.end_ms), deadline_s=remaining_s()))
            except VigilError as exc:
                raise type(exc)(f"{where}: {exc.message}", code=exc.code) from None
            if count is not None and count > max_series:
                raise BadRequest(f"{where} has {count} series (counted at its end, before fetching the range); at "
                                 f"most {max_series} can be scored at once: aggregate it (sum by, topk) or filter it",
                                 code="too_many_series")
        try:
            # A refresh asks Prometheus only for what is new since the last fetch of this view.
            view = self.views.fetch((source, expr, step_s), fetch_start_ms, query.end_ms, step_ms,
                                    lambda a_ms, b_ms: self.fetch(client, source, expr, a_ms, b_ms, step_s,
                                                                  remaining_s()))
        except VigilError as exc:
            raise type(exc)(f"{where}: {exc.message}", code=exc.code) from None
        view = [s for s in view if s.times_ms.size and (query.series_filter is None or query.series_filter(s.labels))]
        if len(view) > max_series:
            raise BadRequest(f"{where} returned {len(view)} series; at most {max_series} "
                             "can be scored at once: aggregate it (sum by, topk) or filter it", code="too_many_series")
        return FetchedView(query, expr, source, unit, legend, where, client, step_s, view_start_ms, view, notices,
                           remaining_s, max(step_s, float(query.step_s)), warmup_start_ms)

    def fetch(self, client: Source, source: str, expr: str, start_ms: int, end_ms: int, step_s: float,
              deadline_s: float | None) -> list[Series]:
        """``client.query_range``, once for all the threads that ask for the same at the same time."""
        return self._fetches.do((source, expr, start_ms, end_ms, step_s), lambda: client.query_range(
            expr, ms_to_s(start_ms), ms_to_s(end_ms), step_s, deadline_s=deadline_s))

    def score_series(self, fetched: FetchedView, s: Series, fitted: FittedModel | None) -> ScoredSeries | None:
        """One series scored by its model (None: too little history), cut to the viewed range."""
        name = series_name(s.labels, fetched.legend)
        keep = s.times_ms >= fetched.view_start_ms
        if fitted is None:
            nan = np.full(int(keep.sum()), np.nan)
            return ScoredSeries(s.labels, s.times_ms[keep], s.values[keep], Scores(nan, nan, nan, nan),
                                np.zeros(nan.size, np.int8), [], "none (too little history)", fetched.unit, name)
        if not keep.any():
            return None
        detector = fitted.detector
        if fitted.key is None:  # scored from the view itself (cold start): nothing to keep
            scores = detector.score(s.times_ms, s.values)
        else:
            scores = self.scores.score((fitted.key, series_key(s.labels), fetched.step_s), detector.score,
                                       s.times_ms, s.values, context_ms=int(CONTEXT_S * 1000),
                                       from_ms=fetched.warmup_start_ms)
        # Episodes are decided from the warm-up on: the points before it are context only.
        warm = s.times_ms >= fetched.warmup_start_ms
        s, scores, keep = Series(s.labels, s.times_ms[warm], s.values[warm]), Scores(*(a[warm] for a in scores)), keep[warm]
        is_anomaly, episodes = find_episodes(s.times_ms, s.values, scores, quiet_points=quiet_points_for(fetched.step_s))
        # Only what was asked for is returned; an episode that began in the context keeps its start.
        episodes = [e._replace(reason=explain(e, detector, unit=fetched.unit, series=name)) for e in episodes
                    if e.end_ms is None or e.end_ms >= fetched.view_start_ms]
        times, values, cut, flags = s.times_ms[keep], s.values[keep], Scores(*(a[keep] for a in scores)), is_anomaly[keep]
        if fetched.view_step_s > fetched.step_s:
            times, values, cut, flags = downsample(times, values, cut, flags, int(fetched.view_step_s * 1000))
        return ScoredSeries(s.labels, times, values, cut, flags, episodes, fitted.label, fetched.unit, name)

    # -- models ------------------------------------------------------------------------------

    def training_plan(self, fetched: FetchedView, *, before_view: bool = False) -> TrainingPlan:
        """Where the models of ``fetched`` train: ``train_window`` before the start of the refit
        slot the query ends in, or (``before_view``) the one it starts in (group models)."""
        det = self.settings.detection
        query = fetched.query
        return TrainingPlan.at(query.start_ms if before_view else query.end_ms, train_window_s=query.train_window_s,
                               step_s=fetched.step_s, refit_every_s=det.refit_every_s,
                               max_train_points=det.max_train_points)

    def model_params(self, fetched: FetchedView, plan: TrainingPlan, *, model: str | None = None) -> tuple:
        """What a per-series model (the query's, or ``model``) depends on besides its series and
        slot (the score's meaning depends on the scoring step: false alarms per week, so it is in)."""
        query = fetched.query
        return (fetched.source, fetched.expr, model or query.model, query.sensitivity, query.train_window_s,
                plan.train_step_s, fetched.step_s, query.exclude, self.min_deviation(query))

    def detectors(self, fetched: FetchedView, series: list[Series]) -> dict[str, FittedModel]:
        """Fitted (or stored) per-series models for ``series`` of ``fetched``, keyed by series key."""
        query = fetched.query
        plan = self.training_plan(fetched)
        params = self.model_params(fetched, plan)
        panel = query.fit_budget_s is not None
        found: dict[str, FittedModel] = {}
        missing: list[Series] = []
        stale: list[str] = []
        for s in series:
            name = series_key(s.labels)
            key = ModelKey(params, name, plan.slot)
            model = self.models.get(key)
            if model is not None:
                found[name] = FittedModel(model, FitState.FITTED, query.model, key)
                continue
            old = self.models.stale(key) if panel else None
            if old is not None:
                # A panel may use the model of an earlier refit slot (never a later one: that would
                # have been trained on what is being viewed) while the new one trains.
                found[name] = FittedModel(old[0], FitState.PREVIOUS_SLOT, query.model, old[1])
                stale.append(name)
            else:
                missing.append(s)
        if stale:
            self._refit_later(fetched, plan, params, stale)
        if not missing:
            return found
        with self.heavy_work(), self.models.training(params, plan.slot):
            self._fit_missing(fetched, plan, params, series, missing, found)
        return found

    def _fit_missing(self, fetched: FetchedView, plan: TrainingPlan, params: tuple, series: list[Series],
                     missing: list[Series], found: dict[str, FittedModel]) -> None:
        query = fetched.query
        # The baseline that answers for a learned model while it trains is the seasonal model of
        # the same series and parameters (what a ``seasonal`` panel uses): stored, so refreshes
        # during the training neither refit nor rescore it.
        interim = self.model_params(fetched, plan, model="seasonal")
        learned_panel = query.fit_budget_s is not None and is_learned(query.model)
        # An identical query may have fitted them while this one waited for the training lock;
        # a model training in the background answers by its stored baseline meanwhile.
        still = []
        deferred: list[str] = []
        for s in missing:
            name = series_key(s.labels)
            key = ModelKey(params, name, plan.slot)
            model = self.models.get(key, count=False)
            baseline = (self.models.get(ModelKey(interim, name, plan.slot), count=False)
                        if learned_panel and key in self._pending else None)
            if model is not None:
                found[name] = FittedModel(model, FitState.FITTED, query.model, key)
            elif baseline is not None:
                found[name] = FittedModel(baseline, FitState.BASELINE_WHILE_TRAINING, query.model,
                                          ModelKey(interim, name, plan.slot))
                deferred.append(name)
            else:
                still.append(s)
        missing = still
        if not missing:
            self._deferred_notice(fetched, deferred)
            return
        history, recent = self.fetch_training(fetched, plan, recent=is_learned(query.model))
        floor = self.min_deviation(query)
        min_points = self.settings.detection.min_train_points
        cold = 0
        fit_started = _clock.monotonic()
        for s in missing:
            name = series_key(s.labels)
            key = ModelKey(params, name, plan.slot)
            times, values, recent_pair = _training_arrays(history.get(name), recent.get(name), query.exclude)
            if np.isfinite(values).sum() >= min_points:
                if learned_panel and _clock.monotonic() - fit_started > query.fit_budget_s:  # type: ignore[operator]
                    # Answer now with the baseline; the learned model trains in the background.
                    interim_key = ModelKey(interim, name, plan.slot)
                    baseline = self.models.fit_once(interim_key, lambda: self._timed_fit(
                        "seasonal", times, values, query, fetched.step_s, floor))
                    if baseline is not None:
                        found[name] = FittedModel(baseline, FitState.BASELINE_WHILE_TRAINING, query.model, interim_key)
                        deferred.append(name)
                    continue
                fitted = self.models.fit_once(key, lambda: self._timed_fit(
                    query.model, times, values, query, fetched.step_s, floor, recent=recent_pair,
                    previous=self.models.previous(key)))
                if fitted is not None:
                    found[name] = FittedModel(fitted, FitState.FITTED, query.model, key)
                continue
            # Cold start: a series with little history is scored by the baseline fitted on
            # the first part of what is viewed (not stored: it depends on the view).
            head = max(min_points, s.values.size // 4)
            if np.isfinite(s.values[:head]).sum() < min(min_points, 8):
                continue
            baseline = self._timed_fit("seasonal", s.times_ms[:head], s.values[:head], query, fetched.step_s, floor)
            found[name] = FittedModel(baseline, FitState.COLD_START, query.model)
            cold += 1
        if deferred:
            # One background job for all of them, handed the history already fetched.
            self._refit_later(fetched, plan, params, deferred, history=(history, recent))
        self._deferred_notice(fetched, deferred)
        if cold:
            fetched.notices.append(f"{cold} series had less than {min_points} points of history before the range and "
                                   "are scored by the seasonal baseline fitted on the start of the range")
        if len(found) < len(series):
            fetched.notices.append(f"{len(series) - len(found)} series have too little data to score")

    @staticmethod
    def _deferred_notice(fetched: FetchedView, deferred: list[str]) -> None:
        if deferred:
            fetched.notices.append(f"{len(deferred)} series are scored by the seasonal baseline while their "
                                   f"{fetched.query.model} models train in the background: refresh in a few seconds")

    def _timed_fit(self, model: str, times: np.ndarray, values: np.ndarray, query: Query, step_s: float,
                   floor: MinDeviation, **kw) -> Detector:
        t0 = _clock.monotonic()
        detector = fit_detector(model, times, values, sensitivity=query.sensitivity, step_s=step_s,
                                min_deviation=floor, **kw)
        if self.on_fit is not None:
            self.on_fit(type(detector).name, _clock.monotonic() - t0)
        return detector

    def min_deviation(self, query: Query) -> MinDeviation:
        """The query's own smallest alarming deviation, else the configured default."""
        if query.min_deviation is not None:
            return query.min_deviation
        return parse_min_deviation(self.settings.detection.min_deviation)

    def fetch_training(self, fetched: FetchedView, plan: TrainingPlan, *, recent: bool
                       ) -> tuple[dict[str, Series], dict[str, Series]]:
        """History before the range at the coarse step by series key, and (``recent``: learned
        models, whose patterns are step-dependent) its latest part at the scoring step."""
        try:
            history = self.fetch(fetched.client, fetched.source, fetched.expr, plan.start_ms, plan.end_ms,
                                 plan.train_step_s, fetched.remaining_s())
            latest: list[Series] = []
            if recent and plan.train_step_s > fetched.step_s:
                latest = self.fetch(fetched.client, fetched.source, fetched.expr, plan.recent_start_ms(fetched.step_s),
                                    plan.end_ms, fetched.step_s, fetched.remaining_s())
        except VigilError as exc:
            raise type(exc)(f"{fetched.where}: fetching training history: {exc.message}", code=exc.code) from None
        return ({series_key(h.labels): h for h in history}, {series_key(r.labels): r for r in latest})

    def _refit_later(self, fetched: FetchedView, plan: TrainingPlan, params: tuple, names: list[str], *,
                     history: tuple[dict[str, Series], dict[str, Series]] | None = None) -> None:
        """Fit ``keys`` for the current slot in the background (one thread per process; a key
        already being fitted, there or by a request, is fitted once)."""
        query = fetched.query
        background = FetchedView(**{**fetched.__dict__, "remaining_s": lambda: self.settings.server.request_timeout_s,
                                    "where": f"background fit of {fetched.expr!r}", "notices": []})

        with self._pending_lock:
            todo = [k for k in (ModelKey(params, n, plan.slot) for n in names) if k not in self._pending]
            self._pending.update(todo)
        if not todo:
            return

        def work() -> None:
            try:
                with self.heavy_work():
                    fit_all()
            except Exception:  # noqa: BLE001 - the next request retries
                log.exception("background fit failed", extra={"query": query.expr})
            finally:
                with self._pending_lock:
                    self._pending.difference_update(todo)

        def fit_all() -> None:
            past, recent = history or self.fetch_training(background, plan, recent=is_learned(query.model))
            floor = self.min_deviation(query)
            for key in todo:
                name = str(key.series)
                times, values, recent_pair = _training_arrays(past.get(name), recent.get(name), query.exclude)
                if np.isfinite(values).sum() < self.settings.detection.min_train_points:
                    continue
                self.models.fit_once(key, lambda: self._timed_fit(
                    query.model, times, values, query, fetched.step_s, floor, recent=recent_pair,
                    previous=self.models.previous(key)))

        self._background.submit(work)

    def _client(self, source: str, where: str) -> Source:
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



def _training_arrays(history: Series | None, recent: Series | None, exclude: tuple[ExcludeWindow, ...]):
    if history is None:
        return np.empty(0, np.int64), np.empty(0), None
    recent_pair = (recent.times_ms, exclude_windows(recent, exclude)) if recent is not None else None
    return history.times_ms, exclude_windows(history, exclude), recent_pair
