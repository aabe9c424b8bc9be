"""``vigil serve``: the datasource service under gunicorn, configured from the one ``Settings``.

Production settings: threaded workers (``gthread``: Grafana sends several panel queries at once,
and a query mostly waits on Prometheus), a worker timeout just above the request budget, worker
recycling to bound memory, JSON logs for gunicorn too, and Prometheus metrics summed across
worker processes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

from .config import ConfigError, Settings, config_path, load_settings
from .logs import configure_logging, gunicorn_logconfig

__all__ = ["add_arguments", "run", "gunicorn_options"]


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
        "worker_class": "gthread",
        "threads": server.threads,
        "timeout": int(server.request_timeout_s + 10),
        "graceful_timeout": 20,
        "keepalive": 5,
        "max_requests": 2000,
        "max_requests_jitter": 200,
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
    # Metrics are shared across gunicorn workers through files in this directory.
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="vigil-metrics-")

    from gunicorn.app.base import BaseApplication

    from .http.app import create_app

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
    VigilApplication().run()
    return 0
