"""Outbox retry schedule and the version guard against delivering a stale state as the last one."""

from __future__ import annotations

import pytest

from vigil.audit import AuditStore
from vigil.outbox import Outbox, backoff_s

NOW_MS = 1_735_711_200_000


def test_backoff_doubles_with_jitter_and_is_capped():
    waits = [backoff_s(n, base_s=1.0, max_s=300.0, rng=lambda: 0.5) for n in range(1, 12)]
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0] and waits[-1] == 300.0
    assert backoff_s(3, rng=lambda: 0.0) == pytest.approx(3.2) and backoff_s(3, rng=lambda: 1.0) == pytest.approx(4.8)
    assert backoff_s(50, max_s=10.0, rng=lambda: 1.0) == 10.0


class SlowSink:
    """Changes the episode while its delivery is in flight (what a worker run can do)."""

    name = "alertmanager"
    request_timeout_s = 1.0

    def __init__(self, store, episode_id):
        self.store, self.episode_id, self.sent = store, episode_id, []

    def send(self, episode, job, now_ms):
        self.sent.append(episode.end_ms)
        if len(self.sent) == 1:
            with self.store.transaction() as db:
                self.store.update_episode(db, self.episode_id, {"end_ms": NOW_MS}, NOW_MS)
                self.store.enqueue(db, self.episode_id, "alertmanager", NOW_MS)
        return "firing" if episode.end_ms is None else "resolved"


def test_a_change_during_delivery_is_delivered_too(tmp_path):
    store = AuditStore(tmp_path / "a.db")
    with store.transaction() as db:
        episode_id = store.insert_episode(db, {"job": "j", "series_key": "k", "labels": {}, "start_ms": NOW_MS - 1,
                                               "end_ms": None, "peak_ms": NOW_MS, "peak_score": 2.0}, NOW_MS)
        store.enqueue(db, episode_id, "alertmanager", NOW_MS)
    sink = SlowSink(store, episode_id)
    outbox = Outbox(store, {"alertmanager": sink}, resend_every_s=None, clock_ms=lambda: NOW_MS)
    assert outbox.drain(5)
    assert sink.sent == [None, NOW_MS]  # the resolution was not swallowed by the older delivery
    assert store.episode(episode_id).alert_state == "resolved"


def test_failures_are_scheduled_with_backoff(tmp_path):
    store = AuditStore(tmp_path / "a.db")
    with store.transaction() as db:
        episode_id = store.insert_episode(db, {"job": "j", "series_key": "k", "labels": {}, "start_ms": NOW_MS,
                                               "end_ms": None, "peak_ms": NOW_MS, "peak_score": 2.0}, NOW_MS)
        store.enqueue(db, episode_id, "alertmanager", NOW_MS)

    class Down:
        request_timeout_s = 1.0

        def send(self, *args):
            raise ConnectionError("refused")

    clock = [NOW_MS]
    outbox = Outbox(store, {"alertmanager": Down()}, resend_every_s=None, max_backoff_s=4.0, clock_ms=lambda: clock[0])
    for _ in range(6):
        assert outbox.deliver_due().failed == 1
        [row] = store._select("SELECT attempts, next_attempt_ms, last_error FROM outbox")
        assert row["next_attempt_ms"] - clock[0] <= 4000 and "refused" in row["last_error"]
        assert outbox.deliver_due().failed == 0  # not due yet
        clock[0] = row["next_attempt_ms"]
    assert row["attempts"] == 6 and store.backlog()["alertmanager"] == 1
