"""The robust seasonal baseline: expected value, spread and band from the series' own history.

``yhat(t) = profile(time of day [, weekday or weekend]) + trend + level(t)``: the profile is a
median per time-of-day bin (with separate weekday and weekend profiles when a week of history
shows they differ); the level is the median residual over the trailing ``level_window_s`` (6 h)
before each point, so settled level changes (a deploy) become the new normal within hours and a
point's score depends only on the model and the points just before it, never on where a panel or
a worker run starts. The spread is a robust scale of the residuals per time-of-day bin, never
below half the series' quantisation step (a CPU metric that only takes a few values is not a
series with no noise).

``anomaly_score`` is the larger of two statistics:

- the point's distance from ``yhat`` over the band half-width ``max(band_z_ * spread,
  min_deviation)``, so the band drawn is exactly where the score is 1. ``band_z_`` is calibrated
  so that about one episode per series per week (``medium``) crosses it on normal data
  (``calibration.episode_threshold``: a threshold on the training data's daily maxima, which what
  happens every day, a daily job included, cannot cross);
- a sustained deviation: the median deviation over the last hour beyond 70 % of the band (a
  moderate level shift that the band alone misses). Its points may lie inside the drawn band;
  the reason says "flagged for its recent pattern (a sustained shift, ...)". Measured on the
  real corpora it adds about 0.1 false alarm per series per week (a mean over the last hour against the band doubled them: real series
  wander for hours, but rarely sit beyond most of the band for an hour);
- a stuck value: a run of one exact value much longer than the series' days ever hold.

A deviation smaller than ``min_deviation`` (absolute, in the series' unit) or
``min_relative_deviation`` times the series' typical level never scores 1. Scores are capped at
``MAX_SCORE`` so that they stay readable.

Also the fallback for every other detector: it scores a series with little history, and it gives
every model its expected band.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import NamedTuple

import numpy as np

from vigil.detection.calibration import episode_threshold, episodes_per_day, robust_threshold
from vigil.detection.robust import (bin_medians, common, covers_day, finite, group_robust_scale, loo_median_shift, quantum,
                     robust_scale, run_durations_ms, spread_of, sustained, trailing_median, weekday)

__all__ = ["SeasonalBaseline", "Scores", "MAX_SCORE", "trailing_median"]

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
#: Scores are capped here: 100 times past the threshold is as anomalous as a reader needs to know.
MAX_SCORE = 100.0


class Scores(NamedTuple):
    """One output contract for every model (see docs/ARCHITECTURE.md)."""

    anomaly_score: np.ndarray
    yhat: np.ndarray
    yhat_lower: np.ndarray
    yhat_upper: np.ndarray


class SeasonalBaseline:
    """Median/MAD baseline with time-of-day and day-of-week awareness.

    Parameters are stored as given (scikit-learn style); learned state ends in ``_``.
    ``step_s`` is the step of the series that will be *scored*. ``budget`` is the share of the
    sensitivity's false-alarm episodes this model may spend (a learned model that adds its own
    alarms gives the baseline part of it).
    """

    name = "seasonal"

    def __init__(self, *, sensitivity: str = "medium", step_s: float = 60.0, level_window_s: float = 6 * 3600.0,
                 min_band_z: float = 3.0, seasonal_gain: float = 0.1, budget: float = 1.0, min_stuck_s: float = 1800.0,
                 min_deviation: float = 0.0, min_relative_deviation: float = 0.01):
        self.sensitivity = sensitivity
        self.budget = budget
        self.min_stuck_s = min_stuck_s
        self.step_s = step_s
        self.level_window_s = level_window_s
        self.min_band_z = min_band_z
        self.seasonal_gain = seasonal_gain
        self.min_deviation = min_deviation
        self.min_relative_deviation = min_relative_deviation

    # -- fitting -----------------------------------------------------------------------------

    def fit(self, times_ms: np.ndarray, values: np.ndarray) -> "SeasonalBaseline":
        t, x = finite(times_ms, values)
        if x.size == 0:
            raise ValueError("The 'values' parameter of SeasonalBaseline.fit must have at least one finite value. Got none.")
        # Trained on normal data: incidents inside the training window (a level shift of a few
        # hours, a burst) would otherwise widen the band and the shift threshold so much that the
        # next such incident is missed. The first fit scores its own training data against
        # thresholds taken from the body of the score distribution (which a few hours of
        # incident cannot move); the episodes that flags are left out and the model is fitted
        # again. Only when they are few: a series that is "anomalous" for a large part of its
        # history has changed, and that is its normal now.
        fitted = self._fit_once(t, x)
        excluded = np.zeros(x.size, dtype=bool)
        for _ in range(self.incident_passes):
            kept = np.flatnonzero(~excluded)
            found = np.zeros(x.size, dtype=bool)
            found[kept] = self._incidents(t[kept], *fitted)
            if self.resting_ and common(t, found & ~excluded):
                # A series that rests on one value most of the time (an error counter at 0) and
                # leaves it every day or two: those bursts are its normal, not incidents.
                break
            if not (found & ~excluded).any() or (excluded | found).sum() > self.max_incident_fraction * x.size:
                break
            excluded |= found
            fitted = self._fit_once(t[~excluded], x[~excluded])
        self.n_excluded_ = int(excluded.sum())
        return self

    #: a deviation whose median over this long is beyond ``sustained_fraction`` of the band is
    #: anomalous too (a moderate level shift the band alone would miss)
    sustained_s = 3600.0
    sustained_fraction = 0.7
    #: neighbouring time-of-day bins on each side pooled into a bin's spread
    spread_reach_bins = 2
    #: times the training data is searched for incidents (each after refitting without them)
    incident_passes = 3
    #: most of the training data that may be left out as incidents
    max_incident_fraction = 0.1
    #: how far beyond the robust thresholds a training point must be to count as an incident:
    #: a normal point left out of training costs calibration more than an incident kept
    incident_margin = 1.1

    def _incidents(self, t: np.ndarray, kept: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Training points inside incidents: flagged against a robust threshold, with the time
        until the series is back near its band."""
        band_z = self.incident_margin * robust_threshold(np.abs(z), self._point_rate(), floor=self.min_band_z)
        scores = np.abs(z) / band_z
        flagged = scores >= 1.0
        out = np.ones(t.size, dtype=bool)  # the gross outliers the fit left out stay out
        out[kept] = False
        flagged &= ~self._recurring(t[kept], flagged)
        if not flagged.any():
            return out
        inside = flagged.copy()
        elevated = scores >= 0.5
        for i in np.flatnonzero(flagged):
            j = i + 1
            while j < scores.size and elevated[j] and not inside[j]:
                inside[j] = True
                j += 1
        out[kept[inside]] = True
        return out

    def _recurring(self, t: np.ndarray, flagged: np.ndarray) -> np.ndarray:
        """Flagged points at a time of day flagged on at least three days and half of the days: a nightly reset or
        a daily job is the series' pattern, not an incident, and the profile must learn it."""
        if not flagged.any() or not hasattr(self, "n_bins_"):
            return np.zeros(t.size, dtype=bool)
        bins, days = self._bin(t), (t // DAY_MS) - t[0] // DAY_MS
        n_days = int(days[-1]) + 1
        hits = np.zeros((self.n_bins_, n_days), dtype=bool)
        hits[bins[flagged], days[flagged]] = True
        near = hits | np.roll(hits, 1, axis=0) | np.roll(hits, -1, axis=0)
        daily = near.sum(axis=1) >= max(3, n_days // 2)  # seen on three days at least
        return flagged & daily[bins]

    def _point_rate(self) -> float:
        """A per-point rate for the incident search only: episodes a day spread over a day's points."""
        return min(0.05, self.budget * episodes_per_day(self.sensitivity) * max(self.step_s, 1.0) / 86400.0)

    def _fit_once(self, t: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fit every learned state on finite, sorted points. Returns the indices of the points
        kept (gross outliers are left out) and their residuals in spreads."""
        kept = np.arange(x.size)
        self.n_train_ = int(x.size)
        self.train_end_ms_ = int(t[-1])
        self.slope_ = 0.0  # per ms: growth (a leak, more users) is not a season
        self.t_ref_ms_ = int(t[-1])
        self.quantum_ = quantum(x)
        self.typical_ = float(np.median(np.abs(x)))
        self._fit_profile(t, x)
        # Two passes: points far outside the first fit (incidents in the training window) are
        # left out of the second, so the model learns normal behaviour only.
        resid = x - self._profile_at(t)
        scale = self._global_scale(resid)
        z = np.abs(resid - np.median(resid)) / scale
        far = z >= 6.0
        self.resting_ = bool(np.mean(x == np.median(x)) > 0.5)
        keep = ~far | self._recurring(t, far)
        if self.resting_ and common(t, far):
            keep[:] = True
        refit = keep.sum() >= max(8, int(0.5 * x.size)) and not keep.all()
        if refit:
            t, x, resid, kept = t[keep], x[keep], resid[keep], kept[keep]
        if t.size > 2 and t[-1] - t[0] >= 1.5 * DAY_MS:
            # A least-squares trend of the residual (points within 3 spreads), re-estimated after
            # each profile fit (the weekday and weekend profiles soak up part of it): a week-old
            # weekend profile is otherwise a week of growth behind.
            dt = (t - self.t_ref_ms_).astype(np.float64)
            for _ in range(3):
                near = np.abs(resid - np.median(resid)) < 3 * scale
                if near.sum() <= 2:
                    break
                # The within estimate: separate weekday and weekend profiles each soak up their
                # own days' mean level, so time is centred per day type (pooled, each pass would
                # recover only ~40 % of the growth and the weekday profile would lag behind it).
                groups = (weekday(t[near]) >= 5).astype(np.int64)
                if self.seasonality_ != "weekly":
                    groups[:] = 0
                sums, counts = np.bincount(groups, dt[near], minlength=2), np.bincount(groups, minlength=2)
                d, r = dt[near] - (sums / np.maximum(counts, 1))[groups], resid[near]
                slope = float((d * (r - r.mean())).sum() / max((d * d).sum(), 1e-12))
                if abs(slope) * (t[-1] - t[0]) <= 0.25 * scale:
                    break
                self.slope_ += slope
                self._fit_profile(t, x - self.slope_ * dt)
                resid = x - self._profile_at(t)
                refit = True
            if abs(self.slope_) * (t[-1] - t[0]) <= 0.5 * scale:
                self.slope_ = 0.0
        if refit:
            self._fit_profile(t, x - self.slope_ * (t - self.t_ref_ms_))
            resid = x - self._profile_at(t)
        train_step_ms = float(np.median(np.diff(t))) if t.size > 1 else self.step_s * 1000.0
        # Calibrate on residuals from the same trailing level the scores will use, and against a
        # profile that did not see the point (leave-one-out medians): an in-sample median fits
        # its own points, and a band calibrated on them is too narrow.
        profile = x - resid + 0.5 * self._loo_shift(t, x)  # 0.5: the bin's weight in the smoothing
        r = x - profile
        level = trailing_median(r, self._points(self.level_window_s, train_step_ms))
        level = np.where(np.isfinite(level), level, float(np.median(r)))
        self._fit_spread(t, r - level)
        window = self._points(self.level_window_s, train_step_ms)
        self.level_ = float(np.median(r[-window:]))
        spread = self._spread_at(t)
        z_train = (r - level) / spread
        # Calibrated on episodes (a day's maximum), not points; the training history may be
        # sampled coarser than what is scored, and a day of more points has a larger maximum.
        per_day = self.budget * episodes_per_day(self.sensitivity)
        density = train_step_ms / max(self.step_s * 1000.0, 1.0)
        self.band_z_ = episode_threshold(t, np.abs(z_train), per_day, floor=self.min_band_z, density=density)
        self._fit_stuck(t, x)
        return kept, z_train

    def _points(self, seconds: float, step_ms: float, minimum: int = 2) -> int:
        return int(max(minimum, round(seconds * 1000.0 / max(step_ms, 1.0))))

    def _loo_shift(self, t: np.ndarray, x: np.ndarray) -> np.ndarray:
        if self.seasonality_ == "none":
            return np.zeros(x.size)
        groups = self._bin(t)
        n_groups = self.n_bins_
        if self.seasonality_ == "weekly":
            groups = groups + self.n_bins_ * (weekday(t) >= 5)
            n_groups *= 2
        return loo_median_shift(x - self.slope_ * (t - self.t_ref_ms_), groups, n_groups)

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
        daily = bin_medians(flat_resid, bins, self.n_bins_)
        with_daily = flat_resid - daily[bins]
        # Mean absolute deviations decide: a pattern on 2 days of 7 barely moves a median.
        if not spread_of(with_daily) < (1 - self.seasonal_gain) * spread_of(flat_resid):
            return
        self.daily_[:] = daily
        self.seasonality_ = "daily"
        weekend = weekday(t) >= 5
        if covers_day(bins[weekend], self.n_bins_) and covers_day(bins[~weekend], self.n_bins_):
            split = np.zeros((2, self.n_bins_))
            split[0] = bin_medians(flat_resid[~weekend], bins[~weekend], self.n_bins_)
            split[1] = bin_medians(flat_resid[weekend], bins[weekend], self.n_bins_)
            with_split = flat_resid - split[weekend.astype(int), bins]
            if spread_of(with_split) < (1 - self.seasonal_gain / 2) * spread_of(with_daily):
                self.daily_ = split
                self.seasonality_ = "weekly"

    def _fit_spread(self, t: np.ndarray, resid: np.ndarray) -> None:
        global_scale = self._global_scale(resid)
        self.scale_ = global_scale
        factor = np.ones(self.n_bins_)
        if self.seasonality_ != "none":
            # Noise often scales with the level (a request rate is noisier at its peak than at
            # night): each bin's spread is measured on it and its neighbours (an hour and a quarter
            # at 15-minute bins), lightly shrunk towards the global spread.
            bins = self._bin(t)
            reach = self.spread_reach_bins
            pooled = np.concatenate([(bins + d) % self.n_bins_ for d in range(-reach, reach + 1)])
            counts = np.bincount(pooled, minlength=self.n_bins_)
            local = group_robust_scale(np.tile(resid, 2 * reach + 1), pooled, self.n_bins_)
            local = np.where(local > 0, local, global_scale)
            shrink = 10.0
            factor = (counts * local + shrink * global_scale) / ((counts + shrink) * global_scale)
        factor = np.clip(factor, 0.2, 5.0)
        # Quantised values (a CPU share that only takes a few levels, integer counts): a change by
        # one step is the smallest thing the series can do, not a multiple of a zero spread.
        factor = np.maximum(factor, 0.5 * self.quantum_ / global_scale)
        self.spread_factor_ = factor

    def _global_scale(self, resid: np.ndarray) -> float:
        scale = robust_scale(resid)
        typical = abs(self.center_) if hasattr(self, "center_") else float(np.median(np.abs(resid)))
        # A floor keeps a flat or quantised series scorable: any change of it is then anomalous,
        # but a change of one part in a thousand of its level is not.
        return max(scale, 0.5 * getattr(self, "quantum_", 0.0), 1e-3 * typical, 1e-9)

    # -- prediction --------------------------------------------------------------------------

    def _bin(self, t: np.ndarray) -> np.ndarray:
        return ((np.asarray(t, dtype=np.int64) % DAY_MS) // self.bin_ms_).astype(np.int64) % self.n_bins_

    def _profile_at(self, t: np.ndarray) -> np.ndarray:
        daytype = (weekday(t) >= 5).astype(np.int64)
        # Linear between bin centres: a steep morning ramp is not a staircase.
        position = (np.asarray(t, dtype=np.int64) % DAY_MS) / self.bin_ms_ - 0.5
        low = np.floor(position)
        frac = position - low
        low = low.astype(np.int64) % self.n_bins_
        high = (low + 1) % self.n_bins_
        seasonal = (1.0 - frac) * self.daily_[daytype, low] + frac * self.daily_[daytype, high]
        return self.center_ + seasonal + self.slope_ * (t - self.t_ref_ms_)

    def _spread_at(self, t: np.ndarray) -> np.ndarray:
        return self.scale_ * self.spread_factor_[self._bin(t)]

    def spreads(self, times_ms: np.ndarray) -> np.ndarray:
        """The robust spread at each time (the band is ``band_z_`` of these, or min_deviation)."""
        return self._spread_at(np.asarray(times_ms, dtype=np.int64))

    def min_deviation_(self) -> float:
        """The smallest distance from ``yhat`` that can be anomalous, in the series' unit."""
        return max(self.min_deviation, self.min_relative_deviation * self.typical_)

    def context_s(self) -> float:
        """Seconds of points before the first scored one that its score looks at: a caller that
        passes this much history gets the same score for a point whatever range it scores (the
        sustained run looks back ``sustained_s`` at points whose level looks back further)."""
        return self.level_window_s + self.sustained_s

    def score(self, times_ms: np.ndarray, values: np.ndarray) -> Scores:
        """Scores of each point from the model and the ``context_s()`` of points before it."""
        t = np.asarray(times_ms, dtype=np.int64)
        x = np.asarray(values, dtype=np.float64)
        diffs = np.diff(t)
        step_ms = float(np.median(diffs[diffs > 0])) if (diffs > 0).any() else self.step_s * 1000.0
        profile = self._profile_at(t)
        spread = self._spread_at(t)
        level = trailing_median(x - profile, self._points(self.level_window_s, step_ms))
        level = np.where(np.isfinite(level), level, self.level_)
        yhat = profile + level
        deviation = x - yhat
        half = np.maximum(self.band_z_ * spread, self.min_deviation_())
        score = np.abs(deviation) / half
        score = np.maximum(score, sustained(deviation / half, self._points(self.sustained_s, step_ms, 3),
                                             self.sustained_fraction))
        if hasattr(self, "floor_value_"):  # models pickled before the stuck statistic have none
            score = np.maximum(score, self._run_ms(t, x) / self.stuck_ms_)
        score = np.where(np.isfinite(deviation), np.minimum(score, MAX_SCORE), np.nan)
        return Scores(score, yhat, yhat - half, yhat + half)

    def _fit_stuck(self, t: np.ndarray, x: np.ndarray) -> None:
        """How long the series may repeat one value: twice its typical day's longest run in
        training (the median over days: one stuck incident in the window does not count), and at
        least ``min_stuck_s``. A noisy gauge never repeats a value exactly; one that does for an
        hour has stopped updating (a stuck exporter, a frozen process), which no band can see."""
        runs = run_durations_ms(t, x)
        day = (t // DAY_MS) - t[0] // DAY_MS
        longest = np.zeros(int(day[-1]) + 1)
        np.maximum.at(longest, day, runs)
        seen = np.bincount(day) > 0
        typical = float(np.median(longest[seen]))
        # Quantised series repeat values by nature: the longest run of any day is normal for them.
        if self.quantum_ > 0:
            typical = max(typical, float(longest[seen].max()))
        self.stuck_ms_ = float(max(2.0 * typical, self.min_stuck_s * 1000.0))
        # The run the training data ends in, so scoring right after it continues the count.
        # Sitting at the floor (zero errors, an idle queue) is rest, not a frozen series.
        self.floor_value_ = float(x.min())
        self.run_value_ = float(x[-1])
        self.run_start_ms_ = int(t[-1] - runs[-1])

    def _run_ms(self, t: np.ndarray, x: np.ndarray) -> np.ndarray:
        """For each point, how long the series has held its current value (0 on a change or gap)."""
        ok = np.isfinite(x)
        durations = np.zeros(x.size)
        if not ok.any():
            return durations
        idx = np.flatnonzero(ok)
        tf, xf = t[idx], x[idx]
        first = idx[0]
        continues = (xf[0] == self.run_value_ and self.run_start_ms_ <= tf[0]
                     and tf[0] - self.train_end_ms_ <= 2 * self.step_s * 1000.0)
        durations[idx] = run_durations_ms(tf, xf, start_ms=self.run_start_ms_ if continues else int(t[first]))
        durations[x <= self.floor_value_] = 0.0
        return durations

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
