"""Vigil's benchmarks: ``python -m bench`` runs them all, ``python -m bench quality|speed|...`` one.

A benchmark is a module in this package with a ``main(argv: list[str] | None = None) -> int``
that prints a table. Numbers in docs/detection.md come from these commands.
"""
