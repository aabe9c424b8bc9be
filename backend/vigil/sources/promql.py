"""Adding label matchers to every vector selector of a PromQL expression (ad hoc filters).

A small scanner, not a parser: it knows strings, comments, ``{...}`` matchers, ``[...]`` ranges,
``by (...)``/``without (...)``/``on (...)``/``ignoring (...)`` label lists, function calls and
keywords, which is what it takes to find selectors. Values are escaped; names are validated.
"""

from __future__ import annotations

import ast
import re
from typing import Iterable

__all__ = ["Matcher", "inject_matchers", "format_matcher", "metric_names", "balance_problem", "match_all_selector"]

_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_OPERATORS = ("=", "!=", "=~", "!~")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
             "and", "or", "unless", "atan2", "inf", "nan",
             # aggregation operators may be followed by by/without before their parenthesis
             "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
             "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}

Matcher = tuple[str, str, str]  # (label, operator, value)


def format_matcher(matcher: Matcher) -> str:
    label, op, value = matcher
    if not _LABEL.match(label):
        raise ValueError(f"a label name ([a-zA-Z_][a-zA-Z0-9_]*); got {label!r}")
    if op not in _OPERATORS:
        raise ValueError(f"one of {', '.join(_OPERATORS)}; got {op!r}")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{label}{op}"{escaped}"'


def inject_matchers(expr: str, matchers: Iterable[Matcher]) -> str:
    """``rate(x[5m])`` + ``[("job","=","api")]`` -> ``rate(x{job="api"}[5m])``."""
    extra = ",".join(format_matcher(m) for m in matchers)
    if not extra:
        return expr
    out: list[str] = []
    i, n = 0, len(expr)
    pending_label_list = False
    while i < n:
        c = expr[i]
        if c in "\"'`":
            j = _skip_string(expr, i)
            out.append(expr[i:j]); i = j
            continue
        if c == "#":
            j = expr.find("\n", i)
            j = n if j < 0 else j
            out.append(expr[i:j]); i = j
            continue
        if c == "[":
            j = expr.find("]", i)
            j = n if j < 0 else j + 1
            out.append(expr[i:j]); i = j
            continue
        if c == "(" and pending_label_list:
            j = expr.find(")", i)
            j = n if j < 0 else j + 1
            out.append(expr[i:j]); i = j
            pending_label_list = False
            continue
        if c == "{":
            # A selector without a metric name: {job="x"}
            j = _skip_braces(expr, i)
            out.append(_merge(expr[i:j], extra)); i = j
            continue
        m = _IDENT.match(expr, i)
        if m and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_.")):
            word = m.group(0)
            j = m.end()
            k = j
            while k < n and expr[k] in " \t\n":
                k += 1
            lowered = word.lower()
            if lowered in _LABEL_LIST_KEYWORDS:
                pending_label_list = True
                out.append(word); i = j
                continue
            if lowered in _KEYWORDS or (k < n and expr[k] == "("):
                out.append(word); i = j
                continue
            if k < n and expr[k] == "{":
                end = _skip_braces(expr, k)
                out.append(word + _merge(expr[k:end], extra)); i = end
                continue
            out.append(word + "{" + extra + "}"); i = j
            continue
        if c.isdigit() or c == ".":
            # numbers and durations such as 5m, 1.5e3
            j = i
            while j < n and (expr[j].isalnum() or expr[j] in "._"):
                j += 1
            out.append(expr[i:j]); i = j
            continue
        out.append(c); i += 1
    return "".join(out)


