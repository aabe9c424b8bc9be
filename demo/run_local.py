"""Run the Vigil demo from local binaries, without Docker (``make demo`` when no engine answers).

The same story as docker-compose.yml minus Grafana and Loki: two days of the demo workload's
history backfilled into Prometheus before it starts, then Prometheus, node_exporter, Alertmanager,
the live demo workload, ``vigil serve`` and ``vigil worker``, all from this machine's binaries and
this checkout. Configuration comes from ``demo/`` (prometheus.yml with its targets rewritten to
127.0.0.1, the rules, alertmanager.yml, vigil.yaml with local addresses), written into a state
directory that is emptied on every start. Everything listens on 127.0.0.1 except the service
(``DEMO_HOST``, default 0.0.0.0, so other machines can point a Grafana at it; it requires
a bearer token, printed at start). Stays in the foreground; Ctrl-C or SIGTERM stops every process
it started, in reverse order, each within ``STOP_DEADLINE_S``.

Environment (all optional): ``DEMO_DIR`` (state directory), ``DEMO_HOST``,
``DEMO_PORT`` (service, 8080), ``DEMO_PROMETHEUS_PORT`` (9090),
``DEMO_ALERTMANAGER_PORT`` (9093), ``DEMO_NODE_EXPORTER_PORT`` (9100),
``DEMO_WORKLOAD_PORT`` (9200), ``DEMO_WORKER_METRICS_PORT`` (9108),
``DEMO_SCRAPE_INTERVAL`` (15s), ``DEMO_ANOMALY_EVERY`` (4m), ``DEMO_SEED`` (42),
``DEMO_DAYS`` (2), ``DEMO_TOKEN`` (random).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from vigil.units import parse_duration_s

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"
READY_DEADLINE_S = 60.0
STOP_DEADLINE_S = 10.0
BACKFILL_DEADLINE_S = 120.0
MARKER = ".vigil-demo-state"

#: compose service address in demo/prometheus.yml -> the port variable that replaces it locally.
COMPOSE_TARGETS = {
    "localhost:9090": "prometheus",
    "node-exporter:9100": "node_exporter",
    "demo-workload:9200": "workload",
    "vigil:8080": "service",
    "vigil-worker:9108": "worker_metrics",
    "alertmanager:9093": "alertmanager",
}


class DemoError(RuntimeError):
    """Something the person running the demo must fix; the message says what."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def settings_from_env() -> dict[str, Any]:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return {
        "dir": Path(_env("DEMO_DIR", f"/tmp/vigil-demo-{uid}")),
        "host": _env("DEMO_HOST", "0.0.0.0"),
        "ports": {
            "service": int(_env("DEMO_PORT", "8080")),
            "prometheus": int(_env("DEMO_PROMETHEUS_PORT", "9090")),
            "alertmanager": int(_env("DEMO_ALERTMANAGER_PORT", "9093")),
            "node_exporter": int(_env("DEMO_NODE_EXPORTER_PORT", "9100")),
            "workload": int(_env("DEMO_WORKLOAD_PORT", "9200")),
            "worker_metrics": int(_env("DEMO_WORKER_METRICS_PORT", "9108")),
        },
        "scrape_interval": _env("DEMO_SCRAPE_INTERVAL", "15s"),
        "anomaly_every": _env("DEMO_ANOMALY_EVERY", "4m"),
        "seed": _env("DEMO_SEED", "42"),
        "days": _env("DEMO_DAYS", "2"),
        "token": os.environ.get("DEMO_TOKEN") or secrets.token_urlsafe(24),
    }


# ---------------------------------------------------------------------------------------------
# Configuration generated from demo/


