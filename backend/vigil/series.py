"""One time series as numpy arrays, and its canonical key."""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

__all__ = ["Series", "series_key", "series_name"]


class Series(NamedTuple):
    """A series: ``times_ms`` int64 strictly increasing; ``values`` float64, NaN for gaps."""

    labels: dict[str, str]
    times_ms: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, labels: Mapping[str, str], times_ms, values) -> "Series":
        t = np.asarray(times_ms, dtype=np.int64)
        v = np.asarray(values, dtype=np.float64)
        if t.shape != v.shape or t.ndim != 1:
            raise ValueError(f"times and values must be 1-d of equal length; got {t.shape} and {v.shape}")
        if t.size > 1 and not np.all(np.diff(t) > 0):
            order = np.argsort(t, kind="stable")
            t, v = t[order], v[order]
            keep = np.concatenate([[True], np.diff(t) > 0])
            t, v = t[keep], v[keep]
        v = np.where(np.isfinite(v), v, np.nan)
        return cls(dict(labels), t, v)


def series_key(labels: Mapping[str, str]) -> str:
    """``'__name__=up,instance=a,job=node'``: sorted, ``__name__`` first; stable across runs."""
    items = sorted(labels.items(), key=lambda kv: (kv[0] != "__name__", kv[0]))
    return ",".join(f"{k}={v}" for k, v in items)


def series_name(labels: Mapping[str, str], legend: str | None = None) -> str:
    """What a person sees: the legend template filled in (``{{instance}}``), else the labels."""
    if legend:
        out = legend
        for k, v in labels.items():
            out = out.replace("{{" + k + "}}", v).replace("{{ " + k + " }}", v)
        return out
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    if not rest:
        return name or "{}"
    return f"{name}{{{rest}}}"
