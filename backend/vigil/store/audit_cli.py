"""``vigil audit``: the recorded anomaly episodes (or their deliveries) as a table or JSON lines.

Reads the audit store the worker writes (``audit.py``), read-only; never changes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Iterable, Sequence

from vigil.store.audit import open_for_reading
from vigil.units import parse_duration_s

__all__ = ["add_arguments", "run"]


def _now_ms() -> int:
    return int(time.time() * 1000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="the YAML configuration, audit.path names the store (default: $VIGIL_CONFIG; "
                             "VIGIL_* variables override it, e.g. VIGIL_AUDIT_PATH)")
    parser.add_argument("--since", default="24h", help="how far back to list, a duration (default 24h)")
    parser.add_argument("--job", default=None, help="only this job")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    parser.add_argument("--events", action="store_true", help="list every side effect (deliveries) instead of episodes")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--wide", action="store_true",
                        help="never shorten a column (by default the reason, last, is shown in full and other "
                             f"columns are cut at {_CELL_MAX} characters)")


def run(args: argparse.Namespace) -> int:
    from vigil.config import ConfigError, config_path, load_settings

    try:
        settings = load_settings(config_path(args.config))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        since_ms = _now_ms() - int(parse_duration_s(args.since) * 1000)
    except ValueError as exc:
        print(f"--since: {exc}", file=sys.stderr)
        return 2
    store = open_for_reading(settings.audit.path)
    if store is None:
        print(f"{settings.audit.path}: no audit store yet (the worker has not run)", file=sys.stderr)
        return 0 if not args.json else 0
    with store:
        if args.events:
            rows = store.events(since_ms=since_ms, limit=args.limit)
            _print(rows, args.json, ("ts", "kind", "sink", "episode_id", "detail"), wide=args.wide)
        else:
            episodes = store.episodes(since_ms=since_ms, job=args.job, limit=args.limit)
            rows = [e.as_record() for e in reversed(episodes)]
            _print(rows, args.json, ("id", "job", "series", "start", "end", "peak_score", "annotation_id",
                                     "alert_state", "reason"), wide=args.wide)
    return 0


#: the widest a column other than the last may be in the table (``--wide`` lifts it)
_CELL_MAX = 60


def _print(rows: Iterable[dict[str, Any]], as_json: bool, columns: Sequence[str], *, wide: bool = False) -> None:
    """A table, one row per line; the last column (the reason, the detail) is never shortened."""
    rows = list(rows)
    if as_json:
        for row in rows:
            print(json.dumps(row, sort_keys=True, default=str))
        return
    def cell(row: dict[str, Any], c: str) -> str:
        v = row.get(c)
        if v is None:
            return "-" if c != "end" else "open"
        if isinstance(v, float):
            return f"{v:.2f}"
        if isinstance(v, dict):
            return json.dumps(v, sort_keys=True)
        return str(v)
    def cut(text: str, last: bool) -> str:
        if wide or last or len(text) <= _CELL_MAX:
            return text
        return text[:_CELL_MAX - 3] + "..."

    table = [[cut(cell(r, c), i == len(columns) - 1) for i, c in enumerate(columns)] for r in rows]
    widths = [max([len(c)] + [len(t[i]) for t in table]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip())
    print(f"({len(rows)} {'events' if 'kind' in columns else 'episodes'})")
