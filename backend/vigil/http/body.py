"""Reading request bodies and detection options, with errors that name what was wrong.

Every body is bounded before any work: its size (``server.max_body_bytes``, also enforced by
Flask's ``MAX_CONTENT_LENGTH`` before it is read), its nesting (``server.max_json_depth``), its
numbers (finite: ``NaN``/``Infinity``/``1e999`` are refused) and its strings (no lone UTF-16
surrogates such as ``"\\ud800"``, which cannot be encoded into a Prometheus request). Messages
quote at most a short excerpt of a bad value (:func:`excerpt`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from vigil.config import LABEL_NAME, Settings
from vigil.errors import BadRequest
from vigil.pipeline.frames import FIELDS
from vigil.pipeline.query import check_model, check_sensitivity
from vigil.units import MinDeviation, parse_duration_s, parse_min_deviation

__all__ = ["read_json", "reject_unknown", "DetectionOptions", "detection_options", "as_bool", "excerpt",
           "check_json", "text_field", "label_name"]

_SURROGATE = re.compile("[\ud800-\udfff]")
_DEPTH_CHARS = re.compile(rb"[\[\]{}]")

OPTION_KEYS = ("model", "sensitivity", "train_window", "source", "legend", "fields", "group_by", "min_deviation")


def read_json(*, default: Any = None) -> Any:
    """The body as JSON whatever the Content-Type says (Infinity sends ``text/plain``), checked by
    :func:`check_json` against the configured bounds."""
    limits = _settings().server
    where = f"{request.method} {request.path}"
    size = request.content_length
    if size is None or size <= limits.max_body_bytes:
        raw = request.get_data(cache=True)  # Flask's MAX_CONTENT_LENGTH stops a chunked body too
        size = len(raw)
    if size > limits.max_body_bytes:
        # 413, as werkzeug answers when it stops reading (the HTTP error handler makes it JSON)
        raise RequestEntityTooLarge(f"the request body has {size} bytes; at most {limits.max_body_bytes} are "
                                    "accepted (server.max_body_bytes)")
    if not raw.strip():
        if default is not None:
            return default
        raise BadRequest(f"{where}: the request body is empty; it must be a JSON object", code="empty_body")
    _check_depth(raw, limits.max_json_depth, where)
    try:
        body = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"{where}: the request body is not valid JSON: {excerpt(str(exc), 160)}",
                         code="malformed_json") from None
    check_json(body, where, max_depth=limits.max_json_depth, max_chars=limits.max_query_chars)
    return body


def _settings() -> Settings:
    from flask import current_app

    return current_app.config.get("VIGIL_SETTINGS") or _DEFAULTS


_DEFAULTS = Settings()


def _check_depth(raw: bytes, max_depth: int, where: str) -> None:
    """Refuse nesting deeper than ``max_depth`` before parsing (the parser would recurse on it).

    Brackets inside strings count too: an over-estimate, so a legitimate body is refused only if
    it nests deeply in its text as well, which no Grafana body does.
    """
    depth = 0
    for match in _DEPTH_CHARS.finditer(raw):
        if match.group() in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                raise BadRequest(f"{where}: the request body nests arrays/objects more than {max_depth} deep "
                                 "(server.max_json_depth)", code="body_too_deep")
        elif depth:
            depth -= 1


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {excerpt(text, 40)} is too large")
    return number


def check_json(value: Any, where: str, *, max_depth: int, max_chars: int) -> None:
    """Walk a parsed body (iteratively) and refuse lone surrogates, over-long strings and keys, and
    nesting deeper than ``max_depth``: every later step may then encode and bound what it reads."""
    stack: list[tuple[Any, str, int]] = [(value, "body", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > max_depth:
            raise BadRequest(f"{where}: {path} nests more than {max_depth} deep (server.max_json_depth)",
                             code="body_too_deep")
        if isinstance(item, str):
            _check_text(item, path, where, max_chars)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, f"{path} key", where, 256)
                stack.append((child, f"{path}.{excerpt(key, 40, quote=False)}", depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def _check_text(text: str, path: str, where: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise BadRequest(f"{where}: {path} has {len(text)} characters; at most {max_chars} are accepted "
                         f"(server.max_query_chars): {excerpt(text)}", code="value_too_long")
    if _SURROGATE.search(text):
        raise BadRequest(f"{where}: {path} is not valid Unicode text (a lone UTF-16 surrogate such as \\ud800): "
                         f"{excerpt(text)}", code="bad_text")
    if "\x00" in text:
        raise BadRequest(f"{where}: {path} contains a NUL character: {excerpt(text)}", code="bad_text")


def excerpt(value: Any, limit: int = 80, *, quote: bool = True) -> str:
    """A short, safe quotation of a (possibly huge or hostile) value for an error message:
    ``repr`` cut to ``limit`` characters, with the full length said when cut."""
    text = repr(value) if quote else str(value)
    text = _SURROGATE.sub("\ufffd", text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def text_field(value: Any, where: str, *, required: bool = False) -> str | None:
    """A string field: None when absent; a clear 400 when it is a number, object or list."""
    if value is None or (value == "" and not required):
        if required:
            raise BadRequest(f"{where} is required", code="bad_field")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a string; got {type(value).__name__} {excerpt(value, 40)}",
                         code="bad_field")
    return value


def label_name(value: Any, where: str) -> str:
    """A Prometheus label name (``[a-zA-Z_][a-zA-Z0-9_]*``), never text that could be pasted into a path."""
    if not isinstance(value, str) or not LABEL_NAME.match(value):
        raise BadRequest(f"{where} must be a label name ([a-zA-Z_][a-zA-Z0-9_]*); got {excerpt(value, 60)}",
                         code="bad_label_name")
    return value


def reject_unknown(obj: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    allowed = tuple(allowed)
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise BadRequest(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(excerpt(u, 40) for u in unknown[:5])}; "
                         f"known: {', '.join(allowed)}", code="unknown_field")


def as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", ""):
        return value.strip().lower() in ("true", "1", "yes")
    raise BadRequest(f"{where}: must be true or false; got {excerpt(value)}", code="bad_field")


@dataclass(frozen=True)
class DetectionOptions:
    model: str
    sensitivity: str
    train_window_s: float
    source: str
    legend: str | None
    fields: tuple[str, ...]
    group_by: tuple[str, ...] = ()
    min_deviation: MinDeviation | None = None


def detection_options(obj: Mapping[str, Any], settings: Settings, where: str, *, prefix: str = "") -> DetectionOptions:
    """The detection options of a panel's payload or an Infinity body; ``prefix`` is how the
    message names a field (``payload.`` for simPod)."""
    det = settings.detection
    model = obj.get("model") or det.model
    model = check_model(model, where, excerpt(model))
    sensitivity = obj.get("sensitivity") or det.sensitivity
    sensitivity = check_sensitivity(sensitivity, where, excerpt(sensitivity))
    train_window = obj.get("train_window")
    try:
        train_window_s = parse_duration_s(train_window) if train_window not in (None, "") else det.train_window_s
    except ValueError as exc:
        raise BadRequest(f"{where}: train_window must be {exc}", code="bad_train_window") from None
    source = obj.get("source") or "prometheus"
    if not isinstance(source, str) or source not in ("prometheus", "loki"):
        raise BadRequest(f"{where}: source must be prometheus or loki; got {excerpt(source)}", code="bad_source")
    legend = obj.get("legend") or None
    if legend is not None and not isinstance(legend, str):
        raise BadRequest(f"{where}: legend must be a string such as '{{{{instance}}}}'; got {excerpt(legend)}",
                         code="bad_field")
    fields = obj.get("fields") or FIELDS
    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",") if f.strip()]
    if not isinstance(fields, (list, tuple)) or not all(isinstance(f, str) and f in FIELDS for f in fields):
        raise BadRequest(f"{where}: fields must be a list of {', '.join(FIELDS)}; got {excerpt(fields)}",
                         code="bad_field")
    min_deviation = None
    if obj.get("min_deviation") not in (None, ""):
        try:
            min_deviation = parse_min_deviation(obj["min_deviation"])
        except ValueError as exc:
            raise BadRequest(f"{where}: {prefix}min_deviation must be {exc}", code="bad_field") from None
    return DetectionOptions(model, sensitivity, train_window_s, source, legend, tuple(fields),
                            group_by_option(obj.get("group_by"), f"{where}: {prefix}group_by"), min_deviation)


def group_by_option(value: Any, where: str) -> tuple[str, ...]:
    """``["instance"]`` or ``"instance, job"`` -> ``("instance", "job")``; absent or empty -> ``()``."""
    if value in (None, "", []):
        return ()
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else value
    if (not isinstance(names, list) or not names
            or not all(isinstance(n, str) and LABEL_NAME.match(n) for n in names)):
        raise BadRequest(f"{where} must be a list of label names such as [\"instance\"] (or \"instance,job\"); "
                         f"got {excerpt(value)}", code="bad_group_by")
    return tuple(dict.fromkeys(names))
