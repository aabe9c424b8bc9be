"""The durable audit store (SQLite, WAL, ``synchronous=FULL``); ``vigil audit`` is ``audit_cli.py``.

Owns three tables: ``episodes`` (one row per anomaly episode, ever), ``outbox`` (deliveries still
owed to a sink, at most one pending row per episode and sink) and ``events`` (an append-only log of
every episode start/end and every delivery attempt). An episode row and the outbox rows it causes
are written in ONE transaction, committed before any delivery is tried: a crash at any point loses
nothing and the outbox replays what is owed.

Must not: talk to Grafana or Alertmanager, or score anything. One store object is shared by the
worker's threads (a lock serialises them); other processes (``vigil audit``, the service's
``/api/v1/audit``) open the file read-only, which WAL allows while the worker writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from vigil.units import iso_from_ms, parse_duration_s, parse_instant_ms

__all__ = [
    "AuditStore",
    "StoredEpisode",
    "OutboxItem",
    "SINKS",
    "new_episode_id",
    "audit_rows",
]

#: The delivery sinks an outbox row may name.
SINKS = ("grafana", "alertmanager")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS episodes (
    id TEXT PRIMARY KEY,              -- random, globally unique: also the Grafana tag vigil_episode:<id>
    job TEXT NOT NULL,
    series_key TEXT NOT NULL,
    labels TEXT NOT NULL,             -- JSON object
    start_ms INTEGER NOT NULL,
    end_ms INTEGER,                   -- NULL while the episode is open
    last_ms INTEGER NOT NULL,         -- latest instant the episode was seen anomalous
    peak_ms INTEGER NOT NULL,
    peak_score REAL NOT NULL,
    peak_value REAL,
    yhat REAL,
    yhat_lower REAL,
    yhat_upper REAL,
    reason TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    unit TEXT,
    severity TEXT NOT NULL DEFAULT 'warning',
    annotation_id INTEGER,            -- Grafana's id once created
    alert_state TEXT NOT NULL DEFAULT 'pending',  -- pending | firing | resolved | off
    alert_sent_ms INTEGER,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS episodes_one_open ON episodes(job, series_key) WHERE end_ms IS NULL;
CREATE INDEX IF NOT EXISTS episodes_by_job ON episodes(job, series_key, start_ms);
CREATE INDEX IF NOT EXISTS episodes_by_start ON episodes(start_ms);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    episode_id TEXT NOT NULL REFERENCES episodes(id),
    sink TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,  -- bumped when the episode changes while a row is pending
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    last_error TEXT,
    created_ms INTEGER NOT NULL,
    delivered_ms INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_one_pending ON outbox(episode_id, sink) WHERE delivered_ms IS NULL;
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(next_attempt_ms) WHERE delivered_ms IS NULL;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    episode_id TEXT,
    kind TEXT NOT NULL,               -- episode_started | episode_ended | delivered | delivery_failed
    sink TEXT,
    detail TEXT NOT NULL DEFAULT '{}' -- JSON
);
CREATE INDEX IF NOT EXISTS events_by_ts ON events(ts_ms);
CREATE INDEX IF NOT EXISTS events_by_episode ON events(episode_id);
"""

_EPISODE_FIELDS = (
    "id", "job", "series_key", "labels", "start_ms", "end_ms", "last_ms", "peak_ms", "peak_score",
    "peak_value", "yhat", "yhat_lower", "yhat_upper", "reason", "model", "unit", "severity",
    "annotation_id", "alert_state", "alert_sent_ms", "created_ms", "updated_ms",
)


def _known_fields(values: Mapping[str, Any]) -> None:
    """A key that is not a column is a bug in the caller: say so instead of dropping it."""
    unknown = sorted(set(values) - set(_EPISODE_FIELDS))
    if unknown:
        raise ValueError(f"episode fields must be columns of the episodes table ({', '.join(_EPISODE_FIELDS)}); "
                         f"got {', '.join(unknown)}")


