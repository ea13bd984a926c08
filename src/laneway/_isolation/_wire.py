"""The parent <-> worker protocol: one JSON object per line over a Unix socket.

Parent to worker: ``run`` (a job) and ``reply`` (the answer to an ``emit`` or
``history`` request). Worker to parent: ``ready`` (once, after it made its own
process group), ``progress``, ``idle``, ``emit``, ``history`` and ``done``.
``json.dumps`` escapes newlines inside strings, so a newline always ends a
message. Payloads, event data and results are JSON anyway, so nothing else
needs a serialiser.
"""

from __future__ import annotations

import json
from typing import Any

from .._errors import InvalidPayload
from .._types import Event

__all__ = ["LINE_LIMIT", "decode", "encode", "event_from_wire", "event_to_wire"]

LINE_LIMIT = 1 << 30  # one message may be this large (a big payload or result)

_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode(msg: dict[str, Any], what: str = "message") -> bytes:
    """One message as a line; ``InvalidPayload`` if it is not strict JSON."""
    try:
        return (_dumps(msg) + "\n").encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPayload(f"{what} is not JSON-serialisable: {exc}") from None


def decode(line: bytes | bytearray) -> dict[str, Any]:
    msg: dict[str, Any] = json.loads(line)
    return msg


def event_to_wire(event: Event | None) -> list[Any] | None:
    if event is None:
        return None
    return [event.seq, event.session, event.job_id, event.kind, event.data, event.at]


def event_from_wire(raw: list[Any] | None) -> Event | None:
    if raw is None:
        return None
    seq, session, job_id, kind, data, at = raw
    return Event(seq, session, job_id, kind, data, at)
