"""The robust seasonal baseline: expected value, spread and band from the series' own history.

``yhat(t) = profile(time of day [, weekday or weekend]) + level(t)``: the profile is a median per
time-of-day bin (with separate weekday and weekend profiles when a week of history shows they differ),
and the level is a slowly adapting, spike-clipped correction that tracks growth and settled level
changes causally (it only looks at earlier points). The spread is a robust scale of the
residuals per time-of-day bin, shrunk towards the global one. ``anomaly_score`` is the residual in
spreads divided by the calibrated threshold, so the band edge is exactly ``anomaly_score == 1``.

Also the fallback for every other detector: it scores a series with little history, and it gives
every model its expected band.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import NamedTuple

import numpy as np

from .calibration import false_alarm_rate, pot_threshold

__all__ = ["SeasonalBaseline", "Scores"]

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
_MAD_TO_SIGMA = 1.4826
_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class Scores(NamedTuple):
    """One output contract for every model (see docs/ARCHITECTURE.md)."""

    anomaly_score: np.ndarray
    yhat: np.ndarray
    yhat_lower: np.ndarray
    yhat_upper: np.ndarray


class SeasonalBaseline:
    """Median/MAD baseline with time-of-day and day-of-week awareness.

    Parameters are stored as given (scikit-learn style); learned state ends in ``_``.
    ``step_s`` is the step of the series that will be *scored*: it sets the per-point
    false-alarm rate for the sensitivity.
    """

    name = "seasonal"

    def __init__(self, *, sensitivity: str = "medium", step_s: float = 60.0, level_half_life_s: float = 6 * 3600.0,
                 min_band_z: float = 3.0, seasonal_gain: float = 0.1):
        self.sensitivity = sensitivity
        self.step_s = step_s
        self.level_half_life_s = level_half_life_s
        self.min_band_z = min_band_z
        self.seasonal_gain = seasonal_gain

    # -- fitting -----------------------------------------------------------------------------

    def fit(self, times_ms: np.ndarray, values: np.ndarray) -> "SeasonalBaseline":
        t, x = _finite(times_ms, values)
        if x.size == 0:
            raise ValueError("The 'values' parameter of SeasonalBaseline.fit must have at least one finite value. Got none.")
        self.n_train_ = int(x.size)
        self.train_end_ms_ = int(t[-1])
        self._fit_profile(t, x)
        # Two passes: points far outside the first fit (incidents in the training window) are
        # left out of the second, so the model learns normal behaviour only.
        resid = x - self._profile_at(t)
        z = np.abs(resid - np.median(resid)) / self._global_scale(resid)
        keep = z < 6.0
        if keep.sum() >= max(8, int(0.5 * x.size)) and not keep.all():
            t, x = t[keep], x[keep]
            self._fit_profile(t, x)
            resid = x - self._profile_at(t)
        self.level_ = float(np.median(resid[-max(1, min(resid.size, self._level_window(t))):]))
        self._fit_spread(t, resid - self.level_)
        z_train = np.abs(resid - self.level_) / self._spread_at(t)
        alpha = false_alarm_rate(self.sensitivity, self.step_s)
        self.band_z_ = pot_threshold(z_train, alpha, floor=self.min_band_z)
        return self

    def _fit_profile(self, t: np.ndarray, x: np.ndarray) -> None:
        """Median per time-of-day bin; separate weekday and weekend profiles when that helps."""
        span_ms = int(t[-1] - t[0]) if t.size > 1 else 0
        step_ms = int(np.median(np.diff(t))) if t.size > 1 else 60_000
        self.bin_ms_ = int(max(step_ms, 15 * 60_000))
        self.n_bins_ = max(1, DAY_MS // self.bin_ms_)
        self.center_ = float(np.median(x))
        flat_resid = x - self.center_
        # Row 0 is for weekdays, row 1 for weekends; equal unless the split is used.
        self.daily_ = np.zeros((2, self.n_bins_))
        self.seasonality_ = "none"
        if span_ms < int(1.5 * DAY_MS) or x.size < 4 * self.n_bins_:
            return
        bins = self._bin(t)
        daily = _bin_medians(flat_resid, bins, self.n_bins_)
        with_daily = flat_resid - daily[bins]
        if not _robust_scale(with_daily) < (1 - self.seasonal_gain) * _robust_scale(flat_resid):
            return
        self.daily_[:] = daily
        self.seasonality_ = "daily"
        weekend = _weekday(t) >= 5
        if _covers_day(bins[weekend], self.n_bins_) and _covers_day(bins[~weekend], self.n_bins_):
            split = np.zeros((2, self.n_bins_))
            split[0] = _bin_medians(flat_resid[~weekend], bins[~weekend], self.n_bins_)
            split[1] = _bin_medians(flat_resid[weekend], bins[weekend], self.n_bins_)
            with_split = flat_resid - split[weekend.astype(int), bins]
            if _robust_scale(with_split) < (1 - self.seasonal_gain / 2) * _robust_scale(with_daily):
                self.daily_ = split
                self.seasonality_ = "weekly"

    def _fit_spread(self, t: np.ndarray, resid: np.ndarray) -> None:
        global_scale = self._global_scale(resid)
        self.scale_ = global_scale
        bins = self._bin(t)
        counts = np.bincount(bins, minlength=self.n_bins_)
        shrink = 20.0
        factor = np.ones(self.n_bins_)
        if self.seasonality_ != "none":
            for b in np.flatnonzero(counts):
                local = _robust_scale(resid[bins == b]) or global_scale
                factor[b] = (counts[b] * local + shrink * global_scale) / ((counts[b] + shrink) * global_scale)
        self.spread_factor_ = np.clip(factor, 0.5, 3.0)

    def _global_scale(self, resid: np.ndarray) -> float:
        scale = _robust_scale(resid)
        typical = abs(self.center_) if hasattr(self, "center_") else float(np.median(np.abs(resid)))
        # A floor keeps a flat or quantised series scorable: any change of it is then anomalous,
        # but a change of one part in a thousand of its level is not.
        return max(scale, 1e-3 * typical, 1e-9)

    def _level_window(self, t: np.ndarray) -> int:
        step_ms = max(1.0, float(np.median(np.diff(t)))) if t.size > 1 else 60_000.0
        return int(max(3, self.level_half_life_s * 1000.0 / step_ms))

    # -- prediction --------------------------------------------------------------------------

    def _bin(self, t: np.ndarray) -> np.ndarray:
        return ((np.asarray(t, dtype=np.int64) % DAY_MS) // self.bin_ms_).astype(np.int64) % self.n_bins_

    def _profile_at(self, t: np.ndarray) -> np.ndarray:
        daytype = (_weekday(t) >= 5).astype(np.int64)
        return self.center_ + self.daily_[daytype, self._bin(t)]

    def _spread_at(self, t: np.ndarray) -> np.ndarray:
        return self.scale_ * self.spread_factor_[self._bin(t)]

    def score(self, times_ms: np.ndarray, values: np.ndarray) -> Scores:
        """Causal scores: the level at point i is updated from points before i only."""
        t = np.asarray(times_ms, dtype=np.int64)
        x = np.asarray(values, dtype=np.float64)
        profile = self._profile_at(t)
        spread = self._spread_at(t)
        level = self._causal_level(t, x, profile, spread)
        yhat = profile + level
        z = (x - yhat) / spread
        score = np.abs(z) / self.band_z_
        half = self.band_z_ * spread
        return Scores(score, yhat, yhat - half, yhat + half)

    def _causal_level(self, t: np.ndarray, x: np.ndarray, profile: np.ndarray, spread: np.ndarray) -> np.ndarray:
        """Level before each point: an EWMA of clipped residuals, so spikes barely move it."""
        n = x.size
        level = np.empty(n)
        current = self.level_
        last_ms = self.train_end_ms_
        clip = 2.0
        for i in range(n):
            level[i] = current
            xi = x[i]
            if xi != xi:  # NaN: a gap leaves the level as it was
                continue
            dt_s = max(0.0, (t[i] - last_ms) / 1000.0)
            last_ms = t[i]
            a = 1.0 - math.exp(-dt_s * math.log(2) / self.level_half_life_s) if dt_s else 0.0
            r = xi - profile[i] - current
            bound = clip * spread[i]
            current += a * (r if -bound < r < bound else (bound if r > 0 else -bound))
        return level

    # -- explanation helpers -----------------------------------------------------------------

    def spread_at(self, time_ms: int) -> float:
        return float(self._spread_at(np.array([time_ms]))[0])

    def context(self, time_ms: int) -> str:
        """``"for Tuesday 14:00"``, ``"for 14:00"`` or ``""``: what 'expected' refers to."""
        if self.seasonality_ == "none":
            return ""
        moment = datetime.fromtimestamp(time_ms / 1000.0, tz=timezone.utc)
        clock = moment.strftime("%H:%M UTC")
        if self.seasonality_ == "weekly":
            kind = "weekend" if moment.weekday() >= 5 else "weekday"
            return f"for a {kind} ({_DAY_NAMES[moment.weekday()]}) at {clock}"
        return f"for {clock}"


def _finite(times_ms: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(times_ms, dtype=np.int64)
    x = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(x)
    return t[ok], x[ok]


def _robust_scale(resid: np.ndarray) -> float:
    """MAD-based sigma, with a trimmed mean-absolute-deviation fallback for quantised data."""
    if resid.size == 0:
        return 0.0
    med = np.median(resid)
    dev = np.abs(resid - med)
    mad = _MAD_TO_SIGMA * float(np.median(dev))
    if mad > 0:
        return mad
    trimmed = np.sort(dev)[: max(1, int(0.95 * dev.size))]
    return 1.2533 * float(np.mean(trimmed))


def _covers_day(bins: np.ndarray, n_bins: int) -> bool:
    """At least two points in nine of ten time-of-day bins: a whole day has been seen."""
    return bool((np.bincount(bins, minlength=n_bins) >= 2).mean() >= 0.9)


def _bin_medians(values: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    out = np.zeros(n_bins)
    counts = np.bincount(bins, minlength=n_bins)
    order = np.argsort(bins, kind="stable")
    groups = np.split(values[order], np.cumsum(counts)[:-1])
    for b in np.flatnonzero(counts):
        out[b] = np.median(groups[b])
    return _fill_and_smooth(out, counts > 0)


def _fill_and_smooth(profile: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill empty bins from neighbours and smooth circularly over three bins."""
    if not known.any():
        return np.zeros_like(profile)
    idx = np.arange(profile.size)
    filled = np.interp(idx, idx[known], profile[known], period=profile.size)
    return (np.roll(filled, 1) + 2 * filled + np.roll(filled, -1)) / 4.0


def _weekday(t: np.ndarray) -> np.ndarray:
    # 1970-01-01 was a Thursday (weekday 3).
    return ((np.asarray(t, dtype=np.int64) // DAY_MS) + 3) % 7
