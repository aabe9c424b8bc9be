"""``vigil demo-workload``: a fake application's metrics, live, with anomalies injected on a schedule.

Owns: the demo's signal model (a daily load cycle per instance, deterministic noise,
scheduled anomalies), serving it live on ``/metrics``, and writing the *same* timeline's past as
OpenMetrics text for ``promtool tsdb create-blocks-from openmetrics``, so that backfilled history
and live scrapes join without a seam. Every value is a pure function of ``(seed, instant)``: the
backfill and the live server agree without talking to each other. Must not: score anything, or
talk to Prometheus (backfilling is the caller's job: ``scripts/demo.sh``, the compose init service).

Metrics (labels ``instance``; the scrape job adds ``job``):

- ``demo_requests_per_second`` and ``demo_cpu_usage_ratio``: follow the day's load;
- ``demo_memory_bytes``: load plus a slow saw-tooth (a cache that fills and is flushed);
- ``demo_errors_total``: a counter, about 1 % of requests, reset at the start of each UTC week;
- ``demo_anomaly_injected{metric, kind}``: 1 while an anomaly is injected (absent otherwise), the
  ground truth to compare Vigil's findings with.

Injected anomalies are logged as JSON lines on stdout when they start and end.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np

from vigil.logs import configure_logging
from vigil_dev.openmetrics import to_openmetrics
from vigil.units import format_duration, iso_from_ms, parse_duration_s, s_to_ms

__all__ = ["Workload", "Anomaly", "METRICS", "KINDS", "add_arguments", "run"]

#: metric name -> what it is (for ``# HELP``).
METRICS: dict[str, str] = {
    "demo_requests_per_second": "Requests served per second.",
    "demo_cpu_usage_ratio": "CPU busy ratio (0-1).",
    "demo_memory_bytes": "Resident memory in bytes.",
    "demo_errors_total": "Requests answered with an error.",
}
#: anomaly kind -> how likely the scheduler picks it.
KINDS: dict[str, float] = {"spike": 0.35, "level_shift": 0.25, "drop": 0.15, "stuck": 0.1, "error_burst": 0.15}

_WEEK_S = 7 * 86400
_U64 = np.uint64


class Anomaly(NamedTuple):
    """One scheduled anomaly: ``[start_s, end_s)`` on one instance's metric."""

    start_s: float
    end_s: float
    instance: str
    metric: str
    kind: str
    factor: float  # multiplier of the normal value (spike, level_shift, drop, error_burst)

    def as_log(self) -> dict[str, object]:
        return {"instance": self.instance, "metric": self.metric, "kind": self.kind,
                "factor": round(self.factor, 2), "start": iso_from_ms(s_to_ms(self.start_s)),
                "end": iso_from_ms(s_to_ms(self.end_s)), "duration_s": round(self.end_s - self.start_s)}


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of each element (uint64 arithmetic wraps on purpose)."""
    with np.errstate(over="ignore"):
        z = x.astype(_U64) + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


@dataclass(frozen=True)
class Workload:
    """The demo application: ``instances`` instances whose load follows a cycle of ``period_s``.

    The cycle is a real day by default: Vigil learns time-of-day profiles (15-minute bins), and a
    day compressed into an hour would look to it like noise within each bin.

    ``anomaly_every_s`` splits time into slots; each slot holds one anomaly on one instance's
    metric, lasting a quarter to a half of the slot.
    """

    seed: int = 42
    instances: int = 3
    period_s: float = 86400.0
    anomaly_every_s: float = 240.0

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ValueError(f"The 'instances' parameter of Workload must be >= 1. Got {self.instances} instead.")
        if self.period_s < 60:
            raise ValueError(f"The 'period_s' parameter of Workload must be >= 60. Got {self.period_s} instead.")
        if self.anomaly_every_s < 30:
            raise ValueError(
                f"The 'anomaly_every_s' parameter of Workload must be >= 30. Got {self.anomaly_every_s} instead.")

    @property
    def instance_names(self) -> list[str]:
        return [f"app-{i + 1}" for i in range(self.instances)]

    # -- deterministic building blocks ------------------------------------------------------

    def _noise(self, salt: int, t_s: np.ndarray) -> np.ndarray:
        """Standard-normal-ish noise, a pure function of ``(seed, salt, whole second)``."""
        sec = np.floor(np.asarray(t_s, dtype=np.float64)).astype(np.int64).astype(_U64)
        base = _splitmix64(sec ^ _U64((self.seed * 1_000_003 + salt * 7919) & 0xFFFFFFFFFFFF))
        u1 = (_splitmix64(base) >> _U64(11)).astype(np.float64) / float(1 << 53)
        u2 = (_splitmix64(base ^ _U64(0xABCDEF)) >> _U64(11)).astype(np.float64) / float(1 << 53)
        return np.sqrt(-2.0 * np.log(np.maximum(u1, 1e-12))) * np.cos(2.0 * np.pi * u2)

    def load(self, index: int, t_s: np.ndarray) -> np.ndarray:
        """The day's load in [0.05, 1]: quiet night, morning ramp, lunch dip, evening tail."""
        phase = 2.0 * np.pi * (np.asarray(t_s, dtype=np.float64) / self.period_s + 0.07 * index)
        shape = 0.5 - 0.38 * np.cos(phase) + 0.1 * np.sin(2.0 * phase) - 0.04 * np.cos(3.0 * phase)
        return np.clip(shape, 0.05, 1.0)

    def slot(self, slot: int) -> Anomaly:
        """The anomaly of slot ``slot`` (time ``[slot, slot + 1) * anomaly_every_s``).

        It starts 10-40 % into its slot and lasts 25-50 % of it, so it ends inside its slot:
        anomalies never overlap and come in slot order.
        """
        rng = np.random.default_rng([self.seed, slot & 0x7FFFFFFF])
        kinds = list(KINDS)
        weights = np.array([KINDS[k] for k in kinds]) / sum(KINDS.values())
        kind = kinds[int(rng.choice(len(kinds), p=weights))]
        metric = "demo_errors_total" if kind == "error_burst" else list(METRICS)[int(rng.integers(0, 3))]
        instance = self.instance_names[int(rng.integers(0, self.instances))]
        begin = (slot + rng.uniform(0.1, 0.4)) * self.anomaly_every_s
        length = rng.uniform(0.25, 0.5) * self.anomaly_every_s
        factor = {"spike": rng.uniform(1.8, 2.6), "level_shift": rng.uniform(1.35, 1.6),
                  "drop": rng.uniform(0.05, 0.3), "stuck": 1.0, "error_burst": rng.uniform(12, 25)}[kind]
        return Anomaly(begin, begin + length, instance, metric, kind, float(factor))

    def schedule(self, start_s: float, end_s: float) -> list[Anomaly]:
        """Every anomaly overlapping ``[start_s, end_s)``, in start order."""
        first = math.floor(start_s / self.anomaly_every_s)
        last = math.floor(end_s / self.anomaly_every_s)
        return [a for a in map(self.slot, range(first, last + 1)) if a.start_s < end_s and a.end_s > start_s]

    # -- values -----------------------------------------------------------------------------

    def _normal(self, metric: str, index: int, t_s: np.ndarray) -> np.ndarray:
        load = self.load(index, t_s)
        salt = index * 16 + list(METRICS).index(metric)
        noise = self._noise(salt, t_s)
        if metric == "demo_requests_per_second":
            base = 80.0 + 40.0 * index
            return np.maximum(base * (0.25 + load) * (1.0 + 0.04 * noise), 0.0)
        if metric == "demo_cpu_usage_ratio":
            return np.clip(0.06 + 0.55 * load * (0.8 + 0.1 * index) + 0.015 * noise, 0.0, 1.0)
        if metric == "demo_memory_bytes":
            saw = (np.asarray(t_s, dtype=np.float64) / (self.period_s / 3.0) + 0.3 * index) % 1.0
            return (512e6 + 128e6 * index) + 300e6 * load + 150e6 * saw + 4e6 * noise
        if metric == "demo_errors_total":  # the per-second error rate, integrated by _errors
            return np.maximum(0.01 * self._normal("demo_requests_per_second", index, t_s) * (1 + 0.3 * noise), 0.0)
        raise KeyError(metric)

    def _apply(self, metric: str, index: int, t_s: np.ndarray, values: np.ndarray,
               anomalies: Sequence[Anomaly]) -> np.ndarray:
        name = self.instance_names[index]
        out = values.copy()
        for a in anomalies:
            if a.instance != name or a.metric != metric:
                continue
            inside = (t_s >= a.start_s) & (t_s < a.end_s)
            if not inside.any():
                continue
            if a.kind == "stuck":
                out[inside] = self._normal(metric, index, np.array([a.start_s]))[0]
            else:
                out[inside] = values[inside] * a.factor
                if metric == "demo_cpu_usage_ratio":
                    out[inside] = np.minimum(out[inside], 0.99)
        return out

    def error_rate(self, index: int, seconds: np.ndarray) -> np.ndarray:
        """Errors per second of instance ``index`` during each whole second in ``seconds``."""
        grid = np.asarray(seconds, dtype=np.float64)
        anomalies = self.schedule(float(grid.min()), float(grid.max()) + 1) if grid.size else []
        return self._apply("demo_errors_total", index, grid, self._normal("demo_errors_total", index, grid), anomalies)

    def _errors(self, index: int, t_s: np.ndarray) -> np.ndarray:
        """The counter at each instant: whole errors since the start of that instant's UTC week."""
        lo = math.floor(float(t_s.min()) / _WEEK_S) * _WEEK_S
        grid = np.arange(lo, math.floor(float(t_s.max())) + 1, dtype=np.float64)
        total = np.concatenate([[0.0], np.cumsum(self.error_rate(index, grid))])  # total[k]: errors in [lo, lo+k)
        at = np.floor(t_s).astype(np.int64) - int(lo)
        week_start = (np.floor(t_s / _WEEK_S) * _WEEK_S).astype(np.int64) - int(lo)
        return np.floor(total[at] - total[week_start])

    def values(self, metric: str, t_s: np.ndarray) -> dict[str, np.ndarray]:
        """``{instance: values}`` of ``metric`` at instants ``t_s`` (seconds)."""
        t = np.atleast_1d(np.asarray(t_s, dtype=np.float64))
        if metric == "demo_errors_total":
            return {name: self._errors(i, t) for i, name in enumerate(self.instance_names)}
        anomalies = self.schedule(float(t.min()), float(t.max()) + 1)
        return {name: self._apply(metric, i, t, self._normal(metric, i, t), anomalies)
                for i, name in enumerate(self.instance_names)}

    # -- exposition -------------------------------------------------------------------------

    def history(self, start_s: float, end_s: float, step_s: float, job: str) -> str:
        """OpenMetrics text of ``(start_s, end_s]`` at ``step_s``, labelled as the live scrape would be.

        The grid ends exactly at ``end_s``: the closer the last sample is to the first live scrape,
        the smaller the gap a ``rate()`` window can fall into.
        """
        t = end_s - step_s * np.arange(math.ceil((end_s - start_s) / step_s) - 1, -1, -1, dtype=np.float64)
        times_ms = (t * 1000).astype(np.int64)
        families = []
        for metric in METRICS:
            per_instance = self.values(metric, t)
            families.append((metric, [({"instance": name, "job": job}, times_ms, per_instance[name])
                                      for name in self.instance_names]))
        truth = []
        for a in self.schedule(start_s, end_s):
            inside = (t >= a.start_s) & (t < a.end_s)
            if inside.any():
                truth.append(({"instance": a.instance, "job": job, "metric": a.metric, "kind": a.kind},
                              times_ms[inside], np.ones(int(inside.sum()))))
        families.append(("demo_anomaly_injected", _merge_same_labels(truth)))
        return to_openmetrics(families)

    def exposition(self, now_s: float, errors: "ErrorCounter | None" = None) -> str:
        """The Prometheus text format of every metric at ``now_s`` (what ``/metrics`` serves).

        ``errors`` carries the counter between scrapes (integrating a week per scrape is slow).
        """
        lines = []
        t = np.array([now_s])
        for metric, help_text in METRICS.items():
            kind = "counter" if metric.endswith("_total") else "gauge"
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
            if metric == "demo_errors_total" and errors is not None:
                values = dict(zip(self.instance_names, errors.at(now_s)))
            else:
                values = {name: float(v[0]) for name, v in self.values(metric, t).items()}
            for name, value in values.items():
                lines.append(f'{metric}{{instance="{name}"}} {float(value)!r}')
        lines += ["# HELP demo_anomaly_injected 1 while an anomaly is injected into a series.",
                  "# TYPE demo_anomaly_injected gauge"]
        for a in self.schedule(now_s, now_s + 1e-3):
            if a.start_s <= now_s < a.end_s:
                lines.append(f'demo_anomaly_injected{{instance="{a.instance}",kind="{a.kind}",'
                             f'metric="{a.metric}"}} 1.0')
        return "\n".join(lines) + "\n"


