"""Dashboards: Grafana's own dashboard types accept them, and they keep the bundle's conventions.

The schema is generated from the pinned ``@grafana/schema`` package (tests/schema/generate.sh) and
checked with the real ``check-jsonschema``. In CI (``CI=true``) a missing npm install or tool is a
failure, never a skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
SCHEMA_DIR = ROOT / "tests" / "schema"
VENV_BIN = Path(sys.executable).parent
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources"

#: Grafana's own pseudo-datasources, always present.
BUILTIN_UIDS = {"-- Grafana --", "-- Mixed --", "-- Dashboard --", "grafana", "__expr__"}


def _missing(what: str) -> None:
    message = f"{what} (run scripts/install-os-deps.sh)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _build_module():
    spec = importlib.util.spec_from_file_location("build_dashboards", ROOT / "grafana" / "build_dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def provisioned_datasources() -> dict[str, str]:
    """uid -> type of every provisioned datasource."""
    out = {}
    for path in DATASOURCES.glob("*.yaml"):
        for ds in yaml.safe_load(path.read_text())["datasources"]:
            out[ds["uid"]] = ds["type"]
    return out


def datasource_refs(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "datasource":
                yield item
            else:
                yield from datasource_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from datasource_refs(item)


def test_there_are_the_four_dashboards():
    uids = {_load(p)["uid"] for p in DASHBOARDS}
    assert uids == {"vigil-overview", "vigil-node", "vigil-k8s", "vigil-self"}


def test_committed_json_is_what_the_generator_writes():
    rendered = _build_module().render()
    committed = {p.name: p.read_text(encoding="utf-8") for p in DASHBOARDS}
    assert committed == rendered, "dashboards/*.json drifted: run python grafana/build_dashboards.py"


@pytest.fixture(scope="module")
def dashboard_schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The JSON Schema freshly generated from the installed, pinned @grafana/schema."""
    if not (SCHEMA_DIR / "node_modules" / ".bin" / "ts-json-schema-generator").exists():
        _missing("npm packages in tests/schema are not installed")
    if shutil.which("node") is None:
        _missing("node is not installed")
    out = tmp_path_factory.mktemp("schema")
    result = subprocess.run(["bash", str(SCHEMA_DIR / "generate.sh"), str(out)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return out / "dashboard.schema.json"


def test_installed_grafana_schema_is_the_pinned_one():
    lock = json.loads((SCHEMA_DIR / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/@grafana/schema"]["version"]
    assert json.loads((SCHEMA_DIR / "package.json").read_text())["devDependencies"]["@grafana/schema"] == pinned
    installed = SCHEMA_DIR / "node_modules" / "@grafana" / "schema" / "package.json"
    if not installed.exists():
        _missing("npm packages in tests/schema are not installed")
    assert json.loads(installed.read_text())["version"] == pinned


def test_committed_schema_matches_the_pinned_packages(dashboard_schema: Path):
    assert json.loads(dashboard_schema.read_text()) == json.loads((SCHEMA_DIR / "dashboard.schema.json").read_text())


def test_every_dashboard_validates_against_grafanas_types(dashboard_schema: Path):
    checker = VENV_BIN / "check-jsonschema"
    if not checker.exists():
        _missing("check-jsonschema is not installed in the venv")
    result = subprocess.run([str(checker), "--schemafile", str(dashboard_schema), *map(str, DASHBOARDS)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_dashboard(dashboard_schema: Path, tmp_path: Path):
    """The check has teeth: a wrongly typed field fails it."""
    broken = _load(DASHBOARDS[0])
    broken["panels"][0]["gridPos"]["w"] = "wide"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    result = subprocess.run([str(VENV_BIN / "check-jsonschema"), "--schemafile", str(dashboard_schema), str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_conventions(path: Path):
    dashboard = _load(path)
    text = path.read_text()
    assert re.fullmatch(r"vigil-[a-z0-9-]+", dashboard["uid"])
    assert "id" not in dashboard, "a provisioned dashboard carries no instance-specific id"
    assert not re.search(r"https?://", text), "no hosts in dashboards"
    assert "localhost" not in text and "$__env" not in text and "${VIGIL" not in text
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in all_panels(dashboard):
        if panel["type"] in ("row", "text", "alertlist"):
            continue
        assert panel.get("targets"), panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_datasource_is_a_provisioned_uid(path: Path):
    provisioned = provisioned_datasources()
    for ref in datasource_refs(_load(path)):
        assert isinstance(ref, dict) and set(ref) == {"type", "uid"}, f"datasource as {{type, uid}}: {ref!r}"
        if ref["uid"] in BUILTIN_UIDS:
            continue
        assert ref["uid"] in provisioned, f"{ref['uid']} is not provisioned"
        assert provisioned[ref["uid"]] == ref["type"], ref


def _panel(uid: str, panel_id: int) -> dict[str, Any]:
    dashboard = next(_load(p) for p in DASHBOARDS if _load(p)["uid"] == uid)
    return next(p for p in all_panels(dashboard) if p["id"] == panel_id)


def _override(panel: dict[str, Any], pattern: str) -> dict[str, Any]:
    for o in panel["fieldConfig"]["overrides"]:
        if o["matcher"]["options"] == pattern:
            return {p["id"]: p["value"] for p in o["properties"]}
    raise AssertionError(f"no override for {pattern} in {panel['title']}")


@pytest.mark.parametrize("panel_id, legend", [(2, "CPU"), (3, "Memory")])
def test_node_panels_draw_band_points_and_units(panel_id: int, legend: str):
    """The looks that matter without hand-tuning: band fill, red points, ratio units; no plugin."""
    panel = _panel("vigil-node", panel_id)
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
    targets = {t["legendFormat"]: t for t in panel["targets"]}
    # fillBelowTo needs the exact display name of the lower edge: "<legend> expected low".
    assert set(targets) == {legend, f"{legend} expected", f"{legend} expected low", f"{legend} expected high",
                            f"{legend} anomaly"}
    functions = {name: t["expr"].split("(", 1)[0] for name, t in targets.items()}
    assert functions[f"{legend} expected low"] == "yhat_lower" and functions[f"{legend} expected high"] == "yhat_upper"
    assert functions[f"{legend} expected"] == "yhat" and functions[f"{legend} anomaly"] == "anomalies"
    inner = targets[legend]["expr"]  # the value itself: plain PromQL, passed through to Prometheus
    for name, target in targets.items():
        assert target["datasource"] == {"type": "prometheus", "uid": "vigil-prometheus"}
        if name != legend:
            assert target["expr"].startswith(f"{functions[name]}({inner}, ")
            assert '"model=$model"' in target["expr"] and '"sensitivity=$sensitivity"' in target["expr"]
    high = _override(panel, "/ expected high$/")
    assert high["custom.fillBelowTo"] == f"{legend} expected low"
    assert high["custom.fillOpacity"] > 0
    assert re.search(panel["fieldConfig"]["overrides"][0]["matcher"]["options"].strip("/"), f"{legend} expected")
    anomaly = _override(panel, "/ anomaly$/")
    assert anomaly["custom.drawStyle"] == "points" and anomaly["color"]["fixedColor"] == "red"
    assert not re.search("/ anomaly$/".strip("/"), f"{legend} anomaly score")
    assert panel["datasource"]["uid"] == "vigil-prometheus"


def test_no_dashboard_needs_a_frontend_only_or_abandoned_plugin():
    for path in DASHBOARDS:
        text = path.read_text()
        assert "simpod-json-datasource" not in text and "vigil-json" not in text, path.name


def test_score_panels_mark_the_threshold_at_one():
    for path in DASHBOARDS:
        for panel in all_panels(_load(path)):
            if panel["type"] != "timeseries" or "score" not in panel["title"].lower():
                continue
            defaults = panel["fieldConfig"]["defaults"]
            steps = defaults["thresholds"]["steps"]
            assert [s["value"] for s in steps[1:]] == [1.0], panel["title"]
            assert steps[-1]["color"] == "red"
            assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"
            assert defaults["min"] == 0


def test_node_dashboard_variable_and_annotations():
    dashboard = _load(next(p for p in DASHBOARDS if p.name == "node-resources.json"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    instance = variables["instance"]
    assert instance["datasource"]["uid"] == "vigil-prometheus"
    assert instance["query"]["query"] == "label_values(node_uname_info, instance)"
    assert variables["model"]["query"].split(",") == ["auto", "seasonal", "iforest", "ocsvm"]
    annotations = dashboard["annotations"]["list"]
    worker = next(a for a in annotations if a["datasource"]["type"] == "grafana" and a["target"]["type"] == "tags")
    assert worker["target"]["tags"] == ["anomaly"] and worker["enable"]
    on_demand = [a for a in annotations if a["datasource"]["uid"] == "vigil-prometheus"]
    assert on_demand and all(a["target"]["expr"].startswith("is_anomaly(") for a in on_demand)
    assert all(a["step"] == "60s" and a["tagKeys"] == "instance" for a in on_demand)


def test_overview_has_alert_list_audit_and_fleet_timeline():
    dashboard = _load(next(p for p in DASHBOARDS if p.name == "anomaly-overview.json"))
    types = {p["type"] for p in all_panels(dashboard)}
    assert {"alertlist", "state-timeline", "stat", "table"} <= types
    audit = _panel("vigil-overview", 8)
    (target,) = audit["targets"]
    assert target["url"] == "/api/v1/audit" and target["parser"] == "backend"
    assert {c["selector"] for c in target["columns"]} >= {"start_ms", "series", "peak_score", "reason"}
    assert any(a["target"].get("tags") == ["anomaly"] for a in dashboard["annotations"]["list"])
