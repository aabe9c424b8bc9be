"""Refreshes while cold panels train: does a heavy query stall cheap ones?

Run: ``.venv/bin/python -m bench fairness``. A real Prometheus seeded with 7.6 days of 60 s history
for 100 series, and a real ``vigil serve`` (shipped defaults: one process, 4 scoring slots) on
loopback. ``--cheap`` dashboards (20 series each, their models already stored) refresh one after
another, while ``--heavy`` clients keep sending panels that must train (100 series, a new
expression each time, so nothing of theirs is ever stored: seconds of history fetch and fitting
each). Measured twice in the same run, on a fresh process each time:

- ``reserved_light_slots: 0``: training may take every slot (before);
- ``reserved_light_slots: 1``: the default, training may take 3 of the 4 slots.

For each: the cheap refreshes' p50/p99/max and errors (a 429 is an error), the same refreshes
on the idle service (the floor) and the raw Prometheus ``query_range`` of the same view (the
ratio's baseline), and how many cold panels were answered.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import requests

from bench.service import Stack, _p, panel, query_body


def _cheap_expr(d: int) -> str:
    return f'bench_metric{{instance=~"host-0[{2 * d}{2 * d + 1}][0-9]"}}'


def measure(stack: Stack, reserved: int, cheap: int, heavy: int, duration_s: float) -> dict:
    config = stack.work / f"fair-{reserved}.yaml"
    config.write_text(f"server:\n  reserved_light_slots: {reserved}\n")
    server, url = stack.serve(config)
    try:
        view = stack.view(0)
        for d in range(cheap):  # their models stored: what a dashboard open for a while has
            assert panel(url, query_body(*view, "seasonal", _cheap_expr(d)), 20)[1] == 200
        idle = [panel(url, query_body(*view, "seasonal", _cheap_expr(d % cheap)), 20)[0] for d in range(20)]
        raw = [stack.raw(0, _cheap_expr(d % cheap)) for d in range(20)]
        stop = threading.Event()
        lock = threading.Lock()
        cheap_s: list[float] = []
        errors: list[str] = []
        heavy_done: list[int] = []
        counter = iter(range(1, 1_000_000))

        def heavy_client() -> None:
            session = requests.Session()
            while not stop.is_set():
                with lock:
                    n = next(counter)
                # A new expression every time: nothing of it is stored, it must train.
                body = query_body(*view, "seasonal", f"bench_metric * {n}")
                try:
                    _, status, _ = panel(url, body, 100, session, check=False)
                except requests.RequestException as exc:
                    status = type(exc).__name__  # type: ignore[assignment]
                with lock:
                    heavy_done.append(status)  # type: ignore[arg-type]
                if status == 429:
                    stop.wait(0.5)

        def cheap_client(d: int) -> None:
            session = requests.Session()
            while not stop.is_set():
                try:
                    seconds, status, _ = panel(url, query_body(*view, "seasonal", _cheap_expr(d)), 20, session,
                                               check=False)
                    with lock:
                        cheap_s.append(seconds)
                        if status != 200:
                            errors.append(str(status))
                except requests.RequestException as exc:
                    with lock:
                        errors.append(type(exc).__name__)
                stop.wait(0.5)

        threads = [threading.Thread(target=heavy_client, daemon=True) for _ in range(heavy)]
        started = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(3)  # the heavy clients hold their slots before the refreshes start
        threads += [threading.Thread(target=cheap_client, args=(d,), daemon=True) for d in range(cheap)]
        for t in threads[heavy:]:
            t.start()
        stop.wait(max(0.0, duration_s - (time.monotonic() - started)))
        stop.set()
        for t in threads:
            t.join(timeout=90)
        return {"reserved": reserved, "cheap_n": len(cheap_s), "p50": _p(cheap_s, 0.5), "p99": _p(cheap_s, 0.99),
                "max": max(cheap_s, default=float("nan")), "errors": errors, "idle_p50": _p(idle, 0.5),
                "raw_p50": _p(raw, 0.5), "heavy_ok": sum(1 for s in heavy_done if s == 200),
                "heavy_429": sum(1 for s in heavy_done if s == 429), "heavy_n": len(heavy_done)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench fairness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cheap", type=int, default=2, help="dashboards refreshing (20 series, models stored)")
    parser.add_argument("--heavy", type=int, default=6, help="clients sending panels that must train")
    parser.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args(argv)
    stack = Stack(100, None)
    rows = []
    try:
        stack.raw(0)
        for reserved in (0, 1):
            rows.append(measure(stack, reserved, args.cheap, args.heavy, args.duration))
            print(rows[-1], file=sys.stderr)
    finally:
        stack.prometheus.stop()
    print(f"\nCheap refreshes (20 series x 720 points, models stored) while {args.heavy} clients send panels that "
          f"must train (100 series, 7 d of history each), {args.duration:g} s, one vigil serve (4 slots); "
          "raw = Prometheus query_range of the same view, same run\n")
    print("| reserved_light_slots | refreshes | p50 | p99 | max | errors | idle p50 | raw p50 | p50 / raw "
          "| cold panels answered (429) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        label = f"{r['reserved']}" + (" (before)" if r["reserved"] == 0 else " (default)")
        print(f"| {label} | {r['cheap_n']} | {r['p50'] * 1000:.0f} ms | {r['p99'] * 1000:.0f} ms | "
              f"{r['max'] * 1000:.0f} ms | {len(r['errors'])} | {r['idle_p50'] * 1000:.0f} ms | "
              f"{r['raw_p50'] * 1000:.0f} ms | {r['p50'] / r['raw_p50']:.1f}x | {r['heavy_ok']} ({r['heavy_429']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
