"""OpenMetrics text for backfilling Prometheus with ``promtool tsdb create-blocks-from openmetrics``.

Owns: turning series (labels, ``times_ms``, values) into gauge families in the OpenMetrics text
format that promtool reads: one ``# TYPE name gauge`` line per family, the samples of each series
contiguous and in strictly increasing time order, timestamps in UNIX seconds, NaN samples left out
(a missing sample, not a NaN value), label values escaped, and a final ``# EOF``.
Must not: talk to Prometheus or run promtool.
"""

from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import numpy as np

__all__ = ["to_openmetrics", "escape_label_value", "format_value"]

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Family = tuple[str, Sequence[tuple[Mapping[str, str], np.ndarray, np.ndarray]]]


def escape_label_value(value: str) -> str:
    r"""Escape ``\``, ``"`` and newlines the way OpenMetrics requires."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    """``+Inf``, ``-Inf`` or the shortest round-tripping float text (NaN is never written)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _format_timestamp_s(time_ms: int) -> str:
    # Exact decimal seconds from integer milliseconds: units.ms_to_s returns a float, whose text
    # could read 1.2300000001; promtool wants the exact instant.
    seconds, millis = divmod(int(time_ms), 1000)
    return f"{seconds}.{millis:03d}" if millis else str(seconds)


def _label_block(name: str, labels: Mapping[str, str]) -> str:
    parts = []
    for key in sorted(labels):
        if key == "__name__":
            if labels[key] != name:
                raise ValueError(f"label __name__={labels[key]!r} does not match family {name!r}")
            continue
        if not _LABEL_NAME.match(key) or key.startswith("__"):
            raise ValueError(f"invalid label name {key!r} in family {name!r}")
        parts.append(f'{key}="{escape_label_value(str(labels[key]))}"')
    return "{" + ",".join(parts) + "}" if parts else ""


def to_openmetrics(families: Sequence[Family]) -> str:
    """Gauge families -> OpenMetrics text ending in ``# EOF``.

    ``families`` is ``[(metric_name, [(labels, times_ms, values), ...]), ...]``; ``times_ms`` must be
    strictly increasing per series; NaN values are skipped. Raises ValueError on invalid names,
    repeated families or label sets, or times out of order.
    """
    lines: list[str] = []
    seen_families: set[str] = set()
    for name, series_list in families:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        if name in seen_families:
            raise ValueError(f"family {name!r} given twice; group its series in one family")
        seen_families.add(name)
        lines.append(f"# TYPE {name} gauge")
        seen_label_blocks: set[str] = set()
        for labels, times_ms, values in series_list:
            times = np.asarray(times_ms, dtype=np.int64)
            vals = np.asarray(values, dtype=np.float64)
            if times.shape != vals.shape or times.ndim != 1:
                raise ValueError(f"{name}: times_ms and values must be 1-d arrays of one length")
            if times.size > 1 and np.any(np.diff(times) <= 0):
                raise ValueError(f"{name}{dict(labels)}: times_ms must be strictly increasing")
            prefix = name + _label_block(name, labels)
            if prefix in seen_label_blocks:
                raise ValueError(f"series {prefix} given twice")
            seen_label_blocks.add(prefix)
            keep = ~np.isnan(vals)
            lines.extend(
                f"{prefix} {format_value(v)} {_format_timestamp_s(t)}"
                for t, v in zip(times[keep].tolist(), vals[keep].tolist())
            )
    lines.append("# EOF")
    return "\n".join(lines) + "\n"

