"""Isolation Forest and One-Class SVM (scikit-learn) over pattern features, on the common scale.

Each point becomes a feature row, computed causally from the seasonal baseline's residual in
spreads: the residual itself, its mean over the last few points (a sustained shift) and its mean
absolute value over them (a variance burst). The estimator learns which combinations are normal
from the baseline's normal training points; its raw scores (sign flipped once, so higher is more
anomalous) are calibrated with the same peaks-over-threshold rule as the baseline:
``(raw - median) / (threshold - median)``.

Tree and kernel scores saturate: a point far beyond the training range scores about as high as
one just beyond it. So the final ``anomaly_score`` is the larger of the learned score and the
baseline's band score, each calibrated at half of the false-alarm budget: the learned model adds
the patterns, the band keeps the ranking of extreme values. The baseline supplies ``yhat`` and the
band, so every model draws the same expected band.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.svm import OneClassSVM

from .baseline import Scores, SeasonalBaseline
from .calibration import false_alarm_rate, pot_threshold

__all__ = ["LearnedDetector", "IsolationForestDetector", "OneClassSVMDetector"]


class LearnedDetector:
    """A scikit-learn novelty detector on seasonal features; subclasses choose the estimator."""

    name = "learned"

    def __init__(self, *, sensitivity: str = "medium", step_s: float = 60.0, random_state: int = 0):
        self.sensitivity = sensitivity
        self.step_s = step_s
        self.random_state = random_state

    def _make_estimator(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _raw(self, features: np.ndarray) -> np.ndarray:
        return -self.estimator_.score_samples(features)

    def fit(self, times_ms: np.ndarray, values: np.ndarray,
            recent: tuple[np.ndarray, np.ndarray] | None = None) -> "LearnedDetector":
        """Fit the band on the whole history and the patterns on ``recent`` (default: the same).

        Pattern features over a few points depend on the step, so ``recent`` should be sampled at
        the step that will be scored; the history may be coarser (it only needs the seasons).
        """
        # Half the false-alarm budget for the band, half for the learned patterns.
        self.baseline_ = SeasonalBaseline(sensitivity=self.sensitivity, step_s=self.step_s / 2).fit(times_ms, values)
        t, x = recent if recent is not None and np.isfinite(recent[1]).sum() >= 64 else (times_ms, values)
        t = np.asarray(t, dtype=np.int64)
        x = np.asarray(x, dtype=np.float64)
        ok = np.isfinite(x)
        t, x = t[ok], x[ok]
        base = self.baseline_.score(t, x)
        features = self._features(x, base)
        normal = np.convolve(base.anomaly_score >= 1.0, np.ones(self.window), mode="full")[: x.size] == 0
        fit_rows = features[normal] if normal.sum() >= 16 else features
        self.estimator_ = self._make_estimator().fit(fit_rows)
        raw = self._raw(fit_rows)
        self.center_ = float(np.median(raw))
        alpha = false_alarm_rate(self.sensitivity, self.step_s) / 2
        self.threshold_ = max(pot_threshold(raw, alpha), self.center_ + 1e-9)
        return self

    #: points in the local mean and volatility features
    window = 6

    def _features(self, x: np.ndarray, base: Scores) -> np.ndarray:
        """Causal pattern features; NaN values count as a zero residual (no evidence)."""
        spread = (base.yhat_upper - base.yhat) / self.baseline_.band_z_
        resid = np.nan_to_num(np.clip((x - base.yhat) / spread, -50, 50))
        local_mean = _trailing_mean(resid, self.window)
        local_abs = _trailing_mean(np.abs(resid), self.window)
        return np.column_stack([resid, local_mean, local_abs])

    def score(self, times_ms: np.ndarray, values: np.ndarray) -> Scores:
        t = np.asarray(times_ms, dtype=np.int64)
        x = np.asarray(values, dtype=np.float64)
        base = self.baseline_.score(t, x)
        raw = self._raw(self._features(x, base))
        learned = np.maximum(0.0, (raw - self.center_) / (self.threshold_ - self.center_))
        score = np.where(np.isfinite(x), np.maximum(learned, base.anomaly_score), np.nan)
        return Scores(score, base.yhat, base.yhat_lower, base.yhat_upper)

    @property
    def band_z_(self) -> float:
        return self.baseline_.band_z_

    def spread_at(self, time_ms: int) -> float:
        return self.baseline_.spread_at(time_ms)

    def context(self, time_ms: int) -> str:
        return self.baseline_.context(time_ms)


def _trailing_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean of the last ``k`` values up to and including each point (fewer at the start)."""
    c = np.cumsum(np.concatenate([[0.0], a]))
    idx = np.arange(1, a.size + 1)
    lo = np.maximum(0, idx - k)
    return (c[idx] - c[lo]) / (idx - lo)


class IsolationForestDetector(LearnedDetector):
    name = "iforest"

    def __init__(self, *, sensitivity: str = "medium", step_s: float = 60.0, random_state: int = 0,
                 n_estimators: int = 100, max_samples: int = 256):
        super().__init__(sensitivity=sensitivity, step_s=step_s, random_state=random_state)
        self.n_estimators = n_estimators
        self.max_samples = max_samples

    def _make_estimator(self) -> IsolationForest:
        return IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                               random_state=self.random_state, n_jobs=1)


class OneClassSVMDetector(LearnedDetector):
    """RBF One-Class SVM on standardised features, fitted on at most ``max_train`` points."""

    name = "ocsvm"

    def __init__(self, *, sensitivity: str = "medium", step_s: float = 60.0, random_state: int = 0,
                 nu: float = 0.05, max_train: int = 1500):
        super().__init__(sensitivity=sensitivity, step_s=step_s, random_state=random_state)
        self.nu = nu
        self.max_train = max_train

    def _make_estimator(self):
        return _StandardisedSVM(self.nu, self.max_train, self.random_state)

    def _raw(self, features: np.ndarray) -> np.ndarray:
        return -self.estimator_.decision_function(features)


class _StandardisedSVM:
    def __init__(self, nu: float, max_train: int, random_state: int):
        self.nu, self.max_train, self.random_state = nu, max_train, random_state

    def fit(self, features: np.ndarray) -> "_StandardisedSVM":
        self.mean_ = features.mean(axis=0)
        self.std_ = features.std(axis=0) + 1e-9
        z = (features - self.mean_) / self.std_
        if z.shape[0] > self.max_train:
            rng = np.random.default_rng(self.random_state)
            z = z[rng.choice(z.shape[0], self.max_train, replace=False)]
        self.svm_ = OneClassSVM(kernel="rbf", nu=self.nu, gamma="scale").fit(z)
        return self

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        return self.svm_.decision_function((features - self.mean_) / self.std_)
