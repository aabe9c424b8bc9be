"""A series source for the pipeline's unit layer: no Prometheus, Prometheus' range semantics.

``FakeSource(series).query_range(expr, start_s, end_s, step_s)`` answers every expression with all
its series, sampled like Prometheus does: at ``start, start + step, ... <= end``, the latest
sample at or before each instant within the 5-minute lookback. It counts its calls (``calls``),
and can hold every call until ``release`` is set, so tests can line concurrent queries up.
"""

from __future__ import annotations

import threading

import numpy as np

from vigil.series import Series
from vigil_dev.synthetic import generate

LOOKBACK_MS = 300_000


class FakeSource:
    def __init__(self, series: list[Series]):
        self.series = series
        self.calls: list[tuple[str, float, float, float]] = []
        self._lock = threading.Lock()
        #: when set to an Event, every call waits on it (and ``waiting`` counts the callers)
        self.release: threading.Event | None = None
        self.waiting = 0

    def series_count(self, expr: str, at_s: float, *, deadline_s: float | None = None) -> int | None:
        return None  # no pre-count: every test sees only the range queries it makes

    def query_range(self, expr: str, start_s: float, end_s: float, step_s: float, *,
                    deadline_s: float | None = None) -> list[Series]:
        with self._lock:
            self.calls.append((expr, start_s, end_s, step_s))
            self.waiting += 1
        if self.release is not None:
            assert self.release.wait(timeout=30), "the test never released the source"
        start_ms, end_ms, step_ms = int(start_s * 1000), int(end_s * 1000), int(step_s * 1000)
        grid = np.arange(start_ms, end_ms + 1, step_ms, dtype=np.int64)
        out = []
        for s in self.series:
            i = np.searchsorted(s.times_ms, grid, "right") - 1
            ok = (i >= 0) & (grid - s.times_ms[np.maximum(i, 0)] <= LOOKBACK_MS)
            values = np.where(ok, s.values[np.maximum(i, 0)], np.nan)
            keep = ok & np.isfinite(values)
            if keep.any():
                out.append(Series(dict(s.labels), grid[keep], values[keep]))
        return out


def synthetic_series(n: int, end_ms: int, days: float = 7.6, *, seed: int = 100, spike_every: int = 0,
                     spike_ago_min: int = 60) -> list[Series]:
    """``n`` synthetic series at 60 s ending at ``end_ms`` (labels ``__name__=m, instance=host-NNN``);
    every ``spike_every``-th one has a spike of 30 spreads over 3 points ``spike_ago_min`` before the end,
    far past any sensitivity's band (the generator's own spike is near the end, and borderline)."""
    shapes = ("cpu", "memory", "request_rate", "latency")
    points = int(days * 86400 / 60)
    start_ms = end_ms - (points - 1) * 60_000
    out = []
    for i in range(n):
        spiky = bool(spike_every) and i % spike_every == 0
        g = generate(shapes[i % 4], days=days, step_s=60, seed=seed + i, start_ms=start_ms,
                     kind="spike" if spiky else None, anomaly_after_fraction=0.97)
        values = np.asarray(g.values, np.float64).copy()
        if spiky:
            at = values.size - 1 - spike_ago_min
            spread = float(np.nanstd(np.diff(values))) or 1.0
            values[at:at + 3] += 30 * spread + 0.5 * abs(float(np.nanmedian(values)))
        out.append(Series({"__name__": "m", "instance": f"host-{i:03d}"}, np.asarray(g.times_ms, np.int64), values))
    return out
