"""The two commands a newcomer runs: ``make demo`` installs only what Vigil runs, ``make test`` the rest."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _plan(target: str, venv: Path) -> str:
    """What ``make`` would run on a fresh machine (a venv that does not exist yet), without running it."""
    done = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_installs_no_test_only_packages(tmp_path):
    plan = _plan("demo", tmp_path / "venv")
    assert "pip install -q -e .\n" in plan
    assert "[test]" not in plan
    assert "install-os-deps.sh --runtime" in plan


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_installs_the_test_extra(tmp_path):
    plan = _plan("test", tmp_path / "venv")
    assert "pip install -q -e '.[test]'" in plan
    assert "install-os-deps.sh\n" in plan
