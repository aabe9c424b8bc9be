"""The one typed configuration: YAML file + ``VIGIL_*`` environment, loaded once, strictly.

Top-level sections map one-to-one to components (``prometheus``, ``loki``, ``server``,
``detection``, ``grafana``, ``alertmanager``, ``audit``, ``worker``, ``jobs``). The sections are
pydantic models: a value is read as its field's declared type (so ``VIGIL_SERVER_TOKEN=12345`` is
the string ``"12345"``); nothing is guessed. Durations are Prometheus strings in the file
(``train_window: 7d``) and ``*_s`` floats in code; instants are ``*_ms``. Unknown keys, wrong types
and unset ``${VAR}`` references are errors, and every problem is reported at once as
``<file>: <dotted.path>: must be X; got Y`` (the rules and that translation live in
:mod:`vigil.config_rules`). Secrets (``token``, ``bearer_token``) may come from the file, from
``*_file`` siblings, or from the environment; they are :class:`Secret` strings that never show in
``repr`` (and so not in logs).

Environment overrides: ``VIGIL_<SECTION>_<KEY>``, for example ``VIGIL_PROMETHEUS_URL``,
``VIGIL_SERVER_TOKEN``, ``VIGIL_GRAFANA_TOKEN_FILE``, ``VIGIL_DETECTION_MODEL``. Why not
pydantic-settings' environment source: it ignores unknown ``VIGIL_*`` names (a typo must be an
error here), and a ``BaseSettings()`` reads ``os.environ`` when constructed, which would make
``Settings()`` in a test depend on the shell. The overlay below is short and explicit.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any, Mapping

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from vigil import config_rules as rules
from vigil.config_rules import LABEL_NAME, MODELS, SENSITIVITIES, ConfigError, Secret

__all__ = [
    "ConfigError",
    "Secret",
    "Settings",
    "PrometheusSettings",
    "LokiSettings",
    "ServerSettings",
    "DetectionSettings",
    "GrafanaSettings",
    "AlertmanagerSettings",
    "AuditSettings",
    "WorkerSettings",
    "JobSettings",
    "ExcludeWindow",
    "load_settings",
    "config_path",
    "check_config",
    "SENSITIVITIES",
    "MODELS",
    "LABEL_NAME",
]

# Field types: each checks its own rule and names it in the "must be" of its error.
Integer = Annotated[int, BeforeValidator(rules.integer)]
AtLeastOne = Annotated[Integer, AfterValidator(rules.at_least_one)]
Port = Annotated[Integer, AfterValidator(rules.port)]
Duration = Annotated[float, BeforeValidator(rules.duration_s)]
Instant = Annotated[int, BeforeValidator(rules.instant_ms)]
Url = Annotated[str, AfterValidator(rules.http_url)]
Model = Annotated[str, AfterValidator(rules.model)]
Sensitivity = Annotated[str, AfterValidator(rules.sensitivity)]
MinDeviationText = Annotated[str, BeforeValidator(rules.number_as_text), AfterValidator(rules.min_deviation)]
Labels = Annotated[dict[str, str], BeforeValidator(rules.labels)]
LabelNames = Annotated[tuple[Annotated[str, AfterValidator(rules.label_name)], ...],
                       BeforeValidator(rules.strings), AfterValidator(rules.no_repeats)]


def _f(default: Any, doc: str | None = None, *, key: str | None = None) -> Any:
    """A field's default, what it means, and its YAML key when the code name adds a unit suffix
    (the file says ``request_timeout``, the code ``request_timeout_s``)."""
    return Field(default, description=doc, validation_alias=key)


class _Section(BaseModel):
    # Frozen (loaded once), strict about unknown keys, and constructible in code by attribute name
    # (``GrafanaSettings(request_timeout_s=1)``); files and the environment use the YAML key.
    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True)


class PrometheusSettings(_Section):
    url: Url = "http://localhost:9090"
    request_timeout_s: Duration = _f(10.0, "per request, a duration", key="request_timeout")
    retries: Integer = 2
    max_points_per_series: AtLeastOne = 11_000
    max_concurrent_queries: AtLeastOne = _f(4, "queries one Vigil process runs on Prometheus at once; more wait "
                                               "(within the request's deadline) and are then refused with 429")
    bearer_token: Secret | None = _f(None, "secret")


class LokiSettings(_Section):
    url: Url | None = None
    request_timeout_s: Duration = _f(10.0, key="request_timeout")
    retries: Integer = 2


class ServerSettings(_Section):
    host: str = "0.0.0.0"
    port: Port = 8080
    token: Secret | None = _f(None, "bearer token Grafana sends")
    workers: AtLeastOne = _f(1, "gunicorn worker processes; one keeps one copy of the models and scores "
                                "(docs/ARCHITECTURE.md)")
    threads: AtLeastOne = _f(64, "threads per worker process: max_inflight of them score, the others wait, one is "
                                 "always free for probes")
    request_timeout_s: Duration = _f(25.0, "answer within Grafana's 30 s proxy timeout", key="request_timeout")
    max_range_s: Duration = _f(31 * 86400.0, "longest range a query may view", key="max_range")
    max_series: AtLeastOne = _f(500, "most series one query may return")
    max_body_bytes: AtLeastOne = _f(1_048_576, "largest request body accepted (413 above)")
    max_json_depth: AtLeastOne = _f(32, "deepest nesting of arrays/objects in a body")
    max_targets: AtLeastOne = _f(26, "most queries (targets) one panel request may carry")
    max_query_chars: AtLeastOne = _f(8192, "longest query expression, label value or string field")
    max_inflight: AtLeastOne | None = _f(None, "scoring requests one worker process runs at once (default "
                                               "4, at most threads / 2); up to threads - max_inflight - 1 more wait "
                                               "(queue_wait), so a thread is always free for /healthz and /readyz; "
                                               "the rest get 429 at once")
    reserved_light_slots: Integer = _f(1, "of the max_inflight slots, how many never train models (fetch training "
                                          "history and fit), so refreshes of panels whose models are stored "
                                          "never wait behind cold starts; 0 lets training take every slot")
    queue_wait_s: Duration = _f(5.0, "longest wait for a scoring slot (taken from the deadline)", key="queue_wait")
    retry_after_s: Duration = _f(2.0, "the Retry-After sent with a 429", key="retry_after")


class DetectionSettings(_Section):
    model: Model = "auto"
    train_window_s: Annotated[Duration, AfterValidator(rules.at_least_1h)] = _f(7 * 86400.0, key="train_window")
    sensitivity: Sensitivity = "medium"
    refit_every_s: Duration = _f(3600.0, "a cached model is refitted this often", key="refit_every")
    min_deviation: MinDeviationText = _f("1%", "smallest deviation that may alarm: a number in the series' unit "
                                               "and/or a percentage of its level")
    score_step_s: Annotated[Duration, AfterValidator(rules.at_least_1s)] = _f(
        60.0, "every point is scored at this step whatever a panel asks, so its verdict is the same in every view",
        key="score_step")
    min_train_points: Integer = 24
    max_train_points: Integer = _f(2016, "training resolution cap per series")
    cache_size: AtLeastOne = 4096
    cache_max_mb: AtLeastOne = _f(192, "memory the cached models of one process may use")
    fit_budget_s: Duration = _f(5.0, "learned-model fitting one panel query may spend before the rest use the "
                                     "baseline until trained", key="fit_budget")


class GrafanaSettings(_Section):
    url: Url | None = None
    token: Secret | None = _f(None, "service-account token")
    public_url: str | None = _f(None, "base of links in alerts; defaults to url")
    request_timeout_s: Duration = _f(10.0, key="request_timeout")
    namespace: str = _f("default", "the organisation's namespace in the new annotations API: default (org 1), "
                                   "org-<id>, stacks-<id>")


class AlertmanagerSettings(_Section):
    url: Url | None = None
    request_timeout_s: Duration = _f(10.0, key="request_timeout")
    resend_every_s: Duration = _f(60.0, "re-send active alerts this often", key="resend_every")


class AuditSettings(_Section):
    path: str = "vigil-audit.db"


class WorkerSettings(_Section):
    metrics_host: str = _f("127.0.0.1", "address of the worker's /metrics, /healthz and /api/v1/audit; "
                                        "0.0.0.0 in a pod")
    metrics_port: Port = 9108
    shard_index: Integer = 0
    shard_count: Integer = 1
    lookback_s: Duration = _f(3600.0, "how much recent history each run scores", key="lookback")
    max_backoff_s: Duration = _f(300.0, "longest wait between delivery retries", key="max_backoff")
    max_series: AtLeastOne = _f(5000, "most series one job may watch in one shard")
    cache_max_mb: AtLeastOne = _f(768, "memory for the worker's models: one per watched series (~0.4 MiB for "
                                       "iforest, a few KiB otherwise)")


class ExcludeWindow(_Section):
    """A span left out of training (a known incident, a load test): instants as epoch ms."""

    start_ms: Instant = Field(validation_alias="start")
    end_ms: Instant = Field(validation_alias="end")

    def __init__(self, start_ms: Any = None, end_ms: Any = None, **data: Any) -> None:
        """``ExcludeWindow(start_ms, end_ms)`` in code, as the value pair it is."""
        given = {"start_ms": start_ms, "end_ms": end_ms}
        super().__init__(**{k: v for k, v in given.items() if v is not None}, **data)


class JobSettings(_Section):
    name: Annotated[str, AfterValidator(rules.job_name)]
    query: Annotated[str, AfterValidator(rules.query)]
    every_s: Annotated[Duration, AfterValidator(rules.at_least_1s)] = _f(60.0, key="every")
    source: Annotated[str, AfterValidator(rules.source)] = "prometheus"
    model: Model | None = None
    train_window_s: Duration | None = _f(None, key="train_window")
    sensitivity: Sensitivity | None = None
    severity: Annotated[str, AfterValidator(rules.severity)] = "warning"
    labels: Labels = Field(default_factory=dict)
    dashboard_uid: str | None = None
    panel_id: Integer | None = None
    exclude: tuple[ExcludeWindow, ...] = ()
    min_deviation: MinDeviationText | None = None
    group_by: LabelNames = _f(
        (), "label names: score each group of series with these labels' values as one multivariate model")


class Settings(_Section):
    prometheus: PrometheusSettings = Field(default_factory=PrometheusSettings)
    loki: LokiSettings = Field(default_factory=LokiSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    grafana: GrafanaSettings = Field(default_factory=GrafanaSettings)
    alertmanager: AlertmanagerSettings = Field(default_factory=AlertmanagerSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    jobs: tuple[JobSettings, ...] = ()

    def replace(self, **sections: Any) -> "Settings":
        """A copy with some sections replaced: ``settings.replace(server={"port": 9000})``.

        Values are taken as given (attribute names, typed values), as ``dataclasses.replace`` did:
        this is for code and tests, not for reading text."""
        changed = {}
        for name, value in sections.items():
            current = getattr(self, name)
            if isinstance(value, dict):
                secrets = _secret_keys().get(name, [])  # a token given as text still hides in repr
                value = {k: Secret(v) if k in secrets and isinstance(v, str) and v else v for k, v in value.items()}
                changed[name] = current.model_copy(update=value)
            else:
                changed[name] = value
        return self.model_copy(update=changed)


# ---------------------------------------------------------------------------------------------
# Loading


def _env_overrides(environ: Mapping[str, str], problems: list[str]) -> dict[str, dict[str, str]]:
    """``VIGIL_SERVER_PORT=9000`` -> ``{"server": {"port": "9000"}}``: text, typed by the field."""
    sections = [name for name in Settings.model_fields if name != "jobs"]
    out: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        # VIGIL_CONFIG names the file and VIGIL_LOG_LEVEL the log level: neither is a setting.
        if not name.startswith("VIGIL_") or name in ("VIGIL_CONFIG", "VIGIL_LOG_LEVEL"):
            continue
        rest = name[len("VIGIL_"):].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            problems.append(f"environment: {name}: must name a known section (VIGIL_<SECTION>_<KEY>); got {name!r}")
            continue
        out.setdefault(section, {})[rest[len(section) + 1:]] = value
    return out


def config_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The configuration file a command reads: ``--config`` if given, else ``$VIGIL_CONFIG``, else None."""
    environ = os.environ if environ is None else environ
    return explicit or environ.get("VIGIL_CONFIG") or None


