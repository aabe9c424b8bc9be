"""Placing ``anomaly_score == 1.0``: a threshold on a detector's raw scores at a target false-alarm rate.

Training scores are the calibration set. Rates as low as one alarm per series per week (about
1e-4 per point at a 60 s step) lie beyond the largest training score, so the far tail is
extrapolated with a peaks-over-threshold fit: a generalised Pareto tail over the top few percent,
fitted by the method of moments (as in SPOT, Siffer et al., KDD 2017). Its shape is kept in
[0, 0.5]: heavy tails get the higher threshold they need; light and bounded ones get the
exponential tail, which errs high (Gaussian noise: ~4 % above its true 1e-4 quantile). Erring high
is deliberate: scores out of sample are wider than on the training data (the benchmark measured
several times more false alarms when bounded tails were extrapolated as bounded). Excesses
beyond ten times the median excess (incidents left in the training data) are left out of the fit.

Also owns the mapping from a sensitivity word to that rate.
"""

from __future__ import annotations

import math

import numpy as np

from .config import SENSITIVITIES

__all__ = ["pot_threshold", "robust_threshold", "false_alarm_rate", "SECONDS_PER_WEEK"]

SECONDS_PER_WEEK = 7 * 86400.0
#: Bounds on the tail shape: never lighter than exponential (out-of-sample residuals are wider
#: than training ones, so the extrapolation errs high), as heavy as the data says.
_MIN_SHAPE, _MAX_SHAPE = 0.0, 0.5


def false_alarm_rate(sensitivity: str, step_s: float) -> float:
    """Per-point rate for a sensitivity word: ``medium`` aims at one false alarm per series per week."""
    try:
        per_week = SENSITIVITIES[sensitivity]
    except KeyError:
        raise ValueError(f"The 'sensitivity' parameter must be one of {', '.join(SENSITIVITIES)}. "
                         f"Got {sensitivity!r} instead.") from None
    return min(0.05, per_week * max(step_s, 1.0) / SECONDS_PER_WEEK)


def pot_threshold(scores: np.ndarray, alpha: float, *, tail_fraction: float = 0.05,
                  floor: float | None = None) -> float:
    """The score exceeded with probability ``alpha`` under the training distribution.

    ``scores`` are raw training scores (higher is more anomalous; NaN ignored). ``floor`` is a
    domain minimum (e.g. 3 spreads for a residual z), applied last.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"The 'alpha' parameter of pot_threshold must be in (0, 1). Got {alpha!r} instead.")
    s = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    n = s.size
    if n == 0:
        return float(floor) if floor is not None else math.inf
    # Take the tail from at least 10 points, so small training sets still get a fit.
    k = int(max(min(10, n), round(n * tail_fraction)))
    k = min(k, n)
    u = s[n - k - 1] if n > k else s[0]
    p_u = k / n
    if alpha >= p_u:
        threshold = float(np.quantile(s, 1.0 - alpha))
    else:
        excess = s[n - k:] - u
        mean = float(np.mean(excess))
        if mean <= 0:
            # A flat tail (quantised or constant scores): any value beyond it is already rare.
            spread = float(s[-1] - s[0]) or (abs(float(s[-1])) * 0.01 or 1e-9)
            threshold = float(s[-1]) + 0.1 * spread
        else:
            # Robust to a few incidents left in the training data: excesses beyond ten times the
            # median excess are left out of the fit (Gaussian noise has none; spikes do).
            core = excess[excess <= 10.0 * float(np.median(excess))]
            c_mean, c_var = float(np.mean(core)), float(np.var(core))
            shape = 0.5 * (1.0 - c_mean * c_mean / c_var) if c_var > 0 else 0.0
            shape = min(_MAX_SHAPE, max(_MIN_SHAPE, shape))
            scale = c_mean * (1.0 - shape) if c_mean > 0 else mean * (1.0 - shape)
            ratio = p_u / alpha
            if abs(shape) < 1e-6:
                threshold = float(u + scale * math.log(ratio))
            else:
                threshold = float(u + scale / shape * (ratio ** shape - 1.0))
    if floor is not None:
        threshold = max(threshold, floor)
    return threshold


def robust_threshold(scores: np.ndarray, alpha: float, *, floor: float | None = None) -> float:
    """A threshold at rate ``alpha`` that incidents in up to a tenth of ``scores`` cannot move.

    An exponential tail through the 75th and 90th percentiles, extrapolated to ``alpha``: the top
    tenth of the scores is not looked at. It errs high for light tails (about 5.1 for |Gaussian|
    at 1.6e-4, against 3.8), which suits its use: finding incidents to leave out of training,
    where a normal point wrongly left out costs more than an incident kept.
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float(floor) if floor is not None else math.inf
    q75, q90 = (float(v) for v in np.quantile(s, [0.75, 0.90]))
    slope = (q90 - q75) / math.log(2.5)
    threshold = q90 + slope * math.log(0.1 / min(alpha, 0.1))
    if slope <= 0:
        threshold = float(s.max()) + 0.1 * (float(s.max()) - float(s.min()))
    return max(threshold, floor) if floor is not None else threshold
