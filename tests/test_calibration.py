"""Calibration: ``anomaly_score == 1`` sits at the sensitivity's false-alarm rate, for every model and scale."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.detection.calibration import false_alarm_rate, pot_threshold
from vigil.detection.detectors import fit_detector
from vigil_dev.synthetic import generate


def test_sensitivity_words_mean_alarms_per_series_per_month_week_day():
    week_points_60s = 7 * 86400 / 60
    assert false_alarm_rate("medium", 60) * week_points_60s == pytest.approx(1.0)
    assert false_alarm_rate("low", 60) * week_points_60s == pytest.approx(0.25)   # about one a month
    assert false_alarm_rate("high", 60) * week_points_60s == pytest.approx(7.0)   # about one a day
    with pytest.raises(ValueError, match="The 'sensitivity' parameter must be one of"):
        false_alarm_rate("paranoid", 60)


@pytest.mark.parametrize("alpha", [1e-2, 1e-3, 1e-4])
def test_pot_threshold_is_near_the_true_gaussian_quantile_and_not_below_it(alpha):
    rng = np.random.default_rng(0)
    scores = np.abs(rng.standard_normal(20000))
    true = {1e-2: 2.576, 1e-3: 3.291, 1e-4: 3.891}[alpha]
    threshold = pot_threshold(scores, alpha)
    assert true * 0.97 <= threshold <= true * 1.15


def test_pot_threshold_rejects_a_bad_rate_and_copes_with_flat_scores():
    with pytest.raises(ValueError, match="The 'alpha' parameter of pot_threshold must be in"):
        pot_threshold(np.ones(10), 0.0)
    assert pot_threshold(np.ones(100), 1e-4) > 1.0
    assert pot_threshold(np.array([np.nan]), 1e-3, floor=3.0) == 3.0


@pytest.mark.parametrize("model", ["seasonal", "iforest", "ocsvm"])
@pytest.mark.parametrize("scale", [1e-3, 1e6])
def test_false_alarm_rate_on_normal_data_is_near_the_target_for_every_model_and_scale(model, scale):
    # At sensitivity "high" (one false alarm per series per day) over 4 scored days at 300 s, a
    # calibrated model flags about 4 points per series; we allow 0-3x that.
    alarms, days = 0, 0.0
    for seed in range(3):
        s = generate("cpu", days=11, step_s=300, seed=seed)
        x = s.values * scale
        train, test = slice(0, 2016), slice(2016, None)
        detector = fit_detector(model, s.times_ms[train], x[train], sensitivity="high", step_s=300)
        flagged = detector.score(s.times_ms[test], x[test]).anomaly_score >= 1
        alarms += int(flagged.sum())
        days += (s.times_ms[-1] - s.times_ms[2016]) / 86_400_000
    per_day = alarms / days
    assert per_day <= 3.0, f"{model}: {per_day:.2f} flagged points per series per day at 'high' (target 1)"


def test_one_threshold_means_the_same_at_any_scale():
    s = generate("request_rate", days=8, step_s=300, seed=3)
    a = fit_detector("iforest", s.times_ms, s.values, step_s=300).score(s.times_ms, s.values)
    b = fit_detector("iforest", s.times_ms, s.values * 1e6, step_s=300).score(s.times_ms, s.values * 1e6)
    np.testing.assert_allclose(a.anomaly_score, b.anomaly_score, rtol=1e-6, atol=1e-6)


def test_the_out_of_sample_factor_grows_with_the_return_period():
    from vigil.detection.calibration import episodes_per_day, out_of_sample_factor

    high, medium, low = (out_of_sample_factor(episodes_per_day(s)) for s in ("high", "medium", "low"))
    assert abs(medium - 1.68) < 1e-9
    assert 1.15 < high < 1.3 and 2.0 < low < 2.2
    assert out_of_sample_factor(100.0) == 1.0  # never narrows an in-sample extrapolation
