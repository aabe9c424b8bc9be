"""Episode lifecycle across runs: match what one run saw to what the audit store already holds.

Each run scores ``[now - lookback, now]`` and finds episodes in it. The same anomaly therefore
shows up in many consecutive runs, its start possibly shifted by a step or two after a refit. This
module decides, per (job, series key), which observed episode continues which stored one:

- an observed episode overlapping the stored OPEN episode (ending no earlier than its start and
  starting no later than its last anomalous instant, both give or take ``tolerance_ms``) continues
  it: ``extend`` (later last instant, higher peak) or ``end`` (it closed);
- an observed episode overlapping a stored CLOSED one is the same, already recorded, episode:
  nothing happens (unless it is still going on well after the stored end: then the anomaly came
  back, and it is a new episode from that point);
- anything else is a new episode: ``start`` (already closed when the run first sees a blip that
  began and ended between two runs);
- a stored open episode that nothing continues (its points are back in band, or its series is gone)
  ends at its last anomalous instant.

Pure functions over plain values: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from .audit import StoredEpisode

__all__ = ["ObservedSeries", "Change", "track", "episode_values"]

_INF = float("inf")


@dataclass(frozen=True)
class ObservedSeries:
    """One series of one run: its labels, canonical key, last sample time, and episodes found."""

    key: str
    labels: Mapping[str, str]
    last_ms: int
    episodes: Sequence[Any]  # vigil.episodes.Episode (duck-typed: start_ms, end_ms, peak_*, yhat*, reason)
    model: str = ""
    unit: str | None = None


class Change(NamedTuple):
    """What to write: ``kind`` is ``start`` (``episode_id`` None), ``extend`` or ``end``."""

    kind: str
    episode_id: str | None
    series_key: str
    values: dict[str, Any]


def _finite(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def episode_values(ep: Any) -> dict[str, Any]:
    """The peak fields of an observed episode as audit-store columns (NaN -> None)."""
    return {
        "peak_ms": int(ep.peak_ms),
        "peak_score": _finite(ep.peak_score) or 0.0,
        "peak_value": _finite(ep.peak_value),
        "yhat": _finite(ep.yhat),
        "yhat_lower": _finite(ep.yhat_lower),
        "yhat_upper": _finite(ep.yhat_upper),
        "reason": str(ep.reason or ""),
    }


def track(
    job: str,
    stored: Iterable[StoredEpisode],
    observed: Iterable[ObservedSeries],
    *,
    tolerance_ms: int,
    severity: str = "warning",
) -> list[Change]:
    """The changes that bring the store in line with one run (see the module docstring)."""
    by_key: dict[str, list[StoredEpisode]] = {}
    for ep in stored:
        by_key.setdefault(ep.series_key, []).append(ep)
    changes: list[Change] = []
    seen_keys: set[str] = set()
    for series in observed:
        seen_keys.add(series.key)
        changes.extend(_track_series(job, series, by_key.get(series.key, []), tolerance_ms, severity))
    for key, episodes in by_key.items():
        if key in seen_keys:
            continue
        for ep in episodes:
            if ep.is_open:  # the series is gone: the episode ends where it was last seen
                changes.append(Change("end", ep.id, key, {"end_ms": ep.last_ms, "end_cause": "series_gone"}))
    return changes


def _track_series(job: str, series: ObservedSeries, stored: list[StoredEpisode], tol: int,
                  severity: str) -> list[Change]:
    open_ep = next((e for e in stored if e.is_open), None)
    closed = [e for e in stored if not e.is_open]
    open_matched = False
    out: list[Change] = []
    for ep in sorted(series.episodes, key=lambda e: e.start_ms):
        start = int(ep.start_ms)
        end = _INF if ep.end_ms is None else int(ep.end_ms)
        if open_ep is not None and not open_matched and end >= open_ep.start_ms - tol and start <= open_ep.last_ms + tol:
            open_matched = True
            out.extend(_continue(open_ep, ep, series))
            continue
        if open_ep is not None and not open_matched and start > open_ep.last_ms + tol:
            # The stored episode ended before this new one began.
            open_matched = True
            out.append(Change("end", open_ep.id, series.key, {"end_ms": open_ep.last_ms, "end_cause": "back_in_band"}))
        overlapping = [c for c in closed if end >= c.start_ms - tol and start <= (c.end_ms or 0) + tol]
        if overlapping:
            latest_end = max(int(c.end_ms or 0) for c in overlapping)
            if ep.end_ms is not None or series.last_ms <= latest_end + tol:
                continue  # the same episode, already recorded
            start = latest_end + 1  # it came back after the recorded one ended: a new episode
        values = {
            "job": job, "series_key": series.key, "labels": dict(series.labels),
            "start_ms": start, "end_ms": None if ep.end_ms is None else max(int(ep.end_ms), start),
            "last_ms": series.last_ms if ep.end_ms is None else max(int(ep.end_ms), start),
            "model": series.model, "unit": series.unit, "severity": severity, **episode_values(ep),
        }
        out.append(Change("start", None, series.key, values))
    if open_ep is not None and not open_matched:
        out.append(Change("end", open_ep.id, series.key, {"end_ms": open_ep.last_ms, "end_cause": "back_in_band"}))
    return out


def _extension(stored: StoredEpisode, ep: Any, series: ObservedSeries, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fields that grow: the last anomalous instant, and the peak when this run saw a higher one."""
    current_last = int((base or {}).get("last_ms", stored.last_ms))
    current_peak = float((base or {}).get("peak_score", stored.peak_score))
    last = series.last_ms if ep.end_ms is None else int(ep.end_ms)
    values: dict[str, Any] = {}
    if last > current_last:
        values["last_ms"] = last
    peak = episode_values(ep)
    if peak["peak_score"] > current_peak:
        values.update(peak)
    if series.model and series.model != stored.model:
        values["model"] = series.model
    return values


def _continue(stored: StoredEpisode, ep: Any, series: ObservedSeries) -> list[Change]:
    values = _extension(stored, ep, series)
    if ep.end_ms is not None:
        end_ms = max(int(ep.end_ms), stored.start_ms)
        values["end_ms"] = end_ms
        values["last_ms"] = max(end_ms, int(values.get("last_ms", stored.last_ms)))
        values["end_cause"] = "closed"
        return [Change("end", stored.id, series.key, values)]
    if not values:
        return []
    return [Change("extend", stored.id, series.key, values)]
