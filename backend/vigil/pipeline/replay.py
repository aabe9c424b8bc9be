"""``vigil detect``: score CSV files offline, exactly as the worker would have, point by point.

A backtest. The first part of a file (``--train-fraction``, default 0.15, or ``--train-rows``) is
the initial training data (scored in-sample by the first model). From there on the replay is
causal: at every refit boundary (``refit_every``, 1h of data time, aligned like the service's
refit slots) the model is refitted on the trailing ``train_window`` (7d) of rows before the
boundary, sampled at the service's training resolution (``max_train_points`` per window, as a
Prometheus range query would), and then scores the rows of that slot. So the score of row ``i``
depends on rows ``<= i`` only, and so do ``is_anomaly`` and the episodes (hysteresis decided on
past points). Rows already flagged are left out of later training for their episode's first
``exclude_flagged_for_s`` (6h): an incident is not learned as normal, but a change that lasts
longer becomes the new normal instead of alerting forever.

Owns: CSV in/out, the replay loop (:func:`replay`, also used by the benchmarks), ``--plot``.
Must not: do HTTP or change how models score.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time as _clock
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, TextIO

import numpy as np

from vigil.detection.baseline import Scores
from vigil.config import MODELS, SENSITIVITIES
from vigil.detection.detectors import DEFAULT_MIN_DEVIATION, Detector, fit_detector, is_learned
from vigil.display import format_span, format_value
from vigil.detection.episodes import Episode, Hysteresis, find_episodes, quiet_points_for
from vigil.detection.explain import explain
from vigil.pipeline.model_store import TrainingPlan
from vigil.units import MinDeviation, format_duration, parse_duration_s, parse_instant_ms, parse_min_deviation

__all__ = ["ReplayResult", "CsvSeries", "replay", "read_csv", "write_csv", "plot", "figure", "add_arguments", "run"]

#: Prometheus' default lookback: a grid instant takes the last sample at most this old.
_LOOKBACK_MS = 300_000
#: Rows before a slot that are scored along with it when a detector names no context of its own.
_CONTEXT_ROWS = 32
_COLUMNS = ("timestamp", "value", "anomaly_score", "is_anomaly", "yhat", "yhat_lower", "yhat_upper")


class ReplayResult(NamedTuple):
    scores: Scores              # per row, in the input order
    is_anomaly: np.ndarray      # int8 per row, in the input order
    episodes: list[Episode]     # with reasons, in time order
    models: list[str]           # the distinct detector names used, in order of first use
    n_fits: int                 # how many times a model was fitted
    train_rows: int             # rows of the initial training part


def replay(times_ms: np.ndarray, values: np.ndarray, *, model: str = "auto", sensitivity: str = "medium",
           train_rows: int | None = None, train_fraction: float = 0.15, refit_every_s: float = 3600.0,
           train_window_s: float = 7 * 86400.0, max_train_points: int = 2016, min_train_points: int = 24,
           exclude_flagged_for_s: float = 0.0, unit: str | None = None,
           min_deviation: MinDeviation = DEFAULT_MIN_DEVIATION,
           progress: Callable[[float], None] | None = None) -> ReplayResult:
    """Causal replay of one series; see the module docstring. ``progress(fraction)`` is called per slot."""
    t_in = np.asarray(times_ms, dtype=np.int64)
    x_in = np.asarray(values, dtype=np.float64)
    n = t_in.size
    if x_in.size != n:
        raise ValueError(f"The 'values' parameter of replay must have one value per time. Got {x_in.size} for {n} times.")
    if not 0 < train_fraction <= 1:
        raise ValueError(f"The 'train_fraction' parameter of replay must be in (0, 1]. Got {train_fraction!r} instead.")
    order = np.argsort(t_in, kind="stable")
    t, x = t_in[order], np.where(np.isfinite(x_in[order]), x_in[order], np.nan)
    score = np.full(n, np.nan)
    yhat, lower, upper = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    is_anomaly = np.zeros(n, dtype=np.int8)
    if n == 0:
        empty = Scores(score, yhat, lower, upper)
        return ReplayResult(empty, is_anomaly, [], [], 0, 0)

    diffs = np.diff(t)
    step_s = float(np.median(diffs[diffs > 0])) / 1000.0 if (diffs > 0).any() else 60.0
    n0 = int(min(n, max(1, train_rows if train_rows is not None else math.ceil(train_fraction * n))))
    refit_ms = int(refit_every_s * 1000)
    window_ms = int(train_window_s * 1000)

    def plan_at(time_ms: int) -> TrainingPlan:
        """The service's training plan for the slot ``time_ms`` falls in (``vigil.model_store``)."""
        return TrainingPlan.at(time_ms, train_window_s=train_window_s, step_s=step_s, refit_every_s=refit_every_s,
                               max_train_points=max_train_points)

    train_step_ms = int(plan_at(int(t[0])).train_step_s * 1000)
    wants_recent = is_learned(model)
    context_rows = _CONTEXT_ROWS
    state = Hysteresis(quiet_points=quiet_points_for(step_s))
    # When each flagged row's episode started (for leaving incidents out of training).
    episode_start_ms = np.full(n, np.iinfo(np.int64).max)
    exclude_ms = int(exclude_flagged_for_s * 1000)
    fitted: list[tuple[int, Detector]] = []  # (first row scored, detector)
    n_fits = 0

    def training(end_row: int, end_ms: int) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        lo = int(np.searchsorted(t, end_ms - window_ms, "left"))
        hist_x = x[lo:end_row].copy()
        flagged = is_anomaly[lo:end_row].astype(bool) & (t[lo:end_row] - episode_start_ms[lo:end_row] < exclude_ms)
        hist_x[flagged] = np.nan
        hist_t = t[lo:end_row]
        recent = None
        if end_row - lo > max_train_points:
            # What a range query at the training step returns: the last sample at each grid instant.
            grid = np.arange(end_ms - window_ms, end_ms, train_step_ms, dtype=np.int64)
            idx = np.searchsorted(hist_t, grid, "right") - 1
            ok = (idx >= 0) & (hist_t[np.maximum(idx, 0)] > grid - _LOOKBACK_MS)
            grid_t, grid_x = grid[ok], hist_x[idx[ok]]
            if wants_recent and train_step_ms > step_s * 1000:
                r_lo = max(0, hist_t.size - max_train_points)
                recent = (hist_t[r_lo:], hist_x[r_lo:])
            hist_t, hist_x = grid_t, grid_x
        return hist_t, hist_x, recent

    def fit(end_row: int, end_ms: int, previous: Detector | None) -> Detector | None:
        nonlocal n_fits
        hist_t, hist_x, recent = training(end_row, end_ms)
        if np.isfinite(hist_x).sum() < min_train_points:
            return previous
        n_fits += 1
        nonlocal context_rows
        detector = fit_detector(model, hist_t, hist_x, sensitivity=sensitivity, step_s=step_s, recent=recent,
                                previous=previous, min_deviation=min_deviation)
        context = getattr(detector, "context_s", None)
        if context is not None:
            context_rows = max(_CONTEXT_ROWS, int(math.ceil(context() / step_s)) + 1)
        return detector

    def score_rows(detector: Detector | None, a: int, b: int) -> None:
        if detector is not None:
            # The points before the slot that a score looks at (the trailing level and shift
            # windows), so a row's score is what the service would give it.
            c = min(a, context_rows)
            s = detector.score(t[a - c:b], x[a - c:b])
            score[a:b], yhat[a:b] = s.anomaly_score[c:], s.yhat[c:]
            lower[a:b], upper[a:b] = s.yhat_lower[c:], s.yhat_upper[c:]
            if not fitted or fitted[-1][1] is not detector:
                fitted.append((a, detector))
        flags = state.update(score[a:b])
        is_anomaly[a:b] = flags
        # Carry each episode's start forward, so training knows how old a flagged row's incident is.
        for offset in np.flatnonzero(flags):
            j = a + int(offset)
            episode_start_ms[j] = episode_start_ms[j - 1] if j > 0 and is_anomaly[j - 1] else t[j]

    # The initial training part: fitted once, scored in-sample.
    detector = fit(n0, int(t[n0 - 1]) + 1, None)
    score_rows(detector, 0, n0)
    a = n0
    last_slot = plan_at(int(t[n0 - 1])).slot
    while a < n:
        plan = plan_at(int(t[a]))
        b = int(np.searchsorted(t, (plan.slot + 1) * refit_ms, "left"))
        if plan.slot > last_slot:
            detector = fit(a, plan.end_ms, detector)
            last_slot = plan.slot
        score_rows(detector, a, b)
        a = b
        if progress is not None:
            progress(a / n)

    sorted_scores = Scores(score, yhat, lower, upper)
    _, episodes = find_episodes(t, x, sorted_scores, quiet_points=state.quiet_points)
    starts = [first for first, _ in fitted]
    explained = []
    for e in episodes:
        peak_row = int(np.searchsorted(t, e.peak_ms, "left"))
        which = max(0, int(np.searchsorted(starts, peak_row, "right")) - 1)
        explained.append(e._replace(reason=explain(e, fitted[which][1], unit=unit)) if fitted else e)
    models: list[str] = []
    for _, d in fitted:
        if d.name not in models:
            models.append(d.name)
    back = np.empty(n, dtype=np.int64)
    back[order] = np.arange(n)
    out = Scores(score[back], yhat[back], lower[back], upper[back])
    return ReplayResult(out, is_anomaly[back], explained, models, n_fits, n0)


