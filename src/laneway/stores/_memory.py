"""``memory://``: the in-process store, for tests and ephemeral use.

It follows the same contract as the durable stores: the rulebook in
``_rules`` decides every write, and values are kept as ``_codec`` decodes
them, so it accepts, refuses and returns exactly what SQLite does; everything
is lost when the process ends.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

from .._codec import canonical, clean_text
from .._types import Event, JobInfo, JobState
from . import _rules as rules
from ._base import Store

__all__ = ["MemoryStore"]

T = TypeVar("T")


class _Rec:
    __slots__ = (
        "attempts",
        "created_at",
        "error",
        "handler",
        "id",
        "idempotency_key",
        "lost",
        "output",
        "payload",
        "priority",
        "reason",
        "result",
        "session",
        "state",
        "updated_at",
    )

    def __init__(
        self,
        job_id: str,
        session: str,
        handler: str,
        payload: Any,
        priority: int,
        key: str | None,
        now: float,
    ) -> None:
        self.id = job_id
        self.session = session
        self.handler = handler
        self.payload = payload
        self.priority = priority
        self.idempotency_key = key
        self.state = JobState.QUEUED
        self.attempts = 0
        self.lost = 0
        self.output = False
        self.result: Any = None
        self.error: str | None = None
        self.reason: str | None = None
        self.created_at = now
        self.updated_at = now

    def info(self) -> JobInfo:
        return JobInfo(
            id=self.id,
            session=self.session,
            handler=self.handler,
            state=self.state,
            attempts=self.attempts,
            error=self.error,
            result=self.result,
            reason=self.reason,
            payload=self.payload,
            priority=self.priority,
            lost=self.lost,
            idempotency_key=self.idempotency_key,
            created_at=self.created_at,
            updated_at=self.updated_at,
            output=self.output,
        )


class MemoryStore(Store):
    """Jobs and events in dictionaries."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._jobs: dict[str, _Rec] = {}
        self._keys: dict[tuple[str, str], str] = {}
        self._events: dict[str, list[Event]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- life ------------------------------------------------------------------

    async def open(self) -> list[JobInfo]:
        self._loop = asyncio.get_running_loop()
        return [r.info() for r in self._jobs.values() if r.state in rules.LIVE_STATES]

    async def close(self) -> None:
        self._loop = None

    # -- helpers ---------------------------------------------------------------

    def _done(self, value: T) -> asyncio.Future[T]:
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        fut.set_result(value)
        return fut

    def _append(
        self, session: str, job_id: str | None, kind: str, data: Any, now: float | None = None
    ) -> Event:
        log = self._events.get(session)
        if log is None:
            log = self._events[session] = []
        ev = Event(len(log) + 1, session, job_id, kind, data, now or time.time())
        log.append(ev)
        return ev

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
    ) -> asyncio.Future[tuple[JobInfo, Event | None]]:
        payload, _ = canonical(payload, "payload")
        if idempotency_key is not None:
            existing = self._keys.get((session, idempotency_key))
            if existing is not None:
                return self._done((self._jobs[existing].info(), None))
            self._keys[(session, idempotency_key)] = job_id
        now = time.time()
        rec = _Rec(job_id, session, handler, payload, priority, idempotency_key, now)
        self._jobs[job_id] = rec
        ev = self._append(session, job_id, "job.queued", rules.queued_data(handler, payload), now)
        return self._done((rec.info(), ev))

    def start_attempt(self, job_id: str, attempt: int) -> asyncio.Future[Event | None]:
        rec = self._jobs.get(job_id)
        if rec is None or not rules.may_start(rec.state, rec.attempts, attempt):
            return self._done(None)
        rec.state = JobState.RUNNING
        rec.attempts = attempt
        rec.output = False
        rec.updated_at = now = time.time()
        ev = self._append(rec.session, job_id, "job.started", rules.started_data(attempt), now)
        return self._done(ev)

    def append_event(
        self, session: str, job_id: str | None, kind: str, data: Any, *, attempt: int | None
    ) -> asyncio.Future[Event | None]:
        data, _ = canonical(data, "event data")
        if attempt is not None:
            rec = self._jobs.get(job_id) if job_id is not None else None
            if rec is None or not rules.may_write(rec.state, rec.attempts, attempt):
                return self._done(None)
            rec.output = True
        return self._done(self._append(session, job_id, kind, data))

    def retry(
        self,
        job_id: str,
        attempt: int,
        *,
        error: str | None,
        reason: str,
        lost: bool,
        delay: float,
    ) -> asyncio.Future[Event | None]:
        rec = self._jobs.get(job_id)
        if rec is None or not rules.may_retry(rec.state, rec.attempts, attempt):
            return self._done(None)
        rec.state = JobState.QUEUED
        rec.error, rec.reason = clean_text(error), reason
        rec.lost += int(lost)
        rec.updated_at = time.time()
        data = rules.retry_data(attempt, reason, rec.error, delay)
        return self._done(self._append(rec.session, job_id, "job.retry", data))

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
    ) -> asyncio.Future[Event | None]:
        result, _ = canonical(result, "result")
        error = clean_text(error)
        rec = self._jobs.get(job_id)
        if rec is None or not rules.may_finish(rec.state, rec.attempts, attempt):
            return self._done(None)
        rec.state = state
        rec.result, rec.error, rec.reason = result, error, reason
        rec.lost += int(lost)
        rec.updated_at = now = time.time()
        data = rules.terminal_data(
            state, attempts=attempt, result=result, error=error, reason=reason
        )
        kind = rules.terminal_kind(state)
        return self._done(self._append(rec.session, job_id, kind, data, now))

    def requeue(self, job_id: str) -> asyncio.Future[tuple[JobInfo, Event] | None]:
        rec = self._jobs.get(job_id)
        if rec is None or not rules.may_requeue(rec.state):
            return self._done(None)
        previous = rec.state
        rec.state = JobState.QUEUED
        rec.attempts = rec.lost = 0
        rec.result = rec.error = rec.reason = None
        rec.updated_at = time.time()
        data = rules.requeued_data(rec.handler, rec.payload, previous)
        ev = self._append(rec.session, job_id, "job.queued", data)
        return self._done((rec.info(), ev))

    # -- reads -----------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobInfo | None:
        rec = self._jobs.get(job_id)
        return rec.info() if rec is not None else None

    async def list_jobs(
        self, *, state: JobState | None = None, session: str | None = None, limit: int = 100
    ) -> list[JobInfo]:
        out: list[JobInfo] = []
        for rec in reversed(self._jobs.values()):
            if (state is None or rec.state is state) and (
                session is None or rec.session == session
            ):
                out.append(rec.info())
                if len(out) >= limit:
                    break
        return out

    async def read_events(self, session: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        log = self._events.get(session, [])
        start = max(0, after)
        return log[start : start + limit]

    async def history(self, session: str, *, before: int, limit: int) -> list[Event]:
        log = self._events.get(session, [])
        end = max(0, min(len(log), before - 1))
        return log[max(0, end - limit) : end]
