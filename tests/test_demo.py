"""The demo: the workload's timeline, its seamless backfill, and ``make demo`` without Docker.

Layers: the signal model's invariants (fast); the backfilled history and the live workload joined
in a real Prometheus; and the whole no-Docker demo (``scripts/demo.sh``) on free loopback ports,
checked the way a person would: the service answers with real data, the injected anomalies reach
the audit and Alertmanager, and Ctrl-C (SIGTERM) leaves no process behind.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from realstack import free_port, require_binary, wait_for
from vigil_dev.demo import KINDS, METRICS, ErrorCounter, Workload

REPO = Path(__file__).resolve().parent.parent
VIGIL = Path(sys.executable).parent / "vigil"
HTTP_TIMEOUT_S = 10.0


# ---------------------------------------------------------------------------------------------
# The signal model


def test_the_timeline_is_a_pure_function_of_seed_and_time():
    t = np.arange(1_700_000_000, 1_700_003_600, 15.0)
    a, b, other = Workload(seed=7), Workload(seed=7), Workload(seed=8)
    for metric in METRICS:
        for name in a.instance_names:
            np.testing.assert_array_equal(a.values(metric, t)[name], b.values(metric, t)[name])
        assert not np.array_equal(a.values(metric, t)["app-1"], other.values(metric, t)["app-1"])


def test_values_are_in_their_units_and_follow_a_daily_cycle():
    w = Workload()
    t = np.arange(1_700_000_000, 1_700_000_000 + 86400, 60.0)
    cpu = w.values("demo_cpu_usage_ratio", t)
    assert all(((v >= 0) & (v <= 1)).all() for v in cpu.values())
    assert all((v > 0).all() for v in w.values("demo_memory_bytes", t).values())  # a drop goes to ~5 %
    rps = w.values("demo_requests_per_second", t)["app-1"]
    hourly = rps.reshape(24, 60).mean(axis=1)
    assert hourly.max() > 2.5 * hourly.min(), "busy hours and quiet hours differ"


def test_anomalies_do_not_overlap_and_cover_every_kind():
    w = Workload(anomaly_every_s=240)
    schedule = w.schedule(1_700_000_000, 1_700_000_000 + 86400)
    assert len(schedule) in (360, 361)
    assert all(a.end_s <= b.start_s for a, b in zip(schedule, schedule[1:]))
    assert {a.kind for a in schedule} == set(KINDS)
    assert all(60 <= a.end_s - a.start_s <= 120 for a in schedule)


def test_injected_anomalies_change_the_values():
    w = Workload()
    for a in w.schedule(1_700_000_000, 1_700_000_000 + 6 * 3600):
        if a.metric == "demo_errors_total":
            continue
        middle = np.array([(a.start_s + a.end_s) / 2])
        seen = w.values(a.metric, middle)[a.instance][0]
        index = w.instance_names.index(a.instance)
        normal = w._normal(a.metric, index, middle)[0]
        if a.kind == "stuck":
            start_value = w._normal(a.metric, index, np.array([a.start_s]))[0]
            assert seen == pytest.approx(start_value)
        elif a.metric == "demo_cpu_usage_ratio":
            assert seen == pytest.approx(min(normal * a.factor, 0.99))
        else:
            assert seen == pytest.approx(normal * a.factor)


def test_the_live_error_counter_matches_the_backfilled_one():
    w = Workload()
    counter = ErrorCounter(w)
    start = 1_700_000_000.0
    for t in (start, start + 15, start + 16.5, start + 600):
        live = counter.at(t)
        history = w.values("demo_errors_total", np.array([t]))
        assert live == pytest.approx([history[n][0] for n in w.instance_names], abs=1)


def test_the_counter_resets_only_at_the_start_of_a_week():
    w = Workload()
    week = 7 * 86400
    t = np.arange(math.ceil(1_700_000_000 / week) * week - 3600, math.ceil(1_700_000_000 / week) * week + 3600, 15.0)
    errors = w.values("demo_errors_total", t)["app-1"]
    drops = np.flatnonzero(np.diff(errors) < 0)
    assert len(drops) == 1 and t[drops[0] + 1] % week == 0


def test_exposition_is_valid_prometheus_text():
    from prometheus_client.parser import text_string_to_metric_families

    w = Workload(anomaly_every_s=30)
    now = 1_700_000_000 + 15.0
    families = {f.name: f for f in text_string_to_metric_families(w.exposition(now, ErrorCounter(w)))}
    assert families["demo_errors"].type == "counter"
    assert {s.labels["instance"] for s in families["demo_cpu_usage_ratio"].samples} == {"app-1", "app-2", "app-3"}
    active = [a for a in w.schedule(now, now + 1) if a.start_s <= now < a.end_s]
    assert len(families["demo_anomaly_injected"].samples) == len(active)


def test_history_is_openmetrics_that_promtool_accepts(tmp_path):
    promtool = require_binary("promtool")
    end = math.floor(time.time() / 15) * 15
    text = Workload().history(end - 6 * 3600, end, 15, "demo")
    assert text.endswith("# EOF\n")
    source = tmp_path / "history.om"
    source.write_text(text)
    result = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(tmp_path / "b")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# History and live scrapes join in a real Prometheus


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.real
def test_backfilled_history_and_live_scrapes_are_one_series(prometheus_factory, tmp_path):
    port = free_port()
    workload = subprocess.Popen([str(VIGIL), "demo-workload", "--port", str(port), "--anomaly-every", "1m"],
                                stdout=open(tmp_path / "workload.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/metrics"), deadline_s=20)
        end = math.floor(time.time() / 15) * 15
        prometheus = prometheus_factory(
            openmetrics=Workload(anomaly_every_s=60).history(end - 3600, end, 15, "demo"),
            extra_config={"scrape_configs": [{
                "job_name": "demo", "honor_labels": True, "scrape_interval": "1s",
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]},
        )
        started = time.time()

        def live_samples():
            data = prometheus.get_json("/api/v1/query", query='demo_errors_total{instance="app-1"}[30s]')
            values = data["data"]["result"][0]["values"] if data["data"]["result"] else []
            return len([v for v in values if float(v[0]) >= started]) >= 3 or None

        wait_for(live_samples, deadline_s=30, poll_s=0.5)
        for metric in METRICS:
            data = prometheus.get_json("/api/v1/query", query=f"count_over_time({metric}[2h])")
            series = data["data"]["result"]
            assert len(series) == 3, f"{metric}: one series per instance, history and live together: {series}"
            assert {s["metric"].get("job") for s in series} == {"demo"}
            assert all(int(s["value"][1]) >= 3600 / 15 for s in series)
        resets = prometheus.get_json("/api/v1/query", query="resets(demo_errors_total[2h])")["data"]["result"]
        assert [int(r["value"][1]) for r in resets] == [0, 0, 0], "the live counter continues the backfilled one"
    finally:
        workload.terminate()
        workload.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# `make demo` without Docker, end to end: one demo for the tests below, which run in file order
# and check what a person would look at, then stop it the way Ctrl-C does.

SERVICE_DEADLINE_S = 60.0  # "within a minute the service answers with real data"
DEMO_DEADLINE_S = 300.0  # anomalies come every 4 minutes; not every one is big enough to flag
PRECISION_AFTER_S = 60.0  # two worker runs after the history/live join
STOP_DEADLINE_S = 60.0
#: demo/vigil.yaml's jobs and the workload metric each one watches.
JOB_METRIC = {"demo-cpu": "demo_cpu_usage_ratio", "demo-requests": "demo_requests_per_second",
              "demo-memory": "demo_memory_bytes", "demo-errors": "demo_errors_total"}


def _http_json(url: str, token: str | None = None, body: object | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=HTTP_TIMEOUT_S) as r:
        return json.load(r)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


class LocalDemo:
    """``scripts/demo.sh`` in the no-Docker mode on free loopback ports, and what was measured."""

    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "demo"
        self.ports = {name: free_port() for name in ("PORT", "PROMETHEUS_PORT", "ALERTMANAGER_PORT",
                                                     "NODE_EXPORTER_PORT", "WORKLOAD_PORT", "WORKER_METRICS_PORT")}
        self.token = "test-token-" + os.urandom(8).hex()
        self.service = f"http://127.0.0.1:{self.ports['PORT']}"
        self.prometheus = f"http://127.0.0.1:{self.ports['PROMETHEUS_PORT']}"
        self.alertmanager = f"http://127.0.0.1:{self.ports['ALERTMANAGER_PORT']}"
        self.out_path = tmp / "demo.out"
        self.timings: dict[str, float] = {}
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DEMO_", "VIGIL_"))},
               "DEMO_NO_DOCKER": "1", "DEMO_DIR": str(self.state), "DEMO_HOST": "127.0.0.1",
               "DEMO_TOKEN": self.token, "PYTHON": sys.executable,
               **{f"DEMO_{k}": str(v) for k, v in self.ports.items()}}
        self._log = open(self.out_path, "wb")
        self.started, self.wall_started = time.monotonic(), time.time()
        self.popen = subprocess.Popen(["bash", str(REPO / "scripts" / "demo.sh")], cwd=REPO, env=env,
                                      stdout=self._log, stderr=subprocess.STDOUT)
        self.pids: dict[str, int] = {}

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def check_running(self) -> None:
        if self.popen.poll() is not None:
            pytest.fail(f"the demo exited with {self.popen.returncode}:\n{self.output()}")

    def mark(self, what: str) -> None:
        self.timings.setdefault(what, time.monotonic() - self.started)

    def audit(self) -> list[dict]:
        return _http_json(self.service + "/api/v1/audit?since=3h", self.token)

    def stop(self) -> int:
        """SIGTERM, as Ctrl-C; the exit code. Kills everything it started if it does not stop in time."""
        if (self.state / "pids.json").exists():
            self.pids = json.loads((self.state / "pids.json").read_text())
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            for pid in self.pids.values():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.popen.wait(timeout=STOP_DEADLINE_S)
            pytest.fail(f"the demo did not stop within {STOP_DEADLINE_S:.0f} s of SIGTERM:\n{self.output()}")
        finally:
            self._log.close()


@pytest.fixture(scope="module")
def local_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDemo]:
    for name in ("prometheus", "promtool", "prometheus-alertmanager", "prometheus-node-exporter"):
        require_binary(name)
    demo = LocalDemo(tmp_path_factory.mktemp("make-demo"))
    try:
        yield demo
    finally:
        demo.stop()


@pytest.mark.real
def test_demo_service_answers_with_real_data_within_a_minute(local_demo: LocalDemo):
    last: dict[str, str] = {}

    def answered_with_data():
        local_demo.check_running()
        now = time.time()
        body = {"range": {"from": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3600)),
                          "to": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))},
                "intervalMs": 15000, "maxDataPoints": 240,
                "targets": [{"refId": "A", "target": "demo_cpu_usage_ratio", "payload": {}}]}
        try:
            frames = _http_json(local_demo.service + "/json/query", local_demo.token, body)
        except (urllib.error.URLError, OSError) as exc:
            last["answer"] = repr(exc)
            return None
        last["answer"] = json.dumps(frames)[:300]
        if len(frames) != 3:
            return None
        fields = {f["name"]: f["values"] for f in frames[0]["fields"]}
        # Scored at one step whatever the panel asks (detection.score_step, 60 s): an hour is 60 points.
        return frames if len(fields.get("value", [])) >= 50 and "anomaly_score" in fields else None

    try:
        frames = wait_for(answered_with_data, deadline_s=SERVICE_DEADLINE_S, poll_s=0.5)
    except AssertionError:
        pytest.fail(f"the service did not answer with an hour of data within {SERVICE_DEADLINE_S:.0f} s; "
                    f"last answer: {last.get('answer')}\n{local_demo.output()}")
    local_demo.mark("service answers with an hour of data")
    assert "Vigil demo is up" in local_demo.output()
    assert {f["name"].split('instance="')[1][:5] for f in frames} == {"app-1", "app-2", "app-3"}


@pytest.mark.real
def test_injected_anomalies_reach_the_audit_and_alertmanager(local_demo: LocalDemo):
    def episodes():
        local_demo.check_running()
        try:
            return local_demo.audit() or None
        except (urllib.error.URLError, OSError):
            return None

    wait_for(episodes, deadline_s=DEMO_DEADLINE_S, poll_s=1.0)
    local_demo.mark("first anomaly in the audit")

    def alerts():
        local_demo.check_running()
        found = _http_json(local_demo.alertmanager + "/api/v2/alerts")
        return [a for a in found if a["labels"].get("vigil_job", "").startswith("demo-")] or None

    wait_for(alerts, deadline_s=DEMO_DEADLINE_S, poll_s=1.0)
    local_demo.mark("first alert in Alertmanager")


@pytest.mark.real
def test_prometheus_scrapes_every_demo_target_and_evaluates_the_rules(local_demo: LocalDemo):
    def scraped():
        local_demo.check_running()
        targets = _http_json(local_demo.prometheus + "/api/v1/targets")["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        return health if set(health.values()) == {"up"} else None

    health = wait_for(scraped, deadline_s=60, poll_s=1.0)
    assert set(health) == {"prometheus", "node", "demo", "vigil", "vigil-worker"}
    query = urllib.parse.urlencode({"query": 'count by (vigil_job) (vigil_anomaly_score{job="demo"})'})

    def scores_for_every_demo_job():  # the worker's series labels are kept (honor_labels)
        local_demo.check_running()
        result = _http_json(f"{local_demo.prometheus}/api/v1/query?{query}")["data"]["result"]
        return {"demo-cpu", "demo-requests", "demo-memory"} <= {r["metric"]["vigil_job"] for r in result}

    wait_for(scores_for_every_demo_job, deadline_s=60, poll_s=1.0)
    rules = [r for g in _http_json(local_demo.prometheus + "/api/v1/rules")["data"]["groups"] for r in g["rules"]]
    assert rules and all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]


@pytest.mark.real
def test_demo_episodes_are_the_injected_anomalies(local_demo: LocalDemo):
    """Each demo episode overlaps an injected anomaly on its series (a minute of slack for the
    scrape interval and the score's hysteresis): the demo's alerts are few and right. Checked once
    the worker has scored past the join of backfilled history and live scrapes."""
    time.sleep(max(0.0, PRECISION_AFTER_S - (time.monotonic() - local_demo.started)))
    local_demo.check_running()
    workload = Workload(seed=42, anomaly_every_s=240)
    rows = [r for r in local_demo.audit() if r["job"] in JOB_METRIC]
    assert rows
    unmatched = []
    for row in rows:
        start_s = row["start_ms"] / 1000
        end_s = (row["end_ms"] or time.time() * 1000) / 1000
        # demo-errors is scored as rate(...[5m]): a burst stays in that window 5 minutes after it ends.
        lag_s = 300 if row["job"] == "demo-errors" else 0
        if not any(a.instance == row["labels"].get("instance") and a.metric == JOB_METRIC[row["job"]]
                   for a in workload.schedule(start_s - 60 - lag_s, end_s + 60)):
            unmatched.append(f"{row['job']} {row['labels'].get('instance')} {row['start']}..{row['end']} "
                             f"peak {row['peak_score']:.2f}")
    assert len(unmatched) <= 0.2 * len(rows), (
        f"{len(unmatched)} of {len(rows)} episodes match no injected anomaly (the demo started at "
        f"{time.strftime('%H:%M:%S', time.gmtime(local_demo.wall_started))} UTC; the worker's first run "
        f"scores the 30 minutes before):\n" + "\n".join(unmatched))


@pytest.mark.real
def test_sigterm_stops_everything_the_demo_started(local_demo: LocalDemo):
    local_demo.check_running()
    code = local_demo.stop()
    print("\nmake demo (no Docker): " + ", ".join(f"{k} after {v:.1f} s" for k, v in local_demo.timings.items()))
    assert code == 0, local_demo.output()
    assert "demo stopped" in local_demo.output()
    assert set(local_demo.pids) >= {"runner", "prometheus", "alertmanager", "node_exporter", "workload",
                                    "service", "worker"}
    still_running = {name: pid for name, pid in local_demo.pids.items() if _alive(pid)}
    assert not still_running, f"left running after SIGTERM: {still_running}"
    for port in local_demo.ports.values():
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