# -- files -------------------------------------------------------------------------------------

class CsvSeries(NamedTuple):
    timestamps: list[str]       # as written in the file
    values_text: list[str]
    times_ms: np.ndarray
    values: np.ndarray
    #: (line number, text) of every row whose value is not a finite number: a gap in the series
    unusable: tuple[tuple[int, str], ...] = ()

    @property
    def usable_rows(self) -> int:
        return len(self.timestamps) - len(self.unusable)


def read_csv(path: str | Path) -> CsvSeries:
    """``timestamp,value`` rows (other columns ignored); a value that is not a number is a gap, listed in ``unusable``."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ValueError("empty file: expected a header with timestamp,value")
        names = [h.strip().lower() for h in header]
        if "timestamp" not in names or "value" not in names:
            raise ValueError(f"the header must name the columns timestamp and value; got {','.join(header)!r}")
        it, iv = names.index("timestamp"), names.index("value")
        stamps: list[str] = []
        texts: list[str] = []
        times: list[int] = []
        vals: list[float] = []
        unusable: list[tuple[int, str]] = []
        for row in reader:
            line_no = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            try:
                stamp = row[it]
                times.append(parse_instant_ms(stamp))
            except (IndexError, ValueError):
                raise ValueError(f"line {line_no}: timestamp must be ISO-8601 or epoch seconds/ms; "
                                 f"got {row[it] if it < len(row) else ''!r}") from None
            text = row[iv].strip() if iv < len(row) else ""
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                number = math.nan
                unusable.append((line_no, text))
            vals.append(number)
            stamps.append(stamp)
            texts.append(text)
    return CsvSeries(stamps, texts, np.asarray(times, dtype=np.int64), np.asarray(vals, dtype=np.float64),
                     tuple(unusable))


def describe_unusable(series: CsvSeries, shown: int = 5) -> str:
    """``"3 of 864 rows have no number, left as gaps: line 7 'N/A', line 8 '' (empty), line 10 '0,45' ..."``."""
    def one(line_no: int, text: str) -> str:
        if not text:
            return f"line {line_no} (empty)"
        hint = " (a decimal comma? write 0.45)" if "," in text and text.replace(",", "", 1).strip().isdigit() else ""
        return f"line {line_no} {text!r}{hint}"

    listed = ", ".join(one(n, t) for n, t in series.unusable[:shown])
    more = f" and {len(series.unusable) - shown} more" if len(series.unusable) > shown else ""
    return (f"{len(series.unusable)} of {len(series.timestamps)} rows have no number and are left as gaps: "
            f"{listed}{more}")


def write_csv(handle: TextIO, series: CsvSeries, result: ReplayResult) -> None:
    """The input rows, each value as written, with the score columns: always well-formed CSV."""
    s = result.scores
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(_COLUMNS)
    fmt = _number
    writer.writerows(
        (stamp, text, fmt(a), int(f), fmt(y), fmt(lo), fmt(hi))
        for stamp, text, a, f, y, lo, hi in zip(series.timestamps, series.values_text, s.anomaly_score.tolist(),
                                                  result.is_anomaly.tolist(), s.yhat.tolist(),
                                                  s.yhat_lower.tolist(), s.yhat_upper.tolist())
    )


def _number(v: float) -> str:
    return "" if v != v else f"{v:.6g}"


def plot(path: str | Path, series: CsvSeries, result: ReplayResult, *, title: str, unit: str | None = None) -> None:
    """The series, its expected band and the anomalies, as a PNG (matplotlib, imported here only)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure(series, result, title=title, unit=unit)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure(series: CsvSeries, result: ReplayResult, *, title: str, unit: str | None = None) -> Any:
    """The ``--plot`` figure: value over its expected line and band, the anomalies, the score below."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    order = np.argsort(series.times_ms, kind="stable")
    when = (series.times_ms[order] / 86_400_000.0).astype(np.float64)  # days since the epoch
    s = result.scores
    values = series.values[order]
    lower, upper = s.yhat_lower[order], s.yhat_upper[order]
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() >= 0:
        # A series that never goes below zero (a ratio, a size, a rate) cannot be expected below it.
        lower = np.maximum(lower, 0.0)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.fill_between(when, lower, upper, color="tab:blue", alpha=0.15, lw=0, label="expected band")
    top.plot(when, values, color="black", lw=0.7, zorder=2, label="value")
    # Drawn over the value, dashed, so it stays visible where the two coincide.
    top.plot(when, s.yhat[order], color="tab:blue", lw=1.0, ls="--", zorder=3, label="expected")
    flagged = result.is_anomaly[order].astype(bool)
    top.scatter(when[flagged], values[flagged], s=8, color="tab:red", zorder=4, label="anomaly")
    if when.size:
        top.axvline(when[min(result.train_rows, when.size) - 1], color="grey", ls="--", lw=0.8,
                    label="end of initial training")
    top.set_title(title)
    top.set_ylabel(f"value ({unit})" if unit else "value")
    top.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: format_value(y, unit)))
    top.legend(loc="upper left", fontsize=8)
    bottom.plot(when, s.anomaly_score[order], color="tab:red", lw=0.7)
    bottom.axhline(1.0, color="grey", ls=":", lw=0.8)
    bottom.set_ylabel("anomaly_score")
    bottom.set_ylim(0, max(2.0, float(np.nanpercentile(s.anomaly_score, 99.5)) if np.isfinite(s.anomaly_score).any() else 2.0))
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


# -- the command -------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE.csv", help="CSV files with a timestamp,value header")
    parser.add_argument("--model", default="auto", choices=MODELS, help="detector (default: auto, the benchmark's best)")
    parser.add_argument("--sensitivity", default="medium", choices=list(SENSITIVITIES),
                        help="low: ~1 false alarm per series per month; medium: ~1 per week; high: ~1 per day")
    first = parser.add_mutually_exclusive_group()
    first.add_argument("--train-rows", type=int, metavar="N", help="rows of initial training data")
    first.add_argument("--train-fraction", type=float, default=0.15, metavar="F",
                       help="fraction of rows of initial training data (default 0.15)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--output", metavar="FILE", help="write the scored rows here (one input file only)")
    out.add_argument("--output-dir", metavar="DIR", help="one scored file per input, same file name")
    parser.add_argument("--plot", metavar="FILE.png", help="draw series, band and anomalies (one PNG per input)")
    parser.add_argument("--refit-every", default="1h", help="refit on trailing history this often (data time; default 1h)")
    parser.add_argument("--train-window", default="7d", help="trailing history each refit trains on (default 7d)")
    parser.add_argument("--min-deviation", default="1%", metavar="X",
                        help="smallest deviation that may alarm: a number in the series' unit and/or a percentage "
                             "of its level, e.g. 0.5, 5%% or '0.5, 5%%' (default 1%%)")
    parser.add_argument("--unit", default=None, help="unit for explanations: percentunit, bytes, s, reqps")


def run(args: argparse.Namespace) -> int:
    files = [Path(f) for f in args.files]
    if len(files) > 1 and args.output:
        return _fail("--output takes one input file; use --output-dir for several")
    if args.train_rows is not None and args.train_rows < 1:
        return _fail(f"--train-rows must be >= 1; got {args.train_rows}")
    if not 0 < args.train_fraction <= 1:
        return _fail(f"--train-fraction must be in (0, 1]; got {args.train_fraction}")
    try:
        refit_every_s = parse_duration_s(args.refit_every)
        train_window_s = parse_duration_s(args.train_window)
    except ValueError as exc:
        return _fail(f"--refit-every/--train-window: {exc}")
    try:
        min_deviation = parse_min_deviation(args.min_deviation)
    except ValueError as exc:
        return _fail(f"--min-deviation must be {exc}")
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    tty = sys.stderr.isatty()
    status = 0
    for number, path in enumerate(files, start=1):
        label = f"[{number}/{len(files)}] {path.name}" if len(files) > 1 else path.name
        started = _clock.monotonic()
        try:
            series = read_csv(path)
        except (OSError, ValueError) as exc:
            print(f"vigil detect: {path}: {exc}", file=sys.stderr)
            status = 2
            continue
        if series.unusable:
            print(f"vigil detect: {path.name}: {describe_unusable(series)}", file=sys.stderr)
        if series.usable_rows == 0:
            print(f"vigil detect: {path}: no row has a numeric value, so there is nothing to score "
                  f"({len(series.timestamps)} rows read)", file=sys.stderr)
            status = 2
            continue
        bar = _Progress(label) if tty else None
        # The library's warnings (feature names, convergence, empty slices) are about its internals,
        # not the user's data, and would bury the summary: keep them off stderr.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = replay(series.times_ms, series.values, model=args.model, sensitivity=args.sensitivity,
                            train_rows=args.train_rows, train_fraction=args.train_fraction,
                            refit_every_s=refit_every_s, train_window_s=train_window_s, unit=args.unit,
                            min_deviation=min_deviation, progress=bar.update if bar else None)
        if bar:
            bar.done()
        if args.output_dir:
            with open(Path(args.output_dir) / path.name, "w", newline="", encoding="utf-8") as handle:
                write_csv(handle, series, result)
        elif args.output:
            with open(args.output, "w", newline="", encoding="utf-8") as handle:
                write_csv(handle, series, result)
        else:
            write_csv(sys.stdout, series, result)
        if args.plot:
            target = Path(args.plot)
            if len(files) > 1:
                target = target.with_name(f"{target.stem}-{path.stem}{target.suffix or '.png'}")
            plot(target, series, result, title=f"{path.name}: {', '.join(result.models) or 'no model'}", unit=args.unit)
        took = _clock.monotonic() - started
        print(f"vigil detect: {path.name}: {len(series.timestamps)} rows ({series.usable_rows} with a number), {len(result.episodes)} episodes, "
              f"model {', '.join(result.models) or 'none (too little data)'}, {result.n_fits} fits, "
              f"refit every {format_duration(refit_every_s)}, {took:.1f} s", file=sys.stderr)
        for e in result.episodes[:20]:
            print(f"  {format_span(e.start_ms, e.end_ms)}: {e.reason}", file=sys.stderr)
        if len(result.episodes) > 20:
            print(f"  ... and {len(result.episodes) - 20} more", file=sys.stderr)
    return status


def _fail(message: str) -> int:
    print(f"vigil detect: {message}", file=sys.stderr)
    return 2


class _Progress:
    """A one-line progress bar on a terminal's stderr."""

    def __init__(self, label: str, width: int = 30):
        self.label, self.width, self.shown = label, width, -1

    def update(self, fraction: float) -> None:
        filled = int(fraction * self.width)
        if filled != self.shown:
            self.shown = filled
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {fraction:4.0%}")
            sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\r" + " " * (len(self.label) + self.width + 10) + "\r")
        sys.stderr.flush()
