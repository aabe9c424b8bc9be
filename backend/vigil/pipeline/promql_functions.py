"""The anomaly functions written in PromQL text: ``anomaly_score(<PromQL>, "model=seasonal")``.

Owns recognising ``anomaly_score``, ``is_anomaly``, ``yhat``, ``yhat_lower``, ``yhat_upper`` and
``anomalies`` in a query text, splitting off the inner PromQL and the optional string arguments
(``"model=..."``, ``"sensitivity=..."``, ``"train_window=..."``, ``"source=loki"`` for a LogQL
metric query). A small scanner, not a PromQL
parser: it knows string literals, comments and bracket nesting, which is what it takes to find
the outermost call. The function must be the outermost call of the text, apart from the
aggregations and comparisons :mod:`vigil.pipeline.promql_outer` parses around it; anywhere else
it is an error, because Prometheus does not know it.

Must not: import Flask, call Prometheus or score anything. Errors are ``ValueError`` with a
sentence a Grafana user can act on; the HTTP layer maps them once.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["FUNCTIONS", "OPTION_NAMES", "AnomalyCall", "parse_anomaly_call", "mentions_anomaly_function",
           "mask_literals", "matching_bracket"]

#: The functions, in the score vocabulary; ``anomalies`` is the value at anomalous points only.
FUNCTIONS = ("anomaly_score", "is_anomaly", "yhat", "yhat_lower", "yhat_upper", "anomalies")
#: What the optional string arguments may set.
OPTION_NAMES = ("model", "sensitivity", "train_window", "source")

_CALL = re.compile(r"(?<![A-Za-z0-9_:])(" + "|".join(sorted(FUNCTIONS, key=len, reverse=True)) + r")\s*\(")
_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}
_USAGE = 'anomaly_score(<PromQL>[, "model=auto|seasonal|iforest|ocsvm"][, "sensitivity=low|medium|high"]' \
         '[, "train_window=7d"][, "source=prometheus|loki"])'


class AnomalyCall(NamedTuple):
    """``anomaly_score(rate(x[5m]), "model=seasonal")`` -> ``("anomaly_score", "rate(x[5m])", {"model": "seasonal"})``."""

    function: str
    inner: str
    options: dict[str, str]


def mentions_anomaly_function(text: str) -> bool:
    """True when ``text`` calls one of :data:`FUNCTIONS` outside string literals and comments."""
    return _CALL.search(mask_literals(text)) is not None


def parse_anomaly_call(text: str) -> AnomalyCall | None:
    """The anomaly call that ``text`` is, or None for plain PromQL (passed to Prometheus unchanged).

    Raises ValueError when an anomaly function is used but not as the outermost call, when the
    brackets do not balance, or when an optional argument is not a known ``"name=value"`` string.
    """
    masked = mask_literals(text)
    calls = list(_CALL.finditer(masked))
    if not calls:
        return None
    first = calls[0]
    name = first.group(1)
    start = len(masked) - len(masked.lstrip())
    if first.start() != start:
        raise ValueError(f"{name}(...) must be the outermost call of the query, e.g. {name}(sum by (instance) "
                         f"(rate(x[5m]))), or inside only sum/min/max/avg/count and a comparison with a number, "
                         f"e.g. max({name}(...)) > 1")
    open_at = first.end() - 1
    close_at = matching_bracket(masked, open_at)
    if masked[close_at + 1:].strip():
        raise ValueError(f"{name}(...) may be followed only by a comparison with a number (> 1, == 1, ...); got "
                         f"{text[close_at + 1:].strip()[:60]!r} after it")
    if len(calls) > 1:
        raise ValueError(f"{calls[1].group(1)}(...) inside {name}(...): anomaly functions cannot be nested; "
                         f"use one, as the outermost call")
    args = _split_args(text, masked, open_at + 1, close_at)
    inner = args[0].strip() if args else ""
    if not inner:
        raise ValueError(f"{name}() needs a PromQL expression as its first argument: {_USAGE.replace('anomaly_score', name)}")
    options: dict[str, str] = {}
    for raw in args[1:]:
        key, value = _option(raw.strip(), name)
        if key in options:
            raise ValueError(f"{name}(...): {key!r} is given twice")
        options[key] = value
    return AnomalyCall(name, inner, options)


def _option(raw: str, name: str) -> tuple[str, str]:
    if len(raw) < 2 or raw[0] not in "\"'`" or raw[-1] != raw[0]:
        raise ValueError(f"{name}(...): optional arguments are strings such as \"model=seasonal\"; got {raw!r}")
    body = raw[1:-1].strip()
    key, sep, value = body.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or key not in OPTION_NAMES or not value:
        raise ValueError(f"{name}(...): an optional argument must be \"name=value\" with name one of "
                         f"{', '.join(OPTION_NAMES)}; got {raw}")
    return key, value


def _split_args(text: str, masked: str, begin: int, end: int) -> list[str]:
    """Top-level comma-separated arguments of ``text[begin:end]`` (nesting from ``masked``)."""
    args: list[str] = []
    depth = 0
    piece_start = begin
    for i in range(begin, end):
        ch = masked[i]
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(text[piece_start:i])
            piece_start = i + 1
    args.append(text[piece_start:end])
    return args


def matching_bracket(masked: str, open_at: int) -> int:
    """Index of the bracket closing the one at ``open_at``; ValueError when they do not balance."""
    stack: list[str] = []
    for i in range(open_at, len(masked)):
        ch = masked[i]
        if ch in _OPEN:
            stack.append(ch)
        elif ch in _CLOSE:
            if not stack or stack[-1] != _CLOSE[ch]:
                raise ValueError(f"unbalanced brackets: unexpected {ch!r} at character {i + 1}")
            stack.pop()
            if not stack:
                return i
    raise ValueError(f"unbalanced brackets: the parenthesis at character {open_at + 1} is never closed")


def mask_literals(text: str) -> str:
    """``text`` with the insides of string literals and comments blanked (same length)."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "\"'`":
            j = i + 1
            while j < n and text[j] != ch:
                j += 2 if (text[j] == "\\" and ch != "`") else 1
            for k in range(i + 1, min(j, n)):
                out[k] = " "
            i = j + 1
        elif ch == "#":
            j = text.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        else:
            i += 1
    return "".join(out)
