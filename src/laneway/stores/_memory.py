"""``memory://``: the in-process store, for tests and ephemeral use.

It follows the same contract as the durable stores (fencing, idempotency,
exactly one terminal write) so the shared contract suite runs against it;
everything is lost when the process ends.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

from .._types import TERMINAL_STATES, Event, JobInfo, JobState
from ._base import Committed, Store, Write

__all__ = ["MemoryStore", "job_event_data"]

T = TypeVar("T")

_REQUEUEABLE = frozenset({JobState.FAILED, JobState.TIMED_OUT, JobState.DEAD})
_KIND = {state: f"job.{state.value}" for state in JobState}
_QUEUED = JobState.QUEUED
_Row = tuple[int, str | None, str, Any, float]


def requeued_event_data(
    handler: str, payload: Any, previous: str, attempts: int, lost: int
) -> dict[str, Any]:
    """The data of ``job.requeued``, which opens a new run of a job: the run it
    closes said how it ended, with how many attempts and losses (the new run
    counts from 0)."""
    return {
        "handler": handler,
        "payload": payload,
        "requeued_from": str(previous),
        "attempts": attempts,
        "lost": lost,
    }


def retry_event_data(
    attempt: int, reason: str, error: str | None, delay: float, counts_attempt: bool
) -> dict[str, Any]:
    """The data of a ``job.retry`` event (the same in every store)."""
    data: dict[str, Any] = {"attempt": attempt, "reason": reason, "error": error, "delay": delay}
    if not counts_attempt:
        data["counted"] = False
    return data


def job_event_data(
    state: JobState, *, attempts: int, result: Any, error: str | None, reason: str | None
) -> dict[str, Any]:
    """The data of a terminal ``job.<state>`` event (shared by every store)."""
    return {
        "state": str(state),
        "reason": reason,
        "error": error,
        "result": result,
        "attempts": attempts,
    }


def _copy(rec: JobInfo) -> JobInfo:
    """A copy of a record, for readers (positional: this runs per read)."""
    return JobInfo(
        rec.id,
        rec.session,
        rec.handler,
        rec.state,
        rec.attempts,
        rec.error,
        rec.result,
        rec.reason,
        rec.payload,
        rec.priority,
        rec.lost,
        rec.idempotency_key,
        rec.created_at,
        rec.updated_at,
        rec.output,
    )


class MemoryStore(Store):
    """Jobs and events in dictionaries."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        #: The records themselves are ``JobInfo``s; readers get copies.
        self._jobs: dict[str, JobInfo] = {}
        self._keys: dict[tuple[str, str], str] = {}
        #: Per session, events as plain tuples (seq, job_id, kind, data, at): the
        #: collector stops tracking tuples of plain values, so a long log costs
        #: nothing at each full collection. Readers get ``Event``s.
        self._events: dict[str, list[_Row]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- life ------------------------------------------------------------------

    async def open(self) -> list[JobInfo]:
        self._loop = asyncio.get_running_loop()
        return [_copy(r) for r in self._jobs.values() if r.state not in TERMINAL_STATES]

    async def close(self) -> None:
        self._loop = None

    # -- helpers ---------------------------------------------------------------

    def _append(
        self, session: str, job_id: str | None, kind: str, data: Any, now: float | None = None
    ) -> Event:
        log = self._events.get(session)
        if log is None:
            log = self._events[session] = []
        at = now or time.time()
        seq = len(log) + 1
        log.append((seq, job_id, kind, data, at))
        return Event(seq, session, job_id, kind, data, at)

    def _running(self, job_id: str, attempt: int) -> JobInfo | None:
        rec = self._jobs.get(job_id)
        if rec is None or rec.state is not JobState.RUNNING or rec.attempts != attempt:
            return None
        return rec

    # -- writes ----------------------------------------------------------------

    def add_job(
        self,
        *,
        job_id: str,
        session: str,
        handler: str,
        payload: Any,
        priority: int,
        idempotency_key: str | None,
    ) -> Write[tuple[JobInfo, Event | None]]:
        if idempotency_key is not None:
            existing = self._keys.get((session, idempotency_key))
            if existing is not None:
                return Committed((_copy(self._jobs[existing]), None))
            self._keys[(session, idempotency_key)] = job_id
        now = time.time()
        rec = JobInfo(
            job_id, session, handler, _QUEUED, 0, None, None, None, payload, priority, 0,
            idempotency_key, now, now,
        )  # fmt: skip
        self._jobs[job_id] = rec
        data = {"handler": handler, "payload": payload}
        ev = self._append(session, job_id, "job.queued", data, now)
        # The record itself, not a copy: nothing reads it but the caller, at once.
        return Committed((rec, ev))

    def start_attempt(self, job_id: str, attempt: int) -> Write[Event | None]:
        rec = self._jobs.get(job_id)
        if rec is None or rec.state is not JobState.QUEUED or attempt != rec.attempts + 1:
            return Committed(None)
        rec.state = JobState.RUNNING
        rec.attempts = attempt
        rec.output = False
        rec.updated_at = now = time.time()
        ev = self._append(rec.session, job_id, "job.started", {"attempt": attempt}, now)
        return Committed(ev)

    def append_event(
        self, session: str, job_id: str | None, kind: str, data: Any, *, attempt: int | None
    ) -> Write[Event | None]:
        if attempt is not None:
            rec = self._running(job_id, attempt) if job_id is not None else None
            if rec is None:
                return Committed(None)
            rec.output = True
        return Committed(self._append(session, job_id, kind, data))

    def retry(
        self,
        job_id: str,
        attempt: int,
        *,
        error: str | None,
        reason: str,
        lost: bool,
        delay: float,
        counts_attempt: bool = True,
    ) -> Write[Event | None]:
        rec = self._running(job_id, attempt)
        if rec is None:
            return Committed(None)
        rec.state = JobState.QUEUED
        rec.error, rec.reason = error, reason
        rec.lost += int(lost)
        rec.updated_at = time.time()
        data = retry_event_data(attempt, reason, error, delay, counts_attempt)
        if not counts_attempt:
            rec.attempts = attempt - 1
        return Committed(self._append(rec.session, job_id, "job.retry", data))

    def finish(
        self,
        job_id: str,
        attempt: int,
        state: JobState,
        *,
        result: Any,
        error: str | None,
        reason: str | None,
        lost: bool,
    ) -> Write[Event | None]:
        rec = self._jobs.get(job_id)
        if rec is None or rec.state in TERMINAL_STATES or rec.attempts != attempt:
            return Committed(None)
        rec.state = state
        rec.result, rec.error, rec.reason = result, error, reason
        rec.lost += int(lost)
        rec.updated_at = now = time.time()
        data = job_event_data(state, attempts=attempt, result=result, error=error, reason=reason)
        return Committed(self._append(rec.session, job_id, _KIND[state], data, now))

    def requeue(self, job_id: str) -> Write[tuple[JobInfo, Event] | None]:
        rec = self._jobs.get(job_id)
        if rec is None or rec.state not in _REQUEUEABLE:
            return Committed(None)
        data = requeued_event_data(rec.handler, rec.payload, rec.state, rec.attempts, rec.lost)
        rec.state = JobState.QUEUED
        rec.attempts = rec.lost = 0
        rec.result = rec.error = rec.reason = None
        rec.updated_at = time.time()
        ev = self._append(rec.session, job_id, "job.requeued", data)
        return Committed((_copy(rec), ev))

    # -- reads -----------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobInfo | None:
        rec = self._jobs.get(job_id)
        return _copy(rec) if rec is not None else None

    async def list_jobs(
        self, *, state: JobState | None = None, session: str | None = None, limit: int = 100
    ) -> list[JobInfo]:
        out: list[JobInfo] = []
        for rec in reversed(self._jobs.values()):
            if (state is None or rec.state is state) and (
                session is None or rec.session == session
            ):
                out.append(_copy(rec))
                if len(out) >= limit:
                    break
        return out

    async def read_events(self, session: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        log = self._events.get(session, [])
        start = max(0, after)
        return [Event(r[0], session, *r[1:]) for r in log[start : start + limit]]

    async def history(self, session: str, *, before: int, limit: int) -> list[Event]:
        log = self._events.get(session, [])
        end = max(0, min(len(log), before - 1))
        return [Event(r[0], session, *r[1:]) for r in log[max(0, end - limit) : end]]
