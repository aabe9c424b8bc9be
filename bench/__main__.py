"""``python -m bench [NAME ...] [-- ARGS]``: run every benchmark module (one with a ``main()``), or the named ones.

Modules are discovered, not listed: drop ``bench/<name>.py`` with ``main(argv=None) -> int`` in
and ``python -m bench <name>`` runs it. Arguments after the names go to a single named benchmark.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

#: the order ``python -m bench`` runs them in; anything else discovered runs after these
_FIRST = ("realdata", "quality", "speed")
#: run only when named (``make fuzz``): not a benchmark table but a robustness campaign
_ONLY_WHEN_NAMED = ("fuzz",)


def discover() -> dict[str, object]:
    found = {}
    here = Path(__file__).parent
    for info in pkgutil.iter_modules([str(here)]):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if callable(getattr(module, "main", None)):
            found[info.name] = module
    order = [n for n in _FIRST if n in found] + sorted(n for n in found if n not in _FIRST)
    return {n: found[n] for n in order}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nbenchmarks: " + ", ".join(discover()))
        return 0
    modules = discover()
    names = []
    while argv and not argv[0].startswith("-"):
        names.append(argv.pop(0))
    if argv and argv[0] == "--":
        argv.pop(0)
    unknown = [n for n in names if n not in modules]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(modules)}", file=sys.stderr)
        return 2
    if argv and len(names) != 1:
        print("options can be given to one named benchmark only, e.g. python -m bench quality --seeds 1", file=sys.stderr)
        return 2
    status = 0
    for name in names or [n for n in modules if n not in _ONLY_WHEN_NAMED]:
        print(f"== {name} ==", flush=True)
        status = max(status, int(modules[name].main(argv) or 0))
    return status


if __name__ == "__main__":
    sys.exit(main())
