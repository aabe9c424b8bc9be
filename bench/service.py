"""Panel latency: ``/json/query`` for 100 series x 720 points (12 h at 60 s), next to the raw
Prometheus ``query_range`` of the same expression, measured in the same run.

Run: ``.venv/bin/python -m bench service`` (or ``python -m bench.service``). Starts a real
Prometheus seeded with 7.6 days of 60 s history for N synthetic series and a real ``vigil serve``
(gunicorn, the served version's default workers and threads) against it, on loopback. For each
model it measures:

- **cold**: the first query of a fresh process (fetch + train + score);
- **first refresh** and **every refresh over the following 60 s** (p50, max): a dashboard whose
  view moves forward by one 60 s step per refresh (time is simulated: the history ends a while
  before now, so each refresh sees one point the previous one did not), with the raw Prometheus
  query of the same moving view interleaved (p50) for the ratio;
- for the default model, **50 concurrent panels** for 60 s on a fresh process (five dashboards'
  queries of 20 series, ten viewers each, all opened at the same moment, then each refreshed every
  ``--refresh`` seconds, 5 by default, the view moving as above): p50/p99 latency, errors (anything
  but 200: a 429 is an error too), and ``/healthz`` latency polled meanwhile.

Requests send ``Accept-Encoding: gzip`` as Grafana does; the answer's size is reported as sent.
``--src DIR`` serves the ``vigil`` package found in ``DIR`` instead (a checkout's ``backend``):
how the "before" table is measured with the same benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from realstack import free_port, start_prometheus, wait_for  # noqa: E402
from bench.history import STEP_S, openmetrics_history  # noqa: E402

VIEW_POINTS = 720
#: simulated refreshes: the view ends this many steps before the history's end at first
REFRESH_STEPS = 120


def seed_text(n_series: int, end_ms: int, days: float) -> str:
    return openmetrics_history("bench_metric", n_series, end_ms, days, seed_base=100, labels={"job": "bench"},
                               instance_digits=3, spike_every=10)


def query_body(start_ms: int, end_ms: int, model: str, expr: str = "bench_metric") -> dict:
    iso = lambda ms: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ms / 1000))  # noqa: E731
    return {"range": {"from": iso(start_ms), "to": iso(end_ms)}, "intervalMs": STEP_S * 1000,
            "maxDataPoints": VIEW_POINTS, "targets": [{"refId": "A", "target": expr,
                                                       "payload": {"model": model}}]}


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).ok
    except requests.RequestException:
        return False


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


class Stack:
    """The seeded Prometheus, and how to start one ``vigil serve`` against it."""

    def __init__(self, n_series: int, src: str | None):
        self.n_series = n_series
        self.src = src
        self.work = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
        # The history ends REFRESH_STEPS + a margin before "now": refreshes move the view into it.
        self.end_ms = (int(time.time() * 1000) // 60_000 - 1) * 60_000
        t0 = time.perf_counter()
        self.prometheus = start_prometheus(self.work, openmetrics=seed_text(n_series, self.end_ms, days=7.6))
        print(f"seeded {n_series} series x 7.6 d in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        self.first_end_ms = self.end_ms - (REFRESH_STEPS + 5) * STEP_S * 1000

    def view(self, i: int) -> tuple[int, int]:
        """The view of the i-th refresh: 720 points ending ``i`` steps after the first one."""
        end_ms = min(self.first_end_ms + i * STEP_S * 1000, self.end_ms)
        return end_ms - (VIEW_POINTS - 1) * STEP_S * 1000, end_ms

    def raw(self, i: int, expr: str = "bench_metric") -> float:
        start_ms, end_ms = self.view(i)
        t0 = time.perf_counter()
        r = requests.post(f"{self.prometheus.url}/api/v1/query_range", timeout=60, data={
            "query": expr, "start": start_ms / 1000, "end": end_ms / 1000, "step": STEP_S},
            headers={"Accept-Encoding": "gzip"}, stream=True)
        raw = r.raw.read(decode_content=False)  # timed like a panel: the answer on the wire, not parsed
        elapsed = time.perf_counter() - t0
        r.raise_for_status()
        assert json.loads(_decode(raw, r))["data"]["result"]
        return elapsed

    def serve(self, config: Path | None = None) -> tuple[subprocess.Popen, str]:
        """A fresh ``vigil serve`` (its shipped defaults, or ``config``) on this Prometheus."""
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        if self.src:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self.src, env.get("PYTHONPATH", "")) if p)
        server = subprocess.Popen(
            [sys.executable, "-m", "vigil.cli", "serve", *(["--config", str(config)] if config else []),
             "--prometheus-url", self.prometheus.url, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(url), deadline_s=60, what="vigil serve answering /healthz")
        return server, url


def panel(url: str, body: dict, n_series: int, session: requests.Session | None = None, *,
          check: bool = True, dashboard: str | None = None) -> tuple[float, int, int]:
    """One panel query: (seconds, status, bytes on the wire); ``check``: parse and check the frames;
    ``dashboard``: the ``X-Dashboard-Uid`` Grafana sends with a dashboard panel's queries."""
    t0 = time.perf_counter()
    headers = {"Accept-Encoding": "gzip", **({"X-Dashboard-Uid": dashboard} if dashboard else {})}
    r = (session or requests).post(f"{url}/json/query", json=body, timeout=60, headers=headers, stream=True)
    raw = r.raw.read(decode_content=False)
    elapsed = time.perf_counter() - t0
    if r.status_code == 200 and check:
        frames = json.loads(_decode(raw, r))
        assert len(frames) >= n_series and len(frames[0]["fields"][0]["values"]) == VIEW_POINTS, \
            (len(frames), frames[0] if frames else None)
    return elapsed, r.status_code, len(raw)