def new_episode_id() -> str:
    """16 hex digits, random: unique across stores, so a Grafana tag never matches an old episode."""
    return uuid.uuid4().hex[:16]


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class StoredEpisode:
    """One row of ``episodes``; ``end_ms`` is None while open."""

    id: str
    job: str
    series_key: str
    labels: dict[str, str]
    start_ms: int
    end_ms: int | None
    last_ms: int
    peak_ms: int
    peak_score: float
    peak_value: float | None
    yhat: float | None
    yhat_lower: float | None
    yhat_upper: float | None
    reason: str
    model: str
    unit: str | None
    severity: str
    annotation_id: int | str | None
    alert_state: str
    alert_sent_ms: int | None
    created_ms: int
    updated_ms: int

    @property
    def is_open(self) -> bool:
        return self.end_ms is None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "StoredEpisode":
        values = {k: row[k] for k in _EPISODE_FIELDS}
        values["labels"] = json.loads(values["labels"])
        return cls(**values)

    def as_record(self) -> dict[str, Any]:
        """The JSON record ``vigil audit --json`` and ``/api/v1/audit`` show."""
        return {
            "id": self.id, "job": self.job, "series": self.series_key, "labels": self.labels,
            "start_ms": self.start_ms, "end_ms": self.end_ms, "last_ms": self.last_ms,
            "start": iso_from_ms(self.start_ms), "end": iso_from_ms(self.end_ms) if self.end_ms is not None else None,
            "peak_ms": self.peak_ms, "peak_score": self.peak_score, "peak_value": self.peak_value,
            "yhat": self.yhat, "yhat_lower": self.yhat_lower, "yhat_upper": self.yhat_upper,
            "reason": self.reason, "model": self.model, "unit": self.unit, "severity": self.severity,
            "annotation_id": self.annotation_id, "alert_state": self.alert_state,
        }


@dataclass(frozen=True)
class OutboxItem:
    """A delivery owed: make ``sink`` reflect episode ``episode_id`` as of ``version``."""

    id: int
    episode_id: str
    sink: str
    version: int
    attempts: int
    next_attempt_ms: int


