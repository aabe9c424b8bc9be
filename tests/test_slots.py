"""Slots: training never takes the slots kept for refreshes; waiters are served in order.

Unit tests of ``vigil.slots.Slots`` with threads, then the service: cold queries blocked inside
training (a real Prometheus behind) while a refresh of a stored model still answers at once.
"""

from __future__ import annotations

import threading
import time

import pytest

from grafana_bodies import simpod_query
from realstack import wait_for
from vigil.slots import Slots, SlotTimeout


def _hold_heavy(slots: Slots, release: threading.Event, inside: list[int], *, holding: bool = True) -> threading.Thread:
    def run() -> None:
        if holding:
            assert slots.acquire(5)
        with slots.heavy(holding=holding, timeout_s=10):
            inside.append(1)
            release.wait(10)
        if holding:
            slots.release()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_training_never_takes_the_reserved_slot():
    slots = Slots(4, 3)
    release, inside = threading.Event(), []
    trainers = [_hold_heavy(slots, release, inside) for _ in range(4)]
    wait_for(lambda: len(inside) == 3 and slots.waiting == 1, what="three training, the fourth waiting")
    # The fourth trainer gave its slot back while it waits: a refresh gets it at once.
    assert slots.running == 3 and slots.running_heavy == 3
    assert slots.acquire(0.5)
    assert slots.running == 4
    slots.release()
    release.set()
    for t in trainers:
        t.join(10)
    assert len(inside) == 4
    assert (slots.running, slots.running_heavy, slots.waiting) == (0, 0, 0)


def test_a_training_wait_that_times_out_gives_up_its_slot_cleanly():
    slots = Slots(2, 1)
    release, inside = threading.Event(), []
    trainer = _hold_heavy(slots, release, inside)
    wait_for(lambda: inside, what="the first training")
    assert slots.acquire(1)
    with pytest.raises(SlotTimeout):
        with slots.heavy(holding=True, timeout_s=0.2):
            pytest.fail("entered without a training share")
    # The slot was given back while waiting and not taken again: only the trainer runs.
    assert (slots.running, slots.running_heavy, slots.waiting) == (1, 1, 0)
    release.set()
    trainer.join(10)
    assert (slots.running, slots.running_heavy) == (0, 0)


def test_light_waiters_are_served_first_come_first_served_past_blocked_training():
    slots = Slots(1, 1)
    assert slots.acquire(1)
    order: list[str] = []

    def light(name: str) -> None:
        assert slots.acquire(10)
        order.append(name)
        slots.release()

    first = threading.Thread(target=light, args=("first",))
    first.start()
    wait_for(lambda: slots.waiting == 1, what="the first waiter")
    second = threading.Thread(target=light, args=("second",))
    second.start()
    wait_for(lambda: slots.waiting == 2, what="the second waiter")
    slots.release()
    first.join(10)
    second.join(10)
    assert order == ["first", "second"]


def test_background_training_takes_a_slot_and_a_share_and_gives_both_back():
    slots = Slots(2, 1)
    release, inside = threading.Event(), []
    background = _hold_heavy(slots, release, inside, holding=False)
    wait_for(lambda: inside, what="background training")
    assert (slots.running, slots.running_heavy) == (1, 1)
    assert slots.acquire(0.5)  # a refresh still runs
    assert not slots.acquire(0.1)  # and then the process is full
    slots.release()
    release.set()
    background.join(10)
    assert (slots.running, slots.running_heavy) == (0, 0)


def test_invariants_hold_under_contention():
    slots = Slots(4, 3)
    lock = threading.Lock()
    now = {"all": 0, "heavy": 0}
    worst = {"all": 0, "heavy": 0}
    errors: list[BaseException] = []

    def enter(kind: str) -> None:
        with lock:
            now["all"] += kind == "all"
            now["heavy"] += kind == "heavy"
            worst[kind] = max(worst[kind], now[kind])

    def leave(kind: str) -> None:
        with lock:
            now[kind] -= 1

    def run(seed: int) -> None:
        try:
            for i in range(40):
                if not slots.acquire(10):
                    continue
                enter("all")
                if (seed + i) % 3 == 0:
                    leave("all")
                    try:
                        with slots.heavy(holding=True, timeout_s=10):
                            enter("all")
                            enter("heavy")
                            time.sleep(0.001)
                            leave("heavy")
                    except SlotTimeout:
                        continue  # the slot was given back
                time.sleep(0.0005)
                leave("all")
                slots.release()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert worst["all"] <= 4 and worst["heavy"] <= 3
    assert worst["heavy"] >= 1  # training ran (that the bound is reached: the first test)
    assert (slots.running, slots.running_heavy, slots.waiting) == (0, 0, 0)


# -- the service ---------------------------------------------------------------------------------

