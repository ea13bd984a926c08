"""``memory://``: the in-process store, for tests and ephemeral use.

It follows the same contract as the durable stores (fencing, idempotency,
exactly one terminal write) so the shared contract suite runs against it;
everything is lost when the process ends.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Iterator
from typing import Any, TypeVar

from .._codec import canonical, clean_text
from .._types import Event, JobInfo, JobState
from . import _rules as rules
from ._base import Committed, Store, Write, namespace_of

__all__ = ["MemoryStore"]

T = TypeVar("T")

_QUEUED = JobState.QUEUED
_Row = tuple[int, str | None, str, Any, float]


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
        #: Every job in acceptance order, its place in that order, and the same by
        #: namespace: the pages of ``list_jobs`` without a scan of other tenants.
        self._order: list[JobInfo] = []
        self._nums: dict[str, int] = {}
        self._namespaces: dict[str, list[JobInfo]] = {}
        self._keys: dict[tuple[str, str], str] = {}
        #: Per session, events as plain tuples (seq, job_id, kind, data, at): the
        #: collector stops tracking tuples of plain values, so a long log costs
        #: nothing at each full collection. Readers get ``Event``s.
        self._events: dict[str, list[_Row]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- life ------------------------------------------------------------------

    async def open(self) -> list[JobInfo]:
        self._loop = asyncio.get_running_loop()
        return [_copy(r) for r in self._jobs.values() if r.state in rules.LIVE_STATES]

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
        payload, _ = canonical(payload, "payload")
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
        self._nums[job_id] = len(self._order)
        self._order.append(rec)
        head, slash, _ = session.partition("/")
        if slash:
            self._namespaces.setdefault(head + slash, []).append(rec)
        ev = self._append(session, job_id, "job.queued", rules.queued_data(handler, payload), now)
        # The record itself, not a copy: nothing reads it but the caller, at once.
        return Committed((rec, ev))

    def start_attempt(self, job_id: str, attempt: int) -> Write[Event | None]:
        rec = self._jobs.get(job_id)
        if rec is None or not rules.may_start(rec.state, rec.attempts, attempt):
            return Committed(None)
        rec.state = JobState.RUNNING
        rec.attempts = attempt
        rec.output = False
        rec.updated_at = now = time.time()
        ev = self._append(rec.session, job_id, "job.started", rules.started_data(attempt), now)
        return Committed(ev)

    def append_event(
        self, session: str, job_id: str | None, kind: str, data: Any, *, attempt: int | None
    ) -> Write[Event | None]:
        data, _ = canonical(data, "event data")
        if attempt is not None:
            rec = self._jobs.get(job_id) if job_id is not None else None
            if rec is None or not rules.may_write(rec.state, rec.attempts, attempt):
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
    ) -> Write[Event | None]:
        rec = self._jobs.get(job_id)
        if rec is None or not rules.may_retry(rec.state, rec.attempts, attempt):
            return Committed(None)
        rec.state = JobState.QUEUED
        rec.error, rec.reason = clean_text(error), reason
        rec.lost += int(lost)
        rec.updated_at = time.time()
        data = rules.retry_data(attempt, reason, rec.error, delay)
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
        result, _ = canonical(result, "result")
        error = clean_text(error)
        rec = self._jobs.get(job_id)
        if rec is None or not rules.may_finish(rec.state, rec.attempts, attempt):
            return Committed(None)
        rec.state = state
        rec.result, rec.error, rec.reason = result, error, reason
        rec.lost += int(lost)
        rec.updated_at = now = time.time()
        data = rules.terminal_data(
            state, attempts=attempt, result=result, error=error, reason=reason
        )
        kind = rules.terminal_kind(state)
        return Committed(self._append(rec.session, job_id, kind, data, now))

    def requeue(self, job_id: str) -> Write[tuple[JobInfo, Event] | None]:
        rec = self._jobs.get(job_id)
        if rec is None or not rules.may_requeue(rec.state):
            return Committed(None)
        previous = rec.state
        rec.state = JobState.QUEUED
        rec.attempts = rec.lost = 0
        rec.result = rec.error = rec.reason = None
        rec.updated_at = time.time()
        data = rules.requeued_data(rec.handler, rec.payload, previous)
        ev = self._append(rec.session, job_id, "job.queued", data)
        return Committed((_copy(rec), ev))

    # -- reads -----------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobInfo | None:
        rec = self._jobs.get(job_id)
        return _copy(rec) if rec is not None else None

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        session: str | None = None,
        prefix: str | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[JobInfo]:
        out: list[JobInfo] = []
        for rec in self._newest_first(prefix, before):
            if (
                (state is None or rec.state is state)
                and (session is None or rec.session == session)
                and (prefix is None or rec.session.startswith(prefix))
            ):
                out.append(_copy(rec))
                if len(out) >= limit:
                    break
        return out

    def _newest_first(self, prefix: str | None, before: str | None) -> Iterator[JobInfo]:
        recs = self._order
        if prefix is not None and namespace_of(prefix) is not None:
            recs = self._namespaces.get(prefix, [])
        end = len(recs)
        if before is not None:
            num = self._nums.get(before)
            nums = self._nums
            end = 0 if num is None else bisect.bisect_left(recs, num, key=lambda r: nums[r.id])
        return (recs[i] for i in range(end - 1, -1, -1))

    async def read_events(self, session: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        log = self._events.get(session, [])
        start = max(0, after)
        return [Event(r[0], session, *r[1:]) for r in log[start : start + limit]]

    async def history(self, session: str, *, before: int, limit: int) -> list[Event]:
        log = self._events.get(session, [])
        end = max(0, min(len(log), before - 1))
        return [Event(r[0], session, *r[1:]) for r in log[max(0, end - limit) : end]]
