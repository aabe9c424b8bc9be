"""The Alertmanager sink and the shipped Alertmanager configuration, against a real Alertmanager.

The shipped ``alerting/alertmanager/alertmanager.yml`` is rendered as an operator would (render.sh),
checked with ``amtool check-config``, then pointed at sinks on loopback: Telegram (``api_url``),
Slack (the webhook URL read from ``slack_api_url_file``), email (an aiosmtpd SMTP server) and a
plain webhook. Each gets the alert and its resolution, and the message carries the explanation.
"""

from __future__ import annotations

import email
import json
import os
import socket
import subprocess
import threading
import time
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from realstack import AMTOOL, free_port, require_binary
from vigil.sinks.alerts import ALERT_NAME, AlertmanagerSink, DeliveryError, alert_labels, panel_url
from vigil.store.audit import StoredEpisode
from vigil.config import AlertmanagerSettings, GrafanaSettings, JobSettings
from vigil.errors import DeliveryTimeout

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "alerting" / "alertmanager"
NOW_MS = int(time.time() * 1000)
ENV = {"TELEGRAM_BOT_TOKEN": "123456:test-bot-token", "TELEGRAM_CHAT_ID": "-1001234567890",
       "SMTP_SMARTHOST": "smtp.example.com:587", "SMTP_FROM": "vigil@example.com", "SMTP_USERNAME": "vigil",
       "ALERT_EMAIL_TO": "ops@example.com"}
REASON = "CPU 0.97 is far above the usual 0.31 for a Monday 10:00"


def episode(**overrides: Any) -> StoredEpisode:
    values = dict(id="e1d2c3b4a5968778", job="node-cpu", series_key="instance=web-1,job=node",
                  labels={"instance": "web-1", "job": "node", "__name__": "cpu", "bad-name": "x", "severity": "s"},
                  start_ms=NOW_MS - 600_000, end_ms=None, last_ms=NOW_MS, peak_ms=NOW_MS - 300_000, peak_score=2.4,
                  peak_value=0.97, yhat=0.31, yhat_lower=0.22, yhat_upper=0.41, reason=REASON, model="iforest",
                  unit=None, severity="warning", annotation_id=None, alert_state="pending", alert_sent_ms=None,
                  created_ms=NOW_MS, updated_ms=NOW_MS)
    values.update(overrides)
    return StoredEpisode(**values)


JOB = JobSettings(name="node-cpu", query="node_cpu", dashboard_uid="vigil-overview", panel_id=4, labels={"team": "infra"})
GRAFANA = GrafanaSettings(url="http://grafana:3000", public_url="https://grafana.example.com")


# -- the alert's shape ---------------------------------------------------------------------------


