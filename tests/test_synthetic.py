"""The synthetic generator: deterministic, labelled exactly, sane per shape, realistic in size."""

from __future__ import annotations

import numpy as np
import pytest

from vigil_dev.synthetic import DEFAULT_START_MS, KINDS, SHAPES, LabelledSeries, corpus, generate


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) | (np.isnan(a) & np.isnan(b))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", (None,) + KINDS)
def test_deterministic_and_labels_match_events(shape, kind):
    a = generate(shape, days=6, step_s=300, seed=7, kind=kind, n_events=2)
    b = generate(shape, days=6, step_s=300, seed=7, kind=kind, n_events=2)
    assert a.name == b.name and a.events == b.events
    assert np.array_equal(a.times_ms, b.times_ms) and _same(a.values, b.values).all()
    assert np.array_equal(a.is_anomaly, b.is_anomaly)

    assert a.times_ms.dtype == np.int64 and np.all(np.diff(a.times_ms) == 300_000)
    assert a.times_ms[0] == DEFAULT_START_MS and a.times_ms.size == 6 * 288
    assert set(np.unique(a.is_anomaly)) <= {0, 1}
    covered = np.zeros(a.times_ms.size, dtype=bool)
    for start_ms, end_ms in a.events:
        assert start_ms <= end_ms
        covered |= (a.times_ms >= start_ms) & (a.times_ms <= end_ms)
    assert np.array_equal(covered, a.is_anomaly == 1)
    if kind is None:
        assert a.events == [] and not a.is_anomaly.any()
    else:
        assert 1 <= len(a.events) <= 2


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_anomalies_only_inside_labels_and_after_training_part(shape, kind):
    clean = generate(shape, days=8, step_s=300, seed=3)
    planted = generate(shape, days=8, step_s=300, seed=3, kind=kind, anomaly_after_fraction=0.6)
    outside = planted.is_anomaly == 0
    assert _same(clean.values, planted.values)[outside].all()
    first_ms = planted.times_ms[int(np.ceil(0.6 * planted.times_ms.size))]
    assert all(start_ms >= first_ms for start_ms, _ in planted.events)
    assert planted.is_anomaly[-1] == 0 or kind == "seasonality_break"


def test_seed_changes_the_series():
    a, b = generate("cpu", seed=1), generate("cpu", seed=2)
    assert not np.allclose(a.values, b.values)


@pytest.mark.parametrize("kind", (None,) + KINDS)
def test_values_are_sane_per_shape(kind):
    cpu = generate("cpu", seed=5, kind=kind)
    finite = cpu.values[~np.isnan(cpu.values)]
    assert finite.min() >= 0.0 and finite.max() <= 1.0
    for shape in ("error_count", "memory"):
        series = generate(shape, seed=5, kind=kind)
        finite = series.values[~np.isnan(series.values)]
        assert finite.min() >= 0 and np.array_equal(finite, np.round(finite)), shape
    errors = generate("error_count", seed=5)
    assert np.mean(errors.values <= 2) > 0.8  # mostly 0, 1 or 2
    for shape in ("request_rate", "latency"):
        series = generate(shape, seed=5, kind=kind)
        assert np.nanmin(series.values) >= 0.0, shape
    latency = generate("latency", seed=5)
    assert 0.01 < np.median(latency.values) < 1.0  # seconds
    memory = generate("memory", seed=5)
    assert 2**29 < np.median(memory.values) < 2**33  # bytes
    assert np.isnan(generate("cpu", seed=5).values).sum() == 0


def test_daily_seasonality_is_there():
    cpu = generate("cpu", days=14, step_s=300, seed=0)
    hour = (cpu.times_ms // 3_600_000) % 24
    by_hour = np.array([np.mean(cpu.values[hour == h]) for h in range(24)])
    assert by_hour.max() - by_hour.min() > 5 * np.std(np.diff(cpu.values)) / np.sqrt(2)
    day = (cpu.times_ms - cpu.times_ms[0]) // 86_400_000
    weekday_peak = np.max(cpu.values[day == 2])
    weekend_peak = np.max(cpu.values[day == 5])  # the default start is a Monday
    assert weekend_peak < weekday_peak


def _robust_sigma(x: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


@pytest.mark.parametrize("shape", ("cpu", "request_rate", "latency"))
def test_spikes_are_realistic_in_size(shape):
    """A spike stands out of the local noise, but is not absurd: a few to ~10 noise units."""
    for seed in range(5):
        clean = generate(shape, days=6, step_s=60, seed=seed)
        spiky = generate(shape, days=6, step_s=60, seed=seed, kind="spike")
        values, base = spiky.values, clean.values
        if shape == "latency":
            values, base = np.log(values), np.log(base)
        (start_ms, end_ms), = spiky.events
        i = int(np.searchsorted(spiky.times_ms, start_ms))
        # The local noise, from the clean series' step-to-step changes around the spike.
        noise = _robust_sigma(np.diff(base[max(0, i - 120):i + 120])) / np.sqrt(2) * 1.5
        local = np.median(base[max(0, i - 30):i])
        jump = abs(values[i] - local) / max(noise, 1e-12)
        assert 2.5 < jump < 20, (seed, jump)


@pytest.mark.parametrize("kind", ("level_shift", "variance_burst", "stuck", "drift"))
def test_long_kinds_last_hours(kind):
    series = generate("request_rate", days=10, step_s=60, seed=1, kind=kind)
    (start_ms, end_ms), = series.events
    assert end_ms - start_ms >= 3_600_000 - 60_000


def test_dropout_is_zero_or_missing():
    modes = set()
    for seed in range(6):
        series = generate("request_rate", seed=seed, kind="dropout")
        inside = series.values[series.is_anomaly == 1]
        assert np.all(np.isnan(inside)) or np.all(inside == 0)
        modes.add("nan" if np.isnan(inside).all() else "zero")
    assert modes == {"nan", "zero"}


def test_stuck_is_flat():
    series = generate("cpu", seed=2, kind="stuck")
    inside = series.values[series.is_anomaly == 1]
    assert np.ptp(inside) == 0.0 and inside.size > 10


def test_start_ms_and_short_series():
    series = generate("cpu", days=1, step_s=60, start_ms=1_700_000_000_000, kind="spike",
                      anomaly_after_fraction=0.9)
    assert series.times_ms[0] == 1_700_000_000_000 and len(series.events) == 1
    assert series.events[0][0] >= series.times_ms[int(0.9 * 1440)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shape="disk"), "'shape' parameter"),
        (dict(shape="cpu", kind="boom"), "'kind' parameter"),
        (dict(shape="cpu", anomaly_after_fraction=1.0), "anomaly_after_fraction"),
        (dict(shape="cpu", days=0), "'days'"),
        (dict(shape="cpu", n_events=-1), "n_events"),
    ],
)
def test_bad_parameters(kwargs, message):
    shape = kwargs.pop("shape")
    with pytest.raises(ValueError, match=message):
        generate(shape, **kwargs)


def test_corpus_covers_every_shape_and_kind():
    items = corpus(seed=0, days=8, step_s=300)
    pairs = {(s.shape, s.kind) for s in items}
    assert pairs == {(shape, kind) for shape in SHAPES for kind in (None,) + KINDS}
    assert all(isinstance(s, LabelledSeries) for s in items)
    assert all(s.events for s in items if s.kind)
    assert all(not s.is_anomaly.any() for s in items if s.kind is None)
    assert len({s.name for s in items}) == len(items)
    again = corpus(seed=0, days=8, step_s=300)
    assert all(_same(a.values, b.values).all() for a, b in zip(items, again))
