"""The job record and the attempt: one run of a job, as a scope that always ends.

An ``Attempt`` owns its limits: the deadline and idle checks (first through
the dispatcher's delay line, later on the deadline heap), ``cancel(reason)``
and the grace after it, and ``abandon()``, which frees the attempt whatever
its task does. ``end()`` runs exactly once per attempt and hands it back to
its ``AttemptOwner`` (the dispatcher), which frees the slots and applies the
policy. The attempt is also the in-process ``TurnHost`` its handler's
``TurnContext`` talks to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Future as ConcurrentFuture
from typing import Any, Protocol, TypeVar

from .._types import Event, JobState, Outcome, Reason
from ._config import HandlerSpec, ResolvedLimits
from ._policy import Ended
from ._timers import TimerEntry, Timers

__all__ = ["Attempt", "AttemptOwner", "JobRecord"]

log = logging.getLogger("laneway.runtime")

T = TypeVar("T")


class JobRecord:
    """A live (queued or running) job; the slot source's ticket."""

    __slots__ = (
        "attempts",
        "enqueued_at",
        "fallback",
        "handler",
        "id",
        "lanes",
        "limits",
        "lost",
        "order",
        "payload",
        "queue_timer",
        "retry_timer",
        "session",
        "spec",
        "state",
        "suspect",
        "waiters",
    )

    def __init__(
        self, job_id: str, session: str, spec: HandlerSpec, payload: Any, order: tuple[int, int]
    ) -> None:
        self.id = job_id
        self.session = session
        self.handler = spec.name
        self.spec = spec
        self.lanes = spec.lanes
        self.limits: ResolvedLimits = spec.resolved
        self.payload = payload
        self.order = order
        self.state = JobState.QUEUED
        self.attempts = 0
        self.lost = 0
        self.enqueued_at = 0.0
        self.queue_timer: TimerEntry | None = None
        self.retry_timer: TimerEntry | None = None
        self.waiters: list[asyncio.Future[Outcome]] | None = None
        #: Its terminal write was refused once and replaced by ``failed``.
        self.fallback = False
        #: In flight at a crash and not cleared since: runs alone among suspects.
        self.suspect = False


class AttemptOwner(Protocol):
    """What an attempt needs from the dispatcher that started it."""

    @property
    def timers(self) -> Timers: ...

    @property
    def max_event_bytes(self) -> int: ...

    def attempt_ended(
        self, att: Attempt, ended: Ended, result: Any, error: BaseException | None
    ) -> None:
        """The attempt is over (called once): free its slots and decide its job."""

    def abandoned(self, att: Attempt) -> None:
        """The attempt's task outlived its grace: list it as a zombie."""

    async def emit(self, att: Attempt, kind: str, data: Any) -> Event | None: ...

    async def history(self, att: Attempt, limit: int, before: int | None) -> list[Event]: ...

    def run_in_thread(self, att: Attempt, call: Callable[[], T]) -> Awaitable[T]: ...

    def kill_process(self, att: Attempt, proc: asyncio.subprocess.Process) -> None:
        """Kill a process group the ended attempt still had, in the background."""


