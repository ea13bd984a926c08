"""Keep secrets out of the log: every record is scrubbed when it is made.

uvicorn logs a WebSocket's path with its query string at ``info`` (a
browser's ``?token=``), and at ``debug`` the websockets library logs request
headers (``Authorization: Bearer ...``). Scrubbing at record creation covers
every logger and every handler, including ones configured later.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["REDACTED", "Redactor", "install_redaction"]

REDACTED = "***"

_PATTERNS = (
    re.compile(r"([?&;]token=)[^&\s\"'#]+", re.IGNORECASE),
    re.compile(r"(authorization[\"']?\s*[:=,]\s*[\"']?\s*(?:\w+\s+)?)[^\s\"',)\]]+", re.I),
    re.compile(r"(bearer\s+)[^\s\"',)\]]+", re.IGNORECASE),
)


class Redactor:
    """Replaces the given secrets, ``token=`` query values and bearer credentials."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(rf"\g<1>{REDACTED}", text)
        return text

    def scrub(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # malformed arguments: the handler reports those
            return
        clean = self(message)
        if clean != message:
            record.msg, record.args = clean, None


def install_redaction(secrets: Iterable[str]) -> Callable[[], None]:
    """Scrub every log record made from now on; returns a function that undoes it."""
    redactor = Redactor(secrets)
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redactor.scrub(record)
        return record

    logging.setLogRecordFactory(factory)
    return lambda: logging.setLogRecordFactory(previous)
