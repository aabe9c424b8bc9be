"""What scoring returns: :class:`ScoredSeries` and :class:`DetectionResult`, and the array
helpers both the per-series and the per-group scoring use (:func:`downsample`,
:func:`exclude_windows`). Must not: fetch, fit or serve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vigil.detection.baseline import Scores
from vigil.config import ExcludeWindow
from vigil.detection.episodes import Episode
from vigil.series import Series, series_key

if TYPE_CHECKING:
    from vigil.pipeline.grouping import ScoredGroup

__all__ = ["ScoredSeries", "DetectionResult", "downsample", "exclude_windows"]


@dataclass
class ScoredSeries:
    labels: dict[str, str]
    times_ms: np.ndarray
    values: np.ndarray
    scores: Scores
    is_anomaly: np.ndarray
    episodes: list[Episode]
    model: str
    unit: str | None = None
    name: str = ""
    #: the key of the group this series was scored in (``group_by`` queries), else ""
    group: str = ""

    @property
    def key(self) -> str:
        return series_key(self.labels)


@dataclass
class DetectionResult:
    #: every series; in a ``group_by`` query, the members of ``groups`` (scored by their group)
    series: list[ScoredSeries]
    notices: list[str] = field(default_factory=list)
    expr: str = ""
    step_s: float = 0.0
    #: ``group_by`` queries only: the groups, which own the episodes
    groups: list["ScoredGroup"] = field(default_factory=list)



def downsample(times_ms: np.ndarray, values: np.ndarray, scores: Scores, is_anomaly: np.ndarray,
               step_ms: int) -> tuple[np.ndarray, np.ndarray, Scores, np.ndarray]:
    """Scores at a coarser step for a panel that asked for one: each bucket ``(t - step, t]`` of the
    step grid is shown by its most anomalous point (so no anomaly is hidden by the panel's
    resolution), at the bucket's grid time, and is anomalous if any of its points is."""
    if times_ms.size == 0:
        return times_ms, values, scores, is_anomaly
    bucket = -(-times_ms // step_ms)
    starts = np.flatnonzero(np.concatenate([[True], bucket[1:] != bucket[:-1]]))
    rank = np.where(np.isfinite(scores.anomaly_score), scores.anomaly_score, -np.inf)
    # The last point of a bucket wins ties (what Prometheus itself would show at the grid time).
    pick = np.array([a + int(np.flatnonzero(rank[a:b] == rank[a:b].max())[-1])
                     for a, b in zip(starts, np.append(starts[1:], times_ms.size))], dtype=np.int64)
    flags = np.maximum.reduceat(is_anomaly, starts)
    return (bucket[starts] * step_ms, values[pick], Scores(*(np.asarray(a)[pick] for a in scores)), flags)



def exclude_windows(series: Series, windows: tuple[ExcludeWindow, ...]) -> np.ndarray:
    values = series.values
    if not windows:
        return values
    values = values.copy()
    for w in windows:
        values[(series.times_ms >= w.start_ms) & (series.times_ms <= w.end_ms)] = np.nan
    return values