def test_labels_are_valid_and_ours_win_without_losing_the_series_own():
    labels = alert_labels(episode(), JOB)
    assert labels["alertname"] == ALERT_NAME and labels["vigil_job"] == "node-cpu" and labels["severity"] == "warning"
    assert labels["job"] == "node" and labels["instance"] == "web-1"  # the series' own job/instance kept
    assert labels["series_severity"] == "s" and labels["metric"] == "cpu" and labels["bad_name"] == "x"
    assert labels["team"] == "infra" and labels["vigil_episode"] == "e1d2c3b4a5968778"
    import re
    assert all(re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", k) for k in labels)


def test_firing_then_resolved_alert_body():
    sink = AlertmanagerSink(AlertmanagerSettings(url="http://am:9093", resend_every_s=60), GRAFANA)
    firing = sink.alert(episode(), JOB, NOW_MS)
    assert firing["startsAt"].endswith("Z") and firing["endsAt"] > firing["startsAt"]
    assert REASON in firing["annotations"]["description"] and "[0.22, 0.41]" in firing["annotations"]["description"]
    assert "0.97" in firing["annotations"]["description"]
    link = firing["annotations"]["runbook_url"]
    assert link.startswith("https://grafana.example.com/d/vigil-overview?viewPanel=4&from=") and firing["generatorURL"] == link
    assert firing["annotations"]["description"].endswith(f"Panel: {link}")  # readable where only the text shows
    no_panel = sink.alert(episode(), JOB.model_copy(update={"dashboard_uid": None}), NOW_MS)
    assert "Panel:" not in no_panel["annotations"]["description"]  # Grafana's home is not a panel
    resolved = sink.alert(episode(end_ms=NOW_MS - 60_000), JOB, NOW_MS)
    from vigil.units import iso_from_ms
    assert resolved["endsAt"] == iso_from_ms(NOW_MS - 60_000)
    assert panel_url(GrafanaSettings(), JOB, episode()) is None


def test_unreachable_alertmanager_is_a_delivery_error():
    sink = AlertmanagerSink(AlertmanagerSettings(url=f"http://127.0.0.1:{free_port()}", request_timeout_s=1))
    with pytest.raises(DeliveryError, match="unreachable"):
        sink.send(episode(), JOB, NOW_MS)
    with pytest.raises(DeliveryError) as refused:
        sink.send(episode(), JOB, NOW_MS)
    assert not isinstance(refused.value, DeliveryTimeout)  # refused at once: the usual backoff


def test_an_alertmanager_that_does_not_answer_is_a_delivery_timeout():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        sink = AlertmanagerSink(AlertmanagerSettings(url=url, request_timeout_s=0.3))
        with pytest.raises(DeliveryTimeout, match="did not answer within 0.3s"):
            sink.send(episode(), JOB, NOW_MS)


# -- the shipped configuration against a real Alertmanager ---------------------------------------


def render(tmp_path: Path) -> Path:
    out = tmp_path / "rendered"
    result = subprocess.run(["sh", str(SHIPPED / "render.sh"), str(out)], env={**os.environ, **ENV},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return out / "alertmanager.yml"


def test_render_refuses_an_unset_variable(tmp_path):
    env = {**os.environ, **ENV}
    del env["TELEGRAM_CHAT_ID"]
    result = subprocess.run(["sh", str(SHIPPED / "render.sh"), str(tmp_path / "x")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "TELEGRAM_CHAT_ID" in result.stderr


def test_shipped_configuration_passes_amtool(tmp_path):
    amtool = require_binary(AMTOOL)
    rendered = render(tmp_path)
    text = rendered.read_text()
    assert "${" not in text.split("templates:")[1]  # every placeholder filled
    result = subprocess.run([amtool, "check-config", str(rendered)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 templates" in result.stdout


class HttpSink:
    """Records JSON POSTs on loopback; answers like Telegram's Bot API on /telegram, 'ok' elsewhere."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                sink.received.append((self.path, body))
                if self.path.startswith("/telegram"):
                    answer = json.dumps({"ok": True, "result": {"message_id": len(sink.received), "date": 0,
                                                                "chat": {"id": -1001234567890, "type": "group"},
                                                                "text": "x"}}).encode()
                else:
                    answer = b"ok"
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def on(self, prefix: str) -> list[Any]:
        return [body for path, body in self.received if path.startswith(prefix)]


class SmtpSink:
    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[email.message.EmailMessage] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802
                sink.messages.append(email.message_from_bytes(envelope.content, policy=policy.default))
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def texts(self) -> list[str]:
        out = []
        for message in self.messages:
            part = message.get_body(preferencelist=("plain",))
            out.append(f"{message['Subject']}\n{part.get_content() if part else ''}")
        return out

    def stop(self) -> None:
        self.controller.stop()


def wait_for(predicate, timeout_s: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_real_alertmanager_routes_by_severity_to_telegram_slack_email_and_webhook(tmp_path, alertmanager_factory):
    require_binary("prometheus-alertmanager")
    http = HttpSink()
    smtp = SmtpSink()
    try:
        config = yaml.safe_load(render(tmp_path).read_text())
        slack_url_file = tmp_path / "slack-webhook-url"
        slack_url_file.write_text(http.url + "/slack\n")
        password_file = tmp_path / "smtp-password"
        password_file.write_text("unused\n")
        config["global"].update({"slack_api_url_file": str(slack_url_file), "smtp_auth_password_file": str(password_file),
                                 "smtp_smarthost": f"127.0.0.1:{smtp.port}", "smtp_require_tls": False,
                                 "resolve_timeout": "10s"})
        config["templates"] = [str(SHIPPED / "templates" / "*.tmpl")]
        for route in [config["route"], *config["route"]["routes"]]:
            route.update({"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"})
        receivers = {r["name"]: r for r in config["receivers"]}
        receivers["oncall-telegram"]["telegram_configs"][0]["api_url"] = http.url + "/telegram"
        receivers["team"]["webhook_configs"] = [{"url": http.url + "/webhook", "send_resolved": True}]
        am = alertmanager_factory(yaml.safe_dump(config, sort_keys=False))

        sink = AlertmanagerSink(AlertmanagerSettings(url=am.url, resend_every_s=60), GRAFANA)
        warning = episode()
        critical = episode(id="c0ffee0000000001", labels={"instance": "db-1"}, series_key="instance=db-1",
                           severity="critical", reason="Memory 31.5 GiB is far above the usual 12 GiB")
        assert sink.send(warning, JOB, int(time.time() * 1000)) == "firing"
        assert sink.send(critical, JOB, int(time.time() * 1000)) == "firing"

        wait_for(lambda: http.on("/slack") and http.on("/telegram") and http.on("/webhook") and smtp.messages,
                 what="every channel to get the firing alerts")
        slack_text = json.dumps(http.on("/slack")[0])
        telegram_text = http.on("/telegram")[0]["text"]
        webhook = http.on("/webhook")[0]
        assert REASON in slack_text and "FIRING" in slack_text and "vigil-overview" in slack_text
        assert "Memory 31.5 GiB" in telegram_text and "db-1" in telegram_text and REASON not in telegram_text
        assert [a["labels"]["vigil_episode"] for a in webhook["alerts"]] == [warning.id]  # critical went to Telegram
        assert REASON in webhook["alerts"][0]["annotations"]["description"]
        assert REASON in smtp.texts()[0] and "[FIRING:1] VigilAnomaly node-cpu (warning)" in smtp.texts()[0]

        now_ms = int(time.time() * 1000)
        assert sink.send(episode(end_ms=now_ms - 1000, last_ms=now_ms - 1000), JOB, now_ms) == "resolved"
        assert sink.send(episode(**{**critical.__dict__, "end_ms": now_ms - 1000}), JOB, now_ms) == "resolved"
        wait_for(lambda: any(b.get("status") == "resolved" for b in http.on("/webhook"))
                 and any("RESOLVED" in json.dumps(b) for b in http.on("/slack"))
                 and any("RESOLVED" in b["text"] for b in http.on("/telegram"))
                 and any("RESOLVED" in t for t in smtp.texts()), what="every channel to get the resolution")
        resolved_mail = [t for t in smtp.texts() if "RESOLVED" in t][0]
        assert REASON in resolved_mail
    finally:
        smtp.stop()
        http.httpd.shutdown()


def test_an_alert_on_a_rate_says_what_was_measured():
    job = JobSettings(name="api-errors", query='sum by (service) (rate(http_requests_total{code=~"5.."}[5m]))')
    sink = AlertmanagerSink(AlertmanagerSettings(url="http://am:9093"), GRAFANA)
    firing = sink.alert(episode(labels={"service": "api"}, series_key="service=api"), job, NOW_MS)
    assert firing["annotations"]["query"] == job.query
    assert firing["annotations"]["description"].endswith(f"Query: {job.query}")
    named = sink.alert(episode(), JOB, NOW_MS)  # the series has its metric name: the label says it
    assert "query" not in named["annotations"]
