"""How numbers and instants are shown to people: one formatter for reasons, annotations and alerts.

Owns: a value in its Grafana unit (``percentunit`` -> ``"87.3%"``, ``bytes`` -> ``"1.5 GiB"``,
``s``, ``reqps``), readable large numbers (``"12.3k"``, ``"4.5M"``), and instants and spans in
UTC for summaries. Must not: parse anything (``units.py`` owns conversions) or know about models.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

__all__ = ["format_value", "format_instant", "format_span", "states_the_numbers"]

#: SI prefixes for plain numbers: 12345 -> 12.3k, so an alert is read at a glance.
_SI = (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))
_BYTES = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))
#: Grafana unit ids whose values are per second, and how to say it.
_RATE_SUFFIX = {"reqps": " req/s", "ops": " ops/s", "Bps": " B/s", "bps": " bit/s", "short": ""}


def format_value(value: float | None, unit: str | None = None) -> str:
    """``0.8734, "percentunit"`` -> ``"87.3%"``; ``12_345_678`` -> ``"12.3M"``; ``None``/NaN -> ``"no data"``."""
    if value is None or value != value:
        return "no data"
    if math.isinf(value):
        return "infinite" if value > 0 else "minus infinite"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "percent":
        return f"{value:.3g}%"
    if unit == "bytes":
        size = abs(value)
        for suffix, scale in _BYTES:
            if size >= scale:
                return f"{value / scale:.3g} {suffix}"
        return f"{value:.0f} B"
    if unit == "s":
        if abs(value) < 1:
            return f"{value * 1000:.3g} ms"
        return f"{value:.3g} s" if abs(value) < 3600 else f"{value / 3600:.3g} h"
    if unit in _RATE_SUFFIX or not unit:
        return _plain(value) + _RATE_SUFFIX.get(unit or "", "")
    return f"{_plain(value)} {unit}"


def _plain(value: float) -> str:
    size = abs(value)
    for prefix, scale in _SI:
        if size >= scale:
            return f"{value / scale:.3g}{prefix}"
    return f"{value:.3g}"


def format_instant(instant_ms: int) -> str:
    """``1704067200000`` -> ``"2024-01-01 00:00 UTC"``."""
    return datetime.fromtimestamp(instant_ms / 1000.0, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def format_span(start_ms: int, end_ms: int | None, *, ended: bool = False) -> str:
    """``"2024-01-01 13:15 to 13:45 UTC (30m)"``; an open span is ``"since ... (still going on)"``.

    ``ended=True`` says so on a closed span (``"ended, 2024-01-01 13:15 to 13:45 UTC (30m)"``).
    """
    if ended and end_ms is not None:
        return "ended, " + format_span(start_ms, end_ms)
    start = datetime.fromtimestamp(start_ms / 1000.0, tz=timezone.utc)
    if end_ms is None:
        return f"since {start:%Y-%m-%d %H:%M} UTC (still going on)"
    if end_ms <= start_ms:
        return f"{start:%Y-%m-%d %H:%M} UTC (one point)"
    end = datetime.fromtimestamp(end_ms / 1000.0, tz=timezone.utc)
    end_text = f"{end:%H:%M}" if end.date() == start.date() else f"{end:%Y-%m-%d %H:%M}"
    minutes = max(0, round((end_ms - start_ms) / 60_000))
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    took = "".join(f"{n}{u}" for n, u in ((days, "d"), (hours, "h"), (minutes, "m")) if n) or "<1m"
    return f"{start:%Y-%m-%d %H:%M} to {end_text} UTC ({took})"


def states_the_numbers(reason: str | None, peak_value: float | None, unit: str | None) -> bool:
    """Whether a reason already says the peak value, the expectation and the score (``explain.py``'s
    do), so that an alert or annotation does not repeat them."""
    text = reason or ""
    return format_value(peak_value, unit) in text and "expected" in text and "score" in text
