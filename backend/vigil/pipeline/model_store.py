"""The model store: where a query's models train, how they are keyed and reused, and cold start.

Owns, for panels, the worker, groups (``vigil.pipeline.grouping``) and ``vigil detect`` (``vigil.pipeline.replay``):

- the **training plan** (:class:`TrainingPlan`): a model is trained on the ``train_window`` before
  the start of its **refit slot** (``detection.refit_every`` long, aligned on the epoch), at the
  training step :func:`train_step_s` (the scoring step, coarsened to ``max_train_points``);
- the **keys** models are cached under (:class:`ModelKey`: everything a fitted model depends on);
- the **fit state** of what scores a series (:class:`FitState`, in a :class:`FittedModel`), a typed
  value instead of status text in a detector's name;
- **reuse**: the newest slot's model of a key replaces older ones; a panel may answer with an
  earlier slot's model (never a later one) while the new one trains; a learned refit reuses the
  previous slot's estimator; identical fits requested at once run once (single-flight).

Must not: fetch from Prometheus, score, or know about HTTP.
"""

from __future__ import annotations

import contextlib
import enum
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, NamedTuple, TypeVar

from vigil.detection.detectors import Detector
from vigil.pipeline.model_cache import ModelCache
from vigil.pipeline.singleflight import SingleFlight

__all__ = ["FitState", "FittedModel", "ModelKey", "ModelStore", "TrainingPlan", "train_step_s", "refit_slot"]

T = TypeVar("T")


class FitState(enum.Enum):
    """How the model that scores a series came to be."""

    #: the model of the query's own refit slot
    FITTED = "fitted"
    #: an earlier slot's model, answering while the current slot's trains in the background
    PREVIOUS_SLOT = "previous slot"
    #: the seasonal baseline, answering while the learned model (over the fit budget) trains
    BASELINE_WHILE_TRAINING = "baseline while training"
    #: the seasonal baseline fitted on the start of the view: too little history before it
    COLD_START = "cold start"


@dataclass(frozen=True)
class FittedModel:
    """A detector and how it came to be; ``key`` is where it is stored (None: not stored)."""

    detector: Detector
    state: FitState
    #: the model the query asked for (``auto``, ``iforest``...)
    wanted: str
    key: "ModelKey | None" = None

    @property
    def label(self) -> str:
        """What a panel shows as the series' model."""
        if self.state is FitState.BASELINE_WHILE_TRAINING:
            return f"seasonal (while {self.wanted} trains)"
        if self.state is FitState.COLD_START:
            return "seasonal (cold start: little history)"
        return self.detector.name


def refit_slot(time_ms: int, refit_every_s: float) -> int:
    """The refit slot ``time_ms`` falls in: slot ``n`` starts at ``n * refit_every``."""
    return int(time_ms) // int(refit_every_s * 1000)


def train_step_s(train_window_s: float, step_s: float, max_train_points: int) -> float:
    """The step history is fetched at for training: the scoring step, coarsened so the window
    holds at most ``max_train_points`` points."""
    return float(max(step_s, math.ceil(train_window_s / max_train_points)))


@dataclass(frozen=True)
class TrainingPlan:
    """Where a query's training history lies: ``train_window`` before the start of its refit slot."""

    slot: int
    start_ms: int
    end_ms: int
    train_step_s: float
    max_points: int

    @classmethod
    def at(cls, time_ms: int, *, train_window_s: float, step_s: float, refit_every_s: float,
           max_train_points: int) -> "TrainingPlan":
        """The plan of the slot ``time_ms`` falls in."""
        slot = refit_slot(time_ms, refit_every_s)
        end_ms = slot * int(refit_every_s * 1000)
        return cls(slot=slot, start_ms=end_ms - int(train_window_s * 1000), end_ms=end_ms,
                   train_step_s=train_step_s(train_window_s, step_s, max_train_points), max_points=max_train_points)

    def recent_start_ms(self, step_s: float) -> int:
        """Where the recent history (at the scoring step, for the learned models) starts."""
        return max(self.start_ms, self.end_ms - int(self.max_points * step_s * 1000))


class ModelKey(NamedTuple):
    """Everything a stored model depends on. ``params`` are the query's (source, expression,
    model, sensitivity, window, steps, exclusions, floor); ``series`` names the series (or group)."""

    params: tuple
    series: Hashable
    slot: int

    def at(self, slot: int) -> "ModelKey":
        return self._replace(slot=slot)


class ModelStore:
    """Fitted models by :class:`ModelKey`, in a bounded :class:`ModelCache`; thread-safe."""

    #: how many refit slots old a model a panel may use while its replacement trains
    max_stale_slots = 24

    def __init__(self, cache: ModelCache):
        self.cache = cache
        self._fits = SingleFlight()
        self._locks: dict[Hashable, list] = {}  # key -> [lock, users]
        self._locks_lock = threading.Lock()

    @contextlib.contextmanager
    def training(self, params: tuple, slot: int) -> Iterator[None]:
        """Held while a query fetches training history and fits the models of ``(params, slot)``:
        an identical query arriving meanwhile waits, then finds the models stored instead of
        fetching the same history again. Queries of other parameters never wait on it."""
        key = (params, slot)
        with self._locks_lock:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._locks_lock:
                entry[1] -= 1
                if entry[1] == 0:
                    self._locks.pop(key, None)

    def get(self, key: ModelKey, *, count: bool = True) -> Any | None:
        """The model stored under ``key``; ``count=False`` for look-ups that are not a model's use."""
        return self.cache.get(key, count=count)

    def latest_slot(self, key: ModelKey) -> int | None:
        return self.cache.get(("latest", key.params, key.series), count=False)

    def previous(self, key: ModelKey) -> Any | None:
        """The model of the latest slot before ``key``'s (a learned refit reuses its estimator)."""
        latest = self.latest_slot(key)
        if latest is None or latest >= key.slot:
            return None
        return self.cache.get(key.at(latest), count=False)

    def stale(self, key: ModelKey) -> tuple[Any, ModelKey] | None:
        """An earlier slot's model (at most ``max_stale_slots`` old, never a later one) and its key."""
        latest = self.latest_slot(key)
        if latest is None or not key.slot - self.max_stale_slots <= latest < key.slot:
            return None
        model = self.cache.get(key.at(latest), count=False)
        return (model, key.at(latest)) if model is not None else None

    def put(self, key: ModelKey, model: Any) -> None:
        """Store ``model``; the newest slot's model of a key replaces older ones."""
        self.cache.put(key, model)
        latest_key = ("latest", key.params, key.series)
        latest = self.cache.get(latest_key, count=False)
        if latest is None or latest < key.slot:
            self.cache.put(latest_key, key.slot)
            if latest is not None:
                # The newest slot's model is all the next refits and panels need; an older one
                # is refitted on demand if someone scrolls back.
                self.cache.discard(key.at(latest))

    def fit_once(self, key: ModelKey, fit: Callable[[], T | None]) -> T | None:
        """The stored model of ``key``, else ``fit()`` stored under it; one fit per key at a time
        (threads asking for the same key meanwhile wait for it and get its model)."""
        def work() -> T | None:
            found = self.cache.get(key, count=False)
            if found is not None:
                return found
            model = fit()
            if model is not None:
                self.put(key, model)
            return model

        return self._fits.do(key, work)
