"""A query's series scored in groups: one multivariate model (``vigil.multivariate``) per group.

``group_by`` (label names) splits what a query returns by those labels' values, as PromQL's
``by`` does: every series with the same ``instance`` is one group, a series without one of the
labels has it as ``""``. Each group is fitted as one :class:`~vigil.multivariate.GroupDetector` on
the training plan the per-series models use (``train_window`` before the refit slot: the seasons
from the coarse history, the combinations from the recent history at the scoring step) and cached
like them, keyed by the query, the group's key and its member set, so a new member refits. The
members come from one range query, so they share its step grid; a missing point is NaN.

Each member keeps its own expected value and band; the score, ``is_anomaly``, the episodes (whose
reasons name the driving series) and the per-member contributions belong to the group. A group
of one series has no combination to judge: it is scored by that series' own model (the query's
``model``), its one member contributing everything. A group of more than
:data:`MAX_GROUP_SERIES` is refused: the forest and the reasons stop meaning much, and the
contributions cost one forest pass per member.

Used by ``Detection.run`` for ``group_by`` queries (so panels and the worker share it). Must not:
import Flask, fetch other than through ``Detection``, or write anywhere.
"""

from __future__ import annotations

import time as _clock
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from vigil.detection.detectors import Scores
from vigil.detection.episodes import Episode
from vigil.errors import BadRequest
from vigil.detection.multivariate import GroupDetector, group_episodes
from vigil.pipeline.model_store import ModelKey, TrainingPlan
from vigil.pipeline.query import FetchedView
from vigil.pipeline.scored import DetectionResult, ScoredSeries, exclude_windows
from vigil.series import Series, series_key, series_name

if TYPE_CHECKING:
    from vigil.pipeline.core import Detection

__all__ = ["MAX_GROUP_SERIES", "GROUP_MODEL", "ScoredGroup", "group_key", "group_labels", "member_names",
           "score_groups"]

#: most series one group may hold
MAX_GROUP_SERIES = 32
#: the model name a group's members carry
GROUP_MODEL = GroupDetector.name


@dataclass
class ScoredGroup:
    """One group of one query: its members, the group's score and episodes, and who drove them."""

    labels: dict[str, str]          # the ``group_by`` labels and their values
    times_ms: np.ndarray            # the members' common grid, cut to the viewed range
    anomaly_score: np.ndarray       # the group's; >= 1 anomalous
    is_anomaly: np.ndarray          # the group's, with hysteresis
    contributions: np.ndarray       # (n_points, n_members); rows sum to 1 where the score is above 0
    members: list[ScoredSeries]     # each with its own yhat and band, and the group's score
    member_names: list[str]         # short names the reasons use ("mode=system")
    episodes: list[Episode]         # reasons name the driving members
    model: str
    unit: str | None = None
    name: str = ""

    @property
    def key(self) -> str:
        return series_key(self.labels)


def group_labels(labels: Mapping[str, str], group_by: Sequence[str]) -> dict[str, str]:
    return {k: labels.get(k, "") for k in group_by}


def group_key(labels: Mapping[str, str], group_by: Sequence[str]) -> str:
    """``'instance=a'``: the canonical key of the group a series with ``labels`` belongs to."""
    return series_key(group_labels(labels, group_by))


def member_names(labels: Sequence[Mapping[str, str]], group_by: Sequence[str], legend: str | None = None) -> list[str]:
    """What tells the members of a group apart: the legend, else the labels that differ among them.

    ``[{mode: user, ...}, {mode: system, ...}]`` -> ``["mode=user", "mode=system"]``; when only the
    metric name differs, the metric names.
    """
    if legend:
        names = [series_name(m, legend) for m in labels]
        if len(set(names)) == len(names):
            return names
    keys = sorted({k for m in labels for k in m if k not in group_by})
    varying = [k for k in keys if len({m.get(k, "") for m in labels}) > 1]
    out = []
    for m in labels:
        parts = [m.get("__name__", "")] if "__name__" in varying else []
        rest = ",".join(f"{k}={m.get(k, '')}" for k in varying if k != "__name__")
        out.append(" ".join(p for p in (*parts, rest) if p) or series_name(m))
    return out if len(set(out)) == len(out) else [series_key(m) for m in labels]


