"""The audit store: durable settings, one open episode per series, coalesced outbox, the audit command."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest

from vigil.store.audit import AuditStore, audit_rows, open_for_reading

NOW_MS = 1_735_711_200_000


def _episode(**overrides):
    values = {"job": "cpu", "series_key": "instance=a", "labels": {"instance": "a"}, "start_ms": NOW_MS - 600_000,
              "end_ms": None, "last_ms": NOW_MS, "peak_ms": NOW_MS - 300_000, "peak_score": 2.5, "peak_value": 0.97,
              "yhat": 0.3, "yhat_lower": 0.2, "yhat_upper": 0.4, "reason": "CPU far above its usual level",
              "model": "iforest", "severity": "warning"}
    values.update(overrides)
    return values


def test_store_is_wal_with_full_sync(tmp_path):
    store = AuditStore(tmp_path / "audit.db")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_only_one_open_episode_per_series(tmp_path):
    store = AuditStore(tmp_path / "audit.db")
    with store.transaction() as db:
        store.insert_episode(db, _episode(), NOW_MS)
    with pytest.raises(sqlite3.IntegrityError):
        with store.transaction() as db:
            store.insert_episode(db, _episode(), NOW_MS)
    with store.transaction() as db:  # a closed one next to the open one is fine
        store.insert_episode(db, _episode(end_ms=NOW_MS - 700_000, start_ms=NOW_MS - 900_000), NOW_MS)
    assert len(store.episodes(since_ms=0)) == 2


def test_transaction_is_all_or_nothing(tmp_path):
    store = AuditStore(tmp_path / "audit.db")
    with pytest.raises(RuntimeError):
        with store.transaction() as db:
            episode_id = store.insert_episode(db, _episode(), NOW_MS)
            store.enqueue(db, episode_id, "grafana", NOW_MS)
            raise RuntimeError("crash before commit")
    assert store.episodes(since_ms=0) == [] and store.backlog() == {"grafana": 0, "alertmanager": 0}


def test_outbox_coalesces_and_versions(tmp_path):
    store = AuditStore(tmp_path / "audit.db")
    with store.transaction() as db:
        episode_id = store.insert_episode(db, _episode(), NOW_MS)
        store.enqueue(db, episode_id, "grafana", NOW_MS)
        store.enqueue(db, episode_id, "alertmanager", NOW_MS)
    [first, _] = store.due(NOW_MS)
    with store.transaction() as db:  # the episode changes while a delivery is in flight
        store.enqueue(db, episode_id, "grafana", NOW_MS + 1)
    assert store.backlog() == {"grafana": 1, "alertmanager": 1}
    with store.transaction() as db:
        assert store.mark_delivered(db, first, NOW_MS + 2) is False  # older version: still owed
    [again] = [i for i in store.due(NOW_MS + 2) if i.sink == "grafana"]
    assert again.version == first.version + 1
    with store.transaction() as db:
        assert store.mark_delivered(db, again, NOW_MS + 3) is True
    assert store.backlog()["grafana"] == 0


def test_resends_only_firing_open_episodes(tmp_path):
    store = AuditStore(tmp_path / "audit.db")
    with store.transaction() as db:
        a = store.insert_episode(db, _episode(alert_state="firing", alert_sent_ms=NOW_MS - 120_000), NOW_MS)
        store.insert_episode(db, _episode(series_key="instance=b", alert_state="firing", alert_sent_ms=NOW_MS), NOW_MS)
        store.insert_episode(db, _episode(series_key="instance=c", end_ms=NOW_MS, alert_state="resolved",
                                          alert_sent_ms=NOW_MS - 900_000), NOW_MS)
    assert store.enqueue_resends(NOW_MS, 60) == 1
    assert [i.episode_id for i in store.due(NOW_MS)] == [a]


def test_audit_rows_parameters(tmp_path):
    store = AuditStore(tmp_path / "audit.db")
    with store.transaction() as db:
        store.insert_episode(db, _episode(), NOW_MS)
        store.insert_episode(db, _episode(job="mem", series_key="x", start_ms=NOW_MS - 3 * 86_400_000,
                                          end_ms=NOW_MS - 2 * 86_400_000), NOW_MS)
    rows = audit_rows(store, {"since": "24h"}, now_ms=NOW_MS)
    assert [r["job"] for r in rows] == ["cpu"]
    assert rows[0]["end"] is None and rows[0]["reason"].startswith("CPU")
    assert len(audit_rows(store, {"from": str(NOW_MS - 4 * 86_400_000)}, now_ms=NOW_MS)) == 2
    assert audit_rows(store, {"since": "7d", "job": "mem"}, now_ms=NOW_MS)[0]["job"] == "mem"
    with pytest.raises(ValueError, match="'since' parameter"):
        audit_rows(store, {"since": "yesterday"}, now_ms=NOW_MS)
    with pytest.raises(ValueError, match="'limit' parameter"):
        audit_rows(store, {"limit": "0"}, now_ms=NOW_MS)
    assert audit_rows(None, {}, now_ms=NOW_MS) == []


def test_read_only_store_sees_committed_rows_while_writer_is_open(tmp_path):
    path = tmp_path / "audit.db"
    assert open_for_reading(path) is None
    writer = AuditStore(path)
    with writer.transaction() as db:
        writer.insert_episode(db, _episode(), NOW_MS)
    reader = open_for_reading(path)
    assert reader is not None and len(reader.episodes(since_ms=0)) == 1
    with pytest.raises(PermissionError):
        reader.transaction()


def test_audit_command_lists_episodes_and_events(tmp_path):
    path = tmp_path / "audit.db"
    config = tmp_path / "vigil.yml"
    config.write_text(f"audit:\n  path: {path}\n")
    store = AuditStore(path)
    now = int(time.time() * 1000)
    with store.transaction() as db:
        episode_id = store.insert_episode(db, _episode(start_ms=now - 600_000, last_ms=now, peak_ms=now), now)
        store.log_event(db, "episode_started", now, episode_id=episode_id)
    store.close()
    run = lambda *args: subprocess.run([sys.executable, "-m", "vigil.cli", "audit", "--config", str(config), *args],
                                       capture_output=True, text=True, timeout=60)
    table = run()
    assert table.returncode == 0, table.stderr
    assert episode_id in table.stdout and "open" in table.stdout and "(1 episodes)" in table.stdout
    lines = run("--json").stdout.splitlines()
    record = json.loads(lines[0])
    assert record["id"] == episode_id and record["end"] is None and record["peak_score"] == 2.5
    assert record["labels"] == {"instance": "a"} and record["alert_state"] == "pending"
    events = [json.loads(line) for line in run("--events", "--json").stdout.splitlines()]
    assert [e["kind"] for e in events] == ["episode_started"]
    assert run("--since", "soon").returncode == 2


def _store_with_episodes(tmp_path, count: int, reason: str):
    path = tmp_path / "audit.db"
    config = tmp_path / "vigil.yml"
    config.write_text(f"audit:\n  path: {path}\n")
    store = AuditStore(path)
    now = int(time.time() * 1000)
    with store.transaction() as db:
        for i in range(count):
            store.insert_episode(db, _episode(series_key=f"instance=host-{i}", labels={"instance": f"host-{i}"},
                                              start_ms=now - 600_000, last_ms=now, peak_ms=now, reason=reason), now)
    store.close()
    return config


def test_audit_table_shows_the_whole_reason(tmp_path):
    reason = ("errors at 6.2/s are far above the expected 1.2/s for a Wednesday 03:15 UTC "
              "(band 0.8/s to 1.6/s; score 4.10, model iforest)")
    config = _store_with_episodes(tmp_path, 1, reason)
    done = subprocess.run([sys.executable, "-m", "vigil.cli", "audit", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert reason in done.stdout


def test_audit_piped_into_head_exits_quietly(tmp_path):
    config = _store_with_episodes(tmp_path, 1500, "CPU far above its usual level " * 3)
    reader = subprocess.Popen([sys.executable, "-m", "vigil.cli", "audit", "--config", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout is not None and reader.stderr is not None
    assert reader.stdout.readline().startswith(b"ID")
    reader.stdout.close()  # what `head -1` does after its line
    stderr = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 0
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_audit_table_cuts_long_cells_visibly_except_with_wide(capsys):
    from vigil.store.audit_cli import _print

    row = {"series": "instance=" + "x" * 80, "reason": "r" * 150}
    _print([row], False, ("series", "reason"))
    default = capsys.readouterr().out.splitlines()[1]
    assert "x" * 80 not in default and "..." in default and "r" * 150 in default
    _print([row], False, ("series", "reason"), wide=True)
    wide = capsys.readouterr().out.splitlines()[1]
    assert "x" * 80 in wide and "r" * 150 in wide
