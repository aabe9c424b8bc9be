"""Faults injected for real into a running ``vigil worker`` process and the parts around it.

Real Prometheus (seeded with history, scraping a live exporter whose values the test controls),
real Alertmanager (routing to a webhook sink), the Grafana recorder, and the worker as a
subprocess. Faults: Grafana answering 503 and hanging, Alertmanager stopped then restarted,
Prometheus stopped then restarted, the worker SIGKILLed in the middle of a delivery and restarted.
Afterwards every episode is in the audit store exactly once, every episode has exactly one
annotation (closed at the episode's end) and its alert was delivered firing and then resolved.

``FAULT_RUN_SERIES`` (default 3) sets how many series the outage test watches (all but one turn
anomalous; the SIGKILL test makes them all anomalous): ``make fuzz`` runs both at a larger size
and puts their "FAULTS" reports in its table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from grafana_recorder import GrafanaRecorder
from realstack import wait_for
from vigil.store.audit import AuditStore
from vigil_dev.openmetrics import to_openmetrics

TOKEN = "glsa_fault_test_token"
METRIC = "vigil_fault_value"
NORMAL, ANOMALOUS = 10.0, 100.0
HISTORY_S = 3 * 3600
HISTORY_STEP_S = 15
#: series watched (``make fuzz`` raises it)
SERIES = max(2, int(os.environ.get("FAULT_RUN_SERIES", "3")))


class Exporter:
    """Serves ``vigil_fault_value{series=..}``: normal noise, or a value the test sets, or nothing."""

    def __init__(self, series: list[str]) -> None:
        self.values: dict[str, float | None] = {s: NORMAL for s in series}
        self.rng = np.random.default_rng(7)
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                lines = [f"# TYPE {METRIC} gauge"]
                for name, value in list(exporter.values.items()):
                    if value is None:
                        continue
                    noisy = value + (exporter.rng.normal(0, 0.5) if value == NORMAL else 0.0)
                    lines.append(f'{METRIC}{{series="{name}"}} {noisy:.4f}')
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


class Webhook:
    """Alertmanager's webhook receiver on loopback: records every notification."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                hook.notifications.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def alerts(self, episode_id: str, status: str) -> list[dict[str, Any]]:
        return [a for n in list(self.notifications) for a in n["alerts"]
                if a["labels"].get("vigil_episode") == episode_id and a["status"] == status]


def history(series: list[str]) -> str:
    # End the seeded history more than Prometheus' 5-minute lookback delta ago: a backfilled series
    # gets no staleness marker, so its last sample would otherwise stand in for the live one.
    end_s = int(time.time()) - 330
    times_ms = np.arange(end_s - HISTORY_S, end_s, HISTORY_STEP_S, dtype=np.int64) * 1000
    rng = np.random.default_rng(3)
    return to_openmetrics([(METRIC, [({"series": s}, times_ms, NORMAL + rng.normal(0, 0.5, times_ms.size))
                                     for s in series])])


