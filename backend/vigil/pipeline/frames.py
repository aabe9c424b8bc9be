"""Scored series as Grafana DataFrames, annotation frames and Infinity rows. Never scores.

Field names are the score vocabulary (``value``, ``yhat``, ``yhat_lower``, ``yhat_upper``,
``anomaly_score``, ``is_anomaly``, ``anomaly``); display names are ``"<series> expected low"``
and so on, so dashboard overrides can match them by suffix. Field config carries units, the
score threshold, the band fill and the anomaly points, so a panel looks right untouched.

A ``group_by`` query gives the same frame per member (its own value and band, the GROUP's score
and ``is_anomaly``) plus, per group, a frame of each member's ``contribution`` (0-1: what drove
the group's score); its annotations and episodes are the groups', and its Infinity rows carry
``group`` and ``contribution``.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

import numpy as np

from typing import TYPE_CHECKING

from vigil.pipeline.scored import DetectionResult, ScoredSeries
from vigil.series import series_key

if TYPE_CHECKING:
    from vigil.pipeline.grouping import ScoredGroup

__all__ = ["FIELDS", "to_dataframes", "to_annotation_frames", "to_rows", "json_values"]

#: What a panel may ask for in ``payload.fields``; ``band`` means both band edges;
#: ``contributions`` is the per-group frame of a ``group_by`` query.
FIELDS = ("value", "yhat", "band", "anomaly_score", "is_anomaly", "anomalies", "contributions")

_SUFFIX = {
    "value": "",
    "yhat": " expected",
    "yhat_lower": " expected low",
    "yhat_upper": " expected high",
    "anomaly_score": " anomaly score",
    "is_anomaly": " is anomaly",
    "anomaly": " anomaly",
    "contribution": " contribution",
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


def _values(values: np.ndarray, arrays: bool) -> Any:
    """A field's values: a JSON list, or (``arrays``, for an encoder that writes numpy arrays and
    NaN as null, ``vigil.http.encoding``) the contiguous float64 array itself."""
    return np.ascontiguousarray(values, dtype=np.float64) if arrays else json_values(values)


def _field(name: str, s: ScoredSeries, values: Any, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "type": "number",
        "labels": s.labels,
        "values": values,
        "config": {"displayNameFromDS": f"{s.name}{_SUFFIX[name]}", **config},
    }


def _frame(s: ScoredSeries, ref_id: str, fields: set[str], arrays: bool = False) -> dict[str, Any]:
    unit = {"unit": s.unit} if s.unit else {}
    times: Any = np.ascontiguousarray(s.times_ms, dtype=np.int64) if arrays else s.times_ms.tolist()
    out: list[dict[str, Any]] = [{"name": "time", "type": "time", "values": times, "config": {}}]
    vals = functools.partial(_values, arrays=arrays)
    if "value" in fields:
        out.append(_field("value", s, vals(s.values), {**unit, "custom": {"lineWidth": 2}}))
    if "yhat" in fields:
        out.append(_field("yhat", s, vals(s.scores.yhat),
                          {**unit, "custom": {"lineStyle": {"fill": "dash", "dash": [6, 4]}, "lineWidth": 1}}))
    if "band" in fields:
        band = {"lineWidth": 0, "fillOpacity": 0, "hideFrom": {"legend": True, "tooltip": False, "viz": False}}
        out.append(_field("yhat_lower", s, vals(s.scores.yhat_lower),
                          {**unit, "color": {"mode": "fixed", "fixedColor": "#8AB8FF"}, "custom": band}))
        out.append(_field("yhat_upper", s, vals(s.scores.yhat_upper),
                          {**unit, "color": {"mode": "fixed", "fixedColor": "#8AB8FF"},
                           "custom": {**band, "fillOpacity": 20, "fillBelowTo": f"{s.name} expected low"}}))
    if "anomaly_score" in fields:
        out.append(_field("anomaly_score", s, vals(s.scores.anomaly_score), {
            "min": 0,
            "decimals": 2,
            "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None},
                                                         {"color": "red", "value": 1.0}]},
            "custom": {"thresholdsStyle": {"mode": "line+area"}},
        }))
    if "is_anomaly" in fields:
        flags = s.is_anomaly.astype(np.int64)
        out.append(_field("is_anomaly", s, flags if arrays else flags.tolist(), {"min": 0, "max": 1}))
    if "anomalies" in fields:
        points = np.where(s.is_anomaly.astype(bool), s.values, np.nan)
        out.append(_field("anomaly", s, vals(points), {
            **unit, "color": {"mode": "fixed", "fixedColor": "red"},
            "custom": {"drawStyle": "points", "pointSize": 9, "showPoints": "always", "lineWidth": 0},
        }))
    custom: dict[str, Any] = {"model": s.model, "episodes": len(s.episodes)}
    if s.group:
        custom["group"] = s.group
    return {"name": s.name, "refId": ref_id, "fields": out, "meta": {"custom": custom}}


def _contributions_frame(g: "ScoredGroup", ref_id: str) -> dict[str, Any]:
    """Time plus one ``contribution`` field per member (0-1, stacked): who drove the group's score."""
    scored = np.isfinite(g.anomaly_score)
    out: list[dict[str, Any]] = [{"name": "time", "type": "time", "values": g.times_ms.tolist(), "config": {}}]
    for j, (member, short) in enumerate(zip(g.members, g.member_names)):
        out.append({
            "name": "contribution",
            "type": "number",
            "labels": member.labels,
            "values": json_values(np.where(scored, g.contributions[:, j], np.nan)),
            "config": {"displayNameFromDS": f"{g.name} {short}{_SUFFIX['contribution']}", "unit": "percentunit",
                       "min": 0, "max": 1, "decimals": 2,
                       "custom": {"fillOpacity": 40, "lineWidth": 1, "stacking": {"mode": "normal", "group": g.key}}},
        })
    return {"name": f"{g.name} contributions", "refId": ref_id, "fields": out,
            "meta": {"custom": {"group": g.key, "group_labels": g.labels, "model": g.model,
                                "episodes": len(g.episodes), "members": list(g.member_names)}}}


