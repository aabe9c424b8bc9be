"""The rules a configuration value must follow, and how a broken rule is said.

:mod:`vigil.config` declares the sections; this module owns what each field type checks (a port,
a duration, a model alias), the rules that span fields (a job on Loki needs ``loki.url``), the
``${VAR}`` expansion and ``*_file`` secrets, and the translation of pydantic's errors into our one
message shape ``<file>: <dotted.path>: must be X; got Y``. It does no I/O beyond reading secret
files and never logs a value.
"""

from __future__ import annotations

import copy
import datetime
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel
from pydantic_core import core_schema

from vigil.sources.promql import balance_problem
from vigil.units import format_duration, parse_duration_s, parse_instant_ms, parse_min_deviation

if typing.TYPE_CHECKING:
    from vigil.config import Settings

#: Detector aliases a configuration or a request may name (see ``vigil.detectors``).
MODELS = ("auto", "seasonal", "iforest", "ocsvm")
#: Sensitivity words, and the false alarms per series per week each one aims at.
SENSITIVITIES = {"low": 0.25, "medium": 1.0, "high": 7.0}
#: a Prometheus label name (``group_by`` entries)
LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_URL = re.compile(r"^https?://[^\s/]+")


class ConfigError(ValueError):
    """Every problem found in a configuration, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Secret(str):
    """A string that does not show itself in ``repr`` (and so not in logs or tracebacks).

    As a field type it accepts text only; an empty value means "not set" (None)."""

    def __repr__(self) -> str:
        return "Secret('***')"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(lambda text: cls(text) if text else None,
                                                            core_schema.str_schema())


# ---------------------------------------------------------------------------------------------
# One field's rule: a ValueError's text is the "must be ..." of the message.


_INTEGER_TEXT = re.compile(r"[+-]?\d+")


def integer(value: Any) -> Any:
    """An integer, or text from the environment that spells one; not ``true``, not ``80.0``."""
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("an integer")
    return value


def at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("at least 1")
    return value


def port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError("a port number (0-65535)")
    return value


def duration_s(value: Any) -> Any:
    if value is None:
        return None
    try:
        return parse_duration_s(value)
    except ValueError as exc:
        raise ValueError(str(exc).split(";")[0]) from None


def at_least_1s(value_s: float) -> float:
    if value_s < 1:
        raise ValueError("at least 1s")
    return value_s


def at_least_1h(value_s: float) -> float:
    if value_s < 3600:
        raise ValueError("at least 1h")
    return value_s


def instant_ms(value: Any) -> int:
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        value = datetime.datetime.combine(value, datetime.time(), datetime.timezone.utc)
    if isinstance(value, datetime.datetime):  # YAML reads unquoted ISO times itself
        value = value.isoformat()
    try:
        return parse_instant_ms(value)
    except (ValueError, TypeError):
        raise ValueError("a time (ISO-8601 or epoch seconds/ms)") from None


def http_url(value: str) -> str:
    if not _URL.match(value):
        raise ValueError("an http(s) URL")
    return value


def model(value: str) -> str:
    if value not in MODELS:
        raise ValueError(f"one of {', '.join(MODELS)}")
    return value


def sensitivity(value: str) -> str:
    if value not in SENSITIVITIES:
        raise ValueError(f"one of {', '.join(SENSITIVITIES)}")
    return value


def number_as_text(value: Any) -> Any:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def min_deviation(text: str) -> str:
    try:
        parse_min_deviation(text)
    except ValueError:
        raise ValueError("a number in the series' unit and/or a percentage of its level, "
                         "e.g. '0.5', '5%' or '0.5, 5%'") from None
    return text


def labels(value: Any) -> Any:
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: str(v) for k, v in value.items()}
    if isinstance(value, dict):
        raise ValueError("a mapping of strings")
    return value


def job_name(value: str) -> str:
    if not _JOB_NAME.match(value):
        raise ValueError("letters, digits and _.:- only")
    return value


def query(value: str) -> str:
    if not value.strip():
        raise ValueError("a PromQL/LogQL expression or preset name")
    unbalanced = balance_problem(value)
    if unbalanced is not None:
        raise ValueError(f"a balanced expression ({unbalanced})")
    return value


def source(value: str) -> str:
    if value not in ("prometheus", "loki"):
        raise ValueError("prometheus or loki")
    return value


def severity(value: str) -> str:
    if value not in ("info", "warning", "critical"):
        raise ValueError("info, warning or critical")
    return value


def strings(value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("a list of strings")
    return value


def label_name(name: str) -> str:
    if not LABEL_NAME.match(name):
        raise ValueError("a label name (letters, digits and _, not first a digit)")
    return name


def no_repeats(names: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(names)) < len(names):
        raise ValueError("label names without repeats")
    return names


# ---------------------------------------------------------------------------------------------
# Before validation: ${VAR} references and *_file secrets.


def expand(value: Any, environ: Mapping[str, str], source: str, problems: list[str], path: str = "") -> Any:
    """Replace ``${VAR}`` in every string; an unset variable is a problem."""
    if isinstance(value, str):
        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                problems.append(f"{source}: {path}: must be a set environment variable ${{{name}}}; got 'unset'")
                return ""
            return environ[name]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand(v, environ, source, problems, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, environ, source, problems, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def read_secret_files(data: dict[str, Any], secret_keys: Mapping[str, list[str]], source: str,
                      problems: list[str]) -> None:
    """``server.token_file: /run/secrets/token`` -> ``server.token`` = the file's text (stripped)."""
    for section, keys in secret_keys.items():
        values = data.get(section)
        if not isinstance(values, dict):
            continue
        for key in keys:
            file_key = f"{key}_file"
            if file_key not in values:
                continue
            path = values.pop(file_key)
            where = f"{section}.{file_key}"
            if not isinstance(path, str) or not path:
                problems.append(f"{source}: {where}: must be a file path; got {path!r}")
                continue
            try:
                values[key] = Secret(Path(path).read_text(encoding="utf-8").strip())
            except OSError as exc:
                problems.append(f"{source}: {where}: must be a readable file; got {f'{path} ({exc.strerror})'!r}")


