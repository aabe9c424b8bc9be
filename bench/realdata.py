"""Quality on real labelled operations data (``../shared/data``), beside two naive baselines.

``python -m bench realdata [--corpus kpi,asd] [--detectors LIST] [--jobs N] [--max-rows N] [--series N]``

Scored the way the data's README says (so numbers are comparable across the project): the
product's defaults, causally, by the same replay as ``vigil detect``.

- KPI (29 web-service KPIs): train on the first 15 % of each series, score the rest.
- ASD (12 servers x 19 metrics): train on the training file, score the test file; rows are
  consecutive 5-minute steps from Monday 2024-01-01 00:00 UTC. Each metric is one series. Its
  events are the server's labelled segments whose interpretation lists that metric; a flagged
  episode is true when it overlaps any of the server's segments (an alarm during a real server
  incident is not a false alarm), widened by 7 steps each side.
- An event (a maximal run of labelled points) is *detected* if ``is_anomaly`` is 1 inside it or
  within 7 steps after its start; ``recall<=7`` counts those flagged within 7 steps of the start.
- A flagged episode (a maximal run of ``is_anomaly``) is true if it overlaps an event widened by 7
  steps on each side, else a false alarm. Precision = true episodes / episodes; event F1.
- False alarms per series per week over the scored part (mean and the worst series), and the
  median delay from an event's start to its first flag.

Detectors: ``vigil:<model>:<sensitivity>`` (the product; ``auto`` is the default), ``iforest-lags``
(scikit-learn ``IsolationForest`` with defaults and a fixed seed on the value and 4 lags, threshold
at the training 99.5th percentile) and ``robust-z`` (median/MAD over a trailing day, ``|z| > 4``).
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import time as _clock
import warnings
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
_ASD_START_MS = 1_704_067_200_000  # Monday 2024-01-01 00:00 UTC
_ASD_STEP_MS = 300_000
_WIDEN_STEPS = 7
WEEK_MS = 7 * 86_400_000

DEFAULT_DETECTORS = ("vigil:auto:medium", "vigil:seasonal:medium", "vigil:iforest:medium", "vigil:ocsvm:medium",
                     "vigil:auto:low", "vigil:auto:high", "iforest-lags", "robust-z")


class Labelled(NamedTuple):
    corpus: str
    name: str
    times_ms: np.ndarray
    values: np.ndarray
    #: 0/1 per row: the series' own events (what recall counts)
    events: np.ndarray
    #: 0/1 per row: incidents a flag may overlap without being a false alarm
    incidents: np.ndarray
    train_rows: int


class Outcome(NamedTuple):
    corpus: str
    series: str
    detector: str
    events: int
    detected: int
    detected_early: int
    delays_min: list[float]
    episodes: int
    true_episodes: int
    weeks: float
    seconds: float


# -- corpora -----------------------------------------------------------------------------------

def kpi_files(data_dir: Path = DATA_DIR) -> list[Path]:
    return sorted((data_dir / "kpi").glob("*.csv.gz"))


def load_kpi(path: Path, max_rows: int | None = None) -> Labelled:
    raw = np.loadtxt(gzip.open(path, "rt"), delimiter=",", skiprows=1, ndmin=2)
    if max_rows:
        raw = raw[:max_rows]
    t = (raw[:, 0] * 1000).astype(np.int64)
    labels = raw[:, 2].astype(np.int8)
    return Labelled("kpi", path.name.split("-")[0], t, raw[:, 1].astype(np.float64), labels, labels,
                    int(math.ceil(0.15 * t.size)))


def asd_servers(data_dir: Path = DATA_DIR) -> list[str]:
    return sorted((p.name.split(".")[0] for p in (data_dir / "asd" / "test").glob("omi-*.txt.gz")),
                  key=lambda s: int(s.split("-")[1]))


def load_asd(server: str, data_dir: Path = DATA_DIR, max_rows: int | None = None) -> list[Labelled]:
    base = data_dir / "asd"
    train = np.loadtxt(base / "train" / f"{server}.txt.gz", delimiter=",", ndmin=2)
    test = np.loadtxt(base / "test" / f"{server}.txt.gz", delimiter=",", ndmin=2)
    label = np.loadtxt(base / "test_label" / f"{server}.txt.gz").astype(np.int8)
    per_dim = np.zeros(test.shape, dtype=np.int8)
    with gzip.open(base / "interpretation_label" / f"{server}.txt.gz", "rt") as handle:
        for line in handle:
            if ":" not in line:
                continue
            span, dims = line.strip().split(":")
            lo, hi = (int(v) for v in span.split("-"))
            for d in dims.split(","):
                # The segment's rows as the server label has them (lo..hi inclusive).
                per_dim[lo:hi + 1, int(d) - 1] = label[lo:hi + 1]
    values = np.vstack([train, test])
    if max_rows:
        keep = min(values.shape[0], max_rows)
        values, per_dim, label = values[:keep], per_dim[: max(0, keep - train.shape[0])], label[: max(0, keep - train.shape[0])]
    n_train = train.shape[0]
    t = _ASD_START_MS + _ASD_STEP_MS * np.arange(values.shape[0], dtype=np.int64)
    out = []
    for d in range(values.shape[1]):
        events = np.concatenate([np.zeros(n_train, np.int8), per_dim[:, d]])
        incidents = np.concatenate([np.zeros(n_train, np.int8), label])
        out.append(Labelled("asd", f"{server}/m{d + 1}", t, values[:, d].astype(np.float64), events, incidents,
                            n_train))
    return out


# -- detectors ---------------------------------------------------------------------------------

#: Threshold multiples of the trade-off curve (``--curve``): ``anomaly_score >= k`` opens an episode.
CURVE = (0.67, 0.8, 1.25, 1.5, 2.0, 3.0)


def flags_for(series: Labelled, detector: str) -> np.ndarray:
    """``is_anomaly`` (0/1 per row) of ``detector`` on ``series``, trained on its training rows."""
    return flags_and_scores(series, detector)[0]


def flags_and_scores(series: Labelled, detector: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(is_anomaly, anomaly_score or None for the naive baselines)``."""
    if detector.startswith("vigil:"):
        from vigil.pipeline.replay import replay

        _, model, sensitivity = detector.split(":")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = replay(series.times_ms, series.values, model=model, sensitivity=sensitivity,
                            train_rows=series.train_rows)
        return result.is_anomaly.astype(np.int8), result.scores.anomaly_score
    return naive_flags(series, detector), None


