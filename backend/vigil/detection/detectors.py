"""The detector registry: short aliases to models, and cold start.

``make_detector(alias, ...)`` builds an unfitted detector; ``fit_detector`` fits the one the
history allows: a series with less than ``min_learned_points`` of history is scored by the
seasonal baseline until it has enough (the name then says so). Every detector returns
:class:`~vigil.baseline.Scores` with ``anomaly_score >= 1`` meaning anomalous.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from vigil.detection.baseline import Scores, SeasonalBaseline
from vigil.config import MODELS
from vigil.detection.learned import IsolationForestDetector, OneClassSVMDetector
from vigil.units import MinDeviation

__all__ = ["CONTEXT_S", "DEFAULT_MIN_DEVIATION", "Detector", "Scores", "make_detector", "fit_detector", "is_learned", "DEFAULT_MODEL", "MIN_LEARNED_POINTS"]

#: What ``auto`` means: the model the real-data benchmark (``python -m bench realdata``) ranks
#: first at default settings. The learned models did not beat the seasonal baseline there (more
#: false alarms for the same recall), so ``auto`` is the baseline.
DEFAULT_MODEL = "seasonal"
#: Seconds of points before a scored point that its score looks at, for every model (the
#: baseline's trailing level and shift windows; the learned models' windows are shorter).
CONTEXT_S = SeasonalBaseline().context_s()
#: What a deviation must exceed to alarm unless a job or panel says otherwise (detection.min_deviation).
DEFAULT_MIN_DEVIATION = MinDeviation(0.0, 0.01)
#: Below this many training points a learned model falls back to the baseline (cold start).
MIN_LEARNED_POINTS = 288


class Detector(Protocol):
    name: str

    @property
    def band_z_(self) -> float: ...  # read-only: the learned detectors lend their baseline's

    def fit(self, times_ms: np.ndarray, values: np.ndarray) -> "Detector": ...
    def score(self, times_ms: np.ndarray, values: np.ndarray) -> Scores: ...
    def spread_at(self, time_ms: int) -> float: ...
    def context(self, time_ms: int) -> str: ...


_REGISTRY: dict[str, Callable[..., Detector]] = {
    "seasonal": SeasonalBaseline,
    "iforest": IsolationForestDetector,
    "ocsvm": OneClassSVMDetector,
}
assert set(_REGISTRY) | {"auto"} == set(MODELS)


def make_detector(model: str = "auto", *, sensitivity: str = "medium", step_s: float = 60.0,
                  min_deviation: MinDeviation = DEFAULT_MIN_DEVIATION) -> Detector:
    alias = DEFAULT_MODEL if model == "auto" else model
    try:
        factory = _REGISTRY[alias]
    except KeyError:
        raise ValueError(f"The 'model' parameter must be one of {', '.join(MODELS)}. Got {model!r} instead.") from None
    return factory(sensitivity=sensitivity, step_s=step_s, min_deviation=min_deviation.absolute,
                   min_relative_deviation=min_deviation.relative)


def is_learned(model: str) -> bool:
    """Whether ``model`` learns step-dependent patterns (and so wants recent history at the scoring step)."""
    return (DEFAULT_MODEL if model == "auto" else model) in ("iforest", "ocsvm")


def fit_detector(model: str, times_ms: np.ndarray, values: np.ndarray, *, sensitivity: str = "medium",
                 step_s: float = 60.0, min_learned_points: int = MIN_LEARNED_POINTS,
                 recent: tuple[np.ndarray, np.ndarray] | None = None,
                 previous: Detector | None = None,
                 min_deviation: MinDeviation = DEFAULT_MIN_DEVIATION) -> Detector:
    """Fit ``model`` on the history, or the baseline when the history is too short for it.

    ``recent`` is the latest history sampled at ``step_s``, for the learned models' patterns.
    ``previous`` is the model this fit replaces (the last refit slot's), if any: a learned model
    reuses its estimator while it is less than a day old, which makes hourly refits cheap.
    """
    detector = make_detector(model, sensitivity=sensitivity, step_s=step_s, min_deviation=min_deviation)
    n_finite = int(np.isfinite(np.asarray(values, dtype=np.float64)).sum())
    if detector.name != "seasonal" and n_finite < min_learned_points:
        baseline = SeasonalBaseline(sensitivity=sensitivity, step_s=step_s, min_deviation=min_deviation.absolute,
                                    min_relative_deviation=min_deviation.relative).fit(times_ms, values)
        baseline.name = f"seasonal (cold start; {detector.name} after {min_learned_points} points)"
        return baseline
    if is_learned(model):
        return detector.fit(times_ms, values, recent=recent, previous=previous)  # type: ignore[call-arg]
    return detector.fit(times_ms, values)
