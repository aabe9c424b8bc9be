"""The one typed configuration: YAML file + ``VIGIL_*`` environment, loaded once, strictly.

Top-level sections map one-to-one to components (``prometheus``, ``loki``, ``server``,
``detection``, ``grafana``, ``alertmanager``, ``audit``, ``worker``, ``jobs``). Durations are
Prometheus strings in the file (``train_window: 7d``) and ``*_s`` floats in code. Unknown keys,
wrong types and unset ``${VAR}`` references are errors, and every problem is reported at once as
``<file>: <dotted.path>: must be X; got Y``. Secrets (``token``, ``bearer_token``) may come from
the file, from ``*_file`` siblings, or from the environment; they are never logged (``repr``
hides them).

Environment overrides: ``VIGIL_<SECTION>_<KEY>``, for example ``VIGIL_PROMETHEUS_URL``,
``VIGIL_SERVER_TOKEN``, ``VIGIL_GRAFANA_TOKEN_FILE``, ``VIGIL_DETECTION_MODEL``.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .promql import balance_problem
from .units import format_duration, parse_duration_s, parse_instant_ms, parse_min_deviation

__all__ = [
    "ConfigError",
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

#: Detector aliases a configuration or a request may name (see ``vigil.detectors``).
MODELS = ("auto", "seasonal", "iforest", "ocsvm")
#: Sensitivity words, and the false alarms per series per week each one aims at.
SENSITIVITIES = {"low": 0.25, "medium": 1.0, "high": 7.0}


class ConfigError(ValueError):
    """Every problem found in a configuration, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Secret(str):
    """A string that does not show itself in ``repr`` (and so not in logs or tracebacks)."""

    def __repr__(self) -> str:
        return "Secret('***')"


def _meta(doc: str, **extra: Any) -> dict[str, Any]:
    return {"doc": doc, **extra}


@dataclass(frozen=True)
class PrometheusSettings:
    url: str = "http://localhost:9090"
    request_timeout_s: float = field(default=10.0, metadata=_meta("per request, a duration"))
    retries: int = 2
    max_points_per_series: int = 11_000
    max_concurrent_queries: int = field(default=4, metadata=_meta(
        "queries one Vigil process runs on Prometheus at once; more wait (within the request's deadline) "
        "and are then refused with 429"))
    bearer_token: Secret | None = field(default=None, metadata=_meta("secret", secret=True))


@dataclass(frozen=True)
class LokiSettings:
    url: str | None = None
    request_timeout_s: float = 10.0
    retries: int = 2


@dataclass(frozen=True)
class ServerSettings:
    host: str = "0.0.0.0"
    port: int = 8080
    token: Secret | None = field(default=None, metadata=_meta("bearer token Grafana sends", secret=True))
    workers: int = field(default=1, metadata=_meta(
        "gunicorn worker processes; one keeps one copy of the models and scores (docs/ARCHITECTURE.md)"))
    threads: int = field(default=64, metadata=_meta(
        "threads per worker process: max_inflight of them score, the others wait, one is always free for probes"))
    request_timeout_s: float = field(default=25.0, metadata=_meta("answer within Grafana's 30 s proxy timeout"))
    max_range_s: float = field(default=31 * 86400.0, metadata=_meta("longest range a query may view"))
    max_series: int = field(default=500, metadata=_meta("most series one query may return"))
    max_body_bytes: int = field(default=1_048_576, metadata=_meta("largest request body accepted (413 above)"))
    max_json_depth: int = field(default=32, metadata=_meta("deepest nesting of arrays/objects in a body"))
    max_targets: int = field(default=26, metadata=_meta("most queries (targets) one panel request may carry"))
    max_query_chars: int = field(default=8192, metadata=_meta("longest query expression, label value or string field"))
    max_inflight: int | None = field(default=None, metadata=_meta(
        "scoring requests one worker process runs at once (default 4, at most threads / 2); up to threads - max_inflight - 1 "
        "more wait (queue_wait), so a thread is always free for /healthz and /readyz; the rest get 429 at once"))
    queue_wait_s: float = field(default=5.0, metadata=_meta("longest wait for a scoring slot (taken from the deadline)"))
    retry_after_s: float = field(default=2.0, metadata=_meta("the Retry-After sent with a 429"))


