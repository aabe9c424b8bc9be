"""The documentation a user copies from: its configuration examples load, and name real things."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from vigil.config import check_config
from vigil.sources.presets import PRESETS

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_BARE_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def _config_examples() -> list[tuple[str, str]]:
    """Every ```yaml block with a top-level ``jobs:`` key, as (doc:line, text)."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in re.finditer(r"```yaml\n(.*?)```", text, flags=re.S):
            block = match.group(1)
            if re.search(r"^jobs:", block, flags=re.M):
                found.append((f"{doc.name}:{text[:match.start()].count(chr(10)) + 1}", block))
    return found


EXAMPLES = _config_examples()


def test_the_docs_have_configuration_examples():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("where, block", EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_configuration_examples_load_and_their_bare_queries_are_presets(where, block, tmp_path):
    path = tmp_path / "example.yaml"
    path.write_text(block)
    secrets = {name: "x" for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", block)}
    problems = [p for p in check_config(path, environ=secrets) if "readable file" not in p]
    assert problems == [], where
    for job in yaml.safe_load(block)["jobs"]:
        query = job["query"].strip()
        if _BARE_NAME.match(query):
            # A bare name that is not a preset is a metric a user would have to have: node_cpu is not one.
            assert query in PRESETS, f"{where}: job {job['name']} uses {query!r}, which is not a preset"
