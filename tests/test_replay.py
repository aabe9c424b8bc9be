"""``vigil detect``: causal replay of CSV files, same rows out, plots, many files."""

from __future__ import annotations

import csv
import re
import warnings
import time

import numpy as np
import pytest

from vigil.cli import main
from vigil.pipeline.replay import read_csv, replay
from vigil_dev.synthetic import generate


def _write(path, times, values, *, iso=False):
    with open(path, "w") as handle:
        handle.write("timestamp,value\n")
        for t, v in zip(times, values):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t / 1000)) if iso else f"{t / 1000:.0f}"
            handle.write(f"{stamp},{'' if np.isnan(v) else repr(float(v))}\n")


@pytest.mark.parametrize("model", ["seasonal", "iforest"])
def test_perturbing_future_rows_never_changes_past_scores_or_flags(model):
    s = generate("cpu", days=9, step_s=300, seed=3, kind="spike", n_events=2)
    base = replay(s.times_ms, s.values, model=model)
    for cut in (int(0.3 * s.values.size) + 7, int(0.7 * s.values.size) + 3):
        x = s.values.copy()
        x[cut + 1:] = x[cut + 1:] * 1.7 + 0.3
        other = replay(s.times_ms, x, model=model)
        np.testing.assert_array_equal(other.scores.anomaly_score[: cut + 1], base.scores.anomaly_score[: cut + 1])
        np.testing.assert_array_equal(other.is_anomaly[: cut + 1], base.is_anomaly[: cut + 1])
        np.testing.assert_array_equal(other.scores.yhat_upper[: cut + 1], base.scores.yhat_upper[: cut + 1])


def test_refits_follow_the_clock_and_planted_spikes_are_found():
    s = generate("cpu", days=14, step_s=300, seed=1, kind="spike", n_events=3)
    # These spikes are one point, 2.5-3.5 spreads: at "medium" (a false alarm a week) they sit at
    # the band's edge (scores 0.9-1.15); at "high" (one a day) all three are found.
    r = replay(s.times_ms, s.values, sensitivity="high")
    hours = (s.times_ms[-1] - s.times_ms[int(np.ceil(0.15 * s.values.size)) - 1]) / 3_600_000
    assert abs(r.n_fits - (1 + hours)) <= 2
    found = sum(bool(r.is_anomaly[(s.times_ms >= a) & (s.times_ms <= b)].any()) for a, b in s.events)
    assert found >= len(s.events) - 1
    assert all(e.reason for e in r.episodes)


def test_rows_keep_their_order_even_when_unsorted_and_irregular():
    s = generate("latency", days=3, step_s=60, seed=2)
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(s.values.size, 3000, replace=False))  # irregular steps
    t, x = s.times_ms[keep], s.values[keep]
    perm = rng.permutation(t.size)
    a = replay(t, x)
    b = replay(t[perm], x[perm])
    np.testing.assert_array_equal(b.scores.anomaly_score, a.scores.anomaly_score[perm])


def test_vigil_detect_writes_the_same_rows_with_scores_and_a_plot(tmp_path, capsys):
    s = generate("cpu", days=5, step_s=60, seed=4, kind="spike", n_events=2)
    src = tmp_path / "cpu.csv"
    _write(src, s.times_ms, s.values, iso=True)
    out, png = tmp_path / "out.csv", tmp_path / "cpu.png"
    assert main(["detect", str(src), "--output", str(out), "--plot", str(png)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "is_anomaly", "yhat", "yhat_lower", "yhat_upper"]
    original = list(csv.DictReader(open(src)))
    assert [r["timestamp"] for r in rows] == [r["timestamp"] for r in original]
    assert [r["value"] for r in rows] == [r["value"] for r in original]
    assert {r["is_anomaly"] for r in rows} <= {"0", "1"}
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "episodes" in capsys.readouterr().err


def test_many_files_go_to_an_output_dir_with_the_same_names(tmp_path):
    names = []
    for seed in range(3):
        s = generate("memory", days=2, step_s=300, seed=seed)
        path = tmp_path / f"m{seed}.csv"
        _write(path, s.times_ms, s.values)
        names.append(path)
    assert main(["detect", "--model", "seasonal", "--train-rows", "100", "--output-dir", str(tmp_path / "out"),
                 *map(str, names)]) == 0
    for path in names:
        scored = read_csv(tmp_path / "out" / path.name)
        assert scored.values.size == read_csv(path).values.size


def test_bad_input_is_reported_not_raised(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("time,val\n1,2\n")
    assert main(["detect", str(bad)]) == 2
    assert "timestamp and value" in capsys.readouterr().err


def test_twenty_thousand_rows_replay_in_a_few_seconds():
    s = generate("cpu", days=20000 / 1440, step_s=60, seed=0)
    started = time.perf_counter()
    replay(s.times_ms, s.values)
    assert time.perf_counter() - started < 15.0  # ~3 s alone; generous for a loaded CI machine


def _write_with_bad_values(path, bad: dict[int, str]):
    s = generate("cpu", days=3, step_s=300, seed=1, kind="spike", n_events=2)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "value"])
        for i, (t, v) in enumerate(zip(s.times_ms, s.values)):
            writer.writerow([int(t), bad.get(i, f"{v:.4f}")])
    return s