def score_groups(detection: "Detection", fetched: FetchedView) -> DetectionResult:
    """Score ``fetched`` (a ``group_by`` query) group by group; see the module docstring."""
    query = fetched.query
    group_by = query.group_by
    groups: dict[str, list[Series]] = {}
    for s in sorted(fetched.series, key=lambda s: series_key(s.labels)):
        groups.setdefault(group_key(s.labels, group_by), []).append(s)
    for key, members in groups.items():
        if len(members) > MAX_GROUP_SERIES:
            raise BadRequest(f"{fetched.where}: group {key or '(all series)'} has {len(members)} series; at most "
                             f"{MAX_GROUP_SERIES} can be scored as one group: group by more labels or filter the query",
                             code="group_too_large")
    notices = fetched.notices
    absent = [k for k in group_by if not any(k in s.labels for s in fetched.series)]
    if absent:
        notices.append(f"no series has the label{'s' if len(absent) > 1 else ''} {', '.join(absent)} "
                       f"(group_by): {'they do' if len(absent) > 1 else 'it does'} not split the series")
    singles = [m[0] for m in groups.values() if len(m) == 1]
    detectors = detection.detectors(fetched, singles) if singles else {}
    models = _group_models(detection, fetched, {k: m for k, m in groups.items() if len(m) > 1})
    out: list[ScoredGroup] = []
    for key, members in groups.items():
        labels = group_labels(members[0].labels, group_by)
        if len(members) == 1:
            scored = detection.score_series(fetched, members[0], detectors.get(series_key(members[0].labels)))
            if scored is not None:
                out.append(_single(scored, key, labels))
        else:
            group = _score(fetched, key, labels, members, models.get(key))
            if group is not None:
                out.append(group)
    if singles:
        notices.append(f"{len(singles)} group{'s have' if len(singles) > 1 else ' has'} one series only: "
                       "scored by its own model (a group model needs two series or more)")
    unscored = sum(1 for g in out if g.model.startswith("none"))
    if unscored:
        notices.append(f"{unscored} group{'s have' if unscored > 1 else ' has'} a series with less than "
                       f"{detection.settings.detection.min_train_points} points of history before the range: "
                       "not scored")
    return DetectionResult([m for g in out for m in g.members], notices, fetched.expr, fetched.step_s, groups=out)


# -- steps ---------------------------------------------------------------------------------------


