"""Robust statistics on a series' arrays, for the seasonal baseline: trailing medians and means,
the sustained run, run lengths of one value, group (time-of-day bin) medians and scales with their
leave-one-out shifts, quantisation steps. Pure numpy functions of arrays; no model state.
"""

from __future__ import annotations

import math

import numpy as np

DAY_MS = 86_400_000
_MAD_TO_SIGMA = 1.4826

__all__ = ["sustained", "trailing_mean", "trailing_median", "common", "quantum", "run_durations_ms", "finite", "robust_scale", "spread_of", "covers_day", "bin_medians", "group_medians", "loo_median_shift", "group_robust_scale", "fill_and_smooth", "weekday"]


def sustained(u: np.ndarray, k: int, fraction: float, samples: int = 64) -> np.ndarray:
    """Per point: the median deviation (in band half-widths, signed) over it and the ``k - 1``
    points before it, over ``fraction``, as a magnitude; 0 for the first ``k - 1`` points. It
    reaches 1 when most of the last ``k`` points sit beyond ``fraction`` of the band on one side
    (a gap counts as a point at ``yhat``). Bounded work: windows longer than ``samples`` points
    (an hour at 1 s steps) are sampled evenly, and rows are taken in chunks."""
    out = np.zeros(u.size)
    if u.size < k:
        return out
    stride = max(1, int(math.ceil(k / samples)))
    windows = np.lib.stride_tricks.sliding_window_view(np.nan_to_num(u, nan=0.0), k)[:, ::-1][:, ::stride]
    for lo in range(0, windows.shape[0], 16384):
        out[k - 1 + lo:k - 1 + lo + 16384] = np.abs(np.median(windows[lo:lo + 16384], axis=1)) / fraction
    return out


def trailing_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean of the finite values among the last ``k`` up to and including each point (causal)."""
    ok = np.isfinite(a)
    c = np.concatenate([[0.0], np.cumsum(np.where(ok, a, 0.0))])
    m = np.concatenate([[0], np.cumsum(ok)])
    idx = np.arange(1, a.size + 1)
    lo = np.maximum(0, idx - k)
    count = m[idx] - m[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (c[idx] - c[lo]) / np.maximum(count, 1), np.nan)


def trailing_median(a: np.ndarray, k: int, samples: int = 32) -> np.ndarray:
    """Per point, the median of the finite values among the ``k`` points before it (not itself);
    NaN where there are fewer than 3 (or ``k``) of them. Long windows are sampled at about
    ``samples`` evenly spaced points, which keeps it linear in the number of points."""
    a = np.asarray(a, dtype=np.float64)
    n = a.size
    out = np.full(n, np.nan)
    if n == 0:
        return out
    stride = max(1, int(math.ceil(k / samples)))
    padded = np.concatenate([np.full(k, np.nan), a])
    view = np.lib.stride_tricks.sliding_window_view(padded, k)[:n, ::-1][:, ::stride]
    need = min(3, view.shape[1])
    for lo in range(0, n, 16384):  # bounded memory on long series
        ordered = np.sort(view[lo:lo + 16384], axis=1)  # NaN sorts last
        finite = np.isfinite(ordered).sum(axis=1)
        mid_lo = np.maximum(finite - 1, 0) // 2
        mid_hi = finite // 2
        med = (np.take_along_axis(ordered, mid_lo[:, None], 1)[:, 0]
               + np.take_along_axis(ordered, np.minimum(mid_hi, ordered.shape[1] - 1)[:, None], 1)[:, 0]) / 2.0
        out[lo:lo + 16384] = np.where(finite >= need, med, np.nan)
    return out


def common(t: np.ndarray, flagged: np.ndarray, per_day: float = 0.5) -> bool:
    """Whether the flagged runs are more than ``per_day`` a day on average: too common to be
    incidents, whatever their size."""
    if t.size < 2 or not flagged.any():
        return False
    starts = int((np.diff(flagged.astype(np.int8), prepend=0) == 1).sum())
    days = max((int(t[-1]) - int(t[0])) / DAY_MS, 1.0)
    return starts / days > per_day


def quantum(x: np.ndarray) -> float:
    """The step between neighbouring values of a quantised series (0 when it is not quantised):
    few distinct values for many points, evenly apart."""
    if x.size < 32:
        return 0.0
    distinct = np.unique(x)
    if distinct.size < 2 or distinct.size > max(16, x.size // 8):
        return 0.0
    gaps = np.diff(distinct)
    return float(np.median(gaps))


def run_durations_ms(t: np.ndarray, x: np.ndarray, start_ms: int | None = None) -> np.ndarray:
    """Per point of a gap-free series: time since the current run of one repeated value began.
    ``start_ms`` is when the first point's run began (it may have started before ``t[0]``)."""
    if x.size == 0:
        return np.zeros(0)
    change = np.concatenate([[True], x[1:] != x[:-1]])
    run_id = np.cumsum(change) - 1
    starts = t[change].astype(np.float64)
    if start_ms is not None:
        starts[0] = min(float(start_ms), starts[0])
    return t.astype(np.float64) - starts[run_id]


