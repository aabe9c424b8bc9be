import subprocess
import sys

import pytest

from vigil.config import ConfigError, Settings, check_config, load_settings


def write(tmp_path, text):
    path = tmp_path / "vigil.yaml"
    path.write_text(text)
    return path


def test_defaults_are_usable():
    s = load_settings(None, environ={})
    assert s.server.port == 8080 and s.server.host == "0.0.0.0"
    assert s.detection.train_window_s == 7 * 86400
    assert s.prometheus.max_points_per_series == 11_000


def test_file_then_environment_then_overrides(tmp_path):
    path = write(tmp_path, "prometheus:\n  url: http://file:9090\n  request_timeout: 5s\nserver:\n  port: 9000\n")
    s = load_settings(path, environ={"VIGIL_SERVER_PORT": "9100"}, overrides={"server": {"threads": 8}})
    assert s.prometheus.url == "http://file:9090"
    assert s.prometheus.request_timeout_s == 5.0
    assert s.server.port == 9100
    assert s.server.threads == 8


def test_every_problem_is_reported_with_file_path_and_value(tmp_path):
    path = write(tmp_path, """
server:
  port: 99999
  bogus: 1
detection:
  model: magic
  train_window: 10x
jobs:
  - name: cpu
    query: node_cpu_usage
    every: 0s
  - name: cpu
    query: up
    severity: urgent
""")
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    problems = err.value.problems
    text = "\n".join(problems)
    assert f"{path}: server.bogus: must be a known key" in text
    assert f"{path}: detection.train_window: must be a duration" in text
    assert f"{path}: server.port: must be a port number" in text
    assert "jobs[0].every: must be at least 1s" in text
    assert "jobs[1].name: must be unique" in text
    assert "jobs[1].severity: must be info, warning or critical; got 'urgent'" in text
    assert len(problems) >= 6


def test_unset_variable_is_an_error_and_set_one_expands(tmp_path):
    path = write(tmp_path, "grafana:\n  url: http://grafana:3000\n  token: ${GRAFANA_TOKEN}\n")
    with pytest.raises(ConfigError, match=r"grafana.token: must be a set environment variable \$\{GRAFANA_TOKEN\}"):
        load_settings(path, environ={})
    s = load_settings(path, environ={"GRAFANA_TOKEN": "glsa_secret"})
    assert s.grafana.token == "glsa_secret"