def to_dataframes(result: DetectionResult, ref_id: str, fields: Iterable[str] = FIELDS, *,
                  arrays: bool = False) -> list[dict[str, Any]]:
    """One DataFrame per series (and per group, its contributions); notices ride on the first frame.
    ``arrays``: values as numpy arrays, for ``vigil.http.encoding`` (else JSON lists)."""
    wanted = set(fields)
    frames: list[dict[str, Any]]
    if result.groups:
        frames = []
        for g in result.groups:
            if wanted - {"contributions"}:  # a panel of contributions only has no member frames
                frames.extend(_frame(s, ref_id, wanted, arrays) for s in g.members)
            if "contributions" in wanted:
                frames.append(_contributions_frame(g, ref_id))
    else:
        frames = [_frame(s, ref_id, wanted, arrays) for s in result.series]
    if result.notices:
        notices = [{"severity": "warning", "text": text} for text in result.notices]
        if frames:
            frames[0]["meta"]["notices"] = notices
        else:
            frames.append({"refId": ref_id, "fields": [], "meta": {"notices": notices}})
    return frames


def to_annotation_frames(result: DetectionResult, ref_id: str, tags: Iterable[str] = ()) -> list[dict[str, Any]]:
    """One frame of regions (``time``, ``timeEnd``, ``title``, ``text``, ``tags``): one per episode
    (of each group, in a ``group_by`` query: tagged ``group`` plus the group's labels)."""
    starts, ends, titles, texts, all_tags = [], [], [], [], []
    grouped = bool(result.groups)
    for s in (result.groups if grouped else result.series):
        last_ms = int(s.times_ms[-1]) if s.times_ms.size else 0
        for e in s.episodes:
            starts.append(e.start_ms)
            ends.append(e.end_ms if e.end_ms is not None else last_ms)
            titles.append(f"Anomaly: {s.name}" + (" (ongoing)" if e.end_ms is None else ""))
            texts.append(e.reason)
            all_tags.append(["anomaly", *tags, *(["group"] if grouped else []),
                             *(f"{k}:{v}" for k, v in sorted(s.labels.items()) if k != "__name__")])
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
_GROUP_ROW_KEYS = ("group", "member", "contribution")


def to_rows(result: DetectionResult, *, latest: bool = False, only_anomalies: bool = False) -> list[dict[str, Any]]:
    """Long rows for Infinity: ``{time, series, <labels>, value, anomaly_score, is_anomaly, yhat...}``.

    In a ``group_by`` query each member's rows also carry ``group`` (the group's key), ``member``
    (its short name in the group's reasons) and ``contribution`` (0-1), and ``anomaly_score`` and
    ``is_anomaly`` are the group's. A label that
    collides with a row key is renamed ``label_<name>``.
    """
    if not result.groups:
        return [row for s in result.series for row in _rows(s, latest, only_anomalies)]
    rows: list[dict[str, Any]] = []
    for g in result.groups:
        keys = [_row_series(s) for s in g.members]
        if len(set(keys)) < len(keys):  # members told apart by their metric name only
            keys = [series_key(s.labels) for s in g.members]
        for j, s in enumerate(g.members):
            contribution = json_values(np.where(np.isfinite(g.anomaly_score), g.contributions[:, j], np.nan))
            rows.extend(_rows(s, latest, only_anomalies, series=keys[j],
                              group={"group": g.key, "member": g.member_names[j]}, contribution=contribution))
    return rows


def _row_series(s: ScoredSeries) -> str:
    return series_key({k: v for k, v in s.labels.items() if k != "__name__"}) or s.name


def _rows(s: ScoredSeries, latest: bool, only_anomalies: bool, *, series: str | None = None,
          group: dict[str, str] | None = None, contribution: list[Any] | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    taken = _ROW_KEYS + (_GROUP_ROW_KEYS if group is not None else ())
    labels = {(f"label_{k}" if k in taken else k): v for k, v in s.labels.items()}
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
    key = series or _row_series(s)
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
            **(group or {}),
            **({"contribution": contribution[i]} if contribution is not None else {}),
        })
    return rows