class Attempt:
    """One run of a job, with its limits."""

    __slots__ = (
        "_owner",
        "deadline_at",
        "end_waiters",
        "ended",
        "grace_timer",
        "handler",
        "idle",
        "job",
        "job_id",
        "last_progress",
        "no_retry",
        "number",
        "output",
        "payload",
        "procs",
        "reason",
        "session",
        "start_seq",
        "started_at",
        "task",
        "threads",
        "timer",
    )

    #: Processes run in task mode get a session of their own (no terminal signals).
    own_session = True

    def __init__(self, owner: AttemptOwner, job: JobRecord, number: int, now: float) -> None:
        deadline = job.limits.deadline
        self._owner = owner
        self.job = job
        # Copied, not properties: runners and contexts read them on every turn.
        self.job_id = job.id
        self.session = job.session
        self.handler = job.handler
        self.payload = job.payload
        self.number = number
        self.started_at = now
        self.last_progress = now
        self.deadline_at = None if deadline is None else now + deadline
        self.idle = job.limits.idle
        self.reason: Reason | None = None
        self.no_retry = False
        self.ended = False
        self.output = False
        self.start_seq = 0
        self.task: asyncio.Task[None] | None = None
        self.timer: TimerEntry | None = None
        self.grace_timer: TimerEntry | None = None
        self.procs: set[asyncio.subprocess.Process] | None = None
        self.threads: set[ConcurrentFuture[Any]] | None = None
        self.end_waiters: list[asyncio.Future[None]] | None = None

    # -- limits ------------------------------------------------------------------

    def check(self) -> None:
        """A limit may have passed: expire the attempt, or look again when it could."""
        self.timer = None
        if self.ended or self.reason is not None:
            return
        now = self._owner.timers.now()
        if self.deadline_at is not None and now >= self.deadline_at:
            self._expire(Reason.DEADLINE, now)
        # the same sum the timer was armed with: "now - last >= idle" can be
        # False at that very instant (rounding), re-arming it for now, forever
        elif self.idle is not None and now >= self.last_progress + self.idle:
            self._expire(Reason.IDLE, now)
        else:
            self._arm()

    def line_check(self) -> None:
        """The first check, from the delay line (unless the heap took it over)."""
        if self.timer is None:
            self.check()

    def _arm(self) -> None:
        due = self.deadline_at
        if self.idle is not None:
            idle_due = self.last_progress + self.idle
            due = idle_due if due is None or idle_due < due else due
        if due is not None:
            self.timer = self._owner.timers.call_at(due, self.check)

    def set_idle_limit(self, idle: float | None) -> None:
        if self.ended:
            return
        timers = self._owner.timers
        self.idle = idle
        self.last_progress = timers.now()
        timers.cancel(self.timer)
        self.timer = None
        if self.reason is None:
            self._arm()

    def _expire(self, reason: Reason, now: float) -> None:
        job = self.job
        log.warning(
            # attempt.*, not job.*: the job may still be retried; its end is logged as job.<state>.
            "attempt.timed_out: %s of session %r exceeded its %s limit (attempt %d)",
            job.id,
            job.session,
            reason,
            self.number,
            extra={
                "job_id": job.id,
                "session": job.session,
                "reason": reason,
                "attempt": self.number,
                "elapsed_s": round(now - self.started_at, 3),
            },
        )
        self.cancel(reason)

    # -- ending ------------------------------------------------------------------

    def cancel(self, reason: Reason) -> None:
        """Tell the attempt to stop; abandon it ``cancel_grace`` later whatever it does."""
        if self.ended:
            return
        final = reason is Reason.STOPPED or reason is Reason.SHUTDOWN
        if self.reason is not None:
            self.no_retry = self.no_retry or final
            return
        self.reason = reason
        self.no_retry = final
        if self.task is not None:
            self.task.cancel(msg=f"laneway: {reason}")
        grace = self.job.limits.cancel_grace
        if grace <= 0:
            self.abandon()
        else:
            timers = self._owner.timers
            self.grace_timer = timers.call_at(timers.now() + grace, self.abandon)

    def abandon(self) -> None:
        """Free the attempt now; a task still running is left behind as a zombie."""
        if self.ended:
            return
        task = self.task
        if task is not None and not task.done():
            self._owner.abandoned(self)
        self.end(Ended.CANCELLED)

    def end(self, ended: Ended, result: Any = None, error: BaseException | None = None) -> None:
        """The attempt is over: stop its timers and hand it to its owner, once."""
        if self.ended:
            return
        self.ended = True
        if self.timer is not None or self.grace_timer is not None:
            timers = self._owner.timers
            timers.cancel(self.timer)
            timers.cancel(self.grace_timer)
            self.timer = self.grace_timer = None
        self._owner.attempt_ended(self, ended, result, error)
        waiters = self.end_waiters
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def ended_future(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Resolves once the attempt ended (at once if it has)."""
        fut: asyncio.Future[None] = loop.create_future()
        if self.ended:
            fut.set_result(None)
        elif self.end_waiters is None:
            self.end_waiters = [fut]
        else:
            self.end_waiters.append(fut)
        return fut

    # -- the TurnHost of an in-process turn -------------------------------------

    @property
    def cancelled(self) -> bool:
        return self.reason is not None or self.ended

    @property
    def idle_limit(self) -> float | None:
        return self.idle

    @property
    def kill_grace(self) -> float:
        return self.job.limits.kill_grace

    @property
    def max_event_bytes(self) -> int:
        return self._owner.max_event_bytes

    def progress(self) -> None:
        self.last_progress = self._owner.timers.now()

    def emit_event(self, kind: str, data: Any) -> Awaitable[Event | None]:
        return self._owner.emit(self, kind, data)

    def read_history(self, limit: int, before: int | None) -> Awaitable[list[Event]]:
        return self._owner.history(self, limit, before)

    def run_in_thread(self, call: Callable[[], T]) -> Awaitable[T]:
        return self._owner.run_in_thread(self, call)

    def adopt(self, proc: asyncio.subprocess.Process) -> None:
        """Kill ``proc``'s group with the attempt (now, if the attempt already ended)."""
        if self.ended:
            self._owner.kill_process(self, proc)
        elif self.procs is None:
            self.procs = {proc}
        else:
            self.procs.add(proc)

    def release(self, proc: asyncio.subprocess.Process) -> None:
        if self.procs is not None:
            self.procs.discard(proc)

    def track_thread(self, cf: ConcurrentFuture[Any]) -> None:
        if self.threads is None:
            self.threads = set()
        self.threads.add(cf)
        cf.add_done_callback(self.threads.discard)
