"""Panel latency: ``/json/query`` for 100 series x 720 points, cold (with training) and warm,
next to the raw Prometheus ``query_range`` of the same expression measured in the same run.

Run: ``.venv/bin/python -m bench service`` (or ``python -m bench.service``). Starts a real
Prometheus seeded with 7.5 days of 60 s history for N synthetic series and a real ``vigil serve``
(gunicorn) against it, on loopback. Prints a table; ratios are to the raw query, because these
machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from realstack import free_port, start_prometheus, wait_for  # noqa: E402
from bench.history import STEP_S, openmetrics_history  # noqa: E402

VIEW_POINTS = 720


def seed_text(n_series: int, end_ms: int, days: float) -> str:
    return openmetrics_history("bench_metric", n_series, end_ms, days, seed_base=100, labels={"job": "bench"},
                               instance_digits=3, spike_every=10)


def query_body(start_ms: int, end_ms: int, model: str) -> dict:
    iso = lambda ms: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ms / 1000))  # noqa: E731
    return {"range": {"from": iso(start_ms), "to": iso(end_ms)}, "intervalMs": STEP_S * 1000,
            "maxDataPoints": VIEW_POINTS, "targets": [{"refId": "A", "target": "bench_metric",
                                                       "payload": {"model": model}}]}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).ok
    except requests.RequestException:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench service", description=__doc__)
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="auto,seasonal,ocsvm")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    end_ms = (int(time.time() * 1000) // 60_000 - 1) * 60_000
    t0 = time.perf_counter()
    text = seed_text(args.series, end_ms, days=7.6)
    prometheus = start_prometheus(work, openmetrics=text)
    print(f"seeded {args.series} series x 7.6 d in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    start_ms = end_ms - (VIEW_POINTS - 1) * STEP_S * 1000
    rows = []
    try:
        def raw():
            r = requests.post(f"{prometheus.url}/api/v1/query_range", timeout=60, data={
                "query": "bench_metric", "start": start_ms / 1000, "end": end_ms / 1000, "step": STEP_S})
            assert r.status_code == 200 and len(r.json()["data"]["result"]) == args.series

        raw()  # warm Prometheus's own caches, as a dashboard would
        raw_s = statistics.median(timed(raw) for _ in range(args.repeats))
        rows.append(("prometheus query_range (raw)", raw_s, None))
        for model in args.models.split(","):
            port = free_port()
            env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            server = subprocess.Popen(
                [sys.executable, "-m", "vigil.cli", "serve", "--prometheus-url", prometheus.url, "--host", "127.0.0.1",
                 "--port", str(port), "--workers", "1", "--threads", "4", "--log-level", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            url = f"http://127.0.0.1:{port}"
            try:
                wait_for(lambda: _healthy(url), deadline_s=30)
                body = query_body(start_ms, end_ms, model)

                def panel() -> bool:
                    """One panel query; True while models are still training in the background."""
                    r = requests.post(f"{url}/json/query", json=body, timeout=60)
                    assert r.status_code == 200, r.text[:300]
                    frames = r.json()
                    assert len(frames) == args.series and len(frames[0]["fields"][0]["values"]) == VIEW_POINTS
                    notices = frames[0].get("meta", {}).get("notices", [])
                    return any("background" in n["text"] for n in notices)

                t0 = time.perf_counter()
                training = panel()
                cold_s = time.perf_counter() - t0
                deadline = time.monotonic() + 120
                while training and time.monotonic() < deadline:
                    time.sleep(2)
                    t0 = time.perf_counter()
                    training = panel()
                warm_s = statistics.median(timed(panel) for _ in range(args.repeats))
                rows.append((f"/json/query model={model} cold (fetch + train + score)", cold_s, raw_s))
                rows.append((f"/json/query model={model} warm (cached models)", warm_s, raw_s))
            finally:
                server.terminate()
                server.wait(timeout=30)
    finally:
        prometheus.stop()

    print(f"\nPanel latency, {args.series} series x {VIEW_POINTS} points (60 s step, 12 h), "
          f"median of {args.repeats} for warm and raw; training window 7d\n")
    print(f"| {'what':<56} | {'wall time':>10} | {'x raw':>7} |")
    print(f"|{'-' * 58}|{'-' * 12}|{'-' * 9}|")
    for name, seconds, base in rows:
        ratio = f"{seconds / base:.1f}" if base else "1.0"
        print(f"| {name:<56} | {seconds * 1000:>8.0f}ms | {ratio:>7} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
