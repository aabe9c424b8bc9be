"""Grafana provisioning of the bundle: documented shapes, fixed UIDs, secrets from the environment,
and the ``$`` escaping Grafana's provisioning expects (PROTOCOLS.md sections 3 and 4).

Grafana cannot run here, so ``expand`` below re-implements the one expansion rule that matters
(``$$`` is a literal ``$``; ``$__env{X}``, ``$X`` and ``${X}`` are replaced) to show what Grafana
will actually store for each field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROVISIONING = ROOT / "grafana" / "provisioning"
ALERTING = ROOT / "alerting" / "grafana"
DASHBOARDS = ROOT / "dashboards"

SECRETS = {"TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID", "SLACK_WEBHOOK_URL", "ALERT_EMAIL_TO", "VIGIL_SERVER_TOKEN"}
_ENV_REF = re.compile(r"\$__env\{([A-Za-z0-9_]+)\}|\$\{([A-Za-z0-9_]+)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def expand(value: str, environ: dict[str, str]) -> str:
    """Grafana's provisioning interpolation: split on ``$$``, expand each part, join with ``$``."""
    def one(part: str) -> str:
        return _ENV_REF.sub(lambda m: environ.get(next(g for g in m.groups() if g), ""), part)
    return "$".join(one(p) for p in value.split("$$"))


def env_refs(value: str) -> set[str]:
    return {next(g for g in m.groups() if g) for part in value.split("$$") for m in _ENV_REF.finditer(part)}


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert data["apiVersion"] == 1, path
    return data


def alerting_files() -> dict[str, dict[str, Any]]:
    return {p.name: load(p) for p in sorted(ALERTING.glob("*.yaml"))}


def rules() -> list[dict[str, Any]]:
    return [r for g in alerting_files()["rules.yaml"]["groups"] for r in g["rules"]]


# --- datasources and dashboards provider ------------------------------------------------------


def datasources() -> dict[str, dict[str, Any]]:
    out = {}
    for path in (PROVISIONING / "datasources").glob("*.yaml"):
        for ds in load(path)["datasources"]:
            out[ds["uid"]] = ds
    return out


def test_datasources_have_fixed_uids_and_the_documented_shape():
    ds = datasources()
    assert set(ds) == {"prometheus", "loki", "alertmanager", "vigil-prometheus", "vigil-infinity"}
    for uid, item in ds.items():
        assert {"name", "type", "uid", "access", "url"} <= set(item), uid
        assert item["access"] == "proxy"
        assert re.match(r"^https?://[^/\s]+", item["url"])
    assert ds["alertmanager"]["type"] == "alertmanager"
    assert ds["alertmanager"]["jsonData"]["implementation"] == "prometheus"
    assert sum(bool(i.get("isDefault")) for i in ds.values()) == 1


def test_vigil_is_a_builtin_prometheus_datasource_on_its_prometheus_api():
    """The plugin-free path: Grafana's own Prometheus datasource, bearer token from the environment."""
    vigil = datasources()["vigil-prometheus"]
    assert vigil["type"] == "prometheus"
    assert vigil["url"].endswith("/prometheus")
    assert vigil["jsonData"]["httpMethod"] == "POST"
    assert vigil["jsonData"]["httpHeaderName1"] == "Authorization"
    assert expand(vigil["secureJsonData"]["httpHeaderValue1"], {"VIGIL_SERVER_TOKEN": "s3cret"}) == "Bearer s3cret"
    assert vigil["jsonData"]["timeout"] >= 30
    assert vigil["jsonData"]["manageAlerts"] is False, "Vigil serves no ruler API"


def test_simpod_datasource_is_legacy_and_opt_in():
    (vigil,) = load(ROOT / "grafana" / "optional" / "datasources" / "vigil-simpod.yaml")["datasources"]
    assert vigil["type"] == "simpod-json-datasource"
    assert vigil["url"].endswith("/json")
    assert vigil["jsonData"]["httpHeaderName1"] == "Authorization"
    header = vigil["secureJsonData"]["httpHeaderValue1"]
    assert expand(header, {"VIGIL_SERVER_TOKEN": "s3cret"}) == "Bearer s3cret"
    assert vigil["jsonData"]["timeout"] >= 30


def test_infinity_datasource_uses_bearer_auth_and_allows_only_the_service():
    infinity = datasources()["vigil-infinity"]
    assert infinity["type"] == "yesoreyeram-infinity-datasource"
    assert infinity["jsonData"]["auth_method"] == "bearerToken"
    assert expand(infinity["secureJsonData"]["bearerToken"], {"VIGIL_SERVER_TOKEN": "s3cret"}) == "s3cret"
    assert infinity["jsonData"]["allowedHosts"] == [infinity["url"]]
    assert infinity["url"].split("/")[2] == datasources()["vigil-prometheus"]["url"].split("/")[2]


