"""The registry, cold start, cheap refits and quality floors per detector on seeded data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from vigil.detection.detectors import DEFAULT_MODEL, fit_detector, is_learned, make_detector
from vigil.detection.learned import _VectorisedForest
from vigil.pipeline.replay import replay
from vigil_dev.synthetic import generate

MODELS = ["seasonal", "iforest", "ocsvm"]


def test_auto_is_the_default_model_and_unknown_names_are_refused():
    assert make_detector("auto").name == DEFAULT_MODEL
    assert is_learned("iforest") and not is_learned("seasonal")
    with pytest.raises(ValueError, match="The 'model' parameter must be one of"):
        make_detector("prophet")


def test_cold_start_uses_the_baseline_until_there_is_enough_history():
    s = generate("cpu", days=2, step_s=300, seed=0)
    young = fit_detector("iforest", s.times_ms[:100], s.values[:100], step_s=300, min_learned_points=288)
    assert young.name.startswith("seasonal (cold start")
    assert np.isfinite(young.score(s.times_ms[100:], s.values[100:]).anomaly_score).all()
    grown = fit_detector("iforest", s.times_ms[:400], s.values[:400], step_s=300, min_learned_points=288)
    assert grown.name == "iforest"


def test_the_vectorised_forest_scores_exactly_like_scikit_learn():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 4))
    forest = _VectorisedForest(IsolationForest(random_state=0)).fit(X)
    reference = IsolationForest(random_state=0).fit(X)  # the same trees: same data, same seed
    Y = rng.standard_normal((500, 4)) * 3
    np.testing.assert_allclose(forest.score_samples(Y), reference.score_samples(Y), atol=1e-12)
    assert forest.forest is None  # only the flat arrays are kept


def test_an_hourly_refit_reuses_a_young_estimator_and_replaces_an_old_one():
    s = generate("cpu", days=9, step_s=300, seed=1)
    first = fit_detector("iforest", s.times_ms[:2016], s.values[:2016], step_s=300)
    hour = fit_detector("iforest", s.times_ms[12:2028], s.values[12:2028], step_s=300, previous=first)
    assert hour.estimator_ is first.estimator_ and hour.baseline_ is not first.baseline_
    day = fit_detector("iforest", s.times_ms[300:2316], s.values[300:2316], step_s=300, previous=first)
    assert day.estimator_ is not first.estimator_


def _auc_and_recall(model, shape, kind, seed):
    """Causal replay (hourly refits), like the service; AUC over points, recall over events."""
    # Events in the second week, after a full week of history (as the quality benchmark does).
    s = generate(shape, days=14, step_s=300, seed=seed, kind=kind, n_events=3)
    r = replay(s.times_ms, s.values, model=model, train_fraction=0.45)
    n = s.values.size // 2
    score, truth, t = r.scores.anomaly_score[n:], s.is_anomaly[n:], s.times_ms[n:]
    ok = np.isfinite(score)
    found = sum(bool(r.is_anomaly[n:][(t >= a) & (t <= b)].any()) for a, b in s.events)
    return roc_auc_score(truth[ok], score[ok]), found / len(s.events)


@pytest.mark.parametrize("model", MODELS)
def test_quality_floor_on_spikes(model):
    aucs, recalls = zip(*(_auc_and_recall(model, shape, "spike", seed)
                          for seed, shape in enumerate(["cpu", "request_rate", "latency"])))
    assert min(aucs) >= 0.8, aucs
    # Spikes of 4-8 spreads, three per series: the medium threshold sits at about 6 spreads on a
    # clean series, because out of sample on the real corpora it had to sit ~1.7x beyond the
    # in-sample weekly extreme to keep one false alarm a week (calibration.out_of_sample_factor).
    # Was >= 0.6 with a factor of 1.2 (and 2.6 false alarms per KPI per week).
    assert np.mean(recalls) >= 0.3, recalls


@pytest.mark.parametrize("model", MODELS)
def test_quality_floor_on_level_shifts(model):
    aucs, recalls = zip(*(_auc_and_recall(model, shape, "level_shift", seed)
                          for seed, shape in enumerate(["cpu", "request_rate", "error_count"])))
    # A shift is flagged at once and becomes the new normal within hours (the trailing level
    # follows it, as a deploy's new level should): its later points rightly score low, which
    # costs point-wise AUC over a many-hour shift, not detection.
    assert np.mean(aucs) >= 0.75, aucs
    # Shifts of 3-5 spreads: the band (about 6 spreads at medium, see the spike test) misses the
    # smaller ones; the sustained statistic (an hour's median beyond 70 % of the band) finds the
    # larger. Was >= 0.6 at 2.6 false alarms per KPI per week.
    assert np.mean(recalls) >= 0.5, recalls


def test_a_stuck_series_is_caught_by_the_forest():
    _, recall = _auc_and_recall("iforest", "request_rate", "stuck", 2)
    assert recall >= 0.6
