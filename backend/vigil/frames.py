"""Scored series as Grafana DataFrames, annotation frames and Infinity rows. Never scores.

Field names are the score vocabulary (``value``, ``yhat``, ``yhat_lower``, ``yhat_upper``,
``anomaly_score``, ``is_anomaly``, ``anomaly``); display names are ``"<series> expected low"``
and so on, so dashboard overrides can match them by suffix. Field config carries units, the
score threshold, the band fill and the anomaly points, so a panel looks right untouched.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .pipeline import DetectionResult, ScoredSeries
from .series import series_key

__all__ = ["FIELDS", "to_dataframes", "to_annotation_frames", "to_rows", "json_values"]

#: What a panel may ask for in ``payload.fields``; ``band`` means both band edges.
FIELDS = ("value", "yhat", "band", "anomaly_score", "is_anomaly", "anomalies")

_SUFFIX = {
    "value": "",
    "yhat": " expected",
    "yhat_lower": " expected low",
    "yhat_upper": " expected high",
    "anomaly_score": " anomaly score",
    "is_anomaly": " is anomaly",
    "anomaly": " anomaly",
}


def json_values(values: np.ndarray) -> list[Any]:
    """numpy -> JSON list with ``null`` for NaN/Inf (Grafana draws gaps)."""
    a = np.asarray(values, dtype=np.float64)
    out: list[Any] = a.tolist()
    if not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a))
        for i in bad.tolist():
            out[i] = None
    return out


def _field(name: str, s: ScoredSeries, values: list[Any], config: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "type": "number",
        "labels": s.labels,
        "values": values,
        "config": {"displayNameFromDS": f"{s.name}{_SUFFIX[name]}", **config},
    }


def _frame(s: ScoredSeries, ref_id: str, fields: set[str]) -> dict[str, Any]:
    unit = {"unit": s.unit} if s.unit else {}
    out: list[dict[str, Any]] = [{"name": "time", "type": "time", "values": s.times_ms.tolist(), "config": {}}]
    if "value" in fields:
        out.append(_field("value", s, json_values(s.values), {**unit, "custom": {"lineWidth": 2}}))
    if "yhat" in fields:
        out.append(_field("yhat", s, json_values(s.scores.yhat),
                          {**unit, "custom": {"lineStyle": {"fill": "dash", "dash": [6, 4]}, "lineWidth": 1}}))
    if "band" in fields:
        band = {"lineWidth": 0, "fillOpacity": 0, "hideFrom": {"legend": True, "tooltip": False, "viz": False}}
        out.append(_field("yhat_lower", s, json_values(s.scores.yhat_lower),
                          {**unit, "color": {"mode": "fixed", "fixedColor": "#8AB8FF"}, "custom": band}))
        out.append(_field("yhat_upper", s, json_values(s.scores.yhat_upper),
                          {**unit, "color": {"mode": "fixed", "fixedColor": "#8AB8FF"},
                           "custom": {**band, "fillOpacity": 20, "fillBelowTo": f"{s.name} expected low"}}))
    if "anomaly_score" in fields:
        out.append(_field("anomaly_score", s, json_values(s.scores.anomaly_score), {
            "min": 0,
            "decimals": 2,
            "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None},
                                                         {"color": "red", "value": 1.0}]},
            "custom": {"thresholdsStyle": {"mode": "line+area"}},
        }))
    if "is_anomaly" in fields:
        out.append(_field("is_anomaly", s, s.is_anomaly.astype(int).tolist(), {"min": 0, "max": 1}))
    if "anomalies" in fields:
        points = np.where(s.is_anomaly.astype(bool), s.values, np.nan)
        out.append(_field("anomaly", s, json_values(points), {
            **unit, "color": {"mode": "fixed", "fixedColor": "red"},
            "custom": {"drawStyle": "points", "pointSize": 9, "showPoints": "always", "lineWidth": 0},
        }))
    return {"name": s.name, "refId": ref_id, "fields": out,
            "meta": {"custom": {"model": s.model, "episodes": len(s.episodes)}}}


def to_dataframes(result: DetectionResult, ref_id: str, fields: Iterable[str] = FIELDS) -> list[dict[str, Any]]:
    """One DataFrame per series; notices (step raised, cold start) ride on the first frame."""
    wanted = set(fields)
    frames = [_frame(s, ref_id, wanted) for s in result.series]
    if result.notices:
        notices = [{"severity": "warning", "text": text} for text in result.notices]
        if frames:
            frames[0]["meta"]["notices"] = notices
        else:
            frames.append({"refId": ref_id, "fields": [], "meta": {"notices": notices}})
    return frames


def to_annotation_frames(result: DetectionResult, ref_id: str, tags: Iterable[str] = ()) -> list[dict[str, Any]]:
    """One frame of regions (``time``, ``timeEnd``, ``title``, ``text``, ``tags``): one per episode."""
    starts, ends, titles, texts, all_tags = [], [], [], [], []
    for s in result.series:
        last_ms = int(s.times_ms[-1]) if s.times_ms.size else 0
        for e in s.episodes:
            starts.append(e.start_ms)
            ends.append(e.end_ms if e.end_ms is not None else last_ms)
            titles.append(f"Anomaly: {s.name}" + (" (ongoing)" if e.end_ms is None else ""))
            texts.append(e.reason)
            all_tags.append(["anomaly", *tags, *(f"{k}:{v}" for k, v in sorted(s.labels.items()) if k != "__name__")])
    if not starts:
        return []
    return [{
        "name": "anomalies",
        "refId": ref_id,
        "fields": [
            {"name": "time", "type": "time", "values": starts},
            {"name": "timeEnd", "type": "time", "values": ends},
            {"name": "title", "type": "string", "values": titles},
            {"name": "text", "type": "string", "values": texts},
            {"name": "tags", "type": "other", "values": all_tags},
        ],
    }]


_ROW_KEYS = ("time", "series", "value", "anomaly_score", "is_anomaly", "yhat", "yhat_lower", "yhat_upper", "model")


def to_rows(result: DetectionResult, *, latest: bool = False, only_anomalies: bool = False) -> list[dict[str, Any]]:
    """Long rows for Infinity: ``{time, series, <labels>, value, anomaly_score, is_anomaly, yhat...}``.

    A label that collides with a row key is renamed ``label_<name>``.
    """
    rows: list[dict[str, Any]] = []
    for s in result.series:
        labels = {(f"label_{k}" if k in _ROW_KEYS else k): v for k, v in s.labels.items()}
        columns = {
            "value": json_values(s.values),
            "anomaly_score": json_values(s.scores.anomaly_score),
            "yhat": json_values(s.scores.yhat),
            "yhat_lower": json_values(s.scores.yhat_lower),
            "yhat_upper": json_values(s.scores.yhat_upper),
        }
        indices: Iterable[int] = range(s.times_ms.size)
        if only_anomalies:
            indices = np.flatnonzero(s.is_anomaly).tolist()
        if latest:
            finite = np.flatnonzero(np.isfinite(s.scores.anomaly_score))
            indices = [int(finite[-1])] if finite.size else []
        key = series_key({k: v for k, v in s.labels.items() if k != "__name__"}) or s.name
        for i in indices:
            rows.append({
                "time": int(s.times_ms[i]),
                "series": key,
                **labels,
                "value": columns["value"][i],
                "anomaly_score": columns["anomaly_score"][i],
                "is_anomaly": int(s.is_anomaly[i]),
                "yhat": columns["yhat"][i],
                "yhat_lower": columns["yhat_lower"][i],
                "yhat_upper": columns["yhat_upper"][i],
                "model": s.model,
            })
    return rows
