"""Logging: readable lines on a terminal, one JSON object per line everywhere else."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

# Values that must never be printed (provider keys); see `hide_secrets`.
_SECRETS: set[str] = set()


def hide_secrets(*values: str | None) -> None:
    """Replace these values by `[redacted]` in every log line, whatever path they took."""
    _SECRETS.update(v for v in values if v and len(v) >= 8)


def _scrub(line: str) -> str:
    for secret in _SECRETS:
        if secret in line:
            line = line.replace(secret, "[redacted]")
    return line


# Attributes every LogRecord has; anything else was passed through `extra=` and is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line, with the record's `extra` fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _scrub(orjson.dumps(entry, default=str).decode())


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s%(fields)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        fields = [
            f"{key}={value}"
            for key, value in vars(record).items()
            if key not in _STANDARD and key != "fields" and value is not None
        ]
        record.fields = (" " + " ".join(fields)) if fields else ""
        return _scrub(super().format(record))


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request it was logged for (if any)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from .context import request_id

        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


def configure_logging(level: str, fmt: str = "auto") -> None:
    """Route chatrelay's and uvicorn's logs to stderr in one format."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JSONFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The SDKs' own debug logs can print request headers; keep them quiet.
    for name in ("anthropic", "httpx", "httpx2", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