def test_no_secret_is_written_in_provisioning():
    """Every expanded value names only the documented variables (templates, rule annotations and
    query models are not expanded and are checked in test_dollar_escaping_survives_provisioning)."""
    expanded = [(p.name, load(p)) for p in PROVISIONING.rglob("*.yaml")]
    expanded += [(name, data) for name, data in alerting_files().items() if name in ("contact-points.yaml", "policies.yaml")]
    expanded += [("rules.yaml", rule["labels"]) for rule in rules()]
    for name, data in expanded:
        for value in strings(data):
            for ref in env_refs(value):
                assert ref in SECRETS, f"{name}: unexpected variable {ref} in {value!r}"
    contact = alerting_files()["contact-points.yaml"]
    for cp in contact["contactPoints"]:
        for receiver in cp["receivers"]:
            for key in ("bottoken", "url", "addresses", "chatid"):
                if key in receiver["settings"]:
                    assert env_refs(receiver["settings"][key]), f"{receiver['uid']}.{key} must come from the environment"


def test_dashboards_provider_loads_the_dashboards_folder():
    (provider,) = load(PROVISIONING / "dashboards" / "vigil.yaml")["providers"]
    assert provider["type"] == "file" and provider["folder"] == "Vigil"
    assert provider["options"]["path"].startswith("/")
    # The alert rules' folder is found by title, so both provisioners share one folder whichever runs first.
    assert "folderUid" not in provider
    assert {g["folder"] for g in alerting_files()["rules.yaml"]["groups"]} == {"Vigil"}


def test_grafana_ml_app_is_opt_in():
    """Grafana refuses to start when a provisioned app is not installed: the file is not active."""
    assert not (PROVISIONING / "plugins").exists() or not any(
        "grafana-ml-app" in p.read_text() for p in (PROVISIONING / "plugins").glob("*.yaml"))
    (app,) = load(ROOT / "grafana" / "optional" / "plugins" / "grafana-ml-app.yaml")["apps"]
    assert app["type"] == "grafana-ml-app" and app["org_id"] == 1


def test_alertmanager_configuration_is_not_in_grafanas_alerting_directory():
    """Grafana loads every YAML file in its alerting directory: Alertmanager's config must not be there."""
    for name, data in alerting_files().items():
        assert set(data) - {"apiVersion"} <= {"groups", "contactPoints", "policies", "templates",
                                               "muteTimes", "deleteRules"}, name
        assert "route" not in data and "receivers" not in data, name


# --- alert rules ------------------------------------------------------------------------------


def test_rules_have_the_documented_shape():
    seen = set()
    provisioned = set(datasources())
    for group in alerting_files()["rules.yaml"]["groups"]:
        assert {"orgId", "name", "folder", "interval", "rules"} <= set(group)
        for rule in group["rules"]:
            assert rule["uid"] not in seen and len(rule["uid"]) <= 40
            seen.add(rule["uid"])
            assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["title"]), "CamelCase alert names"
            assert rule["noDataState"] in ("NoData", "Alerting", "OK", "KeepLast")
            assert rule["execErrState"] in ("Error", "Alerting", "OK", "KeepLast")
            assert re.fullmatch(r"\d+[smh]", rule["for"])
            refs = {d["refId"]: d for d in rule["data"]}
            assert rule["condition"] in refs
            for item in rule["data"]:
                assert item["refId"] == item["model"]["refId"]
                if item["datasourceUid"] == "__expr__":
                    model = item["model"]
                    assert model["type"] in ("reduce", "threshold", "math")
                    assert model["expression"] in refs, f"{rule['uid']}: {model['expression']}"
                else:
                    assert item["datasourceUid"] in provisioned
                    assert item["datasourceUid"] != "vigil-json", "simPod is frontend-only: it cannot feed rules"
                    assert item["relativeTimeRange"]["from"] > 0
            assert refs[rule["condition"]]["model"]["type"] == "threshold"
            assert rule["labels"]["severity"] and rule["annotations"]["summary"]
    assert len(seen) >= 2


def test_anomaly_rules_read_vigil_through_its_prometheus_api_and_one_reads_the_worker_score():
    anomaly_rules = [r for r in rules() if any(d["datasourceUid"] == "vigil-prometheus" for d in r["data"])]
    assert len(anomaly_rules) >= 2
    for rule in anomaly_rules:
        assert not any(d["datasourceUid"] == "vigil-infinity" for d in rule["data"]), "no plugin in alert rules"
        for item in rule["data"]:
            if item["datasourceUid"] != "vigil-prometheus":
                continue
            model = item["model"]
            assert model["datasource"] == {"type": "prometheus", "uid": "vigil-prometheus"}
            assert model["instant"] is True and model["range"] is False, "the newest point of each series"
        condition = next(d for d in rule["data"] if d["refId"] == rule["condition"])["model"]
        reduced = next(d for d in rule["data"] if d["refId"] == condition["expression"])["model"]
        source = next(d for d in rule["data"] if d["refId"] == reduced["expression"])["model"]
        assert source["expr"].startswith("is_anomaly("), "fire on the episode flag (hysteresis)"
        assert rule["for"] != "0s"
    prometheus_rules = [r for r in rules() if any("vigil_anomaly_score" in d["model"].get("expr", "") for d in r["data"])]
    assert prometheus_rules


