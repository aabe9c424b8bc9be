"""Quality benchmark: every detector on the labelled synthetic corpus, scored causally.

``python -m bench quality [--seeds N] [--step-s S] [--days D] [--models a,b] [--sensitivity W]``

Corpus: ``vigil_dev.synthetic.corpus`` for seeds 0..N-1 (every shape x every anomaly kind, two events
each, plus one anomaly-free series per shape). Each series is replayed exactly like
``vigil detect`` does (initial fit on the first 15 %, hourly refits on the trailing 7 days,
causal hysteresis). Evaluated on the second half of each series (where the generator plants the
events, after a week of history like the service's training window):

- an event is *detected* when ``is_anomaly`` is 1 on any of its points; its *delay* is the time
  from its first point to the first flagged one;
- an episode is *true* when it starts before an event ends and ends after it starts, or starts
  within an hour after an event ends (the aftermath of the same incident, e.g. the band catching
  up after a level shift); every other episode is a false alarm;
- false alarms per series per day/week are counted on the anomaly-free series: the corpus' own
  and ``--normal-seeds`` more per shape (a week of 15 series is too small a sample for a rate
  of one a week), with a breakdown per shape.

Dropouts are planted half as missing samples (NaN): those cannot be flagged by a score (a gap has
none; alert on ``absent()``/``up == 0`` for that) and count as missed.
"""

from __future__ import annotations

import argparse
import os
import time as _clock
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

import numpy as np

from vigil.pipeline.replay import replay
from vigil_dev.synthetic import KINDS, SHAPES, LabelledSeries, corpus, generate

MODELS = ("seasonal", "iforest", "ocsvm")
_AFTERMATH_MS = 3_600_000


class Outcome(NamedTuple):
    model: str
    kind: str                  # "normal" for anomaly-free series
    shape: str
    events: int
    detected: int
    delays_s: list[float]
    episodes: int
    true_episodes: int
    days: float


def evaluate(series: LabelledSeries, model: str, sensitivity: str = "medium") -> Outcome:
    result = replay(series.times_ms, series.values, model=model, sensitivity=sensitivity)
    t = series.times_ms
    first = t.size // 2
    region_start = int(t[first])
    days = (int(t[-1]) - region_start) / 86_400_000.0
    flagged = result.is_anomaly.astype(bool)
    detected, delays = 0, []
    for start_ms, end_ms in series.events:
        span = (t >= start_ms) & (t <= end_ms) & flagged
        if span.any():
            detected += 1
            delays.append((int(t[np.flatnonzero(span)[0]]) - start_ms) / 1000.0)
    episodes = [e for e in result.episodes if e.start_ms >= region_start or (e.end_ms or t[-1]) >= region_start]
    true = 0
    for e in episodes:
        end = e.end_ms if e.end_ms is not None else int(t[-1])
        if any(e.start_ms <= b and end >= a or a <= e.start_ms <= b + _AFTERMATH_MS for a, b in series.events):
            true += 1
    return Outcome(model, series.kind or "normal", series.shape, len(series.events), detected, delays, len(episodes), true, days)


def _job(args: tuple[LabelledSeries, str, str]) -> Outcome:
    return evaluate(*args)


def run_corpus(models: tuple[str, ...], seeds: int, step_s: float, days: float, sensitivity: str,
               workers: int | None = None, normal_seeds: int = 0) -> list[Outcome]:
    series = [s for seed in range(seeds) for s in corpus(seed=seed, days=days, step_s=step_s)]
    # More anomaly-free series, with seeds the corpus does not use (it uses < 1000 * seeds).
    series += [generate(shape, days=days, step_s=step_s, seed=500_000 + 10 * i + j)
               for i in range(normal_seeds) for j, shape in enumerate(SHAPES)]
    jobs = [(s, m, sensitivity) for m in models for s in series]
    workers = workers or min(4, os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(_job, jobs, chunksize=4))
    return [_job(j) for j in jobs]


def table(outcomes: list[Outcome], models: tuple[str, ...]) -> str:
    rows = defaultdict(list)
    for o in outcomes:
        rows[(o.model, o.kind)].append(o)
    header = f"{'model':<9} {'kind':<18} {'events':>6} {'recall':>6} {'prec':>6} {'F1':>6} {'delay':>8} {'episodes':>8}"
    lines = [header, "-" * len(header)]
    for m in models:
        all_events = all_detected = all_eps = all_true = 0
        for kind in KINDS:
            group = rows.get((m, kind), [])
            events = sum(o.events for o in group)
            detected = sum(o.detected for o in group)
            eps = sum(o.episodes for o in group)
            true = sum(o.true_episodes for o in group)
            all_events += events
            all_detected += detected
            all_eps += eps
            all_true += true
            delays = [d for o in group for d in o.delays_s]
            lines.append(_row(m, kind, events, detected, eps, true, delays))
        lines.append(_row(m, "all kinds", all_events, all_detected, all_eps, all_true,
                          [d for (mm, k), g in rows.items() if mm == m and k != "normal" for o in g for d in o.delays_s]))
        normal = rows.get((m, "normal"), [])
        fa = sum(o.episodes for o in normal)
        days = sum(o.days for o in normal)
        per_day = fa / days if days else float("nan")
        lines.append(f"{m:<9} {'anomaly-free':<18} false alarms: {fa} in {days:.0f} series-days = "
                     f"{per_day:.3f}/series/day = {7 * per_day:.2f}/series/week")
        by_shape = []
        for shape in SHAPES:
            group = [o for o in normal if o.shape == shape]
            shape_days = sum(o.days for o in group)
            if shape_days:
                by_shape.append(f"{shape} {7 * sum(o.episodes for o in group) / shape_days:.2f}")
        lines.append(f"{m:<9} {'':<18} per shape (/series/week): {', '.join(by_shape)}")
        lines.append("")
    return "\n".join(lines)


def _row(model: str, kind: str, events: int, detected: int, eps: int, true: int, delays: list[float]) -> str:
    recall = detected / events if events else float("nan")
    precision = true / eps if eps else float("nan")
    f1 = 2 * recall * precision / (recall + precision) if eps and events and recall + precision > 0 else float("nan")
    delay = f"{np.mean(delays) / 60:.1f} min" if delays else "-"
    return f"{model:<9} {kind:<18} {events:>6} {recall:>6.2f} {precision:>6.2f} {f1:>6.2f} {delay:>8} {eps:>8}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench quality", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="corpus seeds (default 3)")
    parser.add_argument("--step-s", type=float, default=300.0, help="series step in seconds (default 300)")
    parser.add_argument("--days", type=float, default=14.0, help="days per series (default 14)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: all)")
    parser.add_argument("--normal-seeds", type=int, default=6,
                        help="extra anomaly-free series per shape for the false-alarm rate (default 6)")
    parser.add_argument("--sensitivity", default="medium")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: min(4, CPUs))")
    args = parser.parse_args(argv)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    started = _clock.monotonic()
    outcomes = run_corpus(models, args.seeds, args.step_s, args.days, args.sensitivity, args.workers,
                          args.normal_seeds)
    n_series = len(outcomes) // max(1, len(models))
    print(f"quality: {n_series} series per model ({args.seeds} seeds x 5 shapes x 9 families + "
          f"{args.normal_seeds} x 5 anomaly-free), {args.days:g} days at "
          f"{args.step_s:g} s, sensitivity {args.sensitivity}; causal replay (hourly refits, 7d window); "
          f"evaluated on the second half of each series")
    print(table(outcomes, models))
    print(f"took {_clock.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