def flags_at(series: Labelled, score: np.ndarray, multiple: float) -> np.ndarray:
    """``is_anomaly`` with the episode hysteresis at ``multiple`` times the default threshold.

    The same scores (models trained with the default's flags left out), re-thresholded: one
    replay gives the whole false-alarms-against-recall curve.
    """
    from vigil.detection.episodes import Hysteresis, quiet_points_for

    diffs = np.diff(series.times_ms)
    step_s = float(np.median(diffs[diffs > 0])) / 1000.0 if (diffs > 0).any() else 60.0
    state = Hysteresis(enter_score=multiple, exit_score=0.8 * multiple, quiet_points=quiet_points_for(step_s))
    return state.update(score)


def naive_flags(series: Labelled, detector: str) -> np.ndarray:
    if detector == "iforest-lags":
        return _iforest_lags(series.values, series.train_rows)
    if detector == "robust-z":
        return _robust_z(series.times_ms, series.values)
    raise ValueError(f"unknown detector {detector!r}")


def _iforest_lags(values: np.ndarray, n_train: int, lags: int = 4) -> np.ndarray:
    from sklearn.ensemble import IsolationForest

    x = _ffill(values)
    rows = np.column_stack([np.roll(x, k) for k in range(lags + 1)])
    rows[:lags] = x[0]
    forest = IsolationForest(random_state=0).fit(rows[:n_train])
    score = -forest.score_samples(rows)
    threshold = float(np.quantile(score[:n_train], 0.995))
    flags = (score > threshold).astype(np.int8)
    flags[~np.isfinite(values)] = 0
    return flags


