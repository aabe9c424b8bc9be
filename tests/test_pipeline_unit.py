"""The pipeline's unit layer: no Prometheus, a :class:`FakeSource` with its range semantics.

What a dashboard user notices: a refresh answers from stored models and stored scores (one
Prometheus query, no fit, only the new points scored) with exactly the answer a cold process
gives; eight identical cold queries arriving together fetch and fit once; fit state is typed.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fakesource import FakeSource, synthetic_series
from realstack import wait_for
from vigil.config import Settings
from vigil.detection.detectors import CONTEXT_S
from vigil.errors import BadRequest
from vigil.pipeline.model_store import FitState, ModelKey, ModelStore, TrainingPlan
from vigil.pipeline.model_cache import ModelCache
from vigil.pipeline.core import Detection, Query, build_query

N_SERIES = 6
STEP_MS = 60_000
VIEW_POINTS = 240


@pytest.fixture(scope="module")
def end_ms() -> int:
    """The views ``view(end_ms, 0..9)`` end between hh:10 and hh:19 of one hour: one refit slot."""
    hour_ms = 3600_000
    return (int(time.time() * 1000) // hour_ms - 6) * hour_ms + 10 * STEP_MS + 200 * STEP_MS


@pytest.fixture(scope="module")
def history(end_ms):
    return synthetic_series(N_SERIES, end_ms, days=7.6, spike_every=3, spike_ago_min=300)


def detection(history, fits: list[str] | None = None) -> tuple[Detection, FakeSource]:
    source = FakeSource(history)
    hook = (lambda model, duration_s: fits.append(model)) if fits is not None else None
    return Detection(Settings(), source, on_fit=hook), source


def view(end_ms: int, i: int, **kw) -> Query:
    """The i-th refresh of a 4-hour panel: one step later each time."""
    end = end_ms - (200 - i) * STEP_MS
    return Query(expr="m", start_ms=end - (VIEW_POINTS - 1) * STEP_MS, end_ms=end, step_s=60, **kw)


def verdicts(result) -> dict:
    return {(s.labels["instance"], int(t)): (float(v), float(lo), float(hi), int(f)) for s in result.series
            for t, v, lo, hi, f in zip(s.times_ms, s.scores.anomaly_score, s.scores.yhat_lower, s.scores.yhat_upper,
                                       s.is_anomaly)}


def assert_same(warm: dict, fresh: dict) -> None:
    """The same points with the same scores, bands and decisions."""
    assert sorted(warm) == sorted(fresh)
    a, b = (np.array([v[k] for k in sorted(v)]) for v in (warm, fresh))
    np.testing.assert_allclose(a, b, rtol=1e-12, equal_nan=True)
    assert np.nansum(a[:, 3]) > 0, "no anomaly in the view: the comparison says little"


def test_a_refresh_fetches_the_view_only_fits_nothing_and_scores_only_the_new_points(history, end_ms):
    fits: list[str] = []
    det, source = detection(history, fits)
    det.run(view(end_ms, 0))
    assert len(fits) == N_SERIES and len(source.calls) == 2  # the view and the training history
    scored = det.scores.scored_points
    refreshed = det.run(view(end_ms, 1))
    assert len(fits) == N_SERIES, "a refresh fitted models again"
    assert len(source.calls) == 3, "a refresh fetched more than its view"
    _, start_s, end_s, _ = source.calls[-1]
    assert end_s - start_s <= 7 * 60, "a refresh fetched its whole view again, not the new points"
    context_points = int(CONTEXT_S // 60) + 2  # a new point is scored from its context only
    assert det.scores.scored_points - scored <= N_SERIES * (context_points + 2), "a refresh rescored old points"
    assert det.scores.reused_points >= N_SERIES * (VIEW_POINTS - 1)
    # The same answer as a process that never saw the first view.
    cold, _ = detection(history)
    assert_same(verdicts(refreshed), verdicts(cold.run(view(end_ms, 1))))
    assert all(s.model == "seasonal" for s in refreshed.series)


def test_a_changed_sample_is_scored_again(history, end_ms):
    det, source = detection(history)
    det.run(view(end_ms, 0))
    changed = [h._replace(values=h.values.copy()) for h in history]
    last = int(np.searchsorted(changed[0].times_ms, view(end_ms, 0).end_ms))
    changed[0].values[last] += 1e6  # a late sample rewrote the last point
    source.series = changed
    result = det.run(view(end_ms, 0))
    first = next(s for s in result.series if s.labels["instance"] == "host-000")
    assert first.scores.anomaly_score[-1] >= 1 and first.is_anomaly[-1] == 1


def test_eight_identical_cold_queries_arriving_together_fetch_and_fit_once(history, end_ms):
    fits: list[str] = []
    det, source = detection(history, fits)
    source.release = threading.Event()
    results: list = []
    errors: list = []

    def panel() -> None:
        try:
            results.append(det.run(view(end_ms, 0, fit_budget_s=5.0)))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=panel) for _ in range(8)]
    for t in threads:
        t.start()
    # Every panel is waiting on the first one's Prometheus query before it is answered.
    wait_for(lambda: det._fetches.shared == 7, deadline_s=30, what="seven panels joining the first one's fetch")
    source.release.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 8
    assert len(fits) == N_SERIES, f"{len(fits)} fits for {N_SERIES} series"
    assert len(source.calls) == 2, source.calls
    assert len({tuple(sorted(verdicts(r).items())) for r in results}) == 1


def test_a_model_is_fitted_once_while_others_wait_for_it():
    store = ModelStore(ModelCache())
    key = ModelKey(("p",), "s", 1)
    started, go = threading.Event(), threading.Event()
    fitted: list[int] = []

    def fit() -> str:
        fitted.append(1)
        started.set()
        assert go.wait(10)
        return "model"

    out: list = []
    first = threading.Thread(target=lambda: out.append(store.fit_once(key, fit)))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=lambda: out.append(store.fit_once(key, fit)))
    second.start()
    wait_for(lambda: store._fits.shared == 1, deadline_s=10, what="the second caller waiting")
    go.set()
    first.join(10)
    second.join(10)
    assert out == ["model", "model"] and len(fitted) == 1
    assert store.fit_once(key, fit) == "model" and len(fitted) == 1  # stored


def test_the_newest_slot_replaces_older_ones_and_a_panel_may_use_an_earlier_slot_only():
    store = ModelStore(ModelCache())
    key = ModelKey(("p",), "s", 10)
    store.put(key.at(9), "old")
    assert store.stale(key) == ("old", key.at(9))
    assert store.previous(key) == "old"
    store.put(key, "new")
    assert store.get(key.at(9)) is None, "the older slot's model was kept"
    assert store.stale(key.at(8)) is None, "a later slot's model was offered"
    assert store.stale(key.at(10 + ModelStore.max_stale_slots + 1)) is None


def test_the_training_plan_ends_at_the_start_of_the_slot():
    plan = TrainingPlan.at(3 * 3_600_000 + 5, train_window_s=86400, step_s=60, refit_every_s=3600,
                           max_train_points=2016)
    assert (plan.slot, plan.end_ms, plan.start_ms) == (3, 3 * 3_600_000, 3 * 3_600_000 - 86_400_000)
    assert plan.train_step_s == 60.0
    assert TrainingPlan.at(0, train_window_s=7 * 86400, step_s=60, refit_every_s=3600,
                           max_train_points=2016).train_step_s == 300.0


def test_over_its_fit_budget_a_panel_is_answered_by_the_baseline_as_a_typed_state(history, end_ms):
    fits: list[str] = []
    det, _ = detection(history, fits)
    models = det.detectors(det.fetch_view(view(end_ms, 0, model="iforest", fit_budget_s=0.0)), history[:2])
    assert {m.state for m in models.values()} == {FitState.BASELINE_WHILE_TRAINING}
    assert {m.label for m in models.values()} == {"seasonal (while iforest trains)"}
    det._background.submit(lambda: None).result(timeout=120)
    result = det.run(view(end_ms, 0, model="iforest", fit_budget_s=0.0))
    assert {s.model for s in result.series[:2]} == {"iforest"}


def test_build_query_refuses_what_cannot_be_scored():
    with pytest.raises(BadRequest, match="model must be one of"):
        build_query(Settings(), expr="m", start_ms=0, end_ms=60_000, step_s=60, model="prophet")
    with pytest.raises(BadRequest, match="ends before it starts"):
        build_query(Settings(), expr="m", start_ms=60_000, end_ms=0, step_s=60)
    assert build_query(Settings(), expr="m", start_ms=0, end_ms=60_000, step_s=60).model == "auto"


def test_refreshes_while_a_learned_model_trains_reuse_its_stored_baseline(history, end_ms):
    fits: list[str] = []
    det, source = detection(history[:2], fits)
    hold = threading.Event()
    det._background.submit(hold.wait, 60)  # the background thread is busy until released
    try:
        first = det.run(view(end_ms, 0, model="iforest", fit_budget_s=0.0))
        assert {s.model for s in first.series} == {"seasonal (while iforest trains)"}
        fitted, calls = len(fits), len(source.calls)
        again = det.run(view(end_ms, 1, model="iforest", fit_budget_s=0.0))
        assert {s.model for s in again.series} == {"seasonal (while iforest trains)"}
        assert len(fits) == fitted, "a refresh refitted the interim baseline"
        assert len(source.calls) == calls + 1, "a refresh fetched the training history again"
    finally:
        hold.set()
    det._background.submit(lambda: None).result(timeout=120)
    assert fits.count("iforest") == 2
    assert {s.model for s in det.run(view(end_ms, 2, model="iforest", fit_budget_s=0.0)).series} == {"iforest"}


def test_panels_of_one_expression_over_different_ranges_both_refresh_incrementally(history, end_ms):
    det, source = detection(history)
    short = lambda i: Query(expr="m", start_ms=view(end_ms, i).end_ms - 3600_000,  # noqa: E731
                            end_ms=view(end_ms, i).end_ms, step_s=60)
    det.run(view(end_ms, 0))
    det.run(short(0))
    det.run(view(end_ms, 1))
    det.run(short(1))
    view_fetches = [c for c in source.calls if c[3] == 60]
    assert len(view_fetches) == 4
    assert all(end_s - start_s <= 7 * 60 for _, start_s, end_s, _ in view_fetches[1:]), view_fetches
    # And the answer is the cold one.
    cold, _ = detection(history)
    assert_same(verdicts(det.run(view(end_ms, 2))), verdicts(cold.run(view(end_ms, 2))))