def test_rule_messages_explain_the_anomaly():
    for rule in rules():
        if not any(d["datasourceUid"] == "vigil-prometheus" for d in rule["data"]):
            continue
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        for ref in ("VALUE", "EXPECTED", "SCORE"):
            assert f"$values.{ref}.Value" in text
            assert ref in {d["refId"] for d in rule["data"]}
        assert "$labels.instance" in text
        assert rule["dashboardUid"] and rule["panelId"], "a link to the panel"


def test_rule_links_point_at_real_panels():
    panels = {}
    for path in DASHBOARDS.glob("*.json"):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            panels.setdefault(dashboard["uid"], {})[panel["id"]] = panel
    for rule in rules():
        assert rule["panelId"] in panels[rule["dashboardUid"]], rule["uid"]


def test_dollar_escaping_survives_provisioning():
    """Labels are expanded ($$ needed); annotations and query models are not; templates are plain text."""
    environ = {"labels": "", "values": ""}  # what an unescaped $labels would silently become
    for rule in rules():
        for value in rule["labels"].values():
            stored = expand(value, environ)
            assert "$$" not in stored
            if "{{" in value:
                assert "$labels" in stored or "$" not in value, value
            assert not env_refs(value), f"label {value!r} would lose a template variable"
        for value in rule["annotations"].values():
            assert "$$" not in value, "annotations are not expanded: $$ would stay doubled"
            assert "${" not in value, "newer Grafana expands ${...} in annotations"
        for item in rule["data"]:
            for value in strings(item["model"]):
                assert "$$" not in value
    sustained = next(r for r in rules() if r["uid"] == "vigil-anomaly-sustained")
    assert expand(sustained["labels"]["severity"], environ).count("$labels.severity") == 2
    for template in alerting_files()["templates.yaml"]["templates"]:
        assert "$$" not in template["template"]
    for cp in alerting_files()["contact-points.yaml"]["contactPoints"]:
        for receiver in cp["receivers"]:
            for value in strings(receiver["settings"]):
                assert env_refs(value) <= SECRETS, f"{receiver['uid']}: {value!r} would be expanded"


# --- contact points, policy, templates --------------------------------------------------------


def test_contact_points_cover_telegram_slack_and_email():
    receivers = {r["type"]: (cp["name"], r) for cp in alerting_files()["contact-points.yaml"]["contactPoints"]
                 for r in cp["receivers"]}
    assert set(receivers) == {"telegram", "slack", "email"}
    telegram = receivers["telegram"][1]["settings"]
    assert isinstance(telegram["chatid"], str)
    assert expand(telegram["bottoken"], {"TELEGRAM_BOT_TOKEN": "123:abc"}) == "123:abc"
    assert receivers["slack"][0] == receivers["email"][0], "the rest goes to Slack and email together"
    uids = [r["uid"] for cp in alerting_files()["contact-points.yaml"]["contactPoints"] for r in cp["receivers"]]
    assert len(uids) == len(set(uids))


def test_policy_routes_critical_to_telegram_and_the_rest_to_slack_and_email():
    (policy,) = alerting_files()["policies.yaml"]["policies"]
    names = {cp["name"]: {r["type"] for r in cp["receivers"]}
             for cp in alerting_files()["contact-points.yaml"]["contactPoints"]}

    def route(labels: dict[str, str]) -> str:
        for child in policy["routes"]:
            if all(_matches(labels, m) for m in child["object_matchers"]):
                return child["receiver"]
        return policy["receiver"]

    assert names[route({"severity": "critical", "alertname": "VigilAnomalySustained"})] == {"telegram"}
    assert names[route({"severity": "warning"})] == {"slack", "email"}
    assert names[route({"severity": "info"})] == {"slack", "email"}
    assert names[route({})] == {"slack", "email"}
    for receiver in [policy["receiver"], *(r["receiver"] for r in policy["routes"])]:
        assert receiver in names


def _matches(labels: dict[str, str], matcher: list[str]) -> bool:
    name, op, value = matcher
    actual = labels.get(name, "")
    return {"=": actual == value, "!=": actual != value,
            "=~": re.fullmatch(value, actual) is not None, "!~": re.fullmatch(value, actual) is None}[op]


def test_templates_define_what_the_contact_points_use():
    (template,) = alerting_files()["templates.yaml"]["templates"]
    defined = set(re.findall(r'define "([^"]+)"', template["template"]))
    used = set()
    for cp in alerting_files()["contact-points.yaml"]["contactPoints"]:
        for receiver in cp["receivers"]:
            for value in strings(receiver["settings"]):
                used |= set(re.findall(r'template "([^"]+)"', value))
    assert used and used <= defined
    body = template["template"]
    assert body.count("{{") == body.count("}}")
    assert ".PanelURL" in body and ".Annotations.description" in body and ".Labels.series" in body
