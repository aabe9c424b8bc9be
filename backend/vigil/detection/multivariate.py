"""One Isolation Forest over a group of series (all CPU modes of a node; CPU + memory + restarts of a
pod), with per-series contributions: which series drove an anomaly.

Each series is first put on the common scale by its own seasonal baseline (residual in spreads,
so a seasonal peak is not evidence and series of any unit mix). A row of the forest's input is,
per series, the residual and its mean over the last few points (causal), taken along the group's
principal axes (whitened), so that series moving apart is as visible to the axis-parallel trees as
a series leaving its band. The forest learns which
*combinations* are normal: CPU user and system rising together under load is normal, system alone
rising is not, even when each stays inside its own band. Raw scores are calibrated like every
other model (peaks over threshold at the sensitivity's false-alarm rate, ``anomaly_score >= 1``
anomalous). The score is the larger of the forest's and of the distance along the principal
axes (each at half the budget: tree scores saturate, a distance keeps ranking extreme points). A
series' contribution at a point is how much the forest's raw score falls when that series'
features are set to their normal value (0 spreads), normalised to sum to 1.

Entry points for the service or the worker: :func:`fit_group` and :meth:`GroupDetector.score`,
then :func:`group_episodes` for episodes whose reason names the driving series. Must not: fetch,
serve HTTP or write anywhere.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from sklearn.ensemble import IsolationForest

from vigil.detection.baseline import Scores, SeasonalBaseline
from vigil.detection.calibration import false_alarm_rate, pot_threshold
from vigil.detection.episodes import Episode, find_episodes, quiet_points_for
from vigil.display import format_value
from vigil.detection.learned import _trailing_mean, _VectorisedForest

__all__ = ["GroupScores", "GroupDetector", "fit_group", "group_episodes"]


class GroupScores(NamedTuple):
    anomaly_score: np.ndarray       # (n,) >= 1 anomalous; NaN where every series is missing
    contributions: np.ndarray       # (n, k) rows sum to 1 (0 where the score is 0 or NaN)
    series: list[Scores]            # each series' own baseline scores (yhat and band)


class GroupDetector:
    """Isolation Forest over aligned series; scikit-learn style (``fit`` returns self, state ends in ``_``)."""

    name = "group-iforest"
    window = 6

    def __init__(self, *, sensitivity: str = "medium", step_s: float = 60.0, n_estimators: int = 100,
                 max_samples: int = 256, random_state: int = 0):
        self.sensitivity = sensitivity
        self.step_s = step_s
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, times_ms: np.ndarray, values: np.ndarray, names: Sequence[str] | None = None,
            recent: tuple[np.ndarray, np.ndarray] | None = None) -> "GroupDetector":
        """``values`` is ``(n_points, n_series)``, aligned on ``times_ms``; NaN for gaps.

        The baselines learn the seasons from the whole history, which may be coarser than the
        scoring step; the forest learns the combinations from ``recent`` (default: the same
        history), which should be sampled at ``step_s``: the trailing means are step-dependent.
        """
        t, x = _check(times_ms, values, "fit")
        self.names_ = list(names) if names is not None else [f"series {j}" for j in range(x.shape[1])]
        if len(self.names_) != x.shape[1]:
            raise ValueError(f"The 'names' parameter of GroupDetector.fit must name {x.shape[1]} series. "
                             f"Got {len(self.names_)} instead.")
        self.baselines_ = [SeasonalBaseline(sensitivity=self.sensitivity, step_s=self.step_s).fit(t, x[:, j])
                           for j in range(x.shape[1])]
        if recent is not None:
            recent_t, recent_x = _check(recent[0], recent[1], "fit")
            if recent_x.shape[1] != x.shape[1]:
                raise ValueError(f"The 'recent' parameter of GroupDetector.fit must hold {x.shape[1]} series. "
                                 f"Got {recent_x.shape[1]} instead.")
            if np.isfinite(recent_x).all(axis=1).sum() >= 64:
                t, x = recent_t, recent_x
        z, m, _ = self._residuals(t, x)
        # Whitened residuals as extra features: axis-parallel trees cannot see "off the diagonal"
        # (user and system CPU moving apart) in the raw residuals, but can along a principal axis.
        ok = np.isfinite(x).all(axis=1)
        cov = np.cov(z[ok].T) if ok.sum() > x.shape[1] + 2 else np.eye(x.shape[1])
        values_, vectors = np.linalg.eigh(np.atleast_2d(cov))
        self.whiten_ = vectors / np.sqrt(np.maximum(values_, 1e-6 * max(float(values_.max()), 1e-12)))
        features = self._build(z, m)
        complete = ok
        rows = features[complete] if complete.sum() >= 16 else np.nan_to_num(features)
        self.forest_ = _VectorisedForest(IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                                                         random_state=self.random_state, n_jobs=1)).fit(rows)
        raw = -self.forest_.score_samples(rows)
        self.center_ = float(np.median(raw))
        # Half the budget each: the forest (any odd combination) and the distance along the
        # principal axes (tree scores saturate; a distance keeps ranking the extreme ones).
        alpha = false_alarm_rate(self.sensitivity, self.step_s) / 2
        self.threshold_ = max(pot_threshold(raw, alpha), self.center_ + 1e-9)
        self.distance_threshold_ = pot_threshold(self._distance(rows), alpha)
        return self

    def _distance(self, rows: np.ndarray) -> np.ndarray:
        k = len(self.baselines_)
        return np.sqrt((rows[:, :k] ** 2).mean(axis=1))

    def _residuals(self, t: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Scores]]:
        zs, means, per_series = [], [], []
        for j, baseline in enumerate(self.baselines_):
            s = baseline.score(t, x[:, j])
            spread = baseline.spreads(t)
            z = np.nan_to_num(np.clip((x[:, j] - s.yhat) / spread, -50, 50))  # a gap is no evidence
            zs.append(z)
            means.append(_trailing_mean(z, self.window))
            per_series.append(s)
        return np.column_stack(zs), np.column_stack(means), per_series

    def _build(self, z: np.ndarray, m: np.ndarray) -> np.ndarray:
        # Only the whitened coordinates: every direction the group can move in, and no feature
        # repeated (a forest's splits are diluted by features that say the same thing).
        return np.clip(np.column_stack([z @ self.whiten_, m @ self.whiten_]), -50, 50)

    def score(self, times_ms: np.ndarray, values: np.ndarray) -> GroupScores:
        t, x = _check(times_ms, values, "score")
        z, m, per_series = self._residuals(t, x)
        rows = self._build(z, m)
        raw = -self.forest_.score_samples(rows)
        score = np.maximum((raw - self.center_) / (self.threshold_ - self.center_),
                           self._distance(rows) / self.distance_threshold_)
        k = x.shape[1]
        drops = np.zeros((t.size, k))
        for j in range(k):
            z_j, m_j = z.copy(), m.copy()
            z_j[:, j] = 0.0
            m_j[:, j] = 0.0
            drops[:, j] = np.maximum(0.0, raw + self.forest_.score_samples(self._build(z_j, m_j)))
        total = drops.sum(axis=1, keepdims=True)
        contributions = np.divide(drops, total, out=np.zeros_like(drops), where=total > 0)
        missing = ~np.isfinite(x).any(axis=1)
        score[missing] = np.nan
        contributions[missing | (score == 0)] = 0.0
        return GroupScores(score, contributions, per_series)

    # explain.py helpers: the group's context is the first series'
    def context(self, time_ms: int) -> str:
        return self.baselines_[0].context(time_ms)


def fit_group(times_ms: np.ndarray, values_by_series: dict[str, np.ndarray], *, sensitivity: str = "medium",
              step_s: float = 60.0) -> GroupDetector:
    """Fit one forest over the named series (aligned on ``times_ms``), e.g. every CPU mode of a node."""
    names = list(values_by_series)
    matrix = np.column_stack([np.asarray(values_by_series[n], dtype=np.float64) for n in names])
    return GroupDetector(sensitivity=sensitivity, step_s=step_s).fit(times_ms, matrix, names)


def group_episodes(detector: GroupDetector, times_ms: np.ndarray, values: np.ndarray, scores: GroupScores, *,
                   unit: str | None = None) -> tuple[np.ndarray, list[Episode]]:
    """Episodes of the group score, each with a reason naming the series that drove it."""
    t = np.asarray(times_ms, dtype=np.int64)
    x = np.asarray(values, dtype=np.float64)
    lead = np.argmax(scores.contributions, axis=1)
    rows = np.arange(t.size)
    pick = lambda field: np.array([getattr(scores.series[j], field)[i] for i, j in zip(rows, lead)])  # noqa: E731
    lead_scores = Scores(scores.anomaly_score, pick("yhat"), pick("yhat_lower"), pick("yhat_upper"))
    lead_values = x[rows, lead]
    step_s = float(np.median(np.diff(t))) / 1000.0 if t.size > 1 else detector.step_s
    is_anomaly, episodes = find_episodes(t, lead_values, lead_scores, quiet_points=quiet_points_for(step_s))
    out = []
    for e in episodes:
        i = int(np.searchsorted(t, e.peak_ms))
        share = scores.contributions[i]
        order = np.argsort(share)[::-1]
        drivers = ", ".join(f"{detector.names_[j]} {share[j]:.0%}" for j in order[:3] if share[j] >= 0.05)
        j = int(order[0])
        context = detector.baselines_[j].context(e.peak_ms)
        reason = (f"unusual combination across {len(detector.names_)} series (score {e.peak_score:.2f}); "
                  f"driven by {drivers or detector.names_[j]}: {detector.names_[j]} was "
                  f"{format_value(float(x[i, j]), unit)}, expected {format_value(e.yhat, unit)}"
                  f"{' ' + context if context else ''}")
        out.append(e._replace(reason=reason))
    return is_anomaly, out


def _check(times_ms: np.ndarray, values: np.ndarray, caller: str) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(times_ms, dtype=np.int64)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != t.size or x.shape[1] < 1:
        raise ValueError(f"The 'values' parameter of GroupDetector.{caller} must be (n_points, n_series) with "
                         f"n_points == len(times_ms). Got shape {x.shape} for {t.size} times instead.")
    return t, x