# ---------------------------------------------------------------------------------------------
# pydantic's errors in our words


_MUST = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
    "model_type": "a mapping", "model_attributes_type": "a mapping", "dict_type": "a mapping",
    "list_type": "a list", "tuple_type": "a list", "missing": "set",
}


def dotted(loc: tuple[Any, ...], kept_jobs: list[int]) -> str:
    """``("jobs", 0, "every")`` -> ``jobs[3].every`` (3 being the job's index in the file)."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            index = kept_jobs[part] if i == 1 and loc[0] == "jobs" and part < len(kept_jobs) else part
            out += f"[{index}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def problem_text(source: str, error: Any, root: type[BaseModel], kept_jobs: list[int]) -> str:
    kind, loc, got = error["type"], tuple(error["loc"]), error.get("input")
    if kind != "extra_forbidden" and _is_secret_at(root, loc):
        got = _Hidden()  # a secret is never printed, not even a wrong one
    if kind == "value_error":
        must = str(error["ctx"]["error"])
    elif kind == "extra_forbidden":
        must, got = f"a known key ({', '.join(known_keys(root, loc[:-1]))})", loc[-1]
    else:
        must = _MUST.get(kind, error["msg"])
        if kind == "missing":
            got = None
    return f"{source}: {dotted(loc, kept_jobs)}: must be {must}; got {got!r}"


def known_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the section at ``loc`` accepts, as a file spells them."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if (f.validation_alias or name) == part), None)
        if field is None:
            return []
        model = _inner_model(field.annotation)
        if model is None:
            return []
    keys = [f.validation_alias or name for name, f in model.model_fields.items()]
    keys += [f"{name}_file" for name, f in model.model_fields.items() if _is_secret(f.annotation)]
    return sorted(str(k) for k in keys)


class _Hidden:
    def __repr__(self) -> str:
        return "a value not shown (a secret)"


def _is_secret_at(root: type[BaseModel], loc: tuple[Any, ...]) -> bool:
    model: Any = root
    for i, part in enumerate(loc):
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if (f.validation_alias or name) == part), None)
        if field is None:
            return False
        if i == len(loc) - 1:
            return _is_secret(field.annotation)
        model = _inner_model(field.annotation)
        if model is None:
            return False
    return False


def _inner_model(annotation: Any) -> Any:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _is_secret(annotation: Any) -> bool:
    return annotation is Secret or (isinstance(annotation, types.UnionType) and Secret in typing.get_args(annotation))


_DROP = object()


def without_errors(data: dict[str, Any], errors: list[Any], kept_jobs: list[int]) -> tuple[dict[str, Any], list[int]]:
    """A copy of ``data`` without what ``errors`` point at: a wrong value goes (its default takes
    its place), a list item that is wrong or lacks a required key goes."""
    data = copy.deepcopy(data)
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "missing":  # drop the nearest list item holding it
            item = max((i for i, part in enumerate(loc) if isinstance(part, int)), default=None)
            loc = loc[: item + 1] if item is not None else loc[:-1]
        if not loc:
            continue
        parent: Any = data
        for part in loc[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                parent = None
                break
        if isinstance(parent, dict):
            parent.pop(loc[-1], None)
        elif isinstance(parent, list) and isinstance(loc[-1], int) and loc[-1] < len(parent):
            parent[loc[-1]] = _DROP
    jobs = data.get("jobs")
    if isinstance(jobs, list):
        kept_jobs = [index for index, job in zip(kept_jobs, jobs) if job is not _DROP]
    return _compact(data), kept_jobs


def _compact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compact(v) for v in value if v is not _DROP]
    return value


# ---------------------------------------------------------------------------------------------
# Rules across fields


def cross_field_problems(s: "Settings", kept_jobs: list[int], source: str) -> list[str]:
    out: list[str] = []

    def problem(path: str, must: str, got: Any) -> None:
        out.append(f"{source}: {path}: must be {must}; got {got!r}")

    if s.worker.lookback_s < 2 * s.detection.score_step_s:
        problem("worker.lookback", f"at least two scoring steps (detection.score_step is "
                f"{format_duration(s.detection.score_step_s)})", format_duration(s.worker.lookback_s))
    if s.server.max_inflight is not None and s.server.max_inflight >= s.server.threads:
        problem("server.max_inflight", f"below server.threads ({s.server.threads}) so that health probes "
                "always find a free thread", s.server.max_inflight)
    if s.server.reserved_light_slots < 0:
        problem("server.reserved_light_slots", "0 or more", s.server.reserved_light_slots)
    if not 0 <= s.worker.shard_index < max(s.worker.shard_count, 1) or s.worker.shard_count < 1:
        problem("worker.shard_index", f"in [0, shard_count={s.worker.shard_count})", s.worker.shard_index)
    seen: set[str] = set()
    for index, job in zip(kept_jobs, s.jobs):
        where = f"jobs[{index}]"
        if job.name in seen:
            problem(f"{where}.name", "unique", job.name)
        seen.add(job.name)
        if job.source == "loki" and not s.loki.url:
            problem(f"{where}.source", "prometheus unless loki.url is set", job.source)
        for j, window in enumerate(job.exclude):
            if window.end_ms <= window.start_ms:
                problem(f"{where}.exclude[{j}]", "a window whose end is after its start",
                        {"start": window.start_ms, "end": window.end_ms})
    return out
