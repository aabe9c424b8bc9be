"""``vigil ml-sync``: the configured ``jobs[]`` as Grafana Machine Learning forecast jobs.

For teams on **Grafana Cloud** who prefer Grafana's no-code forecasts: each Vigil job becomes one
forecast job of the ``grafana-ml-app`` plugin, created or updated through the plugin's API
(PROTOCOLS.md section 8). The plugin only works on Grafana Cloud; on a self-managed Grafana use
Vigil's own service instead.

Idempotent: existing jobs are listed first (``GET .../manage/api/v1/jobs``), a job is matched by
its ``metric`` (``vigil_<job name>``), missing ones are created (``POST .../jobs``), changed ones
updated (``POST .../jobs/<id>``), identical ones left alone. Jobs that are not in the
configuration are only reported, or deleted with ``--prune`` when their metric starts with
``vigil_`` (never anyone else's).

Must not: score anything, or touch jobs it did not create.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import requests

from vigil.config import ConfigError, JobSettings, Settings, config_path, load_settings
from vigil.sources.presets import resolve

__all__ = ["API_PREFIX", "MlJobSpec", "SyncResult", "desired_jobs", "sync_jobs", "add_arguments", "run"]

API_PREFIX = "/api/plugins/grafana-ml-app/resources/manage/api/v1"
METRIC_PREFIX = "vigil_"
DEFAULT_ALGORITHM = "grafana_prophet_1_0_1"
#: The plugin's limit on training points per job (PROTOCOLS.md section 8).
MAX_TRAINING_POINTS = 50_000
MIN_INTERVAL_S = 60
MIN_TRAINING_FREQUENCY_S = 3600
#: The fields this command owns on a job; anything else the API returns is ignored when comparing.
MANAGED_FIELDS = ("name", "metric", "description", "grafanaUrl", "datasourceUid", "datasourceType",
                  "queryParams", "interval", "trainingWindow", "trainingFrequency", "algorithm",
                  "hyperParams", "customLabels")


class MlApiError(RuntimeError):
    """The plugin API answered with an error (status and message included)."""


@dataclass(frozen=True)
class MlJobSpec:
    """One forecast job as the plugin API takes it; ``notices`` explain adjustments made."""

    body: dict[str, Any]
    notices: tuple[str, ...] = ()

    @property
    def metric(self) -> str:
        return str(self.body["metric"])


@dataclass
class SyncResult:
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    deleted: list[str]
    unmanaged: list[str]
    notices: list[str]


def metric_name(job_name: str) -> str:
    """A Prometheus-valid metric name for a job: ``node-cpu`` -> ``vigil_node_cpu``."""
    return METRIC_PREFIX + re.sub(r"[^a-zA-Z0-9_]", "_", job_name)


def desired_jobs(settings: Settings, *, grafana_url: str, datasource_uids: Mapping[str, str],
                 algorithm: str = DEFAULT_ALGORITHM) -> list[MlJobSpec]:
    """The forecast job of every configured job, from the same settings the worker uses."""
    return [_spec(job, settings, grafana_url, datasource_uids, algorithm) for job in settings.jobs]


def _spec(job: JobSettings, settings: Settings, grafana_url: str, datasource_uids: Mapping[str, str],
          algorithm: str) -> MlJobSpec:
    expr, _preset = resolve(job.query)
    notices = []
    interval_s = max(MIN_INTERVAL_S, int(math.ceil(job.every_s)))
    window_s = int(job.train_window_s or settings.detection.train_window_s)
    if window_s / interval_s > MAX_TRAINING_POINTS:
        wider = int(math.ceil(window_s / MAX_TRAINING_POINTS))
        notices.append(f"{job.name}: interval raised from {interval_s}s to {wider}s to stay within "
                       f"{MAX_TRAINING_POINTS} training points")
        interval_s = wider
    frequency_s = max(MIN_TRAINING_FREQUENCY_S, int(settings.detection.refit_every_s))
    body = {
        "name": f"Vigil {job.name}",
        "metric": metric_name(job.name),
        "description": f"Managed by vigil ml-sync: forecast of Vigil job {job.name!r}. Edit Vigil's configuration, not this job.",
        "grafanaUrl": grafana_url.rstrip("/") + "/",
        "datasourceUid": datasource_uids[job.source],
        "datasourceType": job.source,
        "queryParams": {"expr": expr},
        "interval": interval_s,
        "trainingWindow": window_s,
        "trainingFrequency": frequency_s,
        "algorithm": algorithm,
        "hyperParams": {},
        "customLabels": {"vigil_job": job.name, **job.labels},
    }
    return MlJobSpec(body, tuple(notices))


class MlClient:
    """The few plugin API calls ml-sync makes, over ``requests`` with a bearer token."""

    def __init__(self, grafana_url: str, token: str, *, timeout_s: float = 10.0,
                 session: requests.Session | None = None) -> None:
        self.base = grafana_url.rstrip("/") + API_PREFIX
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json"})

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        url = self.base + path
        try:
            response = self.session.request(method, url, json=body, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise MlApiError(f"{method} {url}: {exc}") from None
        try:
            payload = response.json() if response.content else {}
        except ValueError:
            payload = {"error": response.text[:200]}
        if response.status_code >= 400 or (isinstance(payload, dict) and payload.get("status") == "error"):
            message = payload.get("error") or payload.get("message") if isinstance(payload, dict) else None
            raise MlApiError(f"{method} {url}: HTTP {response.status_code}: {message or response.reason}")
        return payload.get("data") if isinstance(payload, dict) and "data" in payload else payload

    def list_jobs(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/jobs") or [])

    def create_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/jobs", dict(body))

    def update_job(self, job_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"/jobs/{job_id}", {k: v for k, v in body.items() if k != "id"})

    def delete_job(self, job_id: str) -> None:
        self._call("DELETE", f"/jobs/{job_id}")


def _differs(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> list[str]:
    return [key for key in MANAGED_FIELDS if existing.get(key) != desired.get(key)]


def sync_jobs(client: MlClient, specs: list[MlJobSpec], *, prune: bool = False, dry_run: bool = False,
              say: Callable[[str], None] = print) -> SyncResult:
    """Make the plugin's jobs match ``specs``; returns what was (or, dry, would be) done."""
    existing = {str(job.get("metric")): job for job in client.list_jobs()}
    result = SyncResult([], [], [], [], [], [n for s in specs for n in s.notices])
    verb = "would " if dry_run else ""
    for spec in specs:
        current = existing.get(spec.metric)
        if current is None:
            if not dry_run:
                client.create_job(spec.body)
            result.created.append(spec.metric)
            say(f"{verb}create {spec.metric} ({spec.body['queryParams']['expr']})")
            continue
        changed = _differs(current, spec.body)
        if changed:
            if not dry_run:
                client.update_job(str(current["id"]), spec.body)
            result.updated.append(spec.metric)
            say(f"{verb}update {spec.metric}: {', '.join(changed)} changed")
        else:
            result.unchanged.append(spec.metric)
            say(f"unchanged {spec.metric}")
    wanted = {s.metric for s in specs}
    for metric, job in existing.items():
        if metric in wanted:
            continue
        if prune and metric.startswith(METRIC_PREFIX) and "vigil ml-sync" in str(job.get("description", "")):
            if not dry_run:
                client.delete_job(str(job["id"]))
            result.deleted.append(metric)
            say(f"{verb}delete {metric} (no longer configured)")
        else:
            result.unmanaged.append(metric)
    for notice in result.notices:
        say(f"note: {notice}")
    return result


