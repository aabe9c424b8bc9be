"""Reading request bodies and detection options, with errors that name what was wrong."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from flask import request

from ..config import LABEL_NAME, MODELS, SENSITIVITIES, Settings
from ..errors import BadRequest
from ..frames import FIELDS
from ..units import MinDeviation, parse_duration_s, parse_min_deviation

__all__ = ["read_json", "reject_unknown", "DetectionOptions", "detection_options", "as_bool"]

OPTION_KEYS = ("model", "sensitivity", "train_window", "source", "legend", "fields", "group_by", "min_deviation")


def read_json(*, default: Any = None) -> Any:
    """The body as JSON whatever the Content-Type says (Infinity sends ``text/plain``)."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        if default is not None:
            return default
        raise BadRequest(f"{request.method} {request.path}: the request body is empty; it must be a JSON object",
                         code="empty_body")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{request.method} {request.path}: the request body is not valid JSON: {exc}",
                         code="malformed_json") from None


def reject_unknown(obj: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    allowed = tuple(allowed)
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise BadRequest(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(allowed)}", code="unknown_field")


def as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", ""):
        return value.strip().lower() in ("true", "1", "yes")
    raise BadRequest(f"{where}: must be true or false; got {value!r}", code="bad_field")


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
    if model not in MODELS:
        raise BadRequest(f"{where}: model must be one of {', '.join(MODELS)}; got {model!r}", code="unknown_model")
    sensitivity = obj.get("sensitivity") or det.sensitivity
    if sensitivity not in SENSITIVITIES:
        raise BadRequest(f"{where}: sensitivity must be one of {', '.join(SENSITIVITIES)}; got {sensitivity!r}",
                         code="bad_sensitivity")
    train_window = obj.get("train_window")
    try:
        train_window_s = parse_duration_s(train_window) if train_window not in (None, "") else det.train_window_s
    except ValueError as exc:
        raise BadRequest(f"{where}: train_window must be {exc}", code="bad_train_window") from None
    source = obj.get("source") or "prometheus"
    if source not in ("prometheus", "loki"):
        raise BadRequest(f"{where}: source must be prometheus or loki; got {source!r}", code="bad_source")
    legend = obj.get("legend") or None
    if legend is not None and not isinstance(legend, str):
        raise BadRequest(f"{where}: legend must be a string such as '{{{{instance}}}}'; got {legend!r}",
                         code="bad_field")
    fields = obj.get("fields") or FIELDS
    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",") if f.strip()]
    if not isinstance(fields, (list, tuple)) or not all(f in FIELDS for f in fields):
        raise BadRequest(f"{where}: fields must be a list of {', '.join(FIELDS)}; got {fields!r}", code="bad_field")
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
                         f"got {value!r}", code="bad_group_by")
    return tuple(dict.fromkeys(names))