def finite(times_ms: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(times_ms, dtype=np.int64)
    x = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(x)
    return t[ok], x[ok]


def robust_scale(resid: np.ndarray) -> float:
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


def spread_of(resid: np.ndarray) -> float:
    """Mean absolute deviation from the median, the top 1 % left out (incidents in training)."""
    dev = np.abs(resid - np.median(resid))
    return float(np.mean(np.sort(dev)[: max(1, int(0.99 * dev.size))]))


def covers_day(bins: np.ndarray, n_bins: int) -> bool:
    """At least two points in nine of ten time-of-day bins: a whole day has been seen."""
    return bool((np.bincount(bins, minlength=n_bins) >= 2).mean() >= 0.9)


def bin_medians(values: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    medians, counts = group_medians(values, bins, n_bins)
    return fill_and_smooth(medians, counts > 0)


def group_medians(values: np.ndarray, bins: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``values`` per bin (0 for empty bins) and the counts, without a Python loop."""
    counts = np.bincount(bins, minlength=n_bins)
    if values.size == 0:
        return np.zeros(n_bins), counts
    ordered = values[np.lexsort((values, bins))]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    safe = np.maximum(counts, 1)
    lo = ordered[np.minimum(starts + (safe - 1) // 2, values.size - 1)]
    hi = ordered[np.minimum(starts + safe // 2, values.size - 1)]
    return np.where(counts > 0, (lo + hi) / 2.0, 0.0), counts


def loo_median_shift(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Per point: the median of its group without it, minus the median of the whole group."""
    order = np.lexsort((values, groups))
    ordered = values[order]
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    g = groups[order]
    n = counts[g]
    pos = np.arange(values.size) - starts[g]  # rank inside the group
    base = starts[g]
    last = values.size - 1

    def at(k: np.ndarray) -> np.ndarray:
        return ordered[np.clip(base + k, 0, last)]

    full = (at((n - 1) // 2) + at(n // 2)) / 2.0
    even = n % 2 == 0
    half = n // 2
    # n even: n-1 left, odd, the median is one element; n odd: n-1 left, even, the mean of two.
    loo_even = np.where(pos <= half - 1, at(half), at(half - 1))
    m = (n - 1) // 2
    loo_odd = np.where(pos < m, (at(m) + at(m + 1)) / 2.0,
                       np.where(pos > m, (at(m - 1) + at(m)) / 2.0, (at(m - 1) + at(m + 1)) / 2.0))
    shift_sorted = np.where(n <= 1, 0.0, np.where(even, loo_even, loo_odd) - full)
    out = np.empty(values.size)
    out[order] = shift_sorted
    return out


def group_robust_scale(resid: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """:func:`_robust_scale` per bin (0 for empty bins), vectorised."""
    medians, counts = group_medians(resid, bins, n_bins)
    dev = np.abs(resid - medians[bins])
    mad, _ = group_medians(dev, bins, n_bins)
    scale = _MAD_TO_SIGMA * mad
    if (scale[counts > 0] > 0).all():
        return scale
    # Quantised bins: the trimmed mean absolute deviation, as in _robust_scale.
    ordered = dev[np.lexsort((dev, bins))]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = np.maximum(1, (0.95 * counts).astype(np.int64))
    csum = np.concatenate([[0.0], np.cumsum(ordered)])
    trimmed = (csum[np.minimum(starts + keep, ordered.size)] - csum[starts]) / keep
    return np.where(scale > 0, scale, np.where(counts > 0, 1.2533 * trimmed, 0.0))


def fill_and_smooth(profile: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill empty bins from neighbours and smooth circularly over three bins."""
    if not known.any():
        return np.zeros_like(profile)
    idx = np.arange(profile.size)
    filled = np.interp(idx, idx[known], profile[known], period=profile.size)
    return (np.roll(filled, 1) + 2 * filled + np.roll(filled, -1)) / 4.0


def weekday(t: np.ndarray) -> np.ndarray:
    # 1970-01-01 was a Thursday (weekday 3).
    return ((np.asarray(t, dtype=np.int64) // DAY_MS) + 3) % 7
