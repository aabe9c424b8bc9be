"""The ``vigil`` command itself: version, arguments, and ``$VIGIL_CONFIG`` for every command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import vigil
from vigil.cli import main


def vigil_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "vigil.cli", *args], capture_output=True, text=True, env=full_env,
                          timeout=120)


def test_version_is_printed(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"vigil {vigil.__version__}"


def test_main_leaves_sys_argv_alone(tmp_path, capsys):
    before = list(sys.argv)
    config = tmp_path / "vigil.yaml"
    config.write_text("server:\n  port: 9000\n")
    assert main(["check-config", str(config)]) == 0
    assert sys.argv == before


def test_worker_reads_the_file_named_by_vigil_config(tmp_path):
    config = tmp_path / "from-env.yaml"
    config.write_text("prometheus:\n  url: http://127.0.0.1:1\n")
    done = vigil_cli("worker", "--once", env={"VIGIL_CONFIG": str(config)})
    assert done.returncode == 2
    assert f"{config}: jobs: must list at least one job" in done.stderr


def test_worker_without_any_configuration_says_how_to_give_one():
    done = vigil_cli("worker", "--once")
    assert done.returncode == 2
    assert "--config or $VIGIL_CONFIG" in done.stderr


def test_audit_reads_the_file_named_by_vigil_config(tmp_path):
    store = tmp_path / "named-in-config.db"
    config = tmp_path / "from-env.yaml"
    config.write_text(f"audit:\n  path: {store}\n")
    done = vigil_cli("audit", env={"VIGIL_CONFIG": str(config)})
    assert done.returncode == 0
    assert f"{store}: no audit store yet" in done.stderr
