"""What PromQL may wrap around an anomaly function: aggregations and comparisons with a number.

``max by (instance) (anomaly_score(rate(x[5m]))) > 1``, ``count(is_anomaly(up) == 1)``,
``sum(is_anomaly(x))``: the shapes alert rules and stat panels are written in. Owns parsing those
outer layers (:func:`parse_query`) and evaluating them on the scored series
(:func:`evaluate`), with Prometheus' semantics:

- ``sum``, ``min``, ``max``, ``avg``, ``count`` with ``by (...)`` / ``without (...)`` (before or
  after the parentheses): at each timestamp, over the series that have a sample there; the result
  keeps the ``by`` labels (or all but the ``without`` ones);
- ``==``, ``!=``, ``>``, ``<``, ``>=``, ``<=`` against a number, on either side: keeps the samples
  for which it holds; with ``bool``, 1 or 0 for every sample.

Anything else around an anomaly function (another function, arithmetic, two vectors) is refused
with a sentence saying what is allowed. Plain PromQL (no anomaly function) is not parsed here.
Must not: import Flask, call Prometheus or score anything; errors are ``ValueError``.
"""

from __future__ import annotations

import math
import operator
import re
from typing import Callable, NamedTuple, Union

import numpy as np

from vigil.pipeline.promql_functions import (FUNCTIONS, AnomalyCall, mask_literals, matching_bracket,
                                             mentions_anomaly_function, parse_anomaly_call)

__all__ = ["Aggregate", "Compare", "Outer", "parse_query", "anomaly_call", "evaluate", "VectorSeries"]

AGGREGATIONS = ("sum", "min", "max", "avg", "count")
_COMPARE: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
#: ``5 > x`` is ``x < 5``
_FLIPPED = {"==": "==", "!=": "!=", ">=": "<=", "<=": ">=", ">": "<", "<": ">"}
_AGG = re.compile(r"\s*(" + "|".join(AGGREGATIONS) + r")\s*(?:(by|without)\s*(\([^()]*\))\s*)?\(")
_GROUPING = re.compile(r"\s*(by|without)\s*(\([^()]*\))\s*$")
_CALL_START = re.compile(r"\s*(" + "|".join(sorted(FUNCTIONS, key=len, reverse=True)) + r")\s*\(")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[iI]nf|[nN]a[nN])")
_ALLOWED = ("an anomaly function may be wrapped only in sum, min, max, avg or count (with by/without) and "
            "compared with a number (==, !=, >, <, >=, <=, optionally bool), e.g. "
            "max by (instance) (anomaly_score(rate(x[5m]))) > 1")


class Aggregate(NamedTuple):
    op: str
    labels: tuple[str, ...]
    without: bool
    inner: "Outer"


class Compare(NamedTuple):
    op: str  # with the vector on the left
    number: float
    inner: "Outer"
    as_bool: bool


Outer = Union[AnomalyCall, Aggregate, Compare]


class VectorSeries(NamedTuple):
    """One series: labels, timestamps (ms) and values (NaN where it has no sample)."""

    labels: dict[str, str]
    times_ms: np.ndarray
    values: np.ndarray


def parse_query(text: str) -> Outer | None:
    """The anomaly expression ``text`` is, or None for plain PromQL (relayed to Prometheus)."""
    if not mentions_anomaly_function(text):
        return None
    return _parse(text, 0)


def anomaly_call(outer: Outer) -> AnomalyCall:
    """The anomaly function call at the heart of ``outer``."""
    while not isinstance(outer, AnomalyCall):
        outer = outer.inner
    return outer


#: aggregations and comparisons around one anomaly function, at most
MAX_LAYERS = 8


def _parse(text: str, layers: int) -> Outer:
    if layers > MAX_LAYERS:
        raise ValueError(f"more than {MAX_LAYERS} aggregations and comparisons around an anomaly function")
    masked = mask_literals(text)
    text, masked = _unwrap(text, masked)
    at = _top_level_comparison(masked)
    if at is not None:
        start, end, op = at
        left, right = text[:start].strip(), text[end:].strip()
        as_bool = False
        if re.match(r"bool\b", right):
            as_bool, right = True, right[4:].strip()
        if _NUMBER.fullmatch(right):
            return Compare(op, float(right), _parse(left, layers + 1), as_bool)
        if _NUMBER.fullmatch(left):
            return Compare(_FLIPPED[op], float(left), _parse(right, layers + 1), as_bool)
        raise ValueError(f"{op} must compare an anomaly function with a number; {_ALLOWED}")
    agg = _AGG.match(masked)
    if agg is not None:
        open_at = agg.end() - 1
        close_at = matching_bracket(masked, open_at)
        grouping = agg.group(3)
        mode = agg.group(2)
        rest = masked[close_at + 1:]
        if rest.strip():
            after = _GROUPING.match(rest)
            if after is None or grouping is not None:
                raise ValueError(f"unexpected {text[close_at + 1:].strip()[:40]!r} after {agg.group(1)}(...); {_ALLOWED}")
            mode, grouping = after.group(1), after.group(2)
        inner = text[open_at + 1:close_at]
        if _top_level_comma(masked[open_at + 1:close_at]):
            raise ValueError(f"{agg.group(1)} takes one argument; {_ALLOWED}")
        return Aggregate(agg.group(1), _labels(grouping) if grouping else (), mode == "without", _parse(inner, layers + 1))
    call = _CALL_START.match(masked)
    if call is None:
        word = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", masked)
        what = f"{word.group(1)}(...)" if word else repr(text.strip()[:40])
        raise ValueError(f"{what} around an anomaly function is not supported: {_ALLOWED}")
    found = parse_anomaly_call(text)
    assert found is not None  # it starts with an anomaly function's call
    return found