class Stack:
    def __init__(self, tmp_path: Path, prometheus_factory, alertmanager_factory, series: list[str]) -> None:
        self.tmp_path = tmp_path
        self.exporter = Exporter(series)
        self.prometheus = prometheus_factory(openmetrics=history(series), scrape_targets=[self.exporter.address],
                                             scrape_interval_s=1)
        self.webhook = Webhook()
        self.alertmanager = alertmanager_factory(yaml.safe_dump({
            "global": {"resolve_timeout": "1m"},
            "route": {"receiver": "hook", "group_by": ["vigil_episode"], "group_wait": "1s", "group_interval": "1s",
                      "repeat_interval": "1h"},
            "receivers": [{"name": "hook", "webhook_configs": [{"url": self.webhook.url, "send_resolved": True}]}],
        }))
        self.grafana = GrafanaRecorder(TOKEN).start()
        self.audit_path = tmp_path / "audit.db"
        self.config = tmp_path / "vigil.yml"
        (tmp_path / "grafana-token").write_text(TOKEN + "\n")
        self.config.write_text(yaml.safe_dump({
            "prometheus": {"url": self.prometheus.url, "request_timeout": "2s", "retries": 0},
            "detection": {"model": "seasonal", "train_window": "1h", "score_step": "1s"},
            "grafana": {"url": self.grafana.url, "token_file": str(tmp_path / "grafana-token"), "request_timeout": "1s"},
            "alertmanager": {"url": self.alertmanager.url, "request_timeout": "1s", "resend_every": "2s"},
            "audit": {"path": str(self.audit_path)},
            "worker": {"lookback": "8s", "max_backoff": "1s"},
            "jobs": [{"name": "fault-test", "query": f"max by (series) ({METRIC})", "every": "1s",
                      "dashboard_uid": "vigil-faults", "panel_id": 2, "severity": "warning"}],
        }))
        self.worker: subprocess.Popen[bytes] | None = None
        self.log = tmp_path / "worker.log"

    def start_worker(self) -> None:
        with open(self.log, "ab") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "vigil.cli", "worker", "--config", str(self.config),
                 "--metrics-host", "127.0.0.1", "--metrics-port", "0"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def kill_worker(self) -> None:
        assert self.worker is not None
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait(timeout=10)

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(timeout=10)

    def close(self) -> None:
        self.stop_worker()
        self.grafana.stop()
        self.webhook.httpd.shutdown()
        self.exporter.httpd.shutdown()

    def episodes(self) -> list[Any]:
        if not self.audit_path.exists():
            return []
        with AuditStore(self.audit_path, read_only=True) as store:
            return store.episodes(since_ms=0)

    def events(self) -> list[dict[str, Any]]:
        with AuditStore(self.audit_path, read_only=True) as store:
            return store.events()

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def scraped_twice(self) -> bool:
        """The exporter was scraped at least twice since Prometheus last started."""
        targets = self.prometheus.get_json("/api/v1/targets")["data"]["activeTargets"]
        if not targets or targets[0]["health"] != "up":
            return False
        if not hasattr(self, "_first_scrape"):
            self._first_scrape = targets[0]["lastScrape"]
        return targets[0]["lastScrape"] != self._first_scrape

    def report(self, series: list[str]) -> dict[str, Any]:
        """Expected vs delivered, per the issue's table."""
        episodes = self.episodes()
        anomalous = [e for e in episodes if e.labels.get("series") in series]
        annotations = {e.id: len(self.grafana.by_tag(f"vigil_episode:{e.id}")) for e in episodes}
        return {
            "episodes_expected": len(series),
            "episodes_recorded": len(anomalous),
            "episodes_total": len(episodes),
            "annotations_expected": len(episodes),
            "annotations_delivered": sum(annotations.values()),
            "episodes_with_one_annotation": sum(1 for n in annotations.values() if n == 1),
            "alerts_fired": sum(1 for e in episodes if self.webhook.alerts(e.id, "firing")),
            "alerts_resolved": sum(1 for e in episodes if self.webhook.alerts(e.id, "resolved")),
        }

    def assert_exactly_once(self, series: list[str]) -> dict[str, Any]:
        episodes = self.episodes()
        for name in series:
            assert len([e for e in episodes if e.labels.get("series") == name]) == 1, name
        for e in episodes:
            assert e.end_ms is not None, f"episode {e.id} still open"
            [annotation] = self.grafana.by_tag(f"vigil_episode:{e.id}")
            assert annotation["id"] == e.annotation_id
            assert annotation["time"] == e.start_ms and annotation["timeEnd"] == e.end_ms
            assert annotation["dashboardUID"] == "vigil-faults" and annotation["panelId"] == 2
            assert e.alert_state == "resolved"
        assert self.grafana.rejections == []
        return self.report(series)


@pytest.fixture
def stack_factory(tmp_path, prometheus_factory, alertmanager_factory):
    made: list[Stack] = []

    def factory(series: list[str]) -> Stack:
        stack = Stack(tmp_path, prometheus_factory, alertmanager_factory, series)
        made.append(stack)
        return stack

    yield factory
    for stack in made:
        stack.close()
        # Shown by pytest when the test failed: what the worker said and what is in the store.
        print("--- worker log tail\n" + "\n".join(stack.log.read_text().splitlines()[-25:]) if stack.log.exists() else "")
        print("--- episodes", [(e.labels, e.start_ms, e.end_ms, e.last_ms, e.annotation_id, e.alert_state)
                              for e in stack.episodes()])


def _count(stack: Stack, event: str) -> int:
    return sum(1 for line in stack.log_lines() if line.get("event") == event)


def _runs_done(stack: Stack) -> int | None:
    """Runs the current worker process has finished (its ``vigil_job_duration_seconds_count``), or None."""
    ports = [line["metrics_port"] for line in stack.log_lines() if line.get("event") == "worker_started"]
    if not ports:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[-1]}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith('vigil_job_duration_seconds_count{vigil_job="fault-test"}'):
            return int(float(line.split()[-1]))
    return 0


def _wait_for_two_more_runs(stack: Stack) -> None:
    """Until the worker has finished two more runs (of a 1 s job) from now: a full cycle, not a guessed pause.

    Counted from the worker's metrics, not its log: a run that matches no series is logged at debug.
    """
    runs = wait_for(lambda: _runs_done(stack) is not None and (_runs_done(stack),), deadline_s=15,
                    what="the worker's metrics")[0]
    wait_for(lambda: (_runs_done(stack) or 0) >= runs + 2, deadline_s=30, what="two more worker runs")


def _open_episode(stack: Stack, name: str) -> Any:
    found = [e for e in stack.episodes() if e.labels.get("series") == name and e.end_ms is None]
    return found[0] if found else None