def test_secrets_come_from_files_and_never_show_in_repr(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cr3t\n")
    path = write(tmp_path, f"server:\n  token_file: {token}\n")
    s = load_settings(path, environ={})
    assert s.server.token == "s3cr3t"
    assert "s3cr3t" not in repr(s)
    missing = write(tmp_path, "server:\n  token_file: /nonexistent/token\n")
    assert "server.token_file: must be a readable file" in "\n".join(check_config(missing))


def test_unknown_vigil_variable_is_an_error():
    with pytest.raises(ConfigError, match="VIGIL_SERVR_PORT"):
        load_settings(None, environ={"VIGIL_SERVR_PORT": "1"})


def test_jobs_with_exclusion_windows(tmp_path):
    path = write(tmp_path, """
jobs:
  - name: node-cpu
    query: node_cpu_usage
    every: 30s
    exclude:
      - {start: 2026-01-01T00:00:00Z, end: "2026-01-01T06:00:00Z"}
""")
    job = load_settings(path, environ={}).jobs[0]
    assert job.every_s == 30
    assert job.exclude[0].start_ms == 1767225600000
    assert job.exclude[0].end_ms == 1767225600000 + 6 * 3600 * 1000


def test_settings_replace_returns_a_copy():
    s = Settings()
    t = s.replace(server={"port": 1234, "token": "s3cret"})
    assert t.server.port == 1234 and s.server.port == 8080
    assert t.server.token == "s3cret" and "s3cret" not in repr(t)


def test_check_config_command_exit_codes(tmp_path):
    good = write(tmp_path, "server:\n  port: 8080\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  prot: 8080\n")
    ok = subprocess.run([sys.executable, "-m", "vigil.cli", "check-config", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    failed = subprocess.run([sys.executable, "-m", "vigil.cli", "check-config", str(bad)], capture_output=True, text=True)
    assert failed.returncode == 1
    assert "server.prot: must be a known key" in failed.stderr


def test_environment_values_are_typed_by_their_field_not_guessed():
    # A numeric-looking token is still a token; a numeric-looking URL part stays text.
    s = load_settings(None, environ={"VIGIL_SERVER_TOKEN": "12345", "VIGIL_GRAFANA_TOKEN": "0.5",
                                     "VIGIL_SERVER_PORT": " 9100 ", "VIGIL_PROMETHEUS_REQUEST_TIMEOUT": "30",
                                     "VIGIL_DETECTION_MIN_TRAIN_POINTS": "48"})
    assert s.server.token == "12345"
    assert s.grafana.token == "0.5"
    assert s.server.port == 9100
    assert s.prometheus.request_timeout_s == 30.0
    assert s.detection.min_train_points == 48


def test_environment_value_of_the_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"environment: server.port: must be an integer; got 'eighty'"):
        load_settings(None, environ={"VIGIL_SERVER_PORT": "eighty"})


def test_check_config_finds_an_unbalanced_query(tmp_path):
    path = write(tmp_path, """
jobs:
  - {name: api-errors, query: 'sum(rate(http_errors_total[5m])'}
  - {name: api-latency, query: 'histogram_quantile(0.9, rate(x{job="api}[5m]))'}
  - {name: fine, query: 'sum by (job) (rate(x{path=~"/a(b|c)"}[5m]))'}
""")
    problems = check_config(path)
    assert problems == [
        f"{path}: jobs[0].query: must be a balanced expression ('(' at character 4 is never closed); "
        "got 'sum(rate(http_errors_total[5m])'",
        f"{path}: jobs[1].query: must be a balanced expression (the string opened by \" at character 36 is never "
        "closed); got 'histogram_quantile(0.9, rate(x{job=\"api}[5m]))'",
    ]


def test_file_values_are_not_coerced_across_types(tmp_path):
    # In the file a number is not a token and true is not a thread count; only the environment is text.
    path = write(tmp_path, "server:\n  token: 12345\n  threads: true\n  port: 80.0\n")
    text = "\n".join(check_config(path, environ={"VIGIL_SERVER_WORKERS": "2.0"}))
    assert f"{path}: server.port: must be an integer; got 80.0" in text
    assert f"{path}: server.workers: must be an integer; got '2.0'" in text
    assert f"{path}: server.token: must be a string; got a value not shown (a secret)" in text
    assert f"{path}: server.threads: must be an integer; got True" in text


def test_cross_field_rules_still_run_and_name_the_job_by_its_place_in_the_file(tmp_path):
    # jobs[0] cannot be built (no name); the duplicate is still found, and called jobs[2], not jobs[1].
    path = write(tmp_path, """
jobs:
  - {query: up}
  - {name: cpu, query: up}
  - {name: cpu, query: up}
worker:
  lookback: 1m
""")
    problems = check_config(path, environ={})
    assert f"{path}: jobs[0].name: must be set; got None" in problems
    assert f"{path}: jobs[2].name: must be unique; got 'cpu'" in problems
    assert any("worker.lookback: must be at least two scoring steps" in p for p in problems)
    assert len(problems) == 3


def test_code_builds_sections_by_attribute_name_but_files_use_the_yaml_key(tmp_path):
    from vigil.config import GrafanaSettings

    assert GrafanaSettings(request_timeout_s=3.0).request_timeout_s == 3.0
    path = write(tmp_path, "grafana:\n  request_timeout_s: 3\n")
    assert any("grafana.request_timeout_s: must be a known key" in p for p in check_config(path, environ={}))


def test_a_secret_from_a_file_named_in_the_environment_and_a_wrong_secret_is_never_printed(tmp_path):
    token = tmp_path / "grafana-token"
    token.write_text("glsa_from_file\n")
    s = load_settings(None, environ={"VIGIL_GRAFANA_TOKEN_FILE": str(token)})
    assert s.grafana.token == "glsa_from_file" and "glsa_from_file" not in repr(s)
    path = write(tmp_path, "server:\n  token: 987654321\n")
    [problem] = check_config(path, environ={})
    assert problem == f"{path}: server.token: must be a string; got a value not shown (a secret)"