@dataclass(frozen=True)
class DetectionSettings:
    model: str = "auto"
    train_window_s: float = 7 * 86400.0
    sensitivity: str = "medium"
    refit_every_s: float = field(default=3600.0, metadata=_meta("a cached model is refitted this often"))
    min_deviation: str = field(default="1%", metadata=_meta(
        "smallest deviation that may alarm: a number in the series' unit and/or a percentage of its level"))
    score_step_s: float = field(default=60.0, metadata=_meta(
        "every point is scored at this step whatever a panel asks, so its verdict is the same in every view"))
    min_train_points: int = 24
    max_train_points: int = field(default=2016, metadata=_meta("training resolution cap per series"))
    cache_size: int = 4096
    cache_max_mb: int = field(default=192, metadata=_meta("memory the cached models of one process may use"))
    fit_budget_s: float = field(default=5.0, metadata=_meta(
        "learned-model fitting one panel query may spend before the rest use the baseline until trained"))


@dataclass(frozen=True)
class GrafanaSettings:
    url: str | None = None
    token: Secret | None = field(default=None, metadata=_meta("service-account token", secret=True))
    public_url: str | None = field(default=None, metadata=_meta("base of links in alerts; defaults to url"))
    request_timeout_s: float = 10.0
    namespace: str = field(default="default", metadata=_meta(
        "the organisation's namespace in the new annotations API: default (org 1), org-<id>, stacks-<id>"))


@dataclass(frozen=True)
class AlertmanagerSettings:
    url: str | None = None
    request_timeout_s: float = 10.0
    resend_every_s: float = field(default=60.0, metadata=_meta("re-send active alerts this often"))


@dataclass(frozen=True)
class AuditSettings:
    path: str = "vigil-audit.db"


@dataclass(frozen=True)
class WorkerSettings:
    metrics_host: str = field(default="127.0.0.1", metadata=_meta(
        "address of the worker's /metrics, /healthz and /api/v1/audit; 0.0.0.0 in a pod"))
    metrics_port: int = 9108
    shard_index: int = 0
    shard_count: int = 1
    lookback_s: float = field(default=3600.0, metadata=_meta("how much recent history each run scores"))
    max_backoff_s: float = field(default=300.0, metadata=_meta("longest wait between delivery retries"))
    max_series: int = field(default=5000, metadata=_meta("most series one job may watch in one shard"))
    cache_max_mb: int = field(default=768, metadata=_meta(
        "memory for the worker's models: one per watched series (~0.4 MiB for iforest, a few KiB otherwise)"))


@dataclass(frozen=True)
class ExcludeWindow:
    """A span left out of training (a known incident, a load test): instants as epoch ms."""

    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class JobSettings:
    name: str
    query: str
    every_s: float = 60.0
    source: str = "prometheus"
    model: str | None = None
    train_window_s: float | None = None
    sensitivity: str | None = None
    severity: str = "warning"
    labels: dict[str, str] = field(default_factory=dict)
    dashboard_uid: str | None = None
    panel_id: int | None = None
    exclude: tuple[ExcludeWindow, ...] = ()
    min_deviation: str | None = None
    group_by: tuple[str, ...] = field(default=(), metadata=_meta(
        "label names: score each group of series with these labels' values as one multivariate model"))


