"""Log lines for ``laneway serve``: text with the structured fields appended, or
one JSON object per line (``LANEWAY_LOG_FORMAT=json``) for platforms that
ingest logs. Either way every ``extra`` field of a record (job_id, session,
reason, attempt, ...) is in the line."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging"]

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's message again, with terminal colour codes
}
#: fields already shown in the message (a blocking stack spans many lines)
_IN_MESSAGE = frozenset({"stack"})


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's structured fields: what was passed as ``extra``."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def event_name(message: str) -> str | None:
    """``job.retry`` of ``"job.retry: ..."``: the fact a laneway record reports."""
    head, sep, _ = message.partition(":")
    return head if sep and "." in head and " " not in head else None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if (event := event_name(message)) is not None:
            out["event"] = event
        extra = fields(record)
        if "stack" in extra:  # keep the message to its first line; the stack is a field
            message = message.split("\n", 1)[0]
        out["message"] = message
        out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = {k: v for k, v in fields(record).items() if k not in _IN_MESSAGE}
        if not extra:
            return line
        first, nl, rest = line.partition("\n")
        shown = " ".join(
            f"{k}={str(v)!r}" if isinstance(v, str) else f"{k}={v}" for k, v in extra.items()
        )
        return f"{first} [{shown}]{nl}{rest}"


def configure_logging(level: str, fmt: Literal["text", "json"]) -> None:
    """One stderr handler on the root logger; uvicorn's loggers propagate to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