class ErrorCounter:
    """``demo_errors_total`` for a live server: the full week once, then only the new seconds."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self._lock = threading.Lock()
        self._second: int | None = None  # totals count errors in [week start, _second)
        self._totals = np.zeros(workload.instances)

    def at(self, now_s: float) -> list[float]:
        second = math.floor(now_s)
        with self._lock:
            if self._second is None or second // _WEEK_S != self._second // _WEEK_S or second < self._second:
                lo = second // _WEEK_S * _WEEK_S
                grid = np.arange(lo, second, dtype=np.float64)
                self._totals = np.array([float(self.workload.error_rate(i, grid).sum()) if grid.size else 0.0
                                         for i in range(self.workload.instances)])
            elif second > self._second:
                grid = np.arange(self._second, second, dtype=np.float64)
                self._totals += [float(self.workload.error_rate(i, grid).sum()) for i in range(self.workload.instances)]
            self._second = second
            return [float(math.floor(v)) for v in self._totals]


def _merge_same_labels(series: list[tuple[dict[str, str], np.ndarray, np.ndarray]]):
    """One OpenMetrics series per label set (the same anomaly kind can recur on one series)."""
    merged: dict[tuple, tuple[dict[str, str], list[np.ndarray], list[np.ndarray]]] = {}
    for labels, times_ms, values in series:
        key = tuple(sorted(labels.items()))
        entry = merged.setdefault(key, (labels, [], []))
        entry[1].append(times_ms)
        entry[2].append(values)
    out = []
    for labels, times_parts, values_parts in merged.values():
        t = np.concatenate(times_parts)
        v = np.concatenate(values_parts)
        t, first = np.unique(t, return_index=True)
        out.append((labels, t, v[first]))
    return out


# ---------------------------------------------------------------------------------------------
# The command


_logger = logging.getLogger("vigil.demo")


def _log(level: str, msg: str, **extra: object) -> None:
    _logger.log(logging.getLevelName(level.upper()), msg, extra=extra)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9200, help="port of /metrics (default 9200)")
    parser.add_argument("--seed", type=int, default=42, help="the same seed gives the same timeline")
    parser.add_argument("--instances", type=int, default=3, help="instances of the fake app (default 3)")
    parser.add_argument("--period", default="1d",
                        help="length of the load cycle (default 1d: Vigil's profiles are by time of day)")
    parser.add_argument("--anomaly-every", default="4m", help="one anomaly per this long (default 4m)")
    parser.add_argument("--backfill", metavar="FILE", type=Path,
                        help="write the past --days as OpenMetrics to FILE (for promtool) and exit")
    parser.add_argument("--days", type=float, default=2.0, help="history to backfill, in days (default 2)")
    parser.add_argument("--step", default="15s", help="backfill sample interval (default 15s)")
    parser.add_argument("--job", default="demo", help="the job label the scrape will add (default demo)")


def run(args: argparse.Namespace) -> int:
    configure_logging()
    try:
        workload = Workload(seed=args.seed, instances=args.instances, period_s=parse_duration_s(args.period),
                            anomaly_every_s=parse_duration_s(args.anomaly_every))
        step_s = parse_duration_s(args.step)
    except ValueError as exc:
        print(f"vigil demo-workload: {exc}", file=sys.stderr)
        return 2
    if args.backfill is not None:
        return _backfill(workload, args.backfill, days=args.days, step_s=step_s, job=args.job)
    return _serve(workload, args.host, args.port)


def _backfill(workload: Workload, path: Path, *, days: float, step_s: float, job: str) -> int:
    started = time.monotonic()
    end_s = math.floor(time.time()) - 1.0  # never after now: Prometheus starts later
    start_s = end_s - days * 86400
    text = workload.history(start_s, end_s, step_s, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    recent = [a.as_log() for a in workload.schedule(end_s - 3600, end_s)]
    samples = sum(1 for line in text.splitlines() if not line.startswith("#"))
    _log("info", "history written", path=str(path), start=iso_from_ms(s_to_ms(start_s)),
         end=iso_from_ms(s_to_ms(end_s)), step=format_duration(step_s), samples=samples,
         seconds=round(time.monotonic() - started, 2), anomalies_last_hour=recent)
    return 0


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # scrapes every few seconds would drown the anomaly log


class _ThreadingServer(WSGIServer):
    daemon_threads = True

    def process_request(self, request, client_address):  # one slow client must not block scrapes
        thread = threading.Thread(target=self._handle, args=(request, client_address), daemon=True)
        thread.start()

    def _handle(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - a broken client connection is not our failure
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


def _serve(workload: Workload, host: str, port: int) -> int:
    errors = ErrorCounter(workload)
    errors.at(time.time())  # the week's integral once, before the first scrape

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/metrics":
            body = workload.exposition(time.time(), errors).encode()
            start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if environ.get("PATH_INFO") in ("/", "/healthz"):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"vigil demo workload: see /metrics\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum, _frame):
        received.append(signal.Signals(signum).name)
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _log("info", "demo workload listening", address=f"http://{host}:{server.server_port}/metrics",
         instances=workload.instance_names, period=format_duration(workload.period_s),
         anomaly_every=format_duration(workload.anomaly_every_s), seed=workload.seed)
    announcer = threading.Thread(target=_announce, args=(workload, stop), daemon=True)
    announcer.start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stop.set()
        server.server_close()
    _log("info", "demo workload stopped", signal=received[0] if received else None)
    return 0


def _announce(workload: Workload, stop: threading.Event) -> None:
    """Log each anomaly when it starts and when it ends (JSON lines), so people can follow along."""
    for event, anomaly in _events(workload, time.time()):
        when = anomaly.start_s if event == "started" else anomaly.end_s
        if stop.wait(max(0.0, when - time.time())):
            return
        _log("warning" if event == "started" else "info", f"anomaly {event}", **anomaly.as_log())


def _events(workload: Workload, from_s: float) -> Iterator[tuple[str, Anomaly]]:
    """("started"|"ended", anomaly) in time order, from ``from_s`` on, forever."""
    slot = math.floor(from_s / workload.anomaly_every_s)
    while True:
        anomaly = workload.slot(slot)
        if anomaly.start_s >= from_s:
            yield "started", anomaly
        if anomaly.end_s >= from_s:
            yield "ended", anomaly
        slot += 1
