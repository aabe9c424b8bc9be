"""The demo's Prometheus and Alertmanager configuration pass the real promtool and amtool.

demo/prometheus.yml, its rules (``promtool check``), the rules' unit tests (``promtool test
rules``), the local-mode rewrite of the same file, and demo/alertmanager.yml (``amtool``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from realstack import require_binary

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"
RULE_FILES = sorted((DEMO / "rules").glob("*.rules.yml"))
TOOL_DEADLINE_S = 60

sys.path.insert(0, str(DEMO))
import run_local  # noqa: E402  (demo/run_local.py: the local-mode rewrite of prometheus.yml)


def _run(argv: list[str], cwd: Path = DEMO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TOOL_DEADLINE_S)


def _alert_rules() -> list[dict]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [r for r in group["rules"] if "alert" in r]
    return rules


def test_there_are_rule_files_and_prometheus_loads_them():
    assert RULE_FILES, "demo/rules/*.rules.yml is empty"
    config = yaml.safe_load((DEMO / "prometheus.yml").read_text())
    loaded = {p for pattern in config["rule_files"] for p in DEMO.glob(pattern)}
    assert loaded == set(RULE_FILES)
    assert not any(p.name.endswith(".test.yml") for p in loaded), "unit-test files must not be loaded as rules"


def test_promtool_check_config():
    result = _run([require_binary("promtool"), "check", "config", "prometheus.yml"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULE_FILES)} rule files found" in result.stdout


def test_promtool_check_rules():
    result = _run([require_binary("promtool"), "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_rules_pass():
    tests = sorted((DEMO / "rules").glob("*.test.yml"))
    assert tests
    result = _run([require_binary("promtool"), "test", "rules", *map(str, tests)], cwd=DEMO / "rules")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    tested = set()
    for path in (DEMO / "rules").glob("*.test.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    untested = {r["alert"] for r in _alert_rules()} - tested
    assert not untested, f"alerts without a firing unit test: {sorted(untested)}"


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda r: r["alert"])
def test_alert_rules_follow_prometheus_practice(rule):
    assert re.fullmatch(r"(?:[A-Z][a-z0-9]+)+", rule["alert"]), "alert names are CamelCase"
    assert rule["labels"]["severity"] in ("info", "warning", "critical")
    assert rule["annotations"].get("summary") and rule["annotations"].get("description")
    assert rule.get("for"), "an alert waits before firing (no flapping on one bad scrape)"


def test_the_local_rewrite_is_a_valid_config_with_loopback_targets(tmp_path):
    ports = {"service": 18080, "prometheus": 19090, "alertmanager": 19093, "node_exporter": 19100,
             "workload": 19200, "worker_metrics": 19108}
    config = run_local.prometheus_config(ports, "5s")
    targets = [t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]]
    targets += [t for m in config["alerting"]["alertmanagers"] for s in m["static_configs"] for t in s["targets"]]
    assert sorted(int(t.split(":")[1]) for t in targets) == sorted(ports.values())
    assert all(t.startswith("127.0.0.1:") for t in targets)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = _run([require_binary("promtool"), "check", "config", str(path)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_check_demo_alertmanager_config():
    result = _run([require_binary("amtool"), "check-config", "alertmanager.yml"])
    assert result.returncode == 0, result.stdout + result.stderr
