"""Seeded, labelled synthetic metric series: realistic shapes with planted anomalies.

Owns: the shapes (``cpu``, ``memory``, ``request_rate``, ``error_count``, ``latency``), the anomaly
kinds planted into them, and the ground truth (``is_anomaly`` per point, ``events`` per anomaly).
Used by the tests and the benchmarks (the demo workload has its own live signal model). Must not: score, fetch or plot.

How a series is made. Each shape has an *expected* value ``e(t)`` (level, trend, daily and weekly
pattern) and a local *noise scale* ``s(t)`` (the standard deviation of what is not predictable from
time: AR(1) noise, Poisson counts, the GC sawtooth of memory). The clean series is ``e + noise``.
Anomalies are sized in noise units over the local expected value: spikes and dips 4-8 ``s``,
level shifts 3-5 ``s`` for hours, drifts ramping to 4-8 ``s``. Latency is multiplicative, so its
anomalies are planted in log space. Everything is deterministic per ``seed``; the clean part of a
series with anomalies is identical to ``generate(shape, seed=seed)`` without them.

Labels: ``is_anomaly[i] == 1`` exactly on the span of a planted event and nowhere else (values
outside the spans equal the clean series; inside, a dip of a count already at 0 may change
nothing, which is the nature of that data); each event ``(start_ms, end_ms)`` gives the first and the last anomalous sample (both inclusive).
Anomalies start after ``anomaly_after_fraction`` of the series, so a model can train on the rest.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

__all__ = ["SHAPES", "KINDS", "LabelledSeries", "generate", "corpus", "DEFAULT_START_MS"]

SHAPES: tuple[str, ...] = ("cpu", "memory", "request_rate", "error_count", "latency")
KINDS: tuple[str, ...] = (
    "spike", "dip", "level_shift", "variance_burst", "drift", "seasonality_break", "stuck", "dropout",
)

# Monday 2024-01-01 00:00 UTC: a fixed start keeps series identical across runs and machines.
DEFAULT_START_MS = 1_704_067_200_000
_DAY_S = 86400.0
_HOUR_S = 3600.0
_MIB = float(1 << 20)

# Event durations per kind, in seconds (low, high); seasonality_break is sized by the daily peak.
_DURATION_S: dict[str, tuple[float, float]] = {
    "spike": (60.0, 600.0),
    "dip": (300.0, 1800.0),
    "level_shift": (2 * _HOUR_S, 8 * _HOUR_S),
    "variance_burst": (1 * _HOUR_S, 4 * _HOUR_S),
    "drift": (6 * _HOUR_S, 24 * _HOUR_S),
    "seasonality_break": (_DAY_S, _DAY_S),
    "stuck": (1 * _HOUR_S, 6 * _HOUR_S),
    "dropout": (600.0, 2 * _HOUR_S),
}


class LabelledSeries(NamedTuple):
    name: str
    shape: str
    kind: str | None
    times_ms: np.ndarray  # int64 epoch ms, strictly increasing
    values: np.ndarray  # float64; NaN for missing samples (dropouts)
    is_anomaly: np.ndarray  # int8 0/1 ground truth per point
    events: list[tuple[int, int]]  # (start_ms, end_ms) of each planted anomaly, both inclusive


class _Model(NamedTuple):
    """A clean series in the space where anomalies are planted (log space for latency)."""

    expected: np.ndarray
    scale: np.ndarray
    values: np.ndarray
    expected_at: Callable[[np.ndarray, float, bool], np.ndarray]  # (seconds, shift_h, no_peak)
    finish: Callable[[np.ndarray], np.ndarray]  # planting space -> metric units, bounds
    # Counts: a changed rate is drawn afresh (shifting Poisson counts by 1.3 is not a count).
    resample: Callable[[np.random.Generator, np.ndarray], np.ndarray] | None = None
    upward_only: bool = False  # errors rise in an incident; fewer errors than usual is not one


def _daily(hour_of_day: np.ndarray, peak_h: float, width_h: float) -> np.ndarray:
    """A smooth daily bump in [0, 1] peaking at ``peak_h`` (wrapped around midnight)."""
    distance_h = (hour_of_day - peak_h + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (distance_h / width_h) ** 2)


def _calendar(seconds: np.ndarray, shift_h: float) -> tuple[np.ndarray, np.ndarray]:
    """(hour of day, weekend 0/1) in UTC for epoch ``seconds`` shifted by ``shift_h`` hours."""
    shifted = seconds + shift_h * _HOUR_S
    hour = (shifted % _DAY_S) / _HOUR_S
    day_of_week = ((shifted // _DAY_S).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    return hour, (day_of_week >= 5).astype(np.float64)


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """Unit-variance AR(1) noise (correlated like real scrape-to-scrape noise)."""
    innovations = rng.standard_normal(n) * math.sqrt(1.0 - phi * phi)
    out = np.empty(n)
    level = rng.standard_normal()
    for i in range(n):  # n is at most a few hundred thousand; a plain loop keeps it exact
        level = phi * level + innovations[i]
        out[i] = level
    return out


def _seasonal(seconds: np.ndarray, shift_h: float, no_peak: bool, peak_h: float, width_h: float,
              weekend_factor: float) -> np.ndarray:
    hour, weekend = _calendar(seconds, shift_h)
    bump = np.zeros_like(seconds, dtype=np.float64) if no_peak else _daily(hour, peak_h, width_h)
    return bump * (1.0 - (1.0 - weekend_factor) * weekend)


def _cpu(rng: np.random.Generator, seconds: np.ndarray, step_s: float) -> _Model:
    base = rng.uniform(0.12, 0.3)
    amplitude = rng.uniform(0.2, 0.35)
    peak_h, width_h, weekend = rng.uniform(13, 16), rng.uniform(3, 4.5), rng.uniform(0.3, 0.5)
    sigma = rng.uniform(0.015, 0.03)

    def expected_at(s: np.ndarray, shift_h: float = 0.0, no_peak: bool = False) -> np.ndarray:
        return base + amplitude * _seasonal(s, shift_h, no_peak, peak_h, width_h, weekend)

    expected = expected_at(seconds)
    scale = np.full_like(expected, sigma)
    values = expected + sigma * _ar1(rng, seconds.size, _phi(step_s, 0.6))
    return _Model(expected, scale, values, expected_at, lambda v: np.clip(v, 0.0, 1.0))


def _memory(rng: np.random.Generator, seconds: np.ndarray, step_s: float) -> _Model:
    base = rng.uniform(1.0, 3.0) * 1024 * _MIB
    growth_per_day = base * rng.uniform(0.005, 0.02)
    daily_bytes = rng.uniform(150, 300) * _MIB
    peak_h, width_h = rng.uniform(12, 17), rng.uniform(4, 6)
    gc_bytes = rng.uniform(48, 96) * _MIB
    jitter_bytes = rng.uniform(2, 6) * _MIB

    def expected_at(s: np.ndarray, shift_h: float = 0.0, no_peak: bool = False) -> np.ndarray:
        d = (s - seconds[0]) / _DAY_S
        return base + growth_per_day * d + daily_bytes * _seasonal(s, shift_h, no_peak, peak_h, width_h, 0.6)

    # GC sawtooth: the heap grows linearly for 20-40 minutes, then a collection drops it.
    sawtooth = np.empty(seconds.size)
    cycle_start_s, cycle_s = seconds[0] - rng.uniform(0, 1800), rng.uniform(1200, 2400)
    for i, t in enumerate(seconds):
        while t - cycle_start_s >= cycle_s:
            cycle_start_s += cycle_s
            cycle_s = rng.uniform(1200, 2400)
        sawtooth[i] = (t - cycle_start_s) / cycle_s - 0.5
    expected = expected_at(seconds)
    scale = np.full_like(expected, math.sqrt(gc_bytes**2 / 12.0 + jitter_bytes**2))
    values = expected + gc_bytes * sawtooth + jitter_bytes * rng.standard_normal(seconds.size)
    return _Model(expected, scale, values, expected_at, lambda v: np.round(np.maximum(v, 0.0)))


def _request_rate(rng: np.random.Generator, seconds: np.ndarray, step_s: float) -> _Model:
    peak_rps = rng.uniform(100, 400)
    night_fraction = rng.uniform(0.15, 0.3)
    peak_h, width_h, weekend = rng.uniform(12, 15), rng.uniform(4, 5.5), rng.uniform(0.4, 0.6)
    overdispersion = rng.uniform(0.02, 0.04)

    def expected_at(s: np.ndarray, shift_h: float = 0.0, no_peak: bool = False) -> np.ndarray:
        season = _seasonal(s, shift_h, no_peak, peak_h, width_h, weekend)
        return peak_rps * (night_fraction + (1.0 - night_fraction) * season)

    expected = expected_at(seconds)
    # A rate over one step of a Poisson counter, with traffic that is burstier than Poisson.
    wobble = 1.0 + overdispersion * _ar1(rng, seconds.size, _phi(step_s, 0.5))
    values = rng.poisson(np.maximum(expected * wobble, 0.0) * step_s) / step_s
    scale = np.sqrt(expected / step_s + (overdispersion * expected) ** 2)
    return _Model(expected, scale, values, expected_at, lambda v: np.maximum(v, 0.0))


def _error_count(rng: np.random.Generator, seconds: np.ndarray, step_s: float) -> _Model:
    night_rate, day_rate = rng.uniform(0.2, 0.4), rng.uniform(1.5, 2.2)
    peak_h, width_h = rng.uniform(12, 16), rng.uniform(3.5, 5)

    def expected_at(s: np.ndarray, shift_h: float = 0.0, no_peak: bool = False) -> np.ndarray:
        return night_rate + (day_rate - night_rate) * _seasonal(s, shift_h, no_peak, peak_h, width_h, 0.5)

    expected = expected_at(seconds)
    values = rng.poisson(expected).astype(np.float64)
    # At least one count of scale: "4 noise units" must mean a few extra errors even at night.
    scale = np.sqrt(np.maximum(expected, 1.0))
    return _Model(expected, scale, values, expected_at, lambda v: np.round(np.maximum(v, 0.0)),
                  resample=lambda r, rate: r.poisson(np.maximum(rate, 0.0)).astype(np.float64), upward_only=True)


def _latency(rng: np.random.Generator, seconds: np.ndarray, step_s: float) -> _Model:
    """Planted in log space: value = median(t) * exp(sigma * noise)."""
    median_s = rng.uniform(0.05, 0.25)
    daily_gain = rng.uniform(0.5, 0.9)
    peak_h, width_h = rng.uniform(12, 16), rng.uniform(3, 5)
    sigma = rng.uniform(0.08, 0.15)

    def expected_at(s: np.ndarray, shift_h: float = 0.0, no_peak: bool = False) -> np.ndarray:
        return np.log(median_s * (1.0 + daily_gain * _seasonal(s, shift_h, no_peak, peak_h, width_h, 0.5)))

    expected = expected_at(seconds)
    values = expected + sigma * _ar1(rng, seconds.size, _phi(step_s, 0.4))
    return _Model(expected, np.full_like(expected, sigma), values, expected_at, np.exp)


_SHAPE_MAKERS: dict[str, Callable[[np.random.Generator, np.ndarray, float], _Model]] = {
    "cpu": _cpu,
    "memory": _memory,
    "request_rate": _request_rate,
    "error_count": _error_count,
    "latency": _latency,
}


def _phi(step_s: float, phi_at_60s: float) -> float:
    """AR(1) coefficient that keeps the same correlation time whatever the step."""
    return float(phi_at_60s ** (step_s / 60.0))


def _slots(first: int, n: int, count: int) -> list[tuple[int, int]]:
    edges = np.linspace(first, n, count + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _place(rng: np.random.Generator, slot: tuple[int, int], length: int) -> tuple[int, int] | None:
    """A span of ``length`` points inside the slot, away from its edges; None if it cannot fit."""
    lo, hi = slot
    guard = max(1, (hi - lo) // 20)
    lo, hi = lo + guard, hi - guard
    if hi - lo < 1:
        return None
    length = min(length, hi - lo)
    start = int(rng.integers(lo, hi - length + 1))
    return start, start + length


def _shift(model: _Model, values: np.ndarray, a: int, b: int, delta: np.ndarray,
           rng: np.random.Generator) -> None:
    """Move the expected value of ``values[a:b]`` by ``delta``, keeping the noise of the shape."""
    if model.resample is None:
        values[a:b] += delta
    else:
        values[a:b] = model.resample(rng, model.expected[a:b] + delta)


def _plant(kind: str, model: _Model, values: np.ndarray, seconds: np.ndarray, step_s: float,
           slot: tuple[int, int], rng: np.random.Generator) -> np.ndarray | None:
    """Change ``values`` in place for one event inside ``slot``; return the changed mask."""
    e, s = model.expected, model.scale
    low_s, high_s = _DURATION_S[kind]
    length = max(1, int(round(rng.uniform(low_s, high_s) / step_s)))
    mask = np.zeros(values.size, dtype=bool)

    if kind == "seasonality_break":
        lo, hi = slot
        shift_h = float(rng.uniform(6, 12))
        no_peak = bool(rng.random() < 0.5)
        alternative = model.expected_at(seconds, 0.0 if no_peak else shift_h, no_peak)
        differs = np.abs(alternative - e) >= s
        differs[:lo] = False
        differs[hi:] = False
        # The longest run of clearly different expected values, at most a day, is the event.
        best, run_start = (0, 0), None
        for i in range(lo, hi + 1):
            inside = i < hi and differs[i]
            if inside and run_start is None:
                run_start = i
            if not inside and run_start is not None:
                if i - run_start > best[1] - best[0]:
                    best = (run_start, i)
                run_start = None
        if best[1] - best[0] < 1:
            return None
        a, b = best[0], min(best[1], best[0] + length)
        _shift(model, values, a, b, alternative[a:b] - e[a:b], rng)
        mask[a:b] = True
        return mask

    span = _place(rng, slot, length)
    if span is None:
        return None
    a, b = span
    sign = 1.0 if model.upward_only or rng.random() < 0.5 else -1.0
    if kind == "spike":
        k = rng.uniform(4, 8)
        values[a:b] = e[a:b] + k * s[a:b] * (1.0 + 0.05 * rng.standard_normal(b - a))
    elif kind == "dip":
        k = rng.uniform(4, 8)
        values[a:b] = e[a:b] - k * s[a:b] * (1.0 + 0.05 * rng.standard_normal(b - a))
    elif kind == "level_shift":
        _shift(model, values, a, b, sign * rng.uniform(3, 5) * s[a:b], rng)
    elif kind == "variance_burst":
        factor = rng.uniform(3, 5)
        burst = rng.standard_normal(b - a) * s[a:b] * factor
        values[a:b] = e[a:b] + burst
    elif kind == "drift":
        ramp = np.linspace(0.0, 1.0, b - a + 1)[1:]
        _shift(model, values, a, b, sign * rng.uniform(4, 8) * s[a:b] * ramp, rng)
    elif kind == "stuck":
        values[a:b] = values[a - 1] if a > 0 else e[a]
    elif kind == "dropout":
        values[a:b] = np.nan if rng.random() < 0.5 else -np.inf  # -inf means "reads 0", see finish
    else:
        raise ValueError(f"The 'kind' parameter of generate must be one of {KINDS} or None. Got {kind!r} instead.")
    mask[a:b] = True
    return mask


def generate(
    shape: str,
    *,
    days: float = 14,
    step_s: float = 60,
    seed: int = 0,
    kind: str | None = None,
    n_events: int = 1,
    start_ms: int | None = None,
    anomaly_after_fraction: float = 0.5,
) -> LabelledSeries:
    """One labelled series of ``shape`` with ``n_events`` anomalies of ``kind`` (none if kind is None).

    Events are spread over equal slots of the part after ``anomaly_after_fraction``; an event that
    cannot fit its slot (too short a series) is left out, so ``len(events) <= n_events``.
    """
    if shape not in SHAPES:
        raise ValueError(f"The 'shape' parameter of generate must be one of {SHAPES}. Got {shape!r} instead.")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"The 'kind' parameter of generate must be one of {KINDS} or None. Got {kind!r} instead.")
    if not (days > 0 and step_s > 0):
        raise ValueError(f"The 'days' and 'step_s' parameters of generate must be > 0. Got {days!r}, {step_s!r} instead.")
    if not 0.0 <= anomaly_after_fraction < 1.0:
        raise ValueError(
            f"The 'anomaly_after_fraction' parameter of generate must be in [0, 1). Got {anomaly_after_fraction!r} instead."
        )
    if n_events < 0:
        raise ValueError(f"The 'n_events' parameter of generate must be >= 0. Got {n_events!r} instead.")

    n = int(round(days * _DAY_S / step_s))
    origin_ms = DEFAULT_START_MS if start_ms is None else int(start_ms)
    times_ms = origin_ms + np.round(np.arange(n) * step_s * 1000.0).astype(np.int64)
    seconds = times_ms / 1000.0  # calendar features only; instants stay in times_ms

    shape_index = SHAPES.index(shape)
    model = _SHAPE_MAKERS[shape](np.random.default_rng([seed, shape_index]), seconds, step_s)
    planted = model.values.copy()
    is_anomaly = np.zeros(n, dtype=np.int8)
    events: list[tuple[int, int]] = []
    if kind is not None and n_events > 0:
        rng = np.random.default_rng([seed, shape_index, 1 + KINDS.index(kind)])
        first = int(math.ceil(anomaly_after_fraction * n))
        for slot in _slots(first, n, n_events):
            mask = _plant(kind, model, planted, seconds, step_s, slot, rng)
            if mask is None or not mask.any():
                continue
            index = np.flatnonzero(mask)
            is_anomaly[index] = 1
            events.append((int(times_ms[index[0]]), int(times_ms[index[-1]])))

    zeroed = np.isneginf(planted)
    values = model.finish(np.where(zeroed, model.expected, planted))
    values[zeroed] = 0.0
    name = f"{shape}/{kind or 'normal'}/seed{seed}"
    return LabelledSeries(name, shape, kind, times_ms, values.astype(np.float64), is_anomaly, events)


def corpus(*, seed: int = 0, days: float = 14, step_s: float = 300, n_events: int = 2) -> list[LabelledSeries]:
    """Every shape x every kind (``n_events`` each, after the first half), plus one anomaly-free
    series of every shape. Series differ in seed so the corpus is not one base series repeated."""
    out: list[LabelledSeries] = []
    for shape_index, shape in enumerate(SHAPES):
        for kind_index, kind in enumerate((None,) + KINDS):
            series_seed = seed * 1000 + shape_index * 100 + kind_index
            out.append(generate(shape, days=days, step_s=step_s, seed=series_seed, kind=kind,
                                n_events=n_events if kind else 0))
    return out