def _all_closed_and_delivered(stack: Stack, names: list[str]) -> bool:
    episodes = stack.episodes()
    mine = [e for e in episodes if e.labels.get("series") in names]
    if len(mine) < len(names) or any(e.end_ms is None for e in episodes):
        return False
    with AuditStore(stack.audit_path, read_only=True) as store:
        if sum(store.backlog().values()):
            return False
    return all(stack.webhook.alerts(e.id, "resolved") for e in episodes)


def test_outages_of_grafana_alertmanager_and_prometheus_lose_and_duplicate_nothing(stack_factory):
    names = [f"s{i}" for i in range(1, SERIES + 1)]
    stack = stack_factory(names)
    anomalous = names[:-1]
    stack.grafana.fail_next(2 * SERIES, 503)
    stack.alertmanager.stop()  # down from the start
    stack.start_worker()
    wait_for(lambda: any(l.get("event") == "job_run" for l in stack.log_lines()), deadline_s=20, what="a first run")
    for name in anomalous:
        stack.exporter.values[name] = ANOMALOUS
    wait_for(lambda: all(_open_episode(stack, n) for n in anomalous), deadline_s=15, what="episodes to start")
    stack.grafana.hang_next(2, 2.0)  # and Grafana slows down past our 1 s timeout
    wait_for(lambda: all(stack.grafana.by_tag(f"vigil_episode:{_open_episode(stack, n).id}") for n in anomalous),
             deadline_s=20, what="annotations despite 503s and timeouts")
    stack.alertmanager.start()
    wait_for(lambda: all(stack.webhook.alerts(_open_episode(stack, n).id, "firing") for n in anomalous),
             deadline_s=20, what="alerts once Alertmanager is back")
    failures_before = _count(stack, "job_failed")
    stack.prometheus.stop()
    wait_for(lambda: _count(stack, "job_failed") > failures_before, deadline_s=20,
             what="a run to fail while Prometheus is down")
    runs_before = sum(1 for l in stack.log_lines() if l.get("event") == "job_run")
    stack.prometheus.start()
    wait_for(lambda: sum(1 for l in stack.log_lines() if l.get("event") == "job_run") > runs_before + 2,
             deadline_s=20, what="runs to succeed again")
    # Prometheus must scrape the series once more before they vanish, or it cannot mark them stale
    # (a sample from before its restart would stay visible for the 5-minute lookback delta); its
    # target discovery takes about 5 s after a start.
    wait_for(lambda: stack.scraped_twice(), deadline_s=20, what="Prometheus to scrape again")
    for name in anomalous:
        stack.exporter.values[name] = None  # the series go away: their episodes end
    wait_for(lambda: _all_closed_and_delivered(stack, anomalous), deadline_s=40, what="episodes to end and resolve")
    _wait_for_two_more_runs(stack)  # that nothing more happens is only worth asserting after runs
    report = stack.assert_exactly_once(anomalous)
    events = stack.events()
    failed = {e["sink"] for e in events if e["kind"] == "delivery_failed"}
    assert failed == {"grafana", "alertmanager"}
    assert any(l.get("event") == "job_failed" for l in stack.log_lines())  # Prometheus was down
    assert TOKEN not in stack.log.read_text()
    print("\nFAULTS grafana-503+timeout, alertmanager-down, prometheus-down:", json.dumps(report))


def test_sigkill_in_the_middle_of_a_delivery(stack_factory):
    names = [f"s{i}" for i in range(1, SERIES)]
    stack = stack_factory(names)
    stack.start_worker()
    wait_for(lambda: any(l.get("event") == "job_run" for l in stack.log_lines()), deadline_s=20, what="a first run")
    stack.grafana.hang_next(1, 2.5, method="POST")  # Grafana will act, but answer too late
    for name in names:
        stack.exporter.values[name] = ANOMALOUS
    wait_for(lambda: any(r["method"] == "GET" for r in stack.grafana.requests), deadline_s=15,
             what="the first delivery to begin")
    wait_for(lambda: stack.grafana.hanging("POST") >= 1, deadline_s=15,
             what="the create to be in flight, hanging inside Grafana")
    stack.kill_worker()
    killed_at = time.monotonic()
    wait_for(lambda: len(stack.grafana.annotations) >= 1, deadline_s=10, what="Grafana to finish the orphaned create")
    stack.start_worker()
    wait_for(lambda: all(_open_episode(stack, n) and _open_episode(stack, n).annotation_id for n in names),
             deadline_s=20, what="annotations after the restart")
    # A second kill, now while alerts are being re-sent and regions extended.
    _wait_for_two_more_runs(stack)
    stack.kill_worker()
    stack.start_worker()
    for name in names:
        stack.exporter.values[name] = None
    wait_for(lambda: _all_closed_and_delivered(stack, names), deadline_s=40, what="episodes to end and resolve")
    _wait_for_two_more_runs(stack)
    report = stack.assert_exactly_once(names)
    kinds = [e["kind"] for e in stack.events()]
    assert "annotation_recovered" in kinds  # the orphaned create was found by its tag, not repeated
    assert time.monotonic() - killed_at < 120
    print("\nFAULTS sigkill-mid-delivery x2:", json.dumps(report))