def _robust_z(times_ms: np.ndarray, values: np.ndarray, window_ms: int = 86_400_000, z_max: float = 4.0) -> np.ndarray:
    """|x - median| / (1.4826 MAD) over the trailing day (excluding the point itself) > 4."""
    x = values
    diffs = np.diff(times_ms)
    step_ms = int(np.median(diffs[diffs > 0])) if (diffs > 0).any() else 60_000
    k = max(8, int(window_ms // step_ms))
    flags = np.zeros(x.size, dtype=np.int8)
    filled = _ffill(x)
    for start in range(1, x.size, 4096):
        stop = min(x.size, start + 4096)
        lo = max(0, start - k)
        block = filled[lo:stop]
        windows = np.lib.stride_tricks.sliding_window_view(np.concatenate([np.full(k - 1, np.nan), block]), k)
        # windows[j] ends at block[j]; the point at block[j] is judged on the k points before it.
        idx = np.arange(start - lo, stop - lo)
        past = windows[idx - 1]
        med = np.nanmedian(past, axis=1)
        mad = 1.4826 * np.nanmedian(np.abs(past - med[:, None]), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.abs(block[idx] - med) / mad
        z = np.where(mad > 0, z, np.where(np.abs(block[idx] - med) > 0, np.inf, 0.0))
        flags[start:stop] = (z > z_max) & np.isfinite(x[start:stop])
    return flags


def _ffill(x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x)
    if not ok.any():
        return np.zeros_like(x)
    idx = np.where(ok, np.arange(x.size), 0)
    np.maximum.accumulate(idx, out=idx)
    out = x[idx]
    out[: np.flatnonzero(ok)[0]] = x[np.flatnonzero(ok)[0]]
    return out


# -- scoring -----------------------------------------------------------------------------------

def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of 1 as (first, last) row indices."""
    m = np.concatenate([[0], np.asarray(mask, dtype=np.int8), [0]])
    d = np.diff(m)
    return list(zip(np.flatnonzero(d == 1).tolist(), (np.flatnonzero(d == -1) - 1).tolist()))


def score_flags(series: Labelled, flags: np.ndarray, detector: str, seconds: float = 0.0) -> Outcome:
    """The README's rules on the scored part (rows from ``train_rows`` on)."""
    a = series.train_rows
    t = series.times_ms[a:]
    f = np.asarray(flags[a:], dtype=np.int8)
    ev = runs(series.events[a:])
    inc = runs(series.incidents[a:])
    n = f.size
    detected = early = 0
    delays: list[float] = []
    for lo, hi in ev:
        window = f[lo:max(hi, min(n - 1, lo + _WIDEN_STEPS)) + 1]
        hits = np.flatnonzero(window)
        if hits.size:
            detected += 1
            delays.append((t[lo + hits[0]] - t[lo]) / 60_000.0)
            if hits[0] <= _WIDEN_STEPS:
                early += 1
    widened = np.zeros(n + 1, dtype=np.int32)
    for lo, hi in inc:
        widened[max(0, lo - _WIDEN_STEPS)] += 1
        widened[min(n, hi + _WIDEN_STEPS + 1)] -= 1
    near = np.cumsum(widened)[:n] > 0
    episodes = runs(f)
    true = sum(1 for lo, hi in episodes if near[lo:hi + 1].any())
    weeks = (int(t[-1]) - int(t[0])) / WEEK_MS if n > 1 else 0.0
    return Outcome(series.corpus, series.name, detector, len(ev), detected, early, delays, len(episodes), true,
                   weeks, seconds)


# -- running -----------------------------------------------------------------------------------

def _task(args: tuple[str, str, int | None, tuple[str, ...], tuple[str, ...]]) -> list[Outcome]:
    corpus, key, max_rows, detectors, curves = args
    items = [load_kpi(Path(key), max_rows)] if corpus == "kpi" else load_asd(key, max_rows=max_rows)
    out = []
    for series in items:
        for det in detectors:
            started = _clock.perf_counter()
            flags, score = flags_and_scores(series, det)
            out.append(score_flags(series, flags, det, _clock.perf_counter() - started))
            if det in curves and score is not None:
                for k in CURVE:
                    out.append(score_flags(series, flags_at(series, score, k), f"{det} x{k:g}"))
    return out


def run(corpora: tuple[str, ...], detectors: tuple[str, ...], *, jobs: int = 2, max_rows: int | None = None,
        limit: int | None = None, data_dir: Path = DATA_DIR, curves: tuple[str, ...] = ()) -> list[Outcome]:
    tasks: list[tuple[str, str, int | None, tuple[str, ...], tuple[str, ...]]] = []
    if "kpi" in corpora:
        files = kpi_files(data_dir)[:limit] if limit else kpi_files(data_dir)
        tasks += [("kpi", str(p), max_rows, detectors, curves) for p in files]
    if "asd" in corpora:
        servers = asd_servers(data_dir)[:limit] if limit else asd_servers(data_dir)
        tasks += [("asd", s, max_rows, detectors, curves) for s in servers]
    # Biggest first, so the pool does not end on one long series.
    tasks.sort(key=lambda a: -(Path(a[1]).stat().st_size if a[0] == "kpi" else 0))
    outcomes: list[Outcome] = []
    if jobs <= 1:
        for task in tasks:
            outcomes += _task(task)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for part in pool.map(_task, tasks):
                outcomes += part
    return outcomes


class Row(NamedTuple):
    corpus: str
    detector: str
    precision: float
    recall: float
    recall_early: float
    f1: float
    fa_week_mean: float
    fa_week_worst: float
    worst_series: str
    delay_median_min: float
    events: int
    episodes: int
    seconds: float


def summarise(outcomes: list[Outcome]) -> list[Row]:
    grouped: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    for o in outcomes:
        grouped[(o.corpus, o.detector)].append(o)
    rows = []
    for (corpus, det), items in grouped.items():
        events = sum(o.events for o in items)
        detected = sum(o.detected for o in items)
        early = sum(o.detected_early for o in items)
        episodes = sum(o.episodes for o in items)
        true = sum(o.true_episodes for o in items)
        precision = true / episodes if episodes else 0.0
        recall = detected / events if events else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rates = [((o.episodes - o.true_episodes) / o.weeks if o.weeks > 0 else 0.0, o.series) for o in items]
        worst = max(rates)
        delays = [d for o in items for d in o.delays_min]
        rows.append(Row(corpus, det, precision, recall, early / events if events else 0.0, f1,
                        float(np.mean([r for r, _ in rates])), worst[0], worst[1],
                        float(np.median(delays)) if delays else math.nan, events, episodes,
                        sum(o.seconds for o in items)))
    order = {d: i for i, d in enumerate(DEFAULT_DETECTORS)}
    rows.sort(key=lambda r: (r.corpus, order.get(r.detector.split(" ")[0], 99), _multiple(r.detector), r.detector))
    return rows


def _multiple(detector: str) -> float:
    return float(detector.split(" x")[1]) if " x" in detector else 1.0


def table(rows: list[Row]) -> str:
    head = ("| corpus | detector | precision | recall | recall<=7 | F1 | FA/series/week mean | worst (series) "
            "| median delay min | events | episodes | CPU s |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r.corpus} | {r.detector} | {r.precision:.2f} | {r.recall:.2f} | {r.recall_early:.2f} | "
                     f"{r.f1:.2f} | {r.fa_week_mean:.2f} | {r.fa_week_worst:.1f} ({r.worst_series}) | "
                     f"{r.delay_median_min:.0f} | {r.events} | {r.episodes} | {r.seconds:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench realdata", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="kpi,asd", help="kpi, asd or both (default)")
    parser.add_argument("--detectors", default=",".join(DEFAULT_DETECTORS),
                        help="comma-separated: vigil:<model>:<sensitivity>, iforest-lags, robust-z")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--max-rows", type=int, default=None, help="first N rows of each series only (quick runs)")
    parser.add_argument("--series", type=int, default=None, help="first N KPIs / servers only (quick runs)")
    parser.add_argument("--data", default=str(DATA_DIR), help="the data folder (default ../shared/data)")
    parser.add_argument("--curve", default="vigil:auto:medium",
                        help="detectors whose false-alarms-against-recall curve is printed too (rows 'xK': the "
                             "threshold at K times the default, from the same scores); empty for none")
    args = parser.parse_args(argv)
    data_dir = Path(args.data)
    if not (data_dir / "kpi").is_dir():
        print(f"no labelled data at {data_dir}: pass --data", flush=True)
        return 2
    started = _clock.monotonic()
    outcomes = run(tuple(args.corpus.split(",")), tuple(args.detectors.split(",")), jobs=args.jobs,
                   max_rows=args.max_rows, limit=args.series, data_dir=data_dir,
                   curves=tuple(c for c in args.curve.split(",") if c))
    print(table(summarise(outcomes)))
    print(f"\n{len(outcomes)} series-runs in {_clock.monotonic() - started:.0f} s "
          f"(max_rows={args.max_rows}, series={args.series}); F1 is event F1, never point-adjusted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
