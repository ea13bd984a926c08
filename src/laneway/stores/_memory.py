"""``memory://``: the in-process store, for tests and ephemeral use.

It follows the same contract as the durable stores (fencing, idempotency,
exactly one terminal write) so the shared contract suite runs against it;
everything is lost when the process ends.

Everything it keeps is plain tuples of plain values (a state as its string,
laneway's own event data as its values): the cyclic collector stops tracking
such tuples, so the jobs and logs of a long run cost nothing at each full
collection. Readers get ``JobInfo``s and ``Event``s built from them.
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

_STATE = {state.value: state for state in JobState}
_VALUE = {state: state.value for state in JobState}  # the enum's .value is a slow property
_QUEUED, _RUNNING = JobState.QUEUED.value, JobState.RUNNING.value
_LIVE = frozenset(str(state) for state in rules.LIVE_STATES)
#: An event row: (seq, job_id, kind, data, at), or for laneway's own events
#: (seq, job_id, kind, keys, at, *values): a dict is tracked, its values are not.
_Row = tuple[Any, ...]
_SHORT_LOG = 16
#: A job row: ``JobInfo``'s fields in order, the state as its string value.
_Job = tuple[
    str, str, str, str, int, str | None, Any, str | None, Any, int, int, str | None, float,
    float, bool,
]  # fmt: skip


#: The keys of laneway's own event data, in the order the writes build them.
_QUEUED_KEYS = tuple(rules.queued_data("", None))
_REQUEUED_KEYS = tuple(rules.requeued_data("", None, _QUEUED))
_STARTED_KEYS = tuple(rules.started_data(0))
_RETRY_KEYS = tuple(rules.retry_data(0, "", None, 0.0))
_UNCOUNTED_RETRY_KEYS = tuple(rules.retry_data(0, "", None, 0.0, counts_attempt=False))
_TERMINAL_KEYS = tuple(
    rules.terminal_data(JobState.SUCCEEDED, attempts=0, result=None, error=None, reason=None)
)


def _info(rec: _Job) -> JobInfo:
    """The ``JobInfo`` of a job row, for readers (positional: this runs per read)."""
    jid, session, handler, state, attempts, error, result, reason, *rest = rec
    payload, priority, lost, key, created_at, updated_at, output = rest
    return JobInfo(
        jid, session, handler, _STATE[state], attempts, error, result, reason, payload,
        priority, lost, key, created_at, updated_at, output,
    )  # fmt: skip


def _event(session: str, row: _Row) -> Event:
    if len(row) == 5:
        return Event(row[0], session, row[1], row[2], row[3], row[4])
    return Event(row[0], session, row[1], row[2], dict(zip(row[3], row[5:], strict=True)), row[4])


class MemoryStore(Store):
    """Jobs and events in dictionaries."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._jobs: dict[str, _Job] = {}
        self._keys: dict[tuple[str, str], str] = {}
        #: Every job id in acceptance order, its place in that order, and the same
        #: by namespace: the pages of ``list_jobs`` without a scan of other tenants.
        self._order: list[str] = []
        self._nums: dict[str, int] = {}
        self._namespaces: dict[str, list[str]] = {}
        #: Per session, its event rows, oldest first.
        #: A short log is a tuple, untracked like its rows (100k quiet sessions
        #: cost the full collections nothing); past ``_SHORT_LOG`` rows a list.
        self._events: dict[str, tuple[_Row, ...] | list[_Row]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- life ------------------------------------------------------------------

    async def open(self) -> list[JobInfo]:
        self._loop = asyncio.get_running_loop()
        return [_info(r) for r in self._jobs.values() if r[3] in _LIVE]

    async def close(self) -> None:
        self._loop = None

    # -- helpers ---------------------------------------------------------------

    def _append(
        self, session: str, job_id: str | None, kind: str, data: Any, now: float | None = None
    ) -> Event:
        """Append a handler's event (its data kept as given)."""
        at = now or time.time()
        log = self._events.get(session, ())
        seq = len(log) + 1
        self._put(session, log, (seq, job_id, kind, data, at))
        return Event(seq, session, job_id, kind, data, at)

    def _own(
        self,
        session: str,
        job_id: str,
        kind: str,
        keys: tuple[str, ...],
        data: dict[str, Any],
        at: float,
    ) -> Event:
        """Append one of laneway's own events: its row keeps ``keys`` (a shared
        tuple: ``data``'s keys in order) and the values of ``data``, not the dict."""
        log = self._events.get(session, ())
        seq = len(log) + 1
        self._put(session, log, (seq, job_id, kind, keys, at, *data.values()))
        return Event(seq, session, job_id, kind, data, at)

    def _put(self, session: str, log: tuple[_Row, ...] | list[_Row], row: _Row) -> None:
        """Append ``row`` to ``log``, the session's log."""
        if type(log) is list:
            log.append(row)
        elif len(log) < _SHORT_LOG:
            self._events[session] = (*log, row)
        else:
            self._events[session] = [*log, row]

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
                return Committed((_info(self._jobs[existing]), None))
            self._keys[(session, idempotency_key)] = job_id
        now = time.time()
        rec: _Job = (
            job_id, session, handler, _QUEUED, 0, None, None, None, payload, priority, 0,
            idempotency_key, now, now, False,
        )  # fmt: skip
        self._jobs[job_id] = rec
        self._nums[job_id] = len(self._order)
        self._order.append(job_id)
        head, slash, _ = session.partition("/")
        if slash:
            self._namespaces.setdefault(head + slash, []).append(job_id)
        data = rules.queued_data(handler, payload)
        ev = self._own(session, job_id, "job.queued", _QUEUED_KEYS, data, now)
        info = JobInfo(
            job_id, session, handler, JobState.QUEUED, 0, None, None, None, payload, priority, 0,
            idempotency_key, now, now, False,
        )  # fmt: skip
        return Committed((info, ev))

    def start_attempt(self, job_id: str, attempt: int) -> Write[Event | None]:
        rec = self._jobs.get(job_id)
        if rec is None or not rules.may_start(rec[3], rec[4], attempt):
            return Committed(None)
        now = time.time()
        self._jobs[job_id] = (*rec[:3], _RUNNING, attempt, *rec[5:13], now, False)
        data = rules.started_data(attempt)
        return Committed(self._own(rec[1], job_id, "job.started", _STARTED_KEYS, data, now))

    def append_event(
        self, session: str, job_id: str | None, kind: str, data: Any, *, attempt: int | None
    ) -> Write[Event | None]:
        data, _ = canonical(data, "event data")
        if attempt is not None:
            rec = self._jobs.get(job_id) if job_id is not None else None
            if rec is None or not rules.may_write(rec[3], rec[4], attempt):
                return Committed(None)
            if not rec[14]:
                self._jobs[rec[0]] = (*rec[:14], True)
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
        rec = self._jobs.get(job_id)
        if rec is None or not rules.may_retry(rec[3], rec[4], attempt):
            return Committed(None)
        error = clean_text(error)
        now = time.time()
        attempts = rules.retried_attempts(attempt, counts_attempt)
        self._jobs[job_id] = (
            *rec[:3], _QUEUED, attempts, error, rec[6], reason, *rec[8:10], rec[10] + int(lost),
            rec[11], rec[12], now, rec[14],
        )  # fmt: skip
        data = rules.retry_data(attempt, reason, error, delay, counts_attempt)
        keys = _RETRY_KEYS if counts_attempt else _UNCOUNTED_RETRY_KEYS
        return Committed(self._own(rec[1], job_id, "job.retry", keys, data, now))

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
        if rec is None or not rules.may_finish(rec[3], rec[4], attempt):
            return Committed(None)
        now = time.time()
        self._jobs[job_id] = (
            *rec[:3], _VALUE[state], attempt, error, result, reason, *rec[8:10],
            rec[10] + int(lost), rec[11], rec[12], now, rec[14],
        )  # fmt: skip
        data = rules.terminal_data(
            state, attempts=attempt, result=result, error=error, reason=reason
        )
        kind = rules.terminal_kind(state)
        return Committed(self._own(rec[1], job_id, kind, _TERMINAL_KEYS, data, now))

    def requeue(self, job_id: str) -> Write[tuple[JobInfo, Event] | None]:
        rec = self._jobs.get(job_id)
        if rec is None or not rules.may_requeue(rec[3]):
            return Committed(None)
        now = time.time()
        new: _Job = (
            *rec[:3], _QUEUED, 0, None, None, None, *rec[8:10], 0, rec[11], rec[12], now, rec[14],
        )  # fmt: skip
        self._jobs[job_id] = new
        data = rules.requeued_data(rec[2], rec[8], rec[3], rec[4], rec[10])
        ev = self._own(rec[1], job_id, rules.REQUEUED_KIND, _REQUEUED_KEYS, data, now)
        return Committed((_info(new), ev))

    # -- reads -----------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobInfo | None:
        rec = self._jobs.get(job_id)
        return _info(rec) if rec is not None else None

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
        jobs = self._jobs
        for job_id in self._newest_first(prefix, before):
            rec = jobs[job_id]
            if (
                (state is None or rec[3] == state)
                and (session is None or rec[1] == session)
                and (prefix is None or rec[1].startswith(prefix))
            ):
                out.append(_info(rec))
                if len(out) >= limit:
                    break
        return out

    def _newest_first(self, prefix: str | None, before: str | None) -> Iterator[str]:
        ids = self._order
        if prefix is not None and namespace_of(prefix) is not None:
            ids = self._namespaces.get(prefix, [])
        end = len(ids)
        if before is not None:
            num = self._nums.get(before)
            nums = self._nums
            end = 0 if num is None else bisect.bisect_left(ids, num, key=nums.__getitem__)
        return (ids[i] for i in range(end - 1, -1, -1))

    async def read_events(self, session: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        log = self._events.get(session, ())
        start = max(0, after)
        return [_event(session, r) for r in log[start : start + limit]]

    async def history(self, session: str, *, before: int, limit: int) -> list[Event]:
        log = self._events.get(session, ())
        end = max(0, min(len(log), before - 1))
        return [_event(session, r) for r in log[max(0, end - limit) : end]]
