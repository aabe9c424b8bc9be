"""Outbox retry schedule and the version guard against delivering a stale state as the last one."""

from __future__ import annotations

import pytest

from vigil.store.audit import AuditStore
from vigil.errors import DeliveryTimeout
from vigil.worker.outbox import Outbox, backoff_s
from vigil.sinks.base import Delivered

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

    def deliver(self, episode, job, now_ms, remember):
        self.sent.append(episode.end_ms)
        if len(self.sent) == 1:
            with self.store.transaction() as db:
                self.store.update_episode(db, self.episode_id, {"end_ms": NOW_MS}, NOW_MS)
                self.store.enqueue(db, self.episode_id, "alertmanager", NOW_MS)
        state = "firing" if episode.end_ms is None else "resolved"
        return Delivered(state, {}, {"alert_state": state})


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
        name = "alertmanager"
        request_timeout_s = 1.0

        def deliver(self, *args):
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


def _one_owed(tmp_path):
    store = AuditStore(tmp_path / "a.db")
    with store.transaction() as db:
        episode_id = store.insert_episode(db, {"job": "j", "series_key": "k", "labels": {}, "start_ms": NOW_MS,
                                               "end_ms": None, "peak_ms": NOW_MS, "peak_score": 2.0}, NOW_MS)
        store.enqueue(db, episode_id, "grafana", NOW_MS)
    return store


@pytest.mark.parametrize("error, least_wait_ms", [
    (DeliveryTimeout("grafana did not answer within 4s"), 12_000),  # 3 x the sink's timeout: it may still finish
    (type("ReadTimeoutLookalike", (Exception,), {})("not ours"), 0),  # a name is not a type: the usual backoff
])
def test_a_timeout_is_known_by_its_type_and_waits_for_the_sink(tmp_path, error, least_wait_ms):
    store = _one_owed(tmp_path)

    class Slow:
        name = "grafana"
        request_timeout_s = 4.0

        def deliver(self, *args):
            raise error

    outbox = Outbox(store, {"grafana": Slow()}, resend_every_s=None, base_backoff_s=1.0, max_backoff_s=60.0,
                    clock_ms=lambda: NOW_MS)
    assert outbox.deliver_due().failed == 1
    [row] = store._select("SELECT next_attempt_ms FROM outbox")
    wait_ms = row["next_attempt_ms"] - NOW_MS
    assert wait_ms >= least_wait_ms and (least_wait_ms or wait_ms <= 1200)


def test_an_unknown_episode_field_is_refused_not_dropped(tmp_path):
    store = _one_owed(tmp_path)
    [episode] = store.episodes(since_ms=0)
    with pytest.raises(ValueError, match="got alert_sate"), store.transaction() as db:
        store.update_episode(db, episode.id, {"alert_sate": "firing"}, NOW_MS)
    assert store.episode(episode.id).alert_state != "firing"
