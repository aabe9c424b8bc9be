"""The real-component fixtures work: Prometheus, node_exporter and Alertmanager answer."""

from __future__ import annotations

import socket
import time
import urllib.request

import numpy as np
import pytest

from realstack import Process, backfill, free_port, start_prometheus, wait_for

pytestmark = pytest.mark.real

ALERTMANAGER_CONFIG = """
route:
  receiver: sink
  group_wait: 1s
receivers:
  - name: sink
"""


def test_free_port_is_bindable():
    port = free_port()
    assert 1024 <= port <= 65535


def test_node_exporter_serves_metrics(node_exporter: Process):
    with urllib.request.urlopen(node_exporter.url + "/metrics", timeout=5) as response:
        body = response.read().decode()
    assert "node_cpu_seconds_total" in body
    assert node_exporter.url.startswith("http://127.0.0.1:")


def test_prometheus_scrapes_node_exporter(prometheus_factory, node_exporter: Process):
    prometheus = prometheus_factory(scrape_targets=[("node", f"127.0.0.1:{node_exporter.port}")])

    def scraped():
        body = prometheus.get_json("/api/v1/query", query='up{job="node"}')
        result = body["data"]["result"]
        return result and result[0]["value"][1] == "1"

    wait_for(scraped)


def test_prometheus_stop_and_start_keeps_port_and_data(prometheus_factory):
    now_s = int(time.time()) // 60 * 60 - 60
    text = "# TYPE vigil_test_restart gauge\n" + "".join(
        f'vigil_test_restart{{k="v"}} {i} {now_s - 3600 + i * 60}\n' for i in range(60)
    ) + "# EOF\n"
    prometheus = prometheus_factory(openmetrics=text)
    port = prometheus.port
    prometheus.stop()
    assert not prometheus.running
    with pytest.raises(OSError):
        urllib.request.urlopen(prometheus.url + "/-/ready", timeout=2)
    prometheus.start()
    assert prometheus.port == port and prometheus.running
    body = prometheus.get_json(
        "/api/v1/query_range", query="vigil_test_restart", start=now_s - 3600, end=now_s, step=60
    )
    values = body["data"]["result"][0]["values"]
    assert len(values) >= 59


def test_prometheus_reload(prometheus_factory):
    prometheus = prometheus_factory()
    prometheus.reload()
    assert prometheus.get_json("/api/v1/status/config")["status"] == "success"


def test_backfill_rejects_bad_text(tmp_path):
    with pytest.raises(RuntimeError, match="promtool"):
        backfill("not openmetrics at all\n", tmp_path / "tsdb")


def test_port_race_moves_to_another_port(tmp_path, monkeypatch):
    """A port taken between free_port() and the bind: the start retries on another port."""
    import realstack

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        ports = iter([taken_port])
        real_free_port = realstack.free_port
        monkeypatch.setattr(realstack, "free_port", lambda: next(ports, None) or real_free_port())
        process = realstack.start_node_exporter(tmp_path)
    try:
        assert process.running and process.port != taken_port
        assert "address already in use" in process.log_path.read_text()
    finally:
        process.stop()


def test_start_fails_fast_with_log_tail(tmp_path):
    with pytest.raises(Exception, match="(?s)log tail.*"):
        start_prometheus(tmp_path, extra_config={"scrape_configs": [{"job_name": 3, "bogus": True}]})


def test_alertmanager_accepts_an_alert(alertmanager_factory):
    alertmanager = alertmanager_factory(ALERTMANAGER_CONFIG)
    alert = [{"labels": {"alertname": "VigilTestAnomaly", "series": "cpu"},
              "annotations": {"summary": "planted"}}]
    status, _ = alertmanager.post_json("/api/v2/alerts", alert)
    assert status == 200

    def listed():
        alerts = alertmanager.get_json("/api/v2/alerts")
        return [a for a in alerts if a["labels"].get("alertname") == "VigilTestAnomaly"]

    assert wait_for(listed)[0]["annotations"]["summary"] == "planted"


def test_seeded_prometheus_serves_planted_history(seeded_prometheus):
    seeded = seeded_prometheus
    assert seeded.events_ms["spiky"] and seeded.events_ms["shifted"] and not seeded.events_ms["quiet"]
    for start_ms, end_ms in seeded.events_ms["spiky"] + seeded.events_ms["shifted"]:
        assert seeded.end_ms - 6 * 3600_000 <= start_ms <= end_ms <= seeded.end_ms
    # The last 11,000 points at 60 s cover the whole 7 days.
    body = seeded.process.get_json(
        "/api/v1/query_range", query=f'{seeded.metric}{{job="{seeded.job}"}}',
        start=seeded.start_ms / 1000, end=seeded.end_ms / 1000, step=seeded.step_s,
    )
    assert body["status"] == "success"
    by_instance = {r["metric"]["instance"]: r["values"] for r in body["data"]["result"]}
    assert set(by_instance) == {"spiky", "shifted", "quiet"}
    for instance, values in by_instance.items():
        planted = seeded.series[instance]
        assert len(values) == len(planted.times_ms) == 7 * 1440
        got = [float(v) for _, v in values]
        assert got == pytest.approx(planted.values.tolist())
    # The spike is where the ground truth says.
    start_ms, end_ms = seeded.events_ms["spiky"][0]
    spiky = seeded.series["spiky"]
    inside = spiky.values[(spiky.times_ms >= start_ms) & (spiky.times_ms <= end_ms)]
    assert inside.min() > np.median(spiky.values)


def test_seeded_prometheus_scrapes_node_exporter(seeded_prometheus):
    def scraped():
        body = seeded_prometheus.process.get_json(
            "/api/v1/query", query=f'count(node_cpu_seconds_total{{job="{seeded_prometheus.node_job}"}})'
        )
        return body["data"]["result"]

    assert float(wait_for(scraped)[0]["value"][1]) >= 1