@dataclass(frozen=True)
class Settings:
    prometheus: PrometheusSettings = field(default_factory=PrometheusSettings)
    loki: LokiSettings = field(default_factory=LokiSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    grafana: GrafanaSettings = field(default_factory=GrafanaSettings)
    alertmanager: AlertmanagerSettings = field(default_factory=AlertmanagerSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    jobs: tuple[JobSettings, ...] = ()

    def replace(self, **sections: Any) -> "Settings":
        """A copy with some sections replaced: ``settings.replace(server={"port": 9000})``."""
        changed = {}
        for name, value in sections.items():
            current = getattr(self, name)
            changed[name] = dataclasses.replace(current, **value) if isinstance(value, dict) else value
        return dataclasses.replace(self, **changed)


# ---------------------------------------------------------------------------------------------
# Loading


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
#: a Prometheus label name (``group_by`` entries)
LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _yaml_key(attr: str) -> str:
    return attr[:-3] if attr.endswith("_ms") else attr[:-2] if attr.endswith("_s") else attr


def _is_secret(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("secret"))


class _Loader:
    def __init__(self, source: str, environ: Mapping[str, str]):
        self.source = source
        self.environ = environ
        self.problems: list[str] = []

    def problem(self, path: str, must: str, got: Any) -> None:
        self.problems.append(f"{self.source}: {path}: must be {must}; got {got!r}")

    def expand(self, value: Any, path: str) -> Any:
        if isinstance(value, str):
            def sub(match: re.Match[str]) -> str:
                name = match.group(1)
                if name not in self.environ:
                    self.problem(path, f"a set environment variable ${{{name}}}", "unset")
                    return ""
                return self.environ[name]

            return _ENV_REF.sub(sub, value)
        if isinstance(value, dict):
            return {k: self.expand(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    def section(self, cls: type, data: Any, path: str) -> Any:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.problem(path, "a mapping", data)
            return None
        fields = {_yaml_key(f.name): f for f in dataclasses.fields(cls)}
        secret_files = {f"{k}_file": f for k, f in fields.items() if _is_secret(f)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            if key in secret_files:
                f = secret_files[key]
                kwargs[f.name] = self.secret_from_file(value, where)
                continue
            if key not in fields:
                known = ", ".join(sorted(list(fields) + list(secret_files)))
                self.problem(where, f"a known key ({known})", key)
                continue
            f = fields[key]
            kwargs[f.name] = self.value(f, _hints(cls)[f.name], value, where)
        missing = [
            _yaml_key(f.name)
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in kwargs
        ]
        for key in missing:
            self.problem(f"{path}.{key}" if path else key, "set", None)
        if missing:
            return None
        try:
            return cls(**{k: v for k, v in kwargs.items() if v is not _INVALID})
        except TypeError as exc:  # pragma: no cover - guarded above
            self.problem(path, "a valid section", str(exc))
            return None

    def secret_from_file(self, value: Any, where: str) -> Any:
        if not isinstance(value, str) or not value:
            self.problem(where, "a file path", value)
            return _INVALID
        try:
            return Secret(Path(value).read_text(encoding="utf-8").strip())
        except OSError as exc:
            self.problem(where, "a readable file", f"{value} ({exc.strerror})")
            return _INVALID

    def value(self, f: dataclasses.Field, hint: Any, value: Any, where: str) -> Any:
        optional = _is_optional(hint)
        base = _strip_optional(hint)
        if value is None:
            if optional:
                return None
            self.problem(where, "set", None)
            return _INVALID
        if isinstance(value, _EnvText):
            value = self.from_env(base, value, where)
            if value is _INVALID:
                return _INVALID
        if f.name.endswith("_s"):
            try:
                return parse_duration_s(value)
            except ValueError as exc:
                self.problem(where, str(exc).split(";")[0], value)
                return _INVALID
        if f.name.endswith("_ms"):
            if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
                value = datetime.datetime.combine(value, datetime.time(), datetime.timezone.utc)
            if isinstance(value, datetime.datetime):  # YAML reads unquoted ISO times itself
                value = value.isoformat()
            try:
                return parse_instant_ms(value)
            except ValueError:
                self.problem(where, "a time (ISO-8601 or epoch seconds/ms)", value)
                return _INVALID
        if base is Secret:
            if not isinstance(value, str):
                self.problem(where, "a string", value)
                return _INVALID
            return Secret(value) if value else None
        if base is str:
            if not isinstance(value, str):
                self.problem(where, "a string", value)
                return _INVALID
            return value
        if base is bool:
            if not isinstance(value, bool):
                self.problem(where, "true or false", value)
                return _INVALID
            return value
        if base is int:
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                self.problem(where, "an integer", value)
                return _INVALID
            return value
        if base is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.problem(where, "a number", value)
                return _INVALID
            return float(value)
        origin = typing.get_origin(base)
        if origin is dict:
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                self.problem(where, "a mapping of strings", value)
                return _INVALID
            return {k: str(v) for k, v in value.items()}
        if origin is tuple:
            (item_type, _) = typing.get_args(base)
            if item_type is str:
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    self.problem(where, "a list of strings", value)
                    return _INVALID
                return tuple(value)
            if not isinstance(value, list):
                self.problem(where, "a list", value)
                return _INVALID
            items = [self.section(item_type, item, f"{where}[{i}]") for i, item in enumerate(value)]
            return tuple(i for i in items if i is not None)
        if dataclasses.is_dataclass(base) and isinstance(base, type):
            return self.section(base, value, where)
        raise AssertionError(f"unhandled config type {hint!r}")  # pragma: no cover


    def from_env(self, base: Any, text: "_EnvText", where: str) -> Any:
        """An environment value is always text: read it as the field's declared type, never guess."""
        raw = str(text).strip()
        if base is bool:
            lowered = raw.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            self.problem(where, "true or false", str(text))
            return _INVALID
        if base is int:
            try:
                return int(raw)
            except ValueError:
                self.problem(where, "an integer", str(text))
                return _INVALID
        if base is float:
            try:
                return float(raw)
            except ValueError:
                self.problem(where, "a number", str(text))
                return _INVALID
        return str(text)  # strings, secrets, durations and instants parse text themselves


class _EnvText(str):
    """A value read from the environment: text whatever it looks like, typed by its field."""


_INVALID = object()


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint) and typing.get_origin(hint) in (typing.Union, types.UnionType)


def _strip_optional(hint: Any) -> Any:
    if _is_optional(hint):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint



def _env_overrides(environ: Mapping[str, str], loader: _Loader) -> dict[str, dict[str, Any]]:
    """``VIGIL_SERVER_PORT=9000`` -> ``{"server": {"port": "9000"}}`` (typed later)."""
    sections = {f.name: f for f in dataclasses.fields(Settings) if f.name != "jobs"}
    out: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        # VIGIL_CONFIG names the file and VIGIL_LOG_LEVEL the log level: neither is a setting.
        if not name.startswith("VIGIL_") or name in ("VIGIL_CONFIG", "VIGIL_LOG_LEVEL"):
            continue
        rest = name[len("VIGIL_"):].lower()
        for section in sections:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1:]
                out.setdefault(section, {})[key] = _coerce_env(value)
                break
        else:
            loader.problems.append(f"environment: {name}: must name a known section (VIGIL_<SECTION>_<KEY>); got {name!r}")
    return out


def _coerce_env(value: str) -> Any:
    return _EnvText(value)


def config_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The configuration file a command reads: ``--config`` if given, else ``$VIGIL_CONFIG``, else None."""
    environ = os.environ if environ is None else environ
    return explicit or environ.get("VIGIL_CONFIG") or None


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
    loader = _Loader(source, environ)
    raw: Any = {}
    if path:
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
        raw = loader.expand(raw, "")
        raw = {k.lstrip("."): v for k, v in raw.items()}
    merged: dict[str, Any] = dict(raw)
    for layer in (_env_overrides(environ, loader), overrides or {}):
        for section, values in layer.items():
            base = merged.get(section) or {}
            if not isinstance(base, dict):
                continue
            merged[section] = {**base, **values}
    settings = loader.section(Settings, merged, "")
    if settings is not None:
        _validate(settings, loader)
    if loader.problems or settings is None:
        raise ConfigError(loader.problems or [f"{source}: invalid configuration"])
    return settings


def _validate(s: Settings, loader: _Loader) -> None:
    """Cross-field rules a type cannot express."""
    for sec, url in (("prometheus.url", s.prometheus.url), ("loki.url", s.loki.url),
                     ("grafana.url", s.grafana.url), ("alertmanager.url", s.alertmanager.url)):
        if url is not None and not re.match(r"^https?://[^\s/]+", url):
            loader.problem(sec, "an http(s) URL", url)
    if s.detection.model not in MODELS:
        loader.problem("detection.model", f"one of {', '.join(MODELS)}", s.detection.model)
    if s.detection.sensitivity not in SENSITIVITIES:
        loader.problem("detection.sensitivity", f"one of {', '.join(SENSITIVITIES)}", s.detection.sensitivity)
    for where, text in [("detection.min_deviation", s.detection.min_deviation)] + [
            (f"jobs[{i}].min_deviation", job.min_deviation) for i, job in enumerate(s.jobs)
            if job.min_deviation is not None]:
        try:
            parse_min_deviation(text)
        except ValueError:
            loader.problem(where, "a number in the series' unit and/or a percentage of its level, "
                                  "e.g. '0.5', '5%' or '0.5, 5%'", text)
    if s.detection.score_step_s < 1:
        loader.problem("detection.score_step", "at least 1s", format_duration(s.detection.score_step_s))
    if s.worker.lookback_s < 2 * s.detection.score_step_s:
        loader.problem("worker.lookback", f"at least two scoring steps (detection.score_step is "
                       f"{format_duration(s.detection.score_step_s)})", format_duration(s.worker.lookback_s))
    if s.detection.train_window_s < 3600:
        loader.problem("detection.train_window", "at least 1h", format_duration(s.detection.train_window_s))
    for name, value in (("server.port", s.server.port), ("worker.metrics_port", s.worker.metrics_port)):
        if not 0 <= value <= 65535:
            loader.problem(name, "a port number (0-65535)", value)
    for name, value in (("server.workers", s.server.workers), ("server.threads", s.server.threads),
                        ("prometheus.max_points_per_series", s.prometheus.max_points_per_series),
                        ("detection.cache_size", s.detection.cache_size), ("server.max_series", s.server.max_series),
                        ("worker.max_series", s.worker.max_series), ("detection.cache_max_mb", s.detection.cache_max_mb),
                        ("worker.cache_max_mb", s.worker.cache_max_mb), ("server.max_body_bytes", s.server.max_body_bytes),
                        ("server.max_json_depth", s.server.max_json_depth), ("server.max_targets", s.server.max_targets),
                        ("server.max_query_chars", s.server.max_query_chars),
                        ("prometheus.max_concurrent_queries", s.prometheus.max_concurrent_queries)):
        if value < 1:
            loader.problem(name, "at least 1", value)
    if s.server.max_inflight is not None and not 1 <= s.server.max_inflight:
        loader.problem("server.max_inflight", "at least 1", s.server.max_inflight)
    if s.server.max_inflight is not None and s.server.max_inflight >= s.server.threads:
        loader.problem("server.max_inflight", f"below server.threads ({s.server.threads}) so that health probes "
                       "always find a free thread", s.server.max_inflight)
    if not 0 <= s.worker.shard_index < max(s.worker.shard_count, 1) or s.worker.shard_count < 1:
        loader.problem("worker.shard_index", f"in [0, shard_count={s.worker.shard_count})", s.worker.shard_index)
    seen: set[str] = set()
    for i, job in enumerate(s.jobs):
        where = f"jobs[{i}]"
        if not _NAME.match(job.name):
            loader.problem(f"{where}.name", "letters, digits and _.:- only", job.name)
        if job.name in seen:
            loader.problem(f"{where}.name", "unique", job.name)
        seen.add(job.name)
        if not job.query.strip():
            loader.problem(f"{where}.query", "a PromQL/LogQL expression or preset name", job.query)
        elif (unbalanced := balance_problem(job.query)) is not None:
            loader.problem(f"{where}.query", f"a balanced expression ({unbalanced})", job.query)
        if job.every_s < 1:
            loader.problem(f"{where}.every", "at least 1s", format_duration(job.every_s))
        if job.source not in ("prometheus", "loki"):
            loader.problem(f"{where}.source", "prometheus or loki", job.source)
        if job.source == "loki" and not s.loki.url:
            loader.problem(f"{where}.source", "prometheus unless loki.url is set", job.source)
        if job.model is not None and job.model not in MODELS:
            loader.problem(f"{where}.model", f"one of {', '.join(MODELS)}", job.model)
        if job.sensitivity is not None and job.sensitivity not in SENSITIVITIES:
            loader.problem(f"{where}.sensitivity", f"one of {', '.join(SENSITIVITIES)}", job.sensitivity)
        if job.severity not in ("info", "warning", "critical"):
            loader.problem(f"{where}.severity", "info, warning or critical", job.severity)
        for j, name in enumerate(job.group_by):
            if not LABEL_NAME.match(name):
                loader.problem(f"{where}.group_by[{j}]", "a label name (letters, digits and _, not first a digit)", name)
        if len(set(job.group_by)) < len(job.group_by):
            loader.problem(f"{where}.group_by", "label names without repeats", list(job.group_by))
        for j, window in enumerate(job.exclude):
            if window.end_ms <= window.start_ms:
                loader.problem(f"{where}.exclude[{j}]", "a window whose end is after its start",
                               {"start": window.start_ms, "end": window.end_ms})


def check_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Every problem in a configuration file (empty when it is valid)."""
    try:
        load_settings(path, environ=environ)
    except ConfigError as exc:
        return exc.problems
    return []
