"""The package type-checks: mypy, configured in pyproject.toml ([tool.mypy]), finds no error."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_finds_no_errors_in_the_package():
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "pyproject.toml", "backend/vigil", "backend/vigil_dev"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