def _decode(raw: bytes, r: requests.Response) -> bytes:
    if r.headers.get("Content-Encoding") == "gzip":
        import gzip

        return gzip.decompress(raw)
    return raw


def measure_model(stack: Stack, model: str, duration_s: float) -> dict:
    server, url = stack.serve()
    try:
        cold_s, status, size = panel(url, query_body(*stack.view(0), model), stack.n_series)
        assert status == 200, status
        refresh_s: list[float] = []
        raw_s: list[float] = []
        i = 1
        started = time.monotonic()
        while time.monotonic() - started < duration_s and i <= REFRESH_STEPS:
            raw_s.append(stack.raw(i))
            seconds, status, size = panel(url, query_body(*stack.view(i), model), stack.n_series)
            assert status == 200, status
            refresh_s.append(seconds)
            i += 1
            time.sleep(0.5)  # a dashboard refreshes now and then, not back to back
        return {"model": model, "cold_s": cold_s, "first_s": refresh_s[0], "p50_s": statistics.median(refresh_s),
                "max_s": max(refresh_s), "raw_s": statistics.median(raw_s), "n": len(refresh_s), "bytes": size}
    finally:
        server.terminate()
        server.wait(timeout=30)


def measure_concurrency(stack: Stack, model: str, n_panels: int, duration_s: float, refresh_s: float) -> dict:
    server, url = stack.serve()
    # Five dashboards' queries (20 series each), ten viewers each.
    exprs = [f'bench_metric{{instance=~"host-0[{2 * d}{2 * d + 1}][0-9]"}}' if stack.n_series >= 100 else "bench_metric"
             for d in range(5)]
    latencies: list[tuple[float, float]] = []  # (started, seconds)
    errors: list[str] = []
    health: list[float] = []
    lock = threading.Lock()
    started = time.monotonic()
    stop = threading.Event()
    opened = threading.Barrier(n_panels)

    def viewer(j: int) -> None:
        opened.wait()
        expr = exprs[j % len(exprs)]
        session = requests.Session()
        while not stop.is_set():
            step = int((time.monotonic() - started) / 2)  # the view moves one step every 2 s
            body = query_body(*stack.view(step), model, expr)
            try:
                t0 = time.monotonic()
                # Not parsed: the client shares the machine's two cores with the service.
                seconds, status, _ = panel(url, body, 1, session, check=False, dashboard=f"dashboard-{j % len(exprs)}")
                with lock:
                    latencies.append((t0, seconds))
                    if status != 200:
                        errors.append(str(status))
            except Exception as exc:  # noqa: BLE001 - counted as an error
                with lock:
                    errors.append(type(exc).__name__)
            stop.wait(refresh_s)

    def prober() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                ok = requests.get(f"{url}/healthz", timeout=30).ok
            except requests.RequestException:
                ok = False
            health.append(time.perf_counter() - t0 if ok else float("inf"))
            stop.wait(0.25)

    threads = [threading.Thread(target=viewer, args=(j,), daemon=True) for j in range(n_panels)]
    threads.append(threading.Thread(target=prober, daemon=True))
    try:
        for t in threads:
            t.start()
        time.sleep(duration_s)
        stop.set()
        for t in threads:
            t.join(timeout=90)
        # The first wave: every panel's first answer (cold: models are trained for it).
        first_wave_end = max((t0 + s for t0, s in sorted(latencies)[:n_panels]), default=started)
        warm = [s for t0, s in latencies if t0 > first_wave_end]
        every = [s for _, s in latencies]
        return {"model": model, "panels": n_panels, "requests": len(latencies), "errors": len(errors),
                "p50_s": _p(every, 0.5), "p99_s": _p(every, 0.99), "max_s": max(every, default=0.0),
                "first_wave_s": first_wave_end - started, "warm_p50_s": _p(warm, 0.5), "warm_p99_s": _p(warm, 0.99),
                "health_p99_s": _p(health, 0.99), "health_max_s": max(health, default=0.0),
                "error_kinds": sorted(set(errors))}
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench service", description=__doc__)
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--models", default="auto,seasonal,iforest,ocsvm")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of refreshes, and of the 50 panels")
    parser.add_argument("--panels", type=int, default=50, help="concurrent panels (0: skip)")
    parser.add_argument("--refresh", type=float, default=5.0, help="seconds between a concurrent panel's refreshes")
    parser.add_argument("--src", default=None, help="serve the vigil package in this directory (a checkout's backend)")
    args = parser.parse_args(argv)

    stack = Stack(args.series, args.src)
    rows: list[dict] = []
    load: dict | None = None
    try:
        stack.raw(0)  # warm Prometheus's own caches, as a dashboard would
        for model in args.models.split(","):
            rows.append(measure_model(stack, model, args.duration))
            print(rows[-1], file=sys.stderr)
        if args.panels:
            load = measure_concurrency(stack, args.models.split(",")[0], args.panels, args.duration, args.refresh)
            print(load, file=sys.stderr)
    finally:
        stack.prometheus.stop()

    print(f"\nPanel latency, {args.series} series x {VIEW_POINTS} points (60 s step, 12 h), training window 7d; "
          f"refreshes over {args.duration:g} s, the view one step later each time; raw = Prometheus query_range "
          "of the same views, same run\n")
    print("| model | cold | first refresh | refresh p50 | refresh max | raw p50 | p50 / raw | answer (gzip) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['cold_s'] * 1000:.0f} ms | {r['first_s'] * 1000:.0f} ms | "
              f"{r['p50_s'] * 1000:.0f} ms | {r['max_s'] * 1000:.0f} ms | {r['raw_s'] * 1000:.0f} ms | "
              f"{r['p50_s'] / r['raw_s']:.1f}x | {r['bytes'] / 1024:.0f} KiB |")
    if load:
        print(f"\n{load['panels']} concurrent panels for {args.duration:g} s (model {load['model']}, five queries of "
              f"20 series, ten viewers each, opened together, then refreshed every {args.refresh:g} s)\n")
        print("| requests | p50 | p99 | max | first wave answered after | after it: p50 | after it: p99 | errors "
              "| /healthz p99 | /healthz max |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {load['requests']} | {load['p50_s'] * 1000:.0f} ms | {load['p99_s'] * 1000:.0f} ms | "
              f"{load['max_s'] * 1000:.0f} ms | {load['first_wave_s']:.1f} s | {load['warm_p50_s'] * 1000:.0f} ms | "
              f"{load['warm_p99_s'] * 1000:.0f} ms | {load['errors']} {' '.join(load['error_kinds'])} | "
              f"{load['health_p99_s'] * 1000:.0f} ms | {load['health_max_s'] * 1000:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