def _unwrap(text: str, masked: str) -> tuple[str, str]:
    """``text`` without parentheses around all of it."""
    while True:
        stripped = masked.strip()
        if not stripped.startswith("("):
            return text, masked
        begin = masked.index("(")
        end = matching_bracket(masked, begin)
        if masked[end + 1:].strip():
            return text, masked
        text, masked = text[begin + 1:end], masked[begin + 1:end]


def _top_level_comparison(masked: str) -> tuple[int, int, str] | None:
    """(start, end, operator) of the one comparison outside every bracket, or None."""
    depth = 0
    found: list[tuple[int, int, str]] = []
    i = 0
    while i < len(masked):
        ch = masked[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and ch in "=!<>":
            two = masked[i:i + 2]
            if two in ("==", "!=", ">=", "<="):
                found.append((i, i + 2, two))
                i += 2
                continue
            if ch in "<>":
                found.append((i, i + 1, ch))
            elif ch in "=!":
                raise ValueError(f"unexpected {ch!r} at character {i + 1}; {_ALLOWED}")
        i += 1
    if len(found) > 1:
        raise ValueError(f"one comparison at most; {_ALLOWED}")
    return found[0] if found else None


def _top_level_comma(masked: str) -> bool:
    depth = 0
    for ch in masked:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def _labels(grouping: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in grouping.strip()[1:-1].split(",") if n.strip())
    for name in names:
        if not _LABEL.fullmatch(name):
            raise ValueError(f"{name!r} is not a label name")
    return names


# -- evaluation ---------------------------------------------------------------------------------

def evaluate(outer: Outer, series: list[VectorSeries]) -> list[VectorSeries]:
    """``outer`` applied to the anomaly function's ``series`` (already computed)."""
    if isinstance(outer, AnomalyCall):
        return series
    inner = evaluate(outer.inner, series)
    if isinstance(outer, Compare):
        return [_compare(outer, s) for s in inner]
    return _aggregate(outer, inner)


def _compare(outer: Compare, s: VectorSeries) -> VectorSeries:
    present = ~np.isnan(s.values)
    with np.errstate(invalid="ignore"):
        holds = _COMPARE[outer.op](s.values, outer.number) & present
    if outer.as_bool:
        return VectorSeries(s.labels, s.times_ms, np.where(present, holds.astype(np.float64), np.nan))
    return VectorSeries(s.labels, s.times_ms, np.where(holds, s.values, np.nan))


def _aggregate(outer: Aggregate, series: list[VectorSeries]) -> list[VectorSeries]:
    if not series:
        return []
    times = np.unique(np.concatenate([s.times_ms for s in series]))
    groups: dict[tuple[tuple[str, str], ...], list[np.ndarray]] = {}
    for s in series:
        row = np.full(times.size, np.nan)
        row[np.searchsorted(times, s.times_ms)] = s.values
        labels = {k: v for k, v in s.labels.items() if k != "__name__"}
        if outer.without:
            kept = {k: v for k, v in labels.items() if k not in outer.labels}
        else:
            kept = {k: labels[k] for k in outer.labels if k in labels}
        groups.setdefault(tuple(sorted(kept.items())), []).append(row)
    out = []
    for key, rows in groups.items():
        matrix = np.vstack(rows)
        present = ~np.isnan(matrix)
        count = present.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            if outer.op == "count":
                values = count.astype(np.float64)
            elif outer.op == "sum":
                values = np.where(present, matrix, 0.0).sum(axis=0)
            elif outer.op == "avg":
                values = np.where(present, matrix, 0.0).sum(axis=0) / np.maximum(count, 1)
            elif outer.op == "min":
                values = np.where(present, matrix, math.inf).min(axis=0)
            else:
                values = np.where(present, matrix, -math.inf).max(axis=0)
        out.append(VectorSeries(dict(key), times, np.where(count > 0, values, np.nan)))
    return out
