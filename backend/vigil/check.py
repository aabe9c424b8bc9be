"""``vigil check-config FILE...``: report every problem in configuration files; exit 1 if any."""

from __future__ import annotations

import argparse
import sys

from vigil.config import check_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="YAML configuration files")


def run(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        problems = check_config(path)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            failed = True
        else:
            print(f"{path}: ok")
    return 1 if failed else 0
