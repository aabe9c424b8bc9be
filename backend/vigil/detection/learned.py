"""Isolation Forest and One-Class SVM (scikit-learn) over pattern features, on the common scale.

Each point becomes a feature row, computed causally from the seasonal baseline's residual in
spreads: the residual itself, its mean over the last few points (a sustained shift), its mean
absolute value over them (a variance burst) and the log of the mean absolute step between them (a
series stuck on one value). The estimator learns which combinations are normal
from the baseline's normal training points; its raw scores (sign flipped once, so higher is more
anomalous) are calibrated with the same peaks-over-threshold rule as the baseline:
``(raw - median) / (threshold - median)``.

Tree and kernel scores saturate: a point far beyond the training range scores about as high as
one just beyond it. So the final ``anomaly_score`` is the larger of the learned score and the
baseline's score (band and sustained shift), sharing one false-alarm budget (a third for the
estimator, two thirds for the baseline): the learned model adds
the patterns, the band keeps the ranking of extreme values. The baseline supplies ``yhat`` and the
band, so every model draws the same expected band.

Refits are cheap: the features are in spreads, so what a normal pattern looks like barely changes
from hour to hour. ``fit(..., previous=model)`` refits the baseline (and so the features' scale)
and keeps ``previous``'s estimator and calibration while they are younger than
``estimator_max_age_s`` (a day); then the estimator is fitted afresh.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.svm import OneClassSVM

from vigil.detection.baseline import MAX_SCORE, Scores, SeasonalBaseline
from vigil.detection.calibration import episode_threshold, episodes_per_day

__all__ = ["LearnedDetector", "IsolationForestDetector", "OneClassSVMDetector"]


class LearnedDetector:
    """A scikit-learn novelty detector on seasonal features; subclasses choose the estimator."""

    name = "learned"
    # Learned state, set by ``fit`` (declared for the type checker only).
    baseline_: SeasonalBaseline
    estimator_: Any
    estimator_fit_ms_: int
    center_: float
    threshold_: float

    def __init__(self, *, sensitivity: str = "medium", step_s: float = 60.0, random_state: int = 0,
                 estimator_max_age_s: float = 86400.0, min_deviation: float = 0.0,
                 min_relative_deviation: float = 0.01):
        self.sensitivity = sensitivity
        self.min_deviation = min_deviation
        self.min_relative_deviation = min_relative_deviation
        self.step_s = step_s
        self.random_state = random_state
        self.estimator_max_age_s = estimator_max_age_s

    def _params(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def _make_estimator(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _raw(self, features: np.ndarray) -> np.ndarray:
        return -self.estimator_.score_samples(features)

    def fit(self, times_ms: np.ndarray, values: np.ndarray,
            recent: tuple[np.ndarray, np.ndarray] | None = None,
            previous: "LearnedDetector | None" = None) -> "LearnedDetector":
        """Fit the band on the whole history and the patterns on ``recent`` (default: the same).

        Pattern features over a few points depend on the step, so ``recent`` should be sampled at
        the step that will be scored; the history may be coarser (it only needs the seasons).
        ``previous`` (the model this one replaces) lends its estimator while it is young enough.
        """
        # The false-alarm budget is shared: most for the band and shift statistics (they keep the
        # ranking of extreme values), the rest for the patterns only the estimator sees.
        self.baseline_ = SeasonalBaseline(sensitivity=self.sensitivity, step_s=self.step_s,
                                          budget=1.0 - self.learned_budget, min_deviation=self.min_deviation,
                                          min_relative_deviation=self.min_relative_deviation).fit(times_ms, values)
        if (isinstance(previous, type(self)) and previous._params() == self._params()
                and hasattr(previous, "estimator_")
                and 0 <= self.baseline_.train_end_ms_ - previous.estimator_fit_ms_ < self.estimator_max_age_s * 1000):
            self.estimator_, self.center_, self.threshold_ = previous.estimator_, previous.center_, previous.threshold_
            self.estimator_fit_ms_ = previous.estimator_fit_ms_
            return self
        self.estimator_fit_ms_ = self.baseline_.train_end_ms_
        t, x = recent if recent is not None and np.isfinite(recent[1]).sum() >= 64 else (times_ms, values)
        t = np.asarray(t, dtype=np.int64)
        x = np.asarray(x, dtype=np.float64)
        ok = np.isfinite(x)
        t, x = t[ok], x[ok]
        base = self.baseline_.score(t, x)
        features = self._features(x, base)
        normal = np.convolve(base.anomaly_score >= 1.0, np.ones(self.window), mode="full")[: x.size] == 0
        rows = np.flatnonzero(normal) if normal.sum() >= 16 else np.arange(x.size)
        self.estimator_ = self._make_estimator().fit(features[rows])
        # Calibrate on rows the estimator did not train on when it leaves some out (the SVM):
        # in-sample kernel scores are optimistic.
        held_out = getattr(self.estimator_, "held_out_", None)
        if held_out is not None and held_out.sum() >= 64:
            rows = rows[held_out]
        raw = self._raw(features[rows])
        self.center_ = float(np.median(raw))
        # Calibrated on episodes, like the baseline: the estimator's share of the budget.
        per_day = episodes_per_day(self.sensitivity) * self.learned_budget
        self.threshold_ = max(episode_threshold(t[rows], raw, per_day, center=self.center_), self.center_ + 1e-9)
        return self

    #: points in the local mean and volatility features
    window = 6
    #: share of the false-alarm budget for the estimator's score (the baseline gets the rest)
    learned_budget = 1.0 / 3.0

    def _features(self, x: np.ndarray, base: Scores) -> np.ndarray:
        """Causal pattern features; NaN values count as a zero residual (no evidence)."""
        spread = (base.yhat_upper - base.yhat) / self.baseline_.band_z_
        resid = np.nan_to_num(np.clip((x - base.yhat) / spread, -50, 50))
        local_mean = _trailing_mean(resid, self.window)
        local_abs = _trailing_mean(np.abs(resid), self.window)
        # A stuck series does not move at all: the mean step, in spreads, falls to zero.
        steps = np.abs(np.diff(x, prepend=np.nan)) / spread
        steps = np.where(np.isfinite(steps), steps, 1.0)
        local_step = np.log(0.01 + _trailing_mean(steps, self.window))
        return np.column_stack([resid, local_mean, local_abs, local_step])

    def score(self, times_ms: np.ndarray, values: np.ndarray) -> Scores:
        t = np.asarray(times_ms, dtype=np.int64)
        x = np.asarray(values, dtype=np.float64)
        base = self.baseline_.score(t, x)
        raw = self._raw(self._features(x, base))
        learned = np.maximum(0.0, (raw - self.center_) / (self.threshold_ - self.center_))
        # The first points of what is scored have short trailing windows the estimator never saw
        # in training: the baseline alone speaks for them.
        learned[: self.window - 1] = 0.0
        score = np.where(np.isfinite(x), np.minimum(np.maximum(learned, base.anomaly_score), MAX_SCORE), np.nan)
        return Scores(score, base.yhat, base.yhat_lower, base.yhat_upper)

    @property
    def band_z_(self) -> float:
        return self.baseline_.band_z_

    def spread_at(self, time_ms: int) -> float:
        return self.baseline_.spread_at(time_ms)

    def context_s(self) -> float:
        return self.baseline_.context_s()

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
                 estimator_max_age_s: float = 86400.0, n_estimators: int = 100, max_samples: int = 256,
                 min_deviation: float = 0.0, min_relative_deviation: float = 0.01):
        super().__init__(sensitivity=sensitivity, step_s=step_s, random_state=random_state,
                         estimator_max_age_s=estimator_max_age_s, min_deviation=min_deviation,
                         min_relative_deviation=min_relative_deviation)
        self.n_estimators = n_estimators
        self.max_samples = max_samples

    def _make_estimator(self) -> "_VectorisedForest":
        return _VectorisedForest(IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                                                 random_state=self.random_state, n_jobs=1))


class _VectorisedForest:
    """A scikit-learn ``IsolationForest``, scored by walking all its trees at once in numpy.

    Same trees, same formula as ``IsolationForest.score_samples`` (a test checks they agree),
    without its per-tree Python overhead (~0.2 ms a tree a call): a replay scores an hour of
    points per call, and that overhead was most of its run time.
    """

    def __init__(self, forest: IsolationForest):
        self.forest = forest

    def fit(self, features: np.ndarray) -> "_VectorisedForest":
        f = self.forest.fit(features)
        try:
            path_lengths, leaf_lengths = f._decision_path_lengths, f._average_path_length_per_tree
        except AttributeError:  # another scikit-learn: fall back to its own scoring
            self.roots_ = None
            return self
        lefts, rights, feats, thresholds, leaf_values, roots = [], [], [], [], [], []
        offset = 0
        depth = 0
        for tree, used, paths, leaves in zip(f.estimators_, f.estimators_features_, path_lengths, leaf_lengths):
            t = tree.tree_
            leaf = t.children_left < 0
            roots.append(offset)
            lefts.append((np.where(leaf, 0, t.children_left) + offset).astype(np.int32))
            rights.append((np.where(leaf, 0, t.children_right) + offset).astype(np.int32))
            feats.append(np.where(leaf, -1, np.asarray(used)[np.maximum(t.feature, 0)]).astype(np.int32))
            thresholds.append(t.threshold)
            leaf_values.append(np.asarray(paths, dtype=np.float64) + np.asarray(leaves, dtype=np.float64) - 1.0)
            depth = max(depth, int(t.max_depth))
            offset += t.node_count
        self.left_, self.right_ = np.concatenate(lefts), np.concatenate(rights)
        self.feature_, self.threshold_ = np.concatenate(feats), np.concatenate(thresholds)
        self.leaf_value_ = np.concatenate(leaf_values)
        self.roots_ = np.asarray(roots, dtype=np.int32)
        self.max_depth_ = depth
        from sklearn.ensemble._iforest import _average_path_length
        self.denominator_ = len(f.estimators_) * float(_average_path_length([f._max_samples])[0])
        # The flat arrays are all that scoring needs: keeping scikit-learn's trees as well would
        # double every cached model's memory.
        self.forest = None
        return self

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        if self.roots_ is None:
            return self.forest.score_samples(features)
        # scikit-learn's trees compare float32 features against float64 thresholds.
        X = np.asarray(features, dtype=np.float32).astype(np.float64)
        rows = np.arange(X.shape[0])[:, None]
        node = np.broadcast_to(self.roots_, (X.shape[0], self.roots_.size)).copy()
        for _ in range(self.max_depth_):
            feat = self.feature_[node]
            inner = feat >= 0
            if not inner.any():
                break
            go_left = X[rows, np.maximum(feat, 0)] <= self.threshold_[node]
            node = np.where(inner, np.where(go_left, self.left_[node], self.right_[node]), node)
        depths = self.leaf_value_[node].sum(axis=1)
        if self.denominator_ == 0:
            return -np.ones(X.shape[0])
        return -(2.0 ** (-depths / self.denominator_))


class OneClassSVMDetector(LearnedDetector):
    """RBF One-Class SVM on standardised features, fitted on at most ``max_train`` points."""

    name = "ocsvm"

    def __init__(self, *, sensitivity: str = "medium", step_s: float = 60.0, random_state: int = 0,
                 estimator_max_age_s: float = 86400.0, nu: float = 0.05, max_train: int = 1500,
                 min_deviation: float = 0.0, min_relative_deviation: float = 0.01):
        super().__init__(sensitivity=sensitivity, step_s=step_s, random_state=random_state,
                         estimator_max_age_s=estimator_max_age_s, min_deviation=min_deviation,
                         min_relative_deviation=min_relative_deviation)
        self.nu = nu
        self.max_train = max_train

    def _make_estimator(self):
        return _StandardisedSVM(self.nu, self.max_train, self.random_state)

    def _raw(self, features: np.ndarray) -> np.ndarray:
        return -self.estimator_.decision_function(features)


class _StandardisedSVM:
    #: contiguous blocks the rows are cut into; even ones train, odd ones calibrate
    n_blocks = 8

    def __init__(self, nu: float, max_train: int, random_state: int):
        self.nu, self.max_train, self.random_state = nu, max_train, random_state

    def fit(self, features: np.ndarray) -> "_StandardisedSVM":
        self.mean_ = features.mean(axis=0)
        self.std_ = features.std(axis=0) + 1e-9
        z = (features - self.mean_) / self.std_
        # Train on every other block of rows in time (at most max_train of them); the blocks in
        # between calibrate the score. Blocks, not random rows: a row's trailing-window features
        # nearly repeat its neighbours', so a held-out row next to a training row scores as if it
        # were in-sample, and a threshold calibrated on such rows is too tight out of sample.
        n = z.shape[0]
        self.held_out_ = np.zeros(n, dtype=bool)
        if n >= 128:
            block = np.arange(n) * self.n_blocks // n
            self.held_out_ = block % 2 == 1
        candidates = np.flatnonzero(~self.held_out_)
        rng = np.random.default_rng(self.random_state)
        chosen = rng.choice(candidates, self.max_train, replace=False) if candidates.size > self.max_train else candidates
        self.svm_ = OneClassSVM(kernel="rbf", nu=self.nu, gamma="scale").fit(z[chosen])
        return self

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        return self.svm_.decision_function((features - self.mean_) / self.std_)