def test_unreadable_values_are_counted_and_the_output_stays_well_formed(tmp_path, capsys):
    src, out = tmp_path / "cpu.csv", tmp_path / "out.csv"
    s = _write_with_bad_values(src, {5: "N/A", 6: "", 7: "12%", 8: "0,45"})
    assert main(["detect", "--model", "seasonal", str(src), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"4 of {s.values.size} rows have no number and are left as gaps" in err
    assert "line 7 'N/A'" in err and "line 8 (empty)" in err and "'12%'" in err
    assert "'0,45' (a decimal comma? write 0.45)" in err
    rows = list(csv.reader(open(out, newline="")))
    assert {len(r) for r in rows} == {7}  # "0,45" is quoted, not split into an extra column
    assert rows[9][1] == "0,45" and rows[6][1] == "N/A"


def test_a_file_without_any_number_fails_with_a_clear_message(tmp_path, capsys):
    src = tmp_path / "words.csv"
    src.write_text("timestamp,value\n1704067200,N/A\n1704067260,\n1704067320,12%\n")
    assert main(["detect", str(src)]) == 2
    err = capsys.readouterr().err
    assert "no row has a numeric value, so there is nothing to score (3 rows read)" in err


def test_every_episode_in_the_summary_is_dated(tmp_path, capsys):
    src = tmp_path / "cpu.csv"
    _write_with_bad_values(src, {})
    # high: two 4-8 spread spikes in 3 days of data are below medium's once-a-week threshold.
    assert main(["detect", "--model", "seasonal", "--sensitivity", "high", str(src),
                 "--output", str(tmp_path / "out.csv")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  ")]
    assert lines, "the planted spikes should give episodes"
    for line in lines[:20]:
        assert re.match(r"^  (since )?\d{4}-\d\d-\d\d \d\d:\d\d .*UTC \(.+\): ", line), line


def test_library_warnings_stay_off_stderr(tmp_path, monkeypatch):
    import vigil.pipeline.replay as replay_module

    real_fit = replay_module.fit_detector

    def noisy_fit(*args, **kwargs):
        warnings.warn("X does not have valid feature names", UserWarning)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(replay_module, "fit_detector", noisy_fit)
    src = tmp_path / "cpu.csv"
    _write_with_bad_values(src, {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["detect", "--model", "seasonal", str(src), "--output", str(tmp_path / "out.csv")]) == 0
    assert [str(w.message) for w in caught] == []


def test_the_plot_names_its_lines_shows_the_unit_and_no_band_below_zero(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vigil.pipeline.replay import figure

    src = tmp_path / "cpu.csv"
    _write_with_bad_values(src, {})
    series = read_csv(src)
    result = replay(series.times_ms, series.values, model="seasonal")
    fig = figure(series, result, title="cpu", unit="percentunit")
    try:
        top = fig.axes[0]
        labels = [t.get_text() for t in top.get_legend().get_texts()]
        assert {"value", "expected", "expected band", "anomaly", "end of initial training"} <= set(labels)
        assert top.get_ylabel() == "value (percentunit)"
        fig.canvas.draw()
        assert any(t.get_text().endswith("%") for t in top.get_yticklabels())
        band = next(c for c in top.collections if c.get_label() == "expected band")
        assert min(v[1] for path in band.get_paths() for v in path.vertices) >= 0.0
        expected = next(line for line in top.get_lines() if line.get_label() == "expected")
        value = next(line for line in top.get_lines() if line.get_label() == "value")
        assert expected.get_zorder() > value.get_zorder()
    finally:
        plt.close(fig)