# ---------------------------------------------------------------------------------------------
# The command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Create or update Grafana Machine Learning forecast jobs (grafana-ml-app, Grafana Cloud only) "
        "for the jobs[] of a Vigil configuration. Safe to re-run: unchanged jobs are left alone.")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="the Vigil configuration file whose jobs[] to sync (default: $VIGIL_CONFIG)")
    parser.add_argument("--grafana-url", help="Grafana base URL, e.g. https://example.grafana.net "
                                              "(default: grafana.url from the configuration)")
    parser.add_argument("--token-file", help="file holding a service-account token allowed to manage ML jobs "
                                             "(default: grafana.token from the configuration)")
    parser.add_argument("--datasource-uid", default="prometheus",
                        help="UID of the Prometheus datasource the forecasts train on (default: prometheus)")
    parser.add_argument("--loki-datasource-uid", default="loki", help="UID of the Loki datasource (default: loki)")
    parser.add_argument("--algorithm", default=DEFAULT_ALGORITHM, help=f"forecast algorithm (default: {DEFAULT_ALGORITHM})")
    parser.add_argument("--prune", action="store_true",
                        help="delete forecast jobs that ml-sync created earlier and that are no longer configured")
    parser.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    if path is None:
        print("ml-sync: --config or $VIGIL_CONFIG: must name the configuration whose jobs to sync; got neither",
              file=sys.stderr)
        return 2
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    grafana_url = args.grafana_url or settings.grafana.url
    if not grafana_url:
        print("ml-sync: a Grafana URL is needed: --grafana-url or grafana.url in the configuration", file=sys.stderr)
        return 2
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"ml-sync: --token-file: cannot read {args.token_file}: {exc.strerror}", file=sys.stderr)
            return 2
    else:
        token = str(settings.grafana.token or "")
    if not token:
        print("ml-sync: a service-account token is needed: --token-file or grafana.token", file=sys.stderr)
        return 2
    if not settings.jobs:
        print(f"ml-sync: {args.config} configures no jobs: nothing to sync", file=sys.stderr)
        return 0
    specs = desired_jobs(settings, grafana_url=grafana_url, algorithm=args.algorithm,
                         datasource_uids={"prometheus": args.datasource_uid, "loki": args.loki_datasource_uid})
    client = MlClient(grafana_url, token, timeout_s=settings.grafana.request_timeout_s)
    quiet = args.json
    try:
        result = sync_jobs(client, specs, prune=args.prune, dry_run=args.dry_run,
                           say=(lambda _line: None) if quiet else print)
    except MlApiError as exc:
        print(f"ml-sync: {exc}", file=sys.stderr)
        if "HTTP 404" in str(exc):
            print("ml-sync: is the grafana-ml-app plugin installed and enabled? It runs on Grafana Cloud only.",
                  file=sys.stderr)
        return 1
    if quiet:
        print(json.dumps(result.__dict__, sort_keys=True))
    return 0
