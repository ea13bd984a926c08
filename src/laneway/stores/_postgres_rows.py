"""Rows of the PostgreSQL store as laneway values, and the JSON the store writes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .._types import Event, JobInfo, JobState

__all__ = ["EVENT_COLUMNS", "JOB_COLUMNS", "encode", "event", "job_info"]

JOB_COLUMNS = (
    "id, session, handler, state, attempts, error, result, reason, payload, priority, lost, "
    "idempotency_key, created_at, updated_at, output"
)
EVENT_COLUMNS = "seq, session, job_id, kind, data, at"

_STATES = {state.value: state for state in JobState}
_json_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_decode: Callable[[str], Any] = json.JSONDecoder().decode


def encode(value: Any) -> str:
    """Strict JSON text (no NaN); what every payload, result and event data is stored as."""
    return "null" if value is None else _json_encode(value)


def job_info(row: Any) -> JobInfo:
    """A ``JobInfo`` from a row selected with ``JOB_COLUMNS``."""
    return JobInfo(
        id=row[0],
        session=row[1],
        handler=row[2],
        state=_STATES[row[3]],
        attempts=row[4],
        error=row[5],
        result=_decode(row[6]),
        reason=row[7],
        payload=_decode(row[8]),
        priority=row[9],
        lost=row[10],
        idempotency_key=row[11],
        created_at=row[12],
        updated_at=row[13],
        output=bool(row[14]),
    )


def event(row: Any) -> Event:
    """An ``Event`` from a row selected with ``EVENT_COLUMNS``."""
    return Event(row[0], row[1], row[2], row[3], _decode(row[4]), row[5])