class AuditStore:
    """The SQLite audit store. ``AuditStore(path)`` creates the schema; ``read_only=True`` never writes."""

    def __init__(self, path: str | Path, *, read_only: bool = False, timeout_s: float = 30.0) -> None:
        self.path = str(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        if read_only:
            uri = f"file:{Path(self.path).resolve()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=timeout_s, check_same_thread=False,
                                       isolation_level=None)
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE/COMMIT ourselves, one per write.
            self._db = sqlite3.connect(self.path, timeout=timeout_s, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "AuditStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transactions -------------------------------------------------------------------------

    class _Tx:
        def __init__(self, store: "AuditStore") -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._lock.acquire()
            self.store._db.execute("BEGIN IMMEDIATE")
            return self.store._db

        def __exit__(self, exc_type: Any, *rest: Any) -> None:
            try:
                self.store._db.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.store._lock.release()

    def transaction(self) -> "AuditStore._Tx":
        """``with store.transaction() as db:`` -- one durable commit (or nothing)."""
        if self.read_only:
            raise PermissionError(f"{self.path}: opened read-only")
        return AuditStore._Tx(self)

    def _select(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, params))

    # -- the tracker's side -------------------------------------------------------------------

    def relevant_episodes(self, job: str, since_ms: int) -> list[StoredEpisode]:
        """Open episodes of ``job`` plus those that ended at or after ``since_ms`` (for matching)."""
        rows = self._select(
            "SELECT * FROM episodes WHERE job = ? AND (end_ms IS NULL OR end_ms >= ?) ORDER BY start_ms",
            (job, since_ms),
        )
        return [StoredEpisode.from_row(r) for r in rows]

    def insert_episode(self, db: sqlite3.Connection, values: Mapping[str, Any], now_ms: int) -> str:
        """Inside a transaction: a new episode row; returns its id."""
        _known_fields(values)
        row = dict(values)
        row.setdefault("id", new_episode_id())
        row["labels"] = json.dumps(row["labels"], sort_keys=True)
        row.setdefault("last_ms", row.get("end_ms") or row["start_ms"])
        row["created_ms"] = row["updated_ms"] = now_ms
        columns = [k for k in _EPISODE_FIELDS if k in row]
        db.execute(
            f"INSERT INTO episodes ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
            [row[c] for c in columns],
        )
        return str(row["id"])

    def update_episode(self, db: sqlite3.Connection, episode_id: str, values: Mapping[str, Any], now_ms: int) -> None:
        """Inside a transaction: change some fields of an episode."""
        _known_fields(values)
        row = {k: v for k, v in values.items() if k != "id"}
        if "labels" in row:
            row["labels"] = json.dumps(row["labels"], sort_keys=True)
        row["updated_ms"] = now_ms
        db.execute(
            f"UPDATE episodes SET {', '.join(f'{k} = ?' for k in row)} WHERE id = ?",
            [*row.values(), episode_id],
        )

    def enqueue(self, db: sqlite3.Connection, episode_id: str, sink: str, now_ms: int) -> None:
        """Inside a transaction: owe ``sink`` a delivery of this episode (coalesced with a pending one).

        A pending row keeps its backoff schedule (a sink that is down is not hammered harder because
        the episode changed); its version is bumped so that a delivery in flight of the older state
        does not mark it done.
        """
        if sink not in SINKS:
            raise ValueError(f"sink must be one of {SINKS}; got {sink!r}")
        db.execute(
            "INSERT INTO outbox (episode_id, sink, next_attempt_ms, created_ms) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(episode_id, sink) WHERE delivered_ms IS NULL DO UPDATE SET version = version + 1",
            (episode_id, sink, now_ms, now_ms),
        )

    def log_event(self, db: sqlite3.Connection, kind: str, now_ms: int, *, episode_id: str | None = None,
                  sink: str | None = None, detail: Mapping[str, Any] | None = None) -> None:
        db.execute(
            "INSERT INTO events (ts_ms, episode_id, kind, sink, detail) VALUES (?, ?, ?, ?, ?)",
            (now_ms, episode_id, kind, sink, json.dumps(dict(detail or {}), sort_keys=True, default=str)),
        )

    # -- the outbox's side --------------------------------------------------------------------

    def episode(self, episode_id: str) -> StoredEpisode | None:
        rows = self._select("SELECT * FROM episodes WHERE id = ?", (episode_id,))
        return StoredEpisode.from_row(rows[0]) if rows else None

    def due(self, now_ms: int, *, limit: int = 100) -> list[OutboxItem]:
        """Pending deliveries whose time has come, oldest first."""
        rows = self._select(
            "SELECT id, episode_id, sink, version, attempts, next_attempt_ms FROM outbox "
            "WHERE delivered_ms IS NULL AND next_attempt_ms <= ? ORDER BY next_attempt_ms, id LIMIT ?",
            (now_ms, limit),
        )
        return [OutboxItem(*tuple(r)) for r in rows]

    def next_due_ms(self) -> int | None:
        rows = self._select("SELECT MIN(next_attempt_ms) FROM outbox WHERE delivered_ms IS NULL")
        return rows[0][0] if rows and rows[0][0] is not None else None

    def mark_delivered(self, db: sqlite3.Connection, item: OutboxItem, now_ms: int) -> bool:
        """Inside a transaction: done, unless the episode changed meanwhile (then it stays due now)."""
        cur = db.execute(
            "UPDATE outbox SET delivered_ms = ?, attempts = attempts + 1, last_error = NULL "
            "WHERE id = ? AND version = ? AND delivered_ms IS NULL",
            (now_ms, item.id, item.version),
        )
        if cur.rowcount == 0:
            db.execute("UPDATE outbox SET next_attempt_ms = ?, attempts = 0 WHERE id = ? AND delivered_ms IS NULL",
                       (now_ms, item.id))
            return False
        return True

    def mark_failed(self, db: sqlite3.Connection, item: OutboxItem, error: str, next_attempt_ms: int) -> None:
        db.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_ms = ? WHERE id = ?",
            (error[:500], next_attempt_ms, item.id),
        )

    def enqueue_resends(self, now_ms: int, resend_every_s: float) -> int:
        """Owe Alertmanager a re-send of every firing alert last sent ``resend_every_s`` ago or more."""
        cutoff = now_ms - int(resend_every_s * 1000)
        with self.transaction() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM episodes WHERE end_ms IS NULL AND alert_state = 'firing' AND alert_sent_ms <= ?",
                (cutoff,))]
            for episode_id in ids:
                self.enqueue(db, episode_id, "alertmanager", now_ms)
        return len(ids)

    def backlog(self) -> dict[str, int]:
        counts = {sink: 0 for sink in SINKS}
        for sink, count in self._select(
                "SELECT sink, COUNT(*) FROM outbox WHERE delivered_ms IS NULL GROUP BY sink"):
            counts[sink] = count
        return counts

    # -- reading ------------------------------------------------------------------------------

    def episodes(self, *, since_ms: int | None = None, until_ms: int | None = None, job: str | None = None,
                 limit: int = 1000) -> list[StoredEpisode]:
        """Episodes overlapping ``[since_ms, until_ms]`` (open ones always overlap), newest first."""
        where: list[str] = ["1=1"]
        params: list[int | str] = []
        if since_ms is not None:
            where.append("(end_ms IS NULL OR end_ms >= ?)")
            params.append(since_ms)
        if until_ms is not None:
            where.append("start_ms <= ?")
            params.append(until_ms)
        if job:
            where.append("job = ?")
            params.append(job)
        rows = self._select(
            f"SELECT * FROM episodes WHERE {' AND '.join(where)} ORDER BY start_ms DESC, id LIMIT ?",
            [*params, limit],
        )
        return [StoredEpisode.from_row(r) for r in rows]

    def events(self, *, since_ms: int | None = None, episode_id: str | None = None,
               limit: int = 10000) -> list[dict[str, Any]]:
        where: list[str] = ["1=1"]
        params: list[int | str] = []
        if since_ms is not None:
            where.append("ts_ms >= ?")
            params.append(since_ms)
        if episode_id:
            where.append("episode_id = ?")
            params.append(episode_id)
        rows = self._select(
            f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY ts_ms, id LIMIT ?", [*params, limit])
        return [
            {"id": r["id"], "ts_ms": r["ts_ms"], "ts": iso_from_ms(r["ts_ms"]), "episode_id": r["episode_id"],
             "kind": r["kind"], "sink": r["sink"], "detail": json.loads(r["detail"])}
            for r in rows
        ]


# ---------------------------------------------------------------------------------------------
# Shared by the service's Blueprint and the worker's HTTP server: rows for an Infinity table.


def audit_rows(store: AuditStore | None, params: Mapping[str, Any], *, now_ms: int | None = None) -> list[dict[str, Any]]:
    """Episode records for ``GET /api/v1/audit?since=24h`` (or ``from``/``to`` in ms, ``job``, ``limit``).

    Raises ValueError naming the bad parameter. A missing store (no worker has run yet) is no rows.
    """
    now_ms = _now_ms() if now_ms is None else now_ms
    since_ms: int | None = None
    until_ms: int | None = None
    if params.get("from") not in (None, ""):
        since_ms = _param_instant("from", params["from"])
    elif params.get("since") not in (None, ""):
        since_ms = now_ms - int(_param_duration("since", params["since"]) * 1000)
    else:
        since_ms = now_ms - 86_400_000
    if params.get("to") not in (None, ""):
        until_ms = _param_instant("to", params["to"])
    limit_raw = params.get("limit", 1000)
    try:
        limit = int(limit_raw)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"The 'limit' parameter must be an integer in [1, 10000]. Got {_excerpt(limit_raw)} instead.") from None
    if not 1 <= limit <= 10000:
        raise ValueError(f"The 'limit' parameter must be an integer in [1, 10000]. Got {_excerpt(limit_raw)} instead.")
    if store is None:
        return []
    job = params.get("job") or None
    if job is not None and not isinstance(job, str):
        raise ValueError(f"The 'job' parameter must be a job name (a string). Got {type(job).__name__} instead.")
    return [e.as_record() for e in store.episodes(since_ms=since_ms, until_ms=until_ms, job=job, limit=limit)]


def _param_instant(name: str, value: Any) -> int:
    try:
        return parse_instant_ms(value)
    except ValueError:
        raise ValueError(f"The '{name}' parameter must be a time (epoch ms or ISO-8601). Got {_excerpt(value)} instead.") from None


def _param_duration(name: str, value: Any) -> float:
    try:
        return parse_duration_s(value)
    except ValueError:
        raise ValueError(f"The '{name}' parameter must be a duration such as '24h'. Got {_excerpt(value)} instead.") from None


def _excerpt(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def open_for_reading(path: str | Path) -> AuditStore | None:
    """A read-only store, or None when the file does not exist yet."""
    if not Path(path).exists():
        return None
    return AuditStore(path, read_only=True)