@pytest.mark.parametrize("held_in", ["fit", "first fetch"])
def test_cold_panels_training_do_not_stall_a_refresh(seeded_prometheus, monkeypatch, held_in):
    """Was: four cold panels held all four slots for their whole training; a refresh of a panel
    whose model was stored waited behind them (``queue_wait``) and was shed with 429. A panel
    just opened counts as training from its first fetch (it fetches and scores its whole range)."""
    from vigil.config import Settings
    from vigil.http.app import create_app
    from vigil.pipeline import core

    settings = Settings().replace(prometheus={"url": seeded_prometheus.url, "request_timeout_s": 5.0},
                                  server={"queue_wait_s": 20.0})
    app = create_app(settings)
    end_ms = seeded_prometheus.end_ms
    warm = simpod_query(end_ms - 3 * 3600_000, end_ms, [{"target": f'{seeded_prometheus.metric}{{instance="quiet"}}',
                                                          "payload": {"model": "seasonal"}}])
    assert app.test_client().post("/json/query", json=warm).status_code == 200  # its model is stored now

    gate = threading.Event()
    training = []
    if held_in == "fit":
        real_fit = core.Detection._timed_fit

        def slow_fit(self, model, *args, **kw):
            training.append(model)
            gate.wait(30)
            return real_fit(self, model, *args, **kw)

        monkeypatch.setattr(core.Detection, "_timed_fit", slow_fit)
    else:
        real_fetch = core.Detection.fetch

        def slow_fetch(self, client, source, expr, *args, **kw):
            if "spiky" in expr:
                training.append(expr)
                gate.wait(30)
            return real_fetch(self, client, source, expr, *args, **kw)

        monkeypatch.setattr(core.Detection, "fetch", slow_fetch)
    # Four cold panels: other expressions, sensitivities and training windows: nothing of theirs is stored.
    colds = [simpod_query(end_ms - 3 * 3600_000, end_ms, [{"target": f'{seeded_prometheus.metric}{{instance="spiky"}} * {n}',
                                                         "payload": {"model": "seasonal", "sensitivity": sens,
                                                                     "train_window": window}}])
             for n, (sens, window) in enumerate([("low", "2d"), ("low", "3d"), ("high", "2d"), ("high", "3d")])]
    answers: list[int] = []
    threads = [threading.Thread(target=lambda b=b: answers.append(app.test_client().post("/json/query", json=b).status_code))
               for b in colds]
    try:
        for t in threads:
            t.start()
        # Three train (the share training may take of four slots); the fourth waits for a share.
        wait_for(lambda: len(training) >= 3, deadline_s=20, what="three cold panels training")
        started = time.monotonic()
        response = app.test_client().post("/json/query", json=warm)
        assert response.status_code == 200, response.get_json()
        assert time.monotonic() - started < 5.0  # not queued behind the training (which is held)
        assert len(training) == 3
    finally:
        gate.set()
        for t in threads:
            t.join(30)
    assert answers == [200] * 4


def test_a_freed_slot_goes_to_the_flow_served_longest_ago():
    slots = Slots(1, 1)
    assert slots.acquire(1, "a")
    order: list[str] = []

    def wait(name: str, flow: str) -> None:
        assert slots.acquire(10, flow)
        order.append(name)
        slots.release()

    threads = []
    for name, flow in (("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")):
        threads.append(threading.Thread(target=wait, args=(name, flow)))
        threads[-1].start()
        wait_for(lambda n=len(threads): slots.waiting == n, what=f"{name} waiting")
    slots.release()
    for t in threads:
        t.join(10)
    # "a" was just served (the holder): b1 first although it came last, then a in order of arrival.
    assert order == ["b1", "a1", "a2", "a3"]


def test_one_dashboard_neither_delays_nor_sheds_another(seeded_prometheus):
    """Was: one queue, first come first served: forty panels of one dashboard opened at once made a
    panel of another wait behind all of them, or be shed when they had taken every waiting place."""
    from vigil.config import Settings
    from vigil.http.app import create_app

    # 8 threads: 4 slots and 3 waiting places.
    app = create_app(Settings().replace(prometheus={"url": seeded_prometheus.url},
                                        server={"threads": 8, "queue_wait_s": 20.0}))
    gates: dict[str, threading.Event] = {}
    entered: list[str] = []

    def hold(name: str):
        entered.append(name)
        gates[name].wait(30)
        return "ok"

    app.add_url_rule("/hold/<name>", view_func=hold)
    statuses: dict[str, int] = {}
    threads: list[threading.Thread] = []

    def send(name: str, dashboard: str) -> None:
        gates[name] = threading.Event()

        def get() -> None:
            statuses[name] = app.test_client().get(f"/hold/{name}", headers={"X-Dashboard-Uid": dashboard}).status_code

        threads.append(threading.Thread(target=get))
        threads[-1].start()

    try:
        for i in range(4):
            send(f"a{i}", "busy")
        wait_for(lambda: len(entered) == 4, what="four panels of one dashboard in the slots")
        for i in range(4, 7):  # alone, the dashboard may take every waiting place
            send(f"a{i}", "busy")
            wait_for(lambda i=i: _waiting(app) == i - 3, what=f"a{i} waiting")
        refused = app.test_client().get("/hold/a7", headers={"X-Dashboard-Uid": "busy"})
        assert refused.status_code == 429 and refused.headers["Retry-After"]
        send("b0", "other")  # another dashboard: the busy one gives up its newest place
        wait_for(lambda: statuses.get("a6") == 429, what="the busy dashboard's newest waiter to give way")
        assert _waiting(app) == 3 and "b0" not in statuses
        gates["a0"].set()  # a slot frees: the other dashboard was served longest ago
        wait_for(lambda: len(entered) == 5, what="the next request in")
        assert entered[-1] == "b0"
    finally:
        for gate in list(gates.values()):
            gate.set()
        for t in threads:
            t.join(30)
    assert statuses == {**{f"a{i}": 200 for i in range(6)}, "a6": 429, "b0": 200}


def _waiting(app) -> int:
    return app.extensions["vigil.slots"].waiting
