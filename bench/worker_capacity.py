"""How many series one worker process watches at a 60 s interval on this machine.

Run: ``.venv/bin/python -m bench worker_capacity [-- --series 250,1000]``. For each N: starts a real
Prometheus seeded (promtool backfill) with N synthetic series of 60 s history, then runs one
worker job over all of them in-process, exactly as ``vigil worker`` does (real ``Detection``, real
audit store; no sinks, since deliveries run in their own thread and are not per series): a cold run
(every model trained, one refit slot in the past), a refit run at the next slot (every model
refitted from the previous slot's, as happens each hour) and warm runs (models reused from the
cache until the next refit).

Two limits, and the capacity is the smaller:

- throughput: ``cost_per_series_s = warm_s / N + (refit_s / N) * 60 / refit_every_s`` (the hourly
  refit amortised), ``60 / cost_per_series_s``;
- refit: every model of a job is refitted at the same hour boundary, in one run; for that run to
  finish within one interval (no skipped run), ``60 / (refit_s / N)``. (A cold start, after a
  restart, takes longer: the cold column; the worker then skips runs until it has caught up.)

Prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from realstack import start_prometheus  # noqa: E402
from vigil.config import JobSettings, Settings  # noqa: E402
from bench.history import openmetrics_history  # noqa: E402
from vigil.worker.runner import Worker  # noqa: E402

INTERVAL_S = 60.0


def seed(n_series: int, days: float, end_ms: int) -> str:
    return openmetrics_history("bench_value", n_series, end_ms, days, seed_base=1000)


def measure(n_series: int, days: float, train_window_s: float, warm_runs: int, workdir: Path) -> dict[str, float]:
    now_ms = int(time.time() * 1000)
    t0 = time.monotonic()
    prometheus = start_prometheus(workdir, openmetrics=seed(n_series, days, now_ms - 120_000))
    seed_s = time.monotonic() - t0
    try:
        settings = Settings().replace(
            prometheus={"url": prometheus.url, "request_timeout_s": 60.0},
            server={"max_series": max(n_series, 500), "request_timeout_s": 120.0},
            detection={"train_window_s": train_window_s},
            audit={"path": str(workdir / f"audit-{n_series}.db")},
            worker={"lookback_s": 3600.0},
            jobs=(JobSettings(name="bench", query="bench_value", every_s=INTERVAL_S),),
        )
        # The cold run happens one refit slot in the past, so that the run "now" is a real hourly
        # refit (it starts from the previous slot's models, as the worker does every hour).
        clock = [now_ms - int(settings.detection.refit_every_s * 1000)]
        worker = Worker(settings, sinks={}, clock_ms=lambda: clock[0])
        job = settings.jobs[0]
        t0 = time.monotonic()
        cold = worker.run_job(job)
        cold_s = time.monotonic() - t0
        assert cold.ok and cold.series == n_series, cold
        clock[0] = now_ms
        t0 = time.monotonic()
        refit = worker.run_job(job)
        refit_run_s = time.monotonic() - t0
        assert refit.ok and refit.series == n_series, refit
        warm = []
        for _ in range(warm_runs):
            t0 = time.monotonic()
            outcome = worker.run_job(job)
            warm.append(time.monotonic() - t0)
            assert outcome.ok
        warm_s = float(np.median(warm))
        refit_s = settings.detection.refit_every_s
        per_series_s = warm_s / n_series + (refit_run_s / n_series) * INTERVAL_S / refit_s
        return {"series": n_series, "seed_s": seed_s, "cold_s": cold_s, "refit_run_s": refit_run_s, "warm_s": warm_s,
                "per_series_ms": per_series_s * 1000, "throughput": INTERVAL_S / per_series_s,
                "refit_bound": INTERVAL_S / (refit_run_s / n_series),
                "capacity": min(INTERVAL_S / per_series_s, INTERVAL_S / (refit_run_s / n_series)),
                "episodes": len(worker.store.episodes(since_ms=0))}
    finally:
        prometheus.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.worker_capacity", description=__doc__.splitlines()[0])
    parser.add_argument("--series", default="250,1000", help="comma-separated series counts")
    parser.add_argument("--days", type=float, default=2.0, help="days of seeded history")
    parser.add_argument("--train-window-s", type=float, default=86400.0)
    parser.add_argument("--warm-runs", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vigil-bench-worker-") as tmp:
        for n in (int(x) for x in args.series.split(",")):
            rows.append(measure(n, args.days, args.train_window_s, args.warm_runs, Path(tmp)))
    print(f"\nworker capacity at a {INTERVAL_S:.0f} s interval (one process, model 'auto', "
          f"train window {args.train_window_s / 3600:.0f} h, refit hourly, lookback 1 h)")
    print(f"{'series':>8} {'seed s':>8} {'cold run s':>11} {'refit run s':>12} {'warm run s':>11} {'ms/series/min':>14} "
          f"{'throughput':>11} {'refit-bound':>12} {'capacity':>10}")
    for r in rows:
        print(f"{r['series']:>8} {r['seed_s']:>8.1f} {r['cold_s']:>11.2f} {r['refit_run_s']:>12.2f} {r['warm_s']:>11.2f} "
              f"{r['per_series_ms']:>14.2f} {r['throughput']:>11.0f} {r['refit_bound']:>12.0f} {r['capacity']:>10.0f}")
    capacity = min(r["capacity"] for r in rows)
    cold_per_series_s = max(r["cold_s"] / r["series"] for r in rows)
    print(f"=> one worker process watches about {capacity:,.0f} series at a 60 s interval "
          "(the most conservative row)")
    print(f"   a full retrain (after a restart, and for the forests once a day) costs {cold_per_series_s * 1000:.0f} ms "
          f"a series: at that capacity the job then skips about {capacity * cold_per_series_s / INTERVAL_S:.0f} runs; "
          f"never skipping one means at most {INTERVAL_S / cold_per_series_s:,.0f} series a process (or shards)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