def _read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: (top level): must be a mapping; got {type(raw).__name__}"])
    return raw


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Read the YAML file (if any), then ``VIGIL_*`` variables, then explicit overrides.

    Raises :class:`ConfigError` listing every problem.
    """
    environ = os.environ if environ is None else environ
    source = str(path) if path else "environment"
    problems: list[str] = []
    merged: dict[str, Any] = {}
    if path:
        raw = rules.expand(_read_yaml(path), environ, source, problems)
        merged = {str(k).lstrip("."): v for k, v in raw.items()}
    for layer in (_env_overrides(environ, problems), overrides or {}):
        for section, values in layer.items():
            base = merged.get(section) or {}
            if isinstance(base, dict):
                merged[section] = {**base, **values}
    rules.read_secret_files(merged, _secret_keys(), source, problems)
    settings, kept_jobs = _validate(merged, source, problems)
    problems += rules.cross_field_problems(settings, kept_jobs, source)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return settings


@functools.cache
def _secret_keys() -> dict[str, list[str]]:
    """Section -> the keys that hold secrets (and so may also be given as ``<key>_file``)."""
    out: dict[str, list[str]] = {}
    for name, info in Settings.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, _Section):
            out[name] = [key for key, f in section.model_fields.items() if f.annotation in (Secret, Secret | None)]
    return out


def _validate(data: dict[str, Any], source: str, problems: list[str]) -> tuple[Settings, list[int]]:
    """Validate, reporting every problem; then drop what was wrong and validate again so that the
    cross-field rules still see the rest (a wrong value falls back to its default, a job without
    its required keys is left out). Returns the settings and each kept job's index in the file."""
    jobs = data.get("jobs")
    kept = list(range(len(jobs))) if isinstance(jobs, list) else []
    for round_ in range(4):
        try:
            return Settings.model_validate(data, by_alias=True, by_name=False), kept
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        if round_ == 0:  # later rounds only meet the gaps left by removing what was wrong
            problems += [rules.problem_text(source, error, Settings, kept) for error in errors]
        data, kept = rules.without_errors(data, errors, kept)
    return Settings(), []  # pragma: no cover - each round removes what failed


def check_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Every problem in a configuration file (empty when it is valid)."""
    try:
        load_settings(path, environ=environ)
    except ConfigError as exc:
        return exc.problems
    return []
