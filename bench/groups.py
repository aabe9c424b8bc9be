"""Group (``group_by``) query cost: G groups x M series, cold (fits) and cached, next to the same
series scored one by one with ``iforest``.

Run: ``.venv/bin/python -m bench groups [-- --shapes 10x8,4x32]``. Starts a real Prometheus seeded
with 7 days of 60 s history (each group: one cpu shape plus a shared load, scaled per member) and
calls ``Detection.run`` for a 12 h view at 60 s, in process. Prints a table.
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
from vigil.config import Settings  # noqa: E402
from vigil_dev.openmetrics import to_openmetrics  # noqa: E402
from vigil.pipeline.core import Detection, Query  # noqa: E402
from vigil.sources.prometheus import PrometheusClient  # noqa: E402
from vigil_dev.synthetic import generate  # noqa: E402

STEP_S = 60
DAYS = 7
VIEW_S = 12 * 3600


def seed_text(groups: int, members: int, end_ms: int) -> str:
    n = int(DAYS * 86400 / STEP_S)
    start_ms = end_ms - (n - 1) * STEP_S * 1000
    series = []
    for g in range(groups):
        base = generate("cpu", days=DAYS, step_s=STEP_S, seed=g, start_ms=start_ms)
        rng = np.random.default_rng(g)
        load = np.convolve(rng.standard_normal(n), np.ones(15) / 15, mode="same") * 0.1
        for m in range(members):
            values = (0.2 + m / members) * (base.values + load) + 0.003 * rng.standard_normal(n)
            series.append(({"instance": f"host-{g:02d}", "mode": f"m{m:02d}"}, base.times_ms, values))
    return to_openmetrics([("bench_group_cpu", series)])


def measure(groups: int, members: int) -> list[tuple[str, float, float]]:
    step_ms = STEP_S * 1000
    end_ms = (int(time.time() * 1000) // step_ms - 1) * step_ms
    with tempfile.TemporaryDirectory() as tmp:
        prometheus = start_prometheus(Path(tmp), openmetrics=seed_text(groups, members, end_ms))
        try:
            settings = Settings().replace(prometheus={"url": prometheus.url})
            rows = []
            for label, group_by in (("grouped", ("instance",)), ("one by one, iforest", ())):
                detection = Detection(settings, PrometheusClient.from_settings(settings.prometheus))
                query = Query(expr="bench_group_cpu", start_ms=end_ms - VIEW_S * 1000, end_ms=end_ms, step_s=STEP_S,
                              model="iforest", group_by=group_by)
                timings = []
                for _ in range(2):
                    t0 = time.monotonic()
                    detection.run(query)
                    timings.append(time.monotonic() - t0)
                rows.append((label, timings[0], timings[1]))
            return rows
        finally:
            prometheus.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench groups", description=__doc__)
    parser.add_argument("--shapes", default="10x8,4x32", help="groups x members, comma-separated")
    args = parser.parse_args(argv)
    print(f"| groups x series | scoring | cold (fits) s | cached s |   (12 h view at {STEP_S} s)")
    print("|---|---|---|---|")
    for shape in args.shapes.split(","):
        groups, members = (int(v) for v in shape.split("x"))
        for label, cold_s, warm_s in measure(groups, members):
            print(f"| {groups} x {members} | {label} | {cold_s:.2f} | {warm_s:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