def prometheus_config(ports: dict[str, int], scrape_interval: str) -> dict[str, Any]:
    """demo/prometheus.yml with every compose address replaced by 127.0.0.1 and its local port."""
    config = yaml.safe_load((DEMO / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["evaluation_interval"] = scrape_interval
    timeout = config["global"].get("scrape_timeout")
    if timeout and parse_duration_s(timeout) > parse_duration_s(scrape_interval):
        config["global"]["scrape_timeout"] = scrape_interval  # Prometheus refuses a longer one
    config["rule_files"] = [str(DEMO / f) for f in config.get("rule_files", [])]

    def local(target: str) -> str:
        if target not in COMPOSE_TARGETS:
            raise DemoError(f"demo/prometheus.yml: target {target!r} has no local equivalent in run_local.py")
        return f"127.0.0.1:{ports[COMPOSE_TARGETS[target]]}"

    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            static["targets"] = [local(t) for t in static["targets"]]
    for manager in config.get("alerting", {}).get("alertmanagers", []):
        for static in manager.get("static_configs", []):
            static["targets"] = [local(t) for t in static["targets"]]
    return config


def vigil_config(ports: dict[str, int], host: str, audit_path: Path) -> dict[str, Any]:
    """demo/vigil.yaml with local addresses, ports and audit store."""
    config = yaml.safe_load((DEMO / "vigil.yaml").read_text())
    config["prometheus"]["url"] = f"http://127.0.0.1:{ports['prometheus']}"
    config["alertmanager"]["url"] = f"http://127.0.0.1:{ports['alertmanager']}"
    config["server"].update(host=host, port=ports["service"])
    config["worker"]["metrics_port"] = ports["worker_metrics"]
    config["audit"]["path"] = str(audit_path)
    config.pop("grafana", None)  # no Grafana without Docker: the worker writes no annotations
    return config


# ---------------------------------------------------------------------------------------------
# Processes


def binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if path is None:
        raise DemoError(f"{name} is not installed: run `make os-deps` (or bash scripts/install-os-deps.sh)")
    return path


def vigil_command() -> list[str]:
    """``vigil`` from this interpreter's environment (the repo's .venv under ``make demo``)."""
    candidate = Path(sys.executable).parent / "vigil"
    return [str(candidate)] if candidate.exists() else [sys.executable, "-m", "vigil.cli"]


def has_command(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class Child:
    def __init__(self, name: str, argv: list[str], log_path: Path, ready_url: str | None,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.log_path, self.ready_url = name, argv, log_path, ready_url
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=self.log_path.parent, env=self.env)

    def wait_ready(self, deadline_s: float = READY_DEADLINE_S) -> None:
        deadline = time.monotonic() + deadline_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.popen is None or self.popen.poll() is not None:
                raise DemoError(f"{self.name} exited before it was ready; the end of {self.log_path}:\n{self.tail()}")
            if self.ready_url is None:
                return
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"status {response.status}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise DemoError(f"{self.name} was not ready on {self.ready_url} within {deadline_s:.0f} s ({last}); "
                        f"the end of {self.log_path}:\n{self.tail()}")

    def stop(self) -> None:
        popen, self.popen = self.popen, None
        if popen is None or popen.poll() is not None:
            return
        popen.terminate()
        try:
            popen.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=STOP_DEADLINE_S)

    @property
    def exited(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""


# ---------------------------------------------------------------------------------------------
# The demo


class Demo:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.s = settings
        self.dir: Path = settings["dir"]
        self.ports: dict[str, int] = settings["ports"]
        self.children: list[Child] = []
        self.started_at = time.monotonic()
        self.stopping = False

    # -- setup ----------------------------------------------------------------------------------

    def fresh_state_dir(self) -> None:
        if self.dir.exists():
            if not (self.dir / MARKER).exists() and any(self.dir.iterdir()):
                raise DemoError(f"{self.dir} exists and is not a demo state directory; set DEMO_DIR elsewhere")
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        (self.dir / MARKER).write_text("state of demo/run_local.py; emptied on every start\n")

    def write_configs(self) -> None:
        (self.dir / "prometheus.yml").write_text(
            yaml.safe_dump(prometheus_config(self.ports, self.s["scrape_interval"]), sort_keys=False))
        shutil.copy(DEMO / "alertmanager.yml", self.dir / "alertmanager.yml")
        (self.dir / "vigil.yaml").write_text(
            "# Generated by demo/run_local.py from demo/vigil.yaml: local addresses.\n"
            + yaml.safe_dump(vigil_config(self.ports, self.s["host"], self.dir / "audit.db"), sort_keys=False))
        token_file = self.dir / "token"
        token_file.write_text(self.s["token"])
        token_file.chmod(0o600)
        from vigil.config import check_config

        problems = check_config(self.dir / "vigil.yaml", environ={})
        if problems:
            raise DemoError("the generated Vigil configuration is invalid:\n" + "\n".join(problems))

    def backfill(self) -> None:
        """The workload's past into TSDB blocks, before Prometheus starts (ENV.md: 'History in seconds')."""
        history = self.dir / "history.om"
        self.run_once("history", vigil_command() + [
            "demo-workload", "--backfill", str(history), "--days", self.s["days"], "--step", "15s",
            "--job", "demo", "--seed", self.s["seed"], "--anomaly-every", self.s["anomaly_every"]])
        self.run_once("promtool", [binary("promtool"), "tsdb", "create-blocks-from", "openmetrics",
                                   "--max-block-duration=24h", str(history), str(self.dir / "prometheus-data")])
        history.unlink()

    def run_once(self, name: str, argv: list[str]) -> None:
        with open(self.dir / f"{name}.log", "ab") as log:
            try:
                result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=BACKFILL_DEADLINE_S)
            except subprocess.TimeoutExpired:
                raise DemoError(f"{name} took longer than {BACKFILL_DEADLINE_S:.0f} s") from None
        if result.returncode != 0:
            tail = (self.dir / f"{name}.log").read_text(errors="replace")[-2000:]
            raise DemoError(f"{name} failed ({result.returncode}):\n{tail}")

    def start(self, name: str, argv: list[str], ready_path: str | None, port_name: str | None,
              env: dict[str, str] | None = None) -> Child:
        url = f"http://127.0.0.1:{self.ports[port_name]}{ready_path}" if port_name and ready_path else None
        child = Child(name, argv, self.dir / f"{name}.log", url, env)
        self.children.append(child)
        child.start()
        self.write_pids()
        return child

    def write_pids(self) -> None:
        pids = {c.name: c.popen.pid for c in self.children if c.popen is not None}
        (self.dir / "pids.json").write_text(json.dumps({"runner": os.getpid(), **pids}))

    def start_all(self) -> list[str]:
        p = self.ports
        notes = []
        started = [
            self.start("node_exporter", [binary("prometheus-node-exporter"),
                                         f"--web.listen-address=127.0.0.1:{p['node_exporter']}",
                                         "--no-collector.systemd"], "/metrics", "node_exporter"),
            self.start("alertmanager", [binary("prometheus-alertmanager"),
                                        f"--config.file={self.dir / 'alertmanager.yml'}",
                                        f"--storage.path={self.dir / 'alertmanager-data'}",
                                        f"--web.listen-address=127.0.0.1:{p['alertmanager']}",
                                        "--cluster.listen-address="], "/-/ready", "alertmanager"),
            self.start("workload", vigil_command() + [
                "demo-workload", "--host", "127.0.0.1", "--port", str(p["workload"]), "--seed", self.s["seed"],
                "--anomaly-every", self.s["anomaly_every"]], "/metrics", "workload"),
            self.start("prometheus", [binary("prometheus"), f"--config.file={self.dir / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={self.dir / 'prometheus-data'}",
                                      f"--web.listen-address=127.0.0.1:{p['prometheus']}",
                                      "--storage.tsdb.retention.time=15d", "--web.enable-lifecycle"],
                       "/-/ready", "prometheus"),
        ]
        for child in started:
            child.wait_ready()
        # VIGIL_* variables a person set still apply (VIGIL_DETECTION_MODEL=iforest, ...).
        env = {**os.environ, "VIGIL_SERVER_TOKEN": self.s["token"]}
        config = str(self.dir / "vigil.yaml")
        vigil_started = []
        if has_command("vigil.http.serve"):
            vigil_started.append(self.start("service", vigil_command() + ["serve", "--config", config],
                                            "/healthz", "service", env))
        else:
            notes.append("`vigil serve` is not in this installation yet: the query service is not running")
        if has_command("vigil.worker.runner"):
            vigil_started.append(self.start("worker", vigil_command() + ["worker", "--config", config],
                                            "/metrics", "worker_metrics", env))
        else:
            notes.append("`vigil worker` is not in this installation yet: nothing records anomalies")
        for child in vigil_started:
            child.wait_ready()
        return notes

    # -- running --------------------------------------------------------------------------------

    def banner(self, notes: list[str]) -> str:
        p, host = self.ports, self.s["host"]
        shown = "localhost" if host in ("0.0.0.0", "127.0.0.1") else host
        token = self.s["token"]
        config = self.dir / "vigil.yaml"
        end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
        query = json.dumps({"range": {"from": start, "to": end}, "maxDataPoints": 240,
                            "targets": [{"refId": "A", "target": "demo_cpu_usage_ratio"}]}, separators=(",", ":"))
        lines = [
            "",
            f"Vigil demo is up after {time.monotonic() - self.started_at:.1f} s "
            "(local binaries; Grafana and Loki need Docker: see docs/demo.md).",
            "",
            f"  Vigil service     http://{shown}:{p['service']}/healthz   (bearer token: {token})",
            f"  Prometheus        http://127.0.0.1:{p['prometheus']}   (2 days of backfilled demo history)",
            f"  Alertmanager      http://127.0.0.1:{p['alertmanager']}   (the worker's anomaly alerts)",
            f"  Demo workload     http://127.0.0.1:{p['workload']}/metrics",
            f"  Worker metrics    http://127.0.0.1:{p['worker_metrics']}/metrics   (vigil_anomaly_score)",
            "",
            "Try:",
            f"  curl -s -H 'Authorization: Bearer {token}' -X POST http://localhost:{p['service']}/json/query \\",
            f"       -d '{query}'",
            f"  curl -s -H 'Authorization: Bearer {token}' 'http://localhost:{p['service']}/api/v1/audit?since=2h'",
            f"  {REPO / '.venv/bin/vigil'} audit --config {config} --since 2h",
            f"  amtool --alertmanager.url=http://127.0.0.1:{p['alertmanager']} alert query",
            "",
            f"Logs and state: {self.dir}. Injected anomalies are printed below. Ctrl-C stops everything.",
        ]
        return "\n".join(lines + [f"NOTE: {n}" for n in notes]) + "\n"

    def follow(self) -> int:
        """Echo injected anomalies and the first audit record; return when stopped or a child dies."""
        workload_log = self.dir / "workload.log"
        offset = workload_log.stat().st_size if workload_log.exists() else 0
        audit_seen = False
        while not self.stopping:
            for child in self.children:
                if child.exited is not None and not self.stopping:
                    print(f"\n{child.name} exited with {child.exited}; the end of {child.log_path}:\n{child.tail()}",
                          file=sys.stderr)
                    return 1
            offset = self.echo_anomalies(workload_log, offset)
            if not audit_seen:
                audit_seen = self.report_first_episode()
            time.sleep(0.5)
        return 0

    def echo_anomalies(self, path: Path, offset: int) -> int:
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except OSError:
            return offset
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("msg") == "anomaly started":
                print(f"{record['ts'][11:19]}  injected {record['kind']:<11} {record['instance']} "
                      f"{record['metric']} (x{record['factor']}, {record['duration_s']} s)", flush=True)
        return offset + end

    def report_first_episode(self) -> bool:
        try:
            from vigil.store.audit import open_for_reading
        except ImportError:
            return True
        try:
            store = open_for_reading(self.dir / "audit.db")
            if store is None:
                return False
            with store:
                episodes = store.episodes(limit=1000)
        except Exception:  # noqa: BLE001 - the worker may be creating the schema right now
            return False
        if not episodes:
            return False
        print(f"{time.strftime('%H:%M:%S')}  the audit has {len(episodes)} anomaly episode(s), "
              f"{time.monotonic() - self.started_at:.0f} s after start; `vigil audit` lists them", flush=True)
        return True

    def stop(self) -> None:
        self.stopping = True
        for child in reversed(self.children):
            child.stop()


def main() -> int:
    demo = Demo(settings_from_env())

    def on_signal(signum: int, _frame: Any) -> None:
        demo.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 1
    try:
        demo.fresh_state_dir()
        demo.write_configs()
        demo.backfill()
        notes = demo.start_all()
        if not demo.stopping:
            print(demo.banner(notes), flush=True)
            code = demo.follow()
        else:
            code = 0
    except DemoError as exc:
        print(f"make demo: {exc}", file=sys.stderr)
    finally:
        demo.stop()
        print("demo stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