def metric_names(expr: str) -> list[str]:
    """The metric names an expression selects, in order: ``rate(x[5m]) / y`` -> ``["x", "y"]``.

    Used to say why an answer is empty (is the metric unknown, or has it no samples yet?).
    Selectors without a name (``{job="x"}``) are not listed.
    """
    names: list[str] = []
    i, n = 0, len(expr)
    pending_label_list = False
    while i < n:
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
        elif c == "#":
            j = expr.find("\n", i)
            i = n if j < 0 else j
        elif c == "[":
            j = expr.find("]", i)
            i = n if j < 0 else j + 1
        elif c == "(" and pending_label_list:
            j = expr.find(")", i)
            i = n if j < 0 else j + 1
            pending_label_list = False
        elif c == "{":
            i = _skip_braces(expr, i)
        elif c.isdigit() or c == ".":
            while i < n and (expr[i].isalnum() or expr[i] in "._"):
                i += 1
        else:
            m = _IDENT.match(expr, i)
            if not (m and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_."))):
                i += 1
                continue
            word, i = m.group(0), m.end()
            k = i
            while k < n and expr[k] in " \t\n":
                k += 1
            lowered = word.lower()
            if lowered in _LABEL_LIST_KEYWORDS:
                pending_label_list = True
            elif lowered not in _KEYWORDS and not (k < n and expr[k] == "(") and word not in names:
                names.append(word)
    return names


_CLOSING = {"(": ")", "[": "]", "{": "}"}


def balance_problem(expr: str) -> str | None:
    """What is unbalanced in an expression (parentheses, brackets, braces, quotes), or None.

    ``"rate(x[5m]"`` -> ``"'(' at character 5 is never closed"``. Not a parser: Prometheus
    still judges the rest, but this catches the typo ``check-config`` can see offline.
    """
    stack: list[tuple[str, int]] = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            j, closed = i + 1, False
            while j < n and not closed:
                if expr[j] == "\\" and c != "`":
                    j += 2
                    continue
                closed = expr[j] == c
                j += 1
            if not closed:
                return f"the string opened by {c} at character {i + 1} is never closed"
            i = j
            continue
        if c == "#":
            j = expr.find("\n", i)
            i = n if j < 0 else j
            continue
        if c in _CLOSING:
            stack.append((c, i))
        elif c in ")]}":
            if not stack:
                return f"{c!r} at character {i + 1} closes nothing"
            opened, at = stack.pop()
            if _CLOSING[opened] != c:
                return f"{c!r} at character {i + 1} does not match {opened!r} at character {at + 1}"
        i += 1
    if stack:
        opened, at = stack[-1]
        return f"{opened!r} at character {at + 1} is never closed"
    return None


def _merge(braces: str, extra: str) -> str:
    inner = braces[1:-1].strip().rstrip(",")
    return "{" + (inner + "," if inner else "") + extra + "}"


def _skip_string(text: str, i: int) -> int:
    quote = text[i]
    j = i + 1
    while j < len(text):
        if text[j] == "\\" and quote != "`":
            j += 2
            continue
        if text[j] == quote:
            return j + 1
        j += 1
    return len(text)


def _skip_braces(text: str, i: int) -> int:
    j = i + 1
    while j < len(text):
        if text[j] in "\"'`":
            j = _skip_string(text, j)
            continue
        if text[j] == "}":
            return j + 1
        j += 1
    return len(text)


# -- selectors that match every series ----------------------------------------------------------

_PROBE = ("__vigil_probe__", "=", "x")
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
_PROBED_SELECTOR = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)?\{((?:[^{}"\'`]|' + _QUOTED + r')*?),?__vigil_probe__="x"\}')
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(' + _QUOTED + r')\s*(?:,|$)')
#: metric names a regex on ``__name__`` must accept to count as "any metric"
_ANY_NAMES = ("a", "up", "node_cpu_seconds_total", "x:y:rate5m", "Z_9")


def match_all_selector(expr: str) -> str | None:
    """The first vector selector of ``expr`` that matches every series, or None.

    ``{__name__=~".+"}``, ``{__name__=~".*", job=~".*"}`` and the like make Prometheus read every
    series it has; Prometheus refuses only selectors whose matchers all match the empty string.
    A selector is refused here when it names no metric and each of its matchers either accepts
    every metric name (a regex on ``__name__``) or matches the empty label value.
    """
    try:
        probed = inject_matchers(expr, [_PROBE])
    except ValueError:  # pragma: no cover - the probe is a valid matcher
        return None
    for match in _PROBED_SELECTOR.finditer(probed):
        name, inner = match.group(1), match.group(2).strip().rstrip(",")
        if name and name.lower() not in _KEYWORDS:
            continue
        matchers = _matchers(inner)
        if matchers is None:
            continue  # not understood: Prometheus decides
        if all(_restricts_nothing(label, op, value) for label, op, value in matchers):
            return "{" + inner + "}"
    return None


def _matchers(inner: str) -> list[Matcher] | None:
    out: list[Matcher] = []
    pos = 0
    while pos < len(inner):
        m = _MATCHER.match(inner, pos)
        if not m:
            return None
        try:
            value = ast.literal_eval(m.group(3)) if m.group(3)[0] != "`" else m.group(3)[1:-1]
        except (ValueError, SyntaxError):
            return None
        out.append((m.group(1), m.group(2), str(value)))
        pos = m.end()
    return out


def _restricts_nothing(label: str, op: str, value: str) -> bool:
    if label == "__name__":
        if op == "=":
            return value == ""
        return all(_matches(op, value, name) for name in _ANY_NAMES)
    return _matches(op, value, "")


def _matches(op: str, value: str, text: str) -> bool:
    if op in ("=", "!="):
        return (value == text) == (op == "=")
    try:
        hit = re.fullmatch(value, text) is not None
    except re.error:
        return False  # not a regex Python reads: assume it restricts
    return hit == (op == "=~")
