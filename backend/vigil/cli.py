"""The ``vigil`` command: one sub-command per component, each defined in its own module.

A command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this file only
lists them, so that ``vigil --help`` is the table of contents and importing one command does not
import the others (the worker never loads Flask, ``detect`` never loads gunicorn).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType
from typing import Sequence

from vigil import __version__

__all__ = ["main", "COMMANDS"]

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("vigil.http.serve", "run the Grafana datasource service under gunicorn"),
    "worker": ("vigil.worker.runner", "watch the configured jobs: audit, Grafana annotations, Alertmanager alerts"),
    "check-config": ("vigil.check", "report every problem in a configuration file"),
    "detect": ("vigil.pipeline.replay", "score CSV files offline, exactly as the worker would have (a backtest)"),
    "audit": ("vigil.store.audit_cli", "list the recorded anomaly episodes and their deliveries"),
    "ml-sync": ("vigil.worker.grafana_ml", "create or update Grafana Machine Learning forecast jobs for the configured queries"),
    "demo-workload": ("vigil_dev.demo", "serve demo metrics with anomalies injected on a schedule"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser for ``argv`` (the arguments after the program name): only the named command is imported."""
    parser = argparse.ArgumentParser(prog="vigil", description="Anomaly detection for Prometheus and Loki, for Grafana.")
    parser.add_argument("--version", action="version", version=f"vigil {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        # Import only the command being run (and all of them for --help).
        if name in argv or not argv or argv[0] in ("-h", "--help"):
            module = _load(module_name)
            if module is not None:
                module.add_arguments(command)
                command.set_defaults(_run=module.run)
    return parser


def _load(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; ``argv`` defaults to ``sys.argv[1:]`` (read, never rewritten)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        parser.error(f"'{args.command}' is not available in this installation")
    try:
        status = int(run(args) or 0)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (`vigil audit | head`): what it wanted was printed. Exit quietly, and
        # point stdout at /dev/null so that the interpreter's final flush does not complain.
        _silence_stdout()
        return 0
    return status


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test's captured stdout)
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
