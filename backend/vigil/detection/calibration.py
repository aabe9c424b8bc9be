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

from vigil.config import SENSITIVITIES

__all__ = ["pot_threshold", "robust_threshold", "episode_threshold", "episodes_per_day", "false_alarm_rate",
           "out_of_sample_factor", "SECONDS_PER_WEEK"]

SECONDS_PER_WEEK = 7 * 86400.0
#: Bounds on the tail shape: never lighter than exponential (out-of-sample residuals are wider
#: than training ones, so the extrapolation errs high), as heavy as the data says.
_MIN_SHAPE, _MAX_SHAPE = 0.0, 0.5


def _per_week(sensitivity: str) -> float:
    try:
        return SENSITIVITIES[sensitivity]
    except KeyError:
        raise ValueError(f"The 'sensitivity' parameter must be one of {', '.join(SENSITIVITIES)}. "
                         f"Got {sensitivity!r} instead.") from None


def false_alarm_rate(sensitivity: str, step_s: float) -> float:
    """Per-point rate for a sensitivity word: ``medium`` aims at one false alarm per series per week."""
    return min(0.05, _per_week(sensitivity) * max(step_s, 1.0) / SECONDS_PER_WEEK)


def episodes_per_day(sensitivity: str) -> float:
    """False-alarm episodes per series per day a sensitivity word aims at (low/medium/high:
    about one a month, a week, a day)."""
    return _per_week(sensitivity) / 7.0


DAY_MS = 86_400_000
#: How much wider out-of-sample extremes are than in-sample ones, at one episode a week, and how
#: that grows with the return period (measured on ../shared/data; see out_of_sample_factor).
OUT_OF_SAMPLE_WEEKLY, OUT_OF_SAMPLE_SLOPE = 1.68, 0.16


def out_of_sample_factor(per_day: float) -> float:
    """How far to widen an in-sample extrapolation so it keeps ``per_day`` on unseen data.

    A model trained on last week is wrong by more on next week than on its own training days
    (days drift, deploys, a holiday), and the rarer the promised alarm, the further into that
    unseen tail the threshold sits. Measured with ``python -m bench realdata`` (29 KPIs and 38 ASD
    metrics, the same scores re-thresholded): the factor that met one alarm a month, a week and a
    day was about 2.1, 1.7 and 1.2, i.e. ``1.68 * (days between alarms / 7) ** 0.16``.
    """
    days_between = 1.0 / max(per_day, 1e-6)
    return max(1.0, OUT_OF_SAMPLE_WEEKLY * (days_between / 7.0) ** OUT_OF_SAMPLE_SLOPE)
#: Gumbel quantile positions: median = mu + 0.3665 beta, IQR = 1.5725 beta.
_GUMBEL_MEDIAN, _GUMBEL_IQR = -math.log(math.log(2.0)), math.log(math.log(4.0)) - math.log(math.log(4.0 / 3.0))


def episode_threshold(times_ms: np.ndarray, stat: np.ndarray, per_day: float, *, floor: float = 0.0,
                      margin: float = 1.15, min_blocks: int = 8, center: float = 0.0,
                      density: float = 1.0) -> float:
    """The level a statistic exceeds in about ``per_day`` separate episodes a day, out of sample.

    What an operator lives with is episodes, not points: so the threshold is set on block maxima
    (the largest value of ``stat`` in each day of the training data, or in each of ``min_blocks``
    equal blocks when the data covers fewer days). A Gumbel law is fitted to their quartiles (so a
    few incident days in training cannot move it) and extrapolated to ``per_day``; a block exceeds
    the threshold when at least one episode starts in it. Two guards keep the promise out of
    sample: never below ``margin`` times the typical block maximum (measured from ``center``, the
    statistic's normal value) (a perfectly repeating series,
    a daily job that spikes at the same minute every day: what every day does is normal), and
    never below ``floor`` (a domain minimum, e.g. 3 spreads).
    """
    t = np.asarray(times_ms, dtype=np.int64)
    s = np.asarray(stat, dtype=np.float64)
    ok = np.isfinite(s)
    t, s = t[ok], s[ok]
    if s.size == 0:
        return max(floor, 1e-12) if floor > 0 else math.inf
    span_ms = int(t[-1] - t[0]) if t.size > 1 else 0
    if span_ms <= 0 or s.size < 2 * min_blocks:
        return max(floor, center + margin * (float(s.max()) - center), 1e-12)
    block_ms = DAY_MS if span_ms >= min_blocks * DAY_MS else max(1, span_ms // min_blocks)
    block = (t - t[0]) // block_ms
    maxima = np.full(int(block[-1]) + 1, -np.inf)
    np.maximum.at(maxima, block, s)
    # A block with a handful of points (the end of the data, a gap) says little about its maximum.
    counts = np.bincount(block, minlength=maxima.size)
    maxima = maxima[counts >= max(1, 0.5 * float(np.median(counts)))]
    q25, q50, q75 = (float(v) for v in np.quantile(maxima, [0.25, 0.5, 0.75]))
    beta = max(0.0, (q75 - q25) / _GUMBEL_IQR)
    mu = q50 - _GUMBEL_MEDIAN * beta
    density = max(density, 1.0)
    per_block = max(per_day * block_ms / DAY_MS / density, 1e-9)
    threshold = mu - beta * math.log(per_block)
    # Coarse training points miss the extremes between them (a noiseless series' worst
    # interpolation error, a transition): the margin grows with the points each one stands for.
    margin *= density ** 0.25
    threshold = max(threshold, center + margin * (q50 - center))
    # Out of sample, a week-old profile is wrong by more than in training (days drift).
    threshold = center + out_of_sample_factor(per_day) * (threshold - center)
    return float(max(threshold, floor, 1e-12))


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
