"""Time units and conversions: the one place where seconds, milliseconds and strings meet.

Instants are ``*_ms`` (int epoch milliseconds, what Grafana speaks); durations are ``*_s``
(float seconds, what Prometheus speaks); durations in configuration and request bodies are
Prometheus duration strings (``"30s"``, ``"7d"``, ``"1h30m"``). Nothing else in the package
multiplies or divides by 1000.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import NamedTuple

__all__ = [
    "MinDeviation",
    "parse_min_deviation",
    "parse_duration_s",
    "format_duration",
    "parse_instant_ms",
    "parse_time_ms",
    "ms_to_s",
    "s_to_ms",
    "query_step_s",
    "iso_from_ms",
    "MAX_DURATION_S",
    "MAX_INSTANT_MS",
]

#: the longest duration understood (about 317 years): anything longer is a typo or an attack, and
#: multiplying it into milliseconds would overflow the int64 instants we compute with.
MAX_DURATION_S = 1e10
#: instants must lie in [1970-01-01, 9999-12-31]: what ``datetime`` and Prometheus can represent.
MAX_INSTANT_MS = 253_402_300_799_999

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration_s(text: str | int | float) -> float:
    """``"1h30m"`` -> 5400.0. A bare number is seconds. Raises ValueError on anything else."""
    if isinstance(text, bool):
        raise ValueError(f"a duration such as '30s' or '7d'; got {text!r}")
    if isinstance(text, (int, float)):
        try:
            number = float(text)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"a non-negative duration; got {_short(text)}")
        return _bounded_duration_s(number, text)
    s = str(text).strip()
    if not s:
        raise ValueError("a duration such as '30s' or '7d'; got an empty string")
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a non-negative duration; got {_short(text)}")
        return _bounded_duration_s(value, text)
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"a duration such as '30s', '5m', '7d' or '1h30m'; got {_short(text)}")
    return _bounded_duration_s(total, text)


def _bounded_duration_s(duration_s: float, text: object) -> float:
    if not math.isfinite(duration_s) or duration_s > MAX_DURATION_S:
        raise ValueError(f"a duration of at most {MAX_DURATION_S:.0e} seconds; got {_short(text)}")
    return duration_s


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length said (for error messages)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def format_duration(duration_s: float) -> str:
    """5400 -> ``"1h30m"``; the inverse of :func:`parse_duration_s` for whole seconds."""
    remaining = int(round(duration_s))
    if remaining == 0:
        return "0s" if duration_s == 0 else f"{int(round(duration_s * 1000))}ms"
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = int(_UNIT_S[unit])
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def ms_to_s(instant_ms: int | float) -> float:
    return instant_ms / 1000.0


def s_to_ms(instant_s: float) -> int:
    return int(round(instant_s * 1000.0))


# Epoch values below this are seconds, above it milliseconds (1e11 s is the year 5138;
# 1e11 ms is 1973), so both forms a user may paste are understood.
_SECONDS_CEILING = 1e11


def parse_instant_ms(value: str | int | float) -> int:
    """An instant as epoch ms from ISO-8601 text, epoch seconds or epoch milliseconds."""
    if isinstance(value, bool):
        raise ValueError(f"a time (ISO-8601 or epoch seconds/ms); got {value!r}")
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range, such as 10**400
            number = math.inf
    else:
        text = str(value).strip()
        try:
            number = float(text)
        except ValueError:
            if text == "now":
                return s_to_ms(datetime.now(timezone.utc).timestamp())
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"a time (ISO-8601 or epoch seconds/ms); got {_short(value)}") from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return _bounded_instant_ms(s_to_ms(parsed.timestamp()), value)
    if not math.isfinite(number):
        raise ValueError(f"a finite time; got {_short(value)}")
    if abs(number) > MAX_INSTANT_MS:
        raise ValueError(f"a time between 1970 and 9999; got {_short(value)}")
    return _bounded_instant_ms(int(round(number)) if abs(number) >= _SECONDS_CEILING else s_to_ms(number), value)


def _bounded_instant_ms(instant_ms: int, value: object) -> int:
    if not 0 <= instant_ms <= MAX_INSTANT_MS:
        raise ValueError(f"a time between 1970 and 9999; got {_short(value)}")
    return instant_ms


def iso_from_ms(instant_ms: int) -> str:
    """RFC 3339 text (UTC, ``Z``) for an instant: what Alertmanager wants."""
    return datetime.fromtimestamp(instant_ms / 1000.0, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def query_step_s(
    range_s: float,
    *,
    interval_ms: float | None = None,
    max_data_points: int | None = None,
    min_step_s: float = 1.0,
    max_points_per_series: int = 11_000,
) -> float:
    """The step Grafana would use, bounded so that Prometheus never returns too many points.

    ``max(intervalMs, range / maxDataPoints)``, never below ``min_step_s``, and never so small
    that one series would have more than ``max_points_per_series`` points. Whole seconds, so
    that repeated requests land on the same grid (and the same cache entries).
    """
    candidates = [min_step_s, range_s / max(max_points_per_series - 1, 1)]
    if interval_ms:
        candidates.append(interval_ms / 1000.0)
    if max_data_points:
        candidates.append(range_s / max_data_points)
    return float(max(1, math.ceil(max(candidates))))


class MinDeviation(NamedTuple):
    """The smallest distance from the expected value that may be anomalous: ``absolute`` in the
    series' unit, or ``relative`` times its typical level, whichever is larger."""

    absolute: float = 0.0
    relative: float = 0.0


def parse_min_deviation(text: str | int | float) -> MinDeviation:
    """``"5%"`` (of the series' typical level), ``0.5`` or ``"0.5"`` (in its unit), or both as
    ``"0.5, 5%"``. Raises ValueError naming the problem."""
    absolute = relative = 0.0
    parts = [text] if isinstance(text, (int, float)) and not isinstance(text, bool) else str(text).split(",")
    for part in parts:
        item = str(part).strip()
        try:
            if item.endswith("%"):
                relative = float(item[:-1]) / 100.0
            else:
                absolute = float(item)
        except ValueError:
            raise ValueError(f"a number in the series' unit (0.5) and/or a percentage of its level (5%); "
                             f"got {text!r}") from None
    if not (math.isfinite(absolute) and math.isfinite(relative)) or absolute < 0 or relative < 0:
        raise ValueError(f"a non-negative number and/or percentage; got {text!r}")
    return MinDeviation(absolute, relative)


_RELATIVE = re.compile(r"^now\s*([-+])\s*(.+)$")


def parse_time_ms(value: str | int | float, *, now_ms: int | None = None) -> int:
    """A request's time: what :func:`parse_instant_ms` reads, and ``now-6h``/``now+5m`` (Grafana's form).

    The request endpoints (``/json/query``, ``/api/v1/anomalies``) share this, so a time one
    accepts the other accepts too. Raises ValueError naming the value.
    """
    if isinstance(value, str):
        match = _RELATIVE.match(value.strip())
        if match:
            base_ms = now_ms if now_ms is not None else s_to_ms(datetime.now(timezone.utc).timestamp())
            try:
                offset_ms = s_to_ms(parse_duration_s(match.group(2)))
            except ValueError:
                raise ValueError(f"a time such as now-6h (a duration after now-); got {value!r}") from None
            return base_ms - offset_ms if match.group(1) == "-" else base_ms + offset_ms
        if value.strip() == "now" and now_ms is not None:
            return now_ms
    try:
        return parse_instant_ms(value)
    except ValueError:
        raise ValueError(f"a time (epoch ms or s, ISO-8601, now or now-6h); got {value!r}") from None
