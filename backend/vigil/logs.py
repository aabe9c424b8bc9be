"""JSON-lines logging on stdout: one object per line with ``ts``, ``level``, ``logger``, ``msg``,
``request_id`` and any ``extra=`` fields. Gunicorn's own loggers use the same formatter.

Secrets never reach a log line: configuration secrets are :class:`vigil.config.Secret`, whose
``repr`` is masked, keys that look like credentials are masked here as a second guard, and
``Bearer ...`` / ``token=...`` text inside any value is masked too. Lines are bounded: a value
longer than ``MAX_VALUE_CHARS`` is cut and says its length, so no request body is ever logged
whole. Python warnings (scikit-learn's among them) go through the same JSON lines, and gunicorn's
access log is off (the app logs each request, without its query string).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any

__all__ = ["JsonFormatter", "configure_logging", "request_id_var", "gunicorn_logconfig"]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_SECRET_WORDS = ("token", "password", "secret", "authorization", "api_key")
#: the longest value a log line carries whole (messages, extras, tracebacks each)
MAX_VALUE_CHARS = 2000
_SECRET_TEXT = re.compile(r"(?i)(bearer\s+|(?:token|password|secret|api_key|access_token)=)[^\s&\"',;]+")


def _clean(value: str) -> str:
    value = _SECRET_TEXT.sub(lambda m: m.group(1) + "***", value)
    if len(value) > MAX_VALUE_CHARS:
        return f"{value[:MAX_VALUE_CHARS]}... ({len(value)} characters)"
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _clean(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            out["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key in _STANDARD or key in out or key.startswith("_"):
                continue
            if any(w in key.lower() for w in _SECRET_WORDS):
                out[key] = "***"
            elif isinstance(value, (bool, int, float)) or value is None:
                out[key] = value
            else:
                text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
                out[key] = _clean(text) if isinstance(value, str) or len(text) > MAX_VALUE_CHARS else value
        if record.exc_info:
            out["exception"] = _clean(self.formatException(record.exc_info))
        # surrogates (from hostile input) cannot be written as UTF-8: escape them, never fail
        return json.dumps(out, default=str, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")


def configure_logging(level: str = "INFO") -> None:
    """Route the root logger to stdout as JSON lines (idempotent)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # warnings.warn(...) -> logger "py.warnings" -> JSON


def gunicorn_logconfig(level: str = "INFO") -> dict[str, Any]:
    """``logconfig_dict`` that sends gunicorn's error and access logs through the JSON formatter."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "vigil.logs.JsonFormatter"}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
        "root": {"level": level.upper(), "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["stdout"], "propagate": False},
            # off: the app logs every request as JSON with its request id and without the query
            # string (which may carry tokens); gunicorn's line would repeat it, unscrubbed
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
            "py.warnings": {"level": "WARNING", "handlers": ["stdout"], "propagate": False},
        },
    }
