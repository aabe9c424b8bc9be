"""Synthetic history for the benchmarks that run a real Prometheus: N series at 60 s, as OpenMetrics."""

from __future__ import annotations

from vigil_dev.openmetrics import to_openmetrics
from vigil_dev.synthetic import generate

STEP_S = 60
_SHAPES = ("cpu", "memory", "request_rate", "latency")


def openmetrics_history(metric: str, n_series: int, end_ms: int, days: float, *, seed_base: int,
                        labels: dict[str, str] | None = None, instance_digits: int = 5,
                        spike_every: int = 0) -> str:
    """``n_series`` series of ``metric`` ending at ``end_ms``, cycling through four shapes; every
    ``spike_every``-th series gets a spike near the end (0: none)."""
    points = int(days * 86400 / STEP_S)
    start_ms = end_ms - (points - 1) * STEP_S * 1000
    series = []
    for i in range(n_series):
        spiky = spike_every and i % spike_every == 0
        s = generate(_SHAPES[i % len(_SHAPES)], days=days, step_s=STEP_S, seed=seed_base + i, start_ms=start_ms,
                     kind="spike" if spiky else None, anomaly_after_fraction=0.97)
        series.append(({**(labels or {}), "instance": f"host-{i:0{instance_digits}d}"}, s.times_ms, s.values))
    return to_openmetrics([(metric, series)])
