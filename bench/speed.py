"""Speed and memory benchmark: fit and score cost per model, next to a plain scikit-learn IsolationForest.

``python -m bench speed [--series N] [--replay-rows R]``

What the service does per series on a cold panel: fit on 7 days at the training resolution (2016
points at 300 s), with the latest 2016 points at the scoring step (60 s) for learned patterns,
then score the viewed range (1440 points, a day at 60 s). Also: an hourly refit that reuses the
previous model (what ``vigil detect`` and a worker passing ``previous=`` do), a ``vigil detect``
replay of a 20,000-row file, and memory per fitted model (pickle size; peak Python allocations
while fitting, tracemalloc). The baseline row is ``sklearn.ensemble.IsolationForest()`` with
default parameters fitted on the raw values of the same 2016 points and scored on the same 1440
(no seasonality, no calibration): the cost of "just an Isolation Forest".
"""

from __future__ import annotations

import argparse
import pickle
import time as _clock
import tracemalloc

import numpy as np
from sklearn.ensemble import IsolationForest

from vigil.detection.detectors import fit_detector
from vigil.pipeline.replay import replay
from vigil_dev.synthetic import generate

MODELS = ("seasonal", "iforest", "ocsvm")


def _data(n_series: int):
    out = []
    for seed in range(n_series):
        s = generate(("cpu", "memory", "request_rate", "latency")[seed % 4], days=8, step_s=60, seed=seed)
        t, x = s.times_ms, s.values
        view = slice(t.size - 1440, t.size)
        train = slice(0, t.size - 1440)
        hist_t, hist_x = t[train][::5], x[train][::5]
        recent = (t[train][-2016:], x[train][-2016:])
        out.append((hist_t, hist_x, recent, t[view], x[view]))
    return out


def _measure(model: str, data) -> dict:
    fits, scores, refits = [], [], []
    fitted = None
    for hist_t, hist_x, recent, vt, vx in data:
        t0 = _clock.perf_counter()
        if model == "sklearn-iforest":
            fitted = IsolationForest(random_state=0).fit(hist_x[:, None])
        else:
            fitted = fit_detector(model, hist_t, hist_x, step_s=60.0, recent=recent)
        t1 = _clock.perf_counter()
        if model == "sklearn-iforest":
            fitted.score_samples(vx[:, None])
        else:
            fitted.score(vt, vx)
        t2 = _clock.perf_counter()
        if model != "sklearn-iforest":
            shifted = (hist_t + 3_600_000, hist_x)
            fit_detector(model, *shifted, step_s=60.0, recent=(recent[0] + 3_600_000, recent[1]), previous=fitted)
            refits.append(_clock.perf_counter() - t2)
        fits.append(t1 - t0)
        scores.append(t2 - t1)
    hist_t, hist_x, recent, vt, vx = data[0]
    tracemalloc.start()
    if model == "sklearn-iforest":
        one = IsolationForest(random_state=0).fit(hist_x[:, None])
    else:
        one = fit_detector(model, hist_t, hist_x, step_s=60.0, recent=recent)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "fit_s": float(np.mean(fits)),
        "score_s": float(np.mean(scores)),
        "refit_s": float(np.mean(refits)) if refits else float("nan"),
        "pickle_kib": len(pickle.dumps(one)) / 1024.0,
        "peak_kib": peak / 1024.0,
        "n_fit_points": int(hist_x.size + (recent[1].size if model in ("iforest", "ocsvm") else 0)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench speed", description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=20, help="series per model (default 20)")
    parser.add_argument("--replay-rows", type=int, default=20000, help="rows of the replayed file (default 20000)")
    args = parser.parse_args(argv)
    data = _data(args.series)
    rows = {m: _measure(m, data) for m in ("sklearn-iforest",) + MODELS}
    base = rows["sklearn-iforest"]
    print(f"speed: {args.series} series; fit on 2016 points at 300 s (+2016 recent at 60 s for learned models), "
          f"score 1440 points at 60 s; one process, one thread")
    header = (f"{'model':<16} {'fit ms':>7} {'fit ser/s':>9} {'score ms':>8} {'score pts/s':>11} {'refit ms':>8} "
              f"{'pickle KiB':>10} {'peak KiB':>9} {'fit x sk':>8} {'score x sk':>10}")
    print(header)
    print("-" * len(header))
    for m, r in rows.items():
        print(f"{m:<16} {r['fit_s'] * 1000:>7.1f} {1 / r['fit_s']:>9.1f} {r['score_s'] * 1000:>8.1f} "
              f"{1440 / r['score_s']:>11.0f} {r['refit_s'] * 1000:>8.1f} {r['pickle_kib']:>10.0f} {r['peak_kib']:>9.0f} "
              f"{r['fit_s'] / base['fit_s']:>8.2f} {r['score_s'] / base['score_s']:>10.2f}")
    print()
    print(f"vigil detect replay of {args.replay_rows} rows at 60 s (hourly refits, 7d window):")
    s = generate("cpu", days=args.replay_rows * 60 / 86400.0, step_s=60, seed=1, kind="spike", n_events=3)
    for m in MODELS:
        t0 = _clock.perf_counter()
        result = replay(s.times_ms, s.values, model=m)
        took = _clock.perf_counter() - t0
        print(f"  {m:<9} {took:6.2f} s  ({s.values.size / took:,.0f} rows/s, {result.n_fits} fits)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