def _align(series: Sequence[Series], windows: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
    """The members on one time grid (the union of their times), NaN where a member has no point."""
    t = np.unique(np.concatenate([s.times_ms for s in series]))
    x = np.full((t.size, len(series)), np.nan)
    for j, s in enumerate(series):
        x[np.searchsorted(t, s.times_ms), j] = exclude_windows(s, windows)
    return t, x


def _group_models(detection: "Detection", fetched: FetchedView,
                  groups: dict[str, list[Series]]) -> dict[str, GroupDetector]:
    """A fitted (or cached) group model per group that has enough history."""
    if not groups:
        return {}
    query = fetched.query
    # A group's forest has no incident search of its own: an unusual combination inside its
    # training window would be learned as normal, so it trains on the history before the view
    # (a group's verdict may therefore change with the view's start: documented).
    plan = detection.training_plan(fetched, before_view=True)
    # The legend names the members in reasons, and the score's meaning depends on the scoring step.
    params = ("group", fetched.source, fetched.expr, query.group_by, fetched.legend, query.sensitivity,
              query.train_window_s, plan.train_step_s, fetched.step_s, query.exclude)
    found: dict[str, GroupDetector] = {}
    missing: dict[str, list[Series]] = {}
    for key, members in groups.items():
        model = detection.models.get(ModelKey(params, _cache_key(key, members), plan.slot))
        if model is None:
            missing[key] = members
        else:
            found[key] = model
    if not missing:
        return found
    with detection.heavy_work():
        _fit_groups(detection, fetched, plan, params, missing, found)
    return found


def _fit_groups(detection: "Detection", fetched: FetchedView, plan: TrainingPlan, params: tuple,
                missing: dict[str, list[Series]], found: dict[str, GroupDetector]) -> None:
    query = fetched.query
    history, recent = detection.fetch_training(fetched, plan, recent=True)
    min_points = detection.settings.detection.min_train_points
    for key, members in missing.items():
        keys = [series_key(m.labels) for m in members]
        past = [history.get(k) for k in keys]
        if any(p is None or np.isfinite(p.values).sum() < min_points for p in past):
            continue
        latest = [recent.get(k) for k in keys]
        names = member_names([m.labels for m in members], query.group_by, fetched.legend)

        def fit(past: list = past, latest: list = latest, names: list[str] = names) -> GroupDetector:
            t0 = _clock.monotonic()
            times, values = _align(past, query.exclude)
            recent_pair = _align(latest, query.exclude) if all(r is not None for r in latest) else None
            model = GroupDetector(sensitivity=query.sensitivity, step_s=fetched.step_s).fit(times, values, names,
                                                                                             recent=recent_pair)
            if detection.on_fit is not None:
                detection.on_fit(GROUP_MODEL, _clock.monotonic() - t0)
            return model

        model = detection.models.fit_once(ModelKey(params, _cache_key(key, members), plan.slot), fit)
        if model is not None:
            found[key] = model


def _cache_key(key: str, members: Sequence[Series]) -> tuple[str, tuple[str, ...]]:
    return key, tuple(series_key(m.labels) for m in members)


def _score(fetched: FetchedView, key: str, labels: dict[str, str], members: list[Series],
           model: GroupDetector | None) -> ScoredGroup | None:
    t, x = _align(members)
    keep = t >= fetched.view_start_ms
    if not keep.any():
        return None
    n, k = int(keep.sum()), len(members)
    names = member_names([m.labels for m in members], fetched.query.group_by, fetched.legend)
    name = key or "(all series)"
    if model is None:
        nan = np.full(n, np.nan)
        score, is_anomaly, contributions = nan, np.zeros(n, np.int8), np.zeros((n, k))
        bands = [Scores(nan, nan, nan, nan)] * k
        episodes: list[Episode] = []
        model_name = "none (too little history)"
    else:
        scores = model.score(t, x)
        flags, found = group_episodes(model, t, x, scores, unit=fetched.unit)
        score, is_anomaly, contributions = scores.anomaly_score[keep], flags[keep], scores.contributions[keep]
        bands = [Scores(score, s.yhat[keep], s.yhat_lower[keep], s.yhat_upper[keep]) for s in scores.series]
        # An episode that began in the warm-up keeps its start; one that ended before the view is not shown.
        episodes = [e._replace(reason=f"{name}: {e.reason}") for e in found
                    if e.end_ms is None or e.end_ms >= fetched.view_start_ms]
        model_name = model.name
    scored = [ScoredSeries(m.labels, t[keep], x[keep, j], bands[j], is_anomaly, [], model_name, fetched.unit,
                           series_name(m.labels, fetched.legend), group=key) for j, m in enumerate(members)]
    return ScoredGroup(labels, t[keep], score, is_anomaly, contributions, scored, names, episodes, model_name,
                       fetched.unit, name)


def _single(scored: ScoredSeries, key: str, labels: dict[str, str]) -> ScoredGroup:
    score = scored.scores.anomaly_score
    contributions = (np.isfinite(score) & (score > 0)).astype(np.float64)[:, None]
    member = ScoredSeries(scored.labels, scored.times_ms, scored.values, scored.scores, scored.is_anomaly, [],
                          scored.model, scored.unit, scored.name, group=key)
    return ScoredGroup(labels, scored.times_ms, score, scored.is_anomaly, contributions, [member],
                       [scored.name], scored.episodes, scored.model, scored.unit, key or "(all series)")
