"""``vigil serve``: the datasource service under gunicorn, configured from the one ``Settings``.

Production settings: one threaded worker process by default (``gthread``: Grafana sends several
panel queries at once, identical ones share one fetch and one fit, and one process keeps one copy
of the models and scores; see docs/ARCHITECTURE.md), a worker timeout just above the request
budget, no recycling (the stores are bounded), JSON logs for gunicorn too, and Prometheus metrics summed across
worker processes (in a temporary directory removed on exit).

Errors gunicorn answers itself, before the app sees the request (request line over
``limit_request_line``: 414; too many or too large headers: 431; a malformed request line or
header, such as a NUL byte: 400), are JSON ``{error, message, trace_id}`` like every other error:
gunicorn has no hook for those bodies, so our worker class (:class:`JsonErrorWorker`) replaces the
one function that writes them, in its own process only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication

from vigil.config import ConfigError, Settings, config_path, load_settings
from vigil.http.app import create_app
from vigil.logs import configure_logging, gunicorn_logconfig
from vigil.http.telemetry import count_across_processes, multiprocess_dir

__all__ = ["add_arguments", "run", "gunicorn_options", "JsonErrorWorker", "LIMIT_REQUEST_LINE",
           "LIMIT_REQUEST_FIELDS", "LIMIT_REQUEST_FIELD_SIZE"]

#: gunicorn's own limits, checked before the app: the longest request line (URL) gunicorn allows
#: (8190 bytes: longer PromQL goes in a POST body), header count and header size.
LIMIT_REQUEST_LINE = 8190
LIMIT_REQUEST_FIELDS = 100
LIMIT_REQUEST_FIELD_SIZE = 8190


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML configuration (default: $VIGIL_CONFIG; VIGIL_* variables override it)")
    parser.add_argument("--prometheus-url", metavar="URL", help="Prometheus base URL (prometheus.url)")
    parser.add_argument("--host", help="address to listen on (server.host, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to listen on (server.port, default 8080)")
    parser.add_argument("--workers", type=int, help="gunicorn worker processes (server.workers)")
    parser.add_argument("--threads", type=int, help="threads per worker (server.threads)")
    parser.add_argument("--log-level", default=os.environ.get("VIGIL_LOG_LEVEL", "info"))


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, dict[str, Any]] = {}
    if args.prometheus_url:
        overrides["prometheus"] = {"url": args.prometheus_url}
    server = {k: getattr(args, k) for k in ("host", "port", "workers", "threads") if getattr(args, k) is not None}
    if server:
        overrides["server"] = server
    return load_settings(config_path(args.config), overrides=overrides)


def gunicorn_options(settings: Settings, log_level: str = "info") -> dict[str, Any]:
    server = settings.server
    return {
        "bind": f"{server.host}:{server.port}",
        "workers": server.workers,
        "worker_class": JsonErrorWorker,
        "limit_request_line": LIMIT_REQUEST_LINE,
        "limit_request_fields": LIMIT_REQUEST_FIELDS,
        "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
        "threads": server.threads,
        "timeout": int(server.request_timeout_s + 10),
        "graceful_timeout": 20,
        # Longer than a dashboard's refresh and most proxies' idle timeouts: a client reusing a
        # connection the server has just closed gets a connection error, not an answer.
        "keepalive": 75,
        # No recycling: the process's models and scores are what makes a refresh cheap, and their
        # memory is bounded by the stores' caps (detection.cache_max_mb), not by restarts.
        "max_requests": 0,
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None,
        "accesslog": None,  # the app logs every request as JSON, with its request id
        "errorlog": "-",
        "loglevel": log_level,
        "logconfig_dict": gunicorn_logconfig(log_level),
        "proc_name": "vigil-serve",
        "child_exit": _child_exit,
    }


def _child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    # Metrics are shared across gunicorn workers through files in this directory: chosen before
    # the app (and its metrics) is made in each worker.
    directory = multiprocess_dir()
    created_dir = None
    if directory is None:
        directory = created_dir = tempfile.mkdtemp(prefix="vigil-metrics-")
    count_across_processes(directory)
    master_pid = os.getpid()

    class VigilApplication(BaseApplication):
        def load_config(self) -> None:
            for key, value in gunicorn_options(settings, args.log_level).items():
                if value is not None:
                    self.cfg.set(key, value)

        def load(self):
            return create_app(settings)

    import logging

    logging.getLogger("vigil.serve").info("starting", extra={
        "bind": f"{settings.server.host}:{settings.server.port}", "prometheus": settings.prometheus.url,
        "workers": settings.server.workers, "threads": settings.server.threads,
        "auth": "bearer token" if settings.server.token else "none"})
    try:
        VigilApplication().run()
    finally:
        # gunicorn's workers leave through here too (SystemExit in the forked child): only the
        # master, which created the directory, removes it.
        if created_dir and os.getpid() == master_pid:
            shutil.rmtree(created_dir, ignore_errors=True)
    return 0


_GUNICORN_HINTS = {
    414: "the request line (URL) is longer than gunicorn's limit_request_line "
         f"({LIMIT_REQUEST_LINE} bytes): send a long query in a POST body",
    431: f"more than {LIMIT_REQUEST_FIELDS} headers or a header longer than {LIMIT_REQUEST_FIELD_SIZE} bytes",
}


def json_error_bytes(status: int, reason: str, detail: str) -> bytes:
    """A whole HTTP/1.1 error answer whose body is our JSON error shape."""
    detail = detail if len(detail) <= 200 else f"{detail[:200]}... ({len(detail)} characters)"
    message = _GUNICORN_HINTS.get(status) or f"the HTTP request is malformed: {detail or reason}"
    body = json.dumps({"error": reason.lower().replace(" ", "_") or "bad_request",
                       "message": f"{reason}: {message}", "trace_id": ""},
                      ensure_ascii=True).encode("ascii")
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    return head + body


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    from gunicorn import util

    util.write_nonblock(sock, json_error_bytes(int(status_int), str(reason), str(mesg)))


def _json_error_worker() -> type:
    from gunicorn import util
    from gunicorn.workers.gthread import ThreadWorker

    class JsonErrorWorker(ThreadWorker):
        """gunicorn's threaded worker whose own error answers (414, 431, 400) are JSON."""

        def init_process(self) -> None:
            util.write_error = _write_json_error  # this worker process only
            # Scoring threads are CPU-bound and hold the GIL; a probe's thread gets it back after
            # at most 1 ms instead of Python's default 5 ms, per hand-over.
            sys.setswitchinterval(0.001)
            super().init_process()

    return JsonErrorWorker


JsonErrorWorker = _json_error_worker()
