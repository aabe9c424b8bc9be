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
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Sequence

from vigil.store.audit import StoredEpisode

__all__ = ["ObservedSeries", "Peak", "NewEpisode", "EpisodeUpdate", "Started", "Extended", "Ended", "Change",
           "EndCause", "track"]

_INF = float("inf")

#: Why an episode ended: its run closed it, its points came back in band, or its series went away.
EndCause = Literal["closed", "back_in_band", "series_gone"]


@dataclass(frozen=True)
class ObservedSeries:
    """One series of one run: its labels, canonical key, last sample time, and episodes found."""

    key: str
    labels: Mapping[str, str]
    last_ms: int
    episodes: Sequence[Any]  # vigil.episodes.Episode (duck-typed: start_ms, end_ms, peak_*, yhat*, reason)
    model: str = ""
    unit: str | None = None


def _finite(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass(frozen=True)
class Peak:
    """The worst point of an episode as seen so far (NaN stored as None)."""

    peak_ms: int
    peak_score: float
    peak_value: float | None
    yhat: float | None
    yhat_lower: float | None
    yhat_upper: float | None
    reason: str

    @classmethod
    def of(cls, ep: Any) -> "Peak":
        return cls(int(ep.peak_ms), _finite(ep.peak_score) or 0.0, _finite(ep.peak_value), _finite(ep.yhat),
                   _finite(ep.yhat_lower), _finite(ep.yhat_upper), str(ep.reason or ""))

    def fields(self) -> dict[str, Any]:
        return {"peak_ms": self.peak_ms, "peak_score": self.peak_score, "peak_value": self.peak_value,
                "yhat": self.yhat, "yhat_lower": self.yhat_lower, "yhat_upper": self.yhat_upper,
                "reason": self.reason}


@dataclass(frozen=True)
class NewEpisode:
    """Everything the audit store records about an episode first seen in this run."""

    job: str
    series_key: str
    labels: Mapping[str, str]
    start_ms: int
    end_ms: int | None
    last_ms: int
    model: str
    unit: str | None
    severity: str
    peak: Peak

    def fields(self) -> dict[str, Any]:
        return {"job": self.job, "series_key": self.series_key, "labels": dict(self.labels),
                "start_ms": self.start_ms, "end_ms": self.end_ms, "last_ms": self.last_ms, "model": self.model,
                "unit": self.unit, "severity": self.severity, **self.peak.fields()}


@dataclass(frozen=True)
class EpisodeUpdate:
    """The fields of a stored episode one run changes; None means unchanged."""

    last_ms: int | None = None
    end_ms: int | None = None
    model: str | None = None
    peak: Peak | None = None

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in (("last_ms", self.last_ms), ("end_ms", self.end_ms),
                                                  ("model", self.model)) if v is not None}
        if self.peak is not None:
            out.update(self.peak.fields())
        return out

    def __bool__(self) -> bool:
        return bool(self.fields())


@dataclass(frozen=True)
class Started:
    """A new episode (already closed when a run first sees a blip that began and ended between runs)."""

    series_key: str
    episode: NewEpisode
    kind: Literal["start"] = field(default="start", init=False)

    def fields(self) -> dict[str, Any]:
        return self.episode.fields()


@dataclass(frozen=True)
class Extended:
    """A stored open episode goes on: a later last instant, a higher peak, or a new model."""

    episode_id: str
    series_key: str
    update: EpisodeUpdate
    kind: Literal["extend"] = field(default="extend", init=False)

    def fields(self) -> dict[str, Any]:
        return self.update.fields()


@dataclass(frozen=True)
class Ended:
    """A stored open episode ends at ``update.end_ms``, for ``cause``."""

    episode_id: str
    series_key: str
    update: EpisodeUpdate
    cause: EndCause
    kind: Literal["end"] = field(default="end", init=False)

    def __post_init__(self) -> None:
        if self.update.end_ms is None:
            raise ValueError(f"The 'update' parameter of Ended must set end_ms. Got {self.update!r} instead.")

    def fields(self) -> dict[str, Any]:
        return self.update.fields()


#: What to write: a new episode, or a change to a stored one.
Change = Started | Extended | Ended


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
                changes.append(Ended(ep.id, key, EpisodeUpdate(end_ms=ep.last_ms), "series_gone"))
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
            out.append(Ended(open_ep.id, series.key, EpisodeUpdate(end_ms=open_ep.last_ms), "back_in_band"))
        overlapping = [c for c in closed if end >= c.start_ms - tol and start <= (c.end_ms or 0) + tol]
        if overlapping:
            latest_end = max(int(c.end_ms or 0) for c in overlapping)
            if ep.end_ms is not None or series.last_ms <= latest_end + tol:
                continue  # the same episode, already recorded
            start = latest_end + 1  # it came back after the recorded one ended: a new episode
        end_ms = None if ep.end_ms is None else max(int(ep.end_ms), start)
        out.append(Started(series.key, NewEpisode(
            job, series.key, dict(series.labels), start, end_ms, series.last_ms if end_ms is None else end_ms,
            series.model, series.unit, severity, Peak.of(ep))))
    if open_ep is not None and not open_matched:
        out.append(Ended(open_ep.id, series.key, EpisodeUpdate(end_ms=open_ep.last_ms), "back_in_band"))
    return out


def _continue(stored: StoredEpisode, ep: Any, series: ObservedSeries) -> list[Change]:
    """The fields that grow (the last anomalous instant, the peak when this run saw a higher one,
    the model), and the end when this run closed the episode."""
    last = series.last_ms if ep.end_ms is None else int(ep.end_ms)
    peak = Peak.of(ep)
    model = series.model if series.model and series.model != stored.model else None
    update = EpisodeUpdate(last_ms=last if last > stored.last_ms else None, model=model,
                           peak=peak if peak.peak_score > float(stored.peak_score) else None)
    if ep.end_ms is not None:
        end_ms = max(int(ep.end_ms), stored.start_ms)
        last_ms = max(end_ms, update.last_ms if update.last_ms is not None else stored.last_ms)
        return [Ended(stored.id, series.key, EpisodeUpdate(last_ms, end_ms, update.model, update.peak), "closed")]
    if not update:
        return []
    return [Extended(stored.id, series.key, update)]
