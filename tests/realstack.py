"""Start the real Prometheus, Alertmanager and node_exporter binaries for tests.

Owns: free loopback ports, starting a binary and waiting until it is ready, stopping and
restarting it on the same port and data directory, and seeding Prometheus with history through
``promtool tsdb create-blocks-from openmetrics``. Must not: mock anything, bind anything but
127.0.0.1, or wait without a deadline.

Every started process is registered and stopped at interpreter exit as a safety net; fixtures in
``conftest.py`` stop them explicitly. Each process logs (stdout and stderr) to ``<name>.log`` in its
own directory; a start that fails quotes the tail of that log.

Scrape targets for :func:`start_prometheus` are either ``"127.0.0.1:PORT"`` strings, which all go
into one job named ``"static"``, or ``(job, "127.0.0.1:PORT")`` tuples, which go into the named job
(several tuples with the same job share it). Expect the first scrape about 5 s after start:
Prometheus applies new target sets on a 5-second tick, whatever the scrape interval.

Backfill facts (checked with promtool 2.42): promtool accepts samples at and after "now"; it is
Prometheus that needs the backfilled samples to lie before its start (scraped samples of the same
series would otherwise be out of order) and within retention (30 days here).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import pytest
import yaml

__all__ = [
    "free_port",
    "require_binary",
    "wait_for",
    "Process",
    "StartError",
    "backfill",
    "start_prometheus",
    "start_alertmanager",
    "start_node_exporter",
    "PROMETHEUS",
    "PROMTOOL",
    "ALERTMANAGER",
    "AMTOOL",
    "NODE_EXPORTER",
]

PROMETHEUS = "prometheus"
PROMTOOL = "promtool"
ALERTMANAGER = "prometheus-alertmanager"
AMTOOL = "amtool"
NODE_EXPORTER = "prometheus-node-exporter"

READY_DEADLINE_S = 15.0
STOP_DEADLINE_S = 10.0
HTTP_TIMEOUT_S = 5.0
PROMTOOL_DEADLINE_S = 120.0
_POLL_S = 0.05
_LOG_TAIL_BYTES = 4000

_live: set["Process"] = set()
_START_ATTEMPTS = 3  # a free port can be taken between free_port() and the bind: retry elsewhere
T = TypeVar("T")


class StartError(RuntimeError):
    """A binary did not become ready; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_binary(name: str) -> str:
    """The path of binary ``name``; fails the test in CI (``CI=true``), skips it elsewhere."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if path:
        return path
    message = f"{name} is not installed (apt-get install prometheus prometheus-alertmanager prometheus-node-exporter)"
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError("unreachable")  # pytest.skip raises


def wait_for(predicate: Callable[[], T], *, deadline_s: float = 15.0, poll_s: float = 0.1,
             what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {deadline_s}s")
        time.sleep(poll_s)


class Process:
    """A started binary listening on ``127.0.0.1:port``; restartable on the same port and data."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        workdir: Path,
        ready_path: str,
        *,
        config_path: Path | None = None,
        tsdb_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.config_path = config_path
        self.tsdb_dir = tsdb_dir
        self.argv = list(argv)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.workdir = Path(workdir)
        self.ready_path = ready_path
        self.log_path = self.workdir / f"{name}.log"
        self._popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"Process({self.name!r}, url={self.url!r}, running={self.running})"

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def start(self) -> None:
        """(Re)start on the same port and data directory and wait until it answers ready."""
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- start {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir
            )
        _live.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM, wait up to ``STOP_DEADLINE_S``, then SIGKILL. Safe to call twice."""
        popen, self._popen = self._popen, None
        _live.discard(self)
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=STOP_DEADLINE_S)

    def reload(self) -> None:
        """POST ``/-/reload`` (Prometheus and Alertmanager) and wait until ready again."""
        if self.name == NODE_EXPORTER:
            raise NotImplementedError("node_exporter has no reload endpoint")
        request = urllib.request.Request(self.url + "/-/reload", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            if response.status != 200:
                raise RuntimeError(f"{self.name} reload answered {response.status}")
        self._wait_ready()

    def get_json(self, path: str, **params: Any) -> Any:
        """GET ``path`` with query parameters and decode the JSON body (any status)."""
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        try:
            with urllib.request.urlopen(self.url + path + query, timeout=HTTP_TIMEOUT_S) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            return json.load(error)

    def post_json(self, path: str, body: Any) -> tuple[int, Any]:
        """POST ``body`` as JSON to ``path``; (status, decoded JSON body or None if empty)."""
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        return status, (json.loads(raw) if raw.strip() else None)

    def log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-_LOG_TAIL_BYTES:].decode(errors="replace")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE_S
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self._popen is None or self._popen.poll() is not None:
                code = None if self._popen is None else self._popen.returncode
                raise StartError(f"{self.name} exited with {code} before ready; log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=1.0) as response:
                    if response.status == 200:
                        return
                    last_error = f"status {response.status}"
            except (urllib.error.URLError, OSError) as error:
                last_error = str(error)
            time.sleep(_POLL_S)
        raise StartError(
            f"{self.name} not ready on {self.url}{self.ready_path} within {READY_DEADLINE_S}s "
            f"({last_error}); log tail:\n{self.log_tail()}"
        )


@atexit.register
def _stop_all() -> None:
    for process in list(_live):
        try:
            process.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _start_on_a_free_port(make: Callable[[int], Process]) -> Process:
    """Build the process for a free port and start it, moving to another port if the bind lost a race."""
    for attempt in range(_START_ATTEMPTS):
        process = make(free_port())
        try:
            process.start()
            return process
        except StartError:
            if attempt + 1 == _START_ATTEMPTS or "address already in use" not in process.log_tail():
                raise
    raise AssertionError("unreachable")


def _duration(duration_s: float) -> str:
    """A Prometheus duration string for a float number of seconds (``1`` -> ``"1000ms"``)."""
    return f"{max(1, int(round(duration_s * 1000)))}ms"


def backfill(openmetrics_text: str, tsdb_dir: Path, *, max_block_duration: str = "24h") -> None:
    """Turn OpenMetrics text into TSDB blocks inside ``tsdb_dir`` (do this before Prometheus starts).

    Blocks are at most ``max_block_duration`` long (promtool's default of 2h makes ~84 blocks for a
    week). Raises RuntimeError with promtool's output when it refuses the input.
    """
    promtool = require_binary(PROMTOOL)
    tsdb_dir = Path(tsdb_dir)
    tsdb_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vigil-backfill-") as scratch:
        source = Path(scratch) / "data.om"
        source.write_text(openmetrics_text)
        blocks = Path(scratch) / "blocks"
        result = subprocess.run(
            [promtool, "tsdb", "create-blocks-from", "openmetrics", "--quiet",
             f"--max-block-duration={max_block_duration}", str(source), str(blocks)],
            capture_output=True, text=True, timeout=PROMTOOL_DEADLINE_S,
        )
        if result.returncode != 0:
            raise RuntimeError(f"promtool refused the backfill ({result.returncode}): {result.stderr[-2000:]}")
        for block in sorted(blocks.iterdir()):
            shutil.move(str(block), str(tsdb_dir / block.name))


def _scrape_configs(targets: Iterable[str | tuple[str, str]], scrape_interval_s: float) -> list[dict[str, Any]]:
    jobs: dict[str, list[str]] = {}
    for target in targets:
        job, address = ("static", target) if isinstance(target, str) else target
        jobs.setdefault(job, []).append(address)
    return [
        {"job_name": job, "scrape_interval": _duration(scrape_interval_s),
         "scrape_timeout": _duration(min(scrape_interval_s, 10.0)),
         "static_configs": [{"targets": addresses}]}
        for job, addresses in jobs.items()
    ]


def start_prometheus(
    tmp_path: Path,
    *,
    openmetrics: str | None = None,
    scrape_targets: Sequence[str | tuple[str, str]] = (),
    scrape_interval_s: float = 1,
    extra_config: dict[str, Any] | None = None,
    rule_files: Sequence[str] = (),
) -> Process:
    """Start Prometheus (lifecycle and admin APIs on) in a fresh directory under ``tmp_path``.

    ``openmetrics`` is backfilled before start: its samples must lie in the past and within the
    30-day retention set here. ``extra_config`` is merged into the top level of prometheus.yml;
    its ``scrape_configs`` are appended to the generated ones.
    """
    binary = require_binary(PROMETHEUS)
    workdir = Path(tempfile.mkdtemp(prefix="prometheus-", dir=tmp_path))
    tsdb_dir = workdir / "data"
    if openmetrics is not None:
        backfill(openmetrics, tsdb_dir)
    config: dict[str, Any] = {
        "global": {"scrape_interval": _duration(scrape_interval_s), "evaluation_interval": _duration(scrape_interval_s)},
        "scrape_configs": _scrape_configs(scrape_targets, scrape_interval_s),
    }
    if rule_files:
        config["rule_files"] = [str(Path(f).resolve()) for f in rule_files]
    for key, value in (extra_config or {}).items():
        if key == "scrape_configs":
            config["scrape_configs"] = config["scrape_configs"] + list(value)
        else:
            config[key] = value
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return _start_on_a_free_port(lambda port: Process(
        PROMETHEUS,
        [binary, f"--config.file={config_path}", f"--storage.tsdb.path={tsdb_dir}",
         f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle", "--web.enable-admin-api",
         "--storage.tsdb.retention.time=30d", "--log.level=info"],
        port, workdir, "/-/ready", config_path=config_path, tsdb_dir=tsdb_dir,
    ))


def start_alertmanager(tmp_path: Path, config_yaml: str) -> Process:
    """Start Alertmanager with ``config_yaml`` in a fresh directory under ``tmp_path``; no clustering."""
    binary = require_binary(ALERTMANAGER)
    workdir = Path(tempfile.mkdtemp(prefix="alertmanager-", dir=tmp_path))
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(config_yaml)
    return _start_on_a_free_port(lambda port: Process(
        ALERTMANAGER,
        [binary, f"--config.file={config_path}", f"--storage.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=info"],
        port, workdir, "/-/ready", config_path=config_path,
    ))


def start_node_exporter(tmp_path: Path | None = None) -> Process:
    """Start node_exporter (systemd collector off); logs go to a temporary directory if none given."""
    binary = require_binary(NODE_EXPORTER)
    workdir = Path(tempfile.mkdtemp(prefix="node-exporter-", dir=tmp_path))
    return _start_on_a_free_port(lambda port: Process(
        NODE_EXPORTER,
        [binary, f"--web.listen-address=127.0.0.1:{port}", "--no-collector.systemd"],
        port, workdir, "/metrics",
    ))


@contextlib.contextmanager
def running_serve(tmp_path: Path, config_yaml: str, prometheus_url: str,
                  env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """``vigil serve`` as it ships (gunicorn) on a free loopback port, with ``config_yaml``;
    yields ``(url, process, log path)`` once ``/healthz`` answers, and stops it after."""
    import requests

    port = free_port()
    config = tmp_path / "vigil.yaml"
    config.write_text(config_yaml)
    log_path = tmp_path / "serve.log"
    environment = {**os.environ, **(env or {})}
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vigil.cli", "serve", "--config", str(config), "--host", "127.0.0.1",
             "--port", str(port), "--prometheus-url", prometheus_url],
            stdout=log, stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            if proc.poll() is not None:
                pytest.fail(log_path.read_text())
            return False

    try:
        wait_for(up, deadline_s=30)
        yield url, proc, log_path
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
