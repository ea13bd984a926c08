"""The dispatcher: jobs through lanes, attempts under limits, outcomes into the store.

How a slot is always freed on time (guarantee 1): every running attempt has
one entry in the runtime's deadline heap (``Timers``). When its deadline or
idle limit passes, the attempt gets a *reason* and its task is cancelled; a
second timer abandons it ``cancel_grace`` later if it has not unwound. Either
way ``_end()`` runs exactly once per attempt, synchronously: it releases the
lane slots, kills the attempt's process groups, and writes the outcome. A
task that swallows its cancellation only keeps itself alive, as a zombie
listed in the snapshot; its late result and late events are discarded.

Exactly one terminal state per job (guarantee 3): ``_terminal()`` is the only
place that writes one, it runs once per job (the job leaves the live table
when it is written), and the store refuses a second terminal write.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, TypeVar

from .._errors import (
    Closed,
    ConfigError,
    InvalidSession,
    JobCancelled,
    JobDead,
    JobError,
    JobFailed,
    JobTimedOut,
    LanewayError,
    Overloaded,
    StoreError,
    UnknownHandler,
    UnknownJob,
    WorkerLost,
)
from .._isolation import ProcessPool, prepare_handler
from .._types import (
    DEFAULT_LIMITS,
    TERMINAL_STATES,
    Event,
    JobInfo,
    JobState,
    LaneStats,
    Limits,
    Outcome,
    Retry,
    Snapshot,
    StopResult,
    Zombie,
)
from ..stores import Store, open_store
from ._context import TurnContext
from ._events import EventBus, Subscription
from ._json import check_json
from ._lanes import LaneTable
from ._proc import kill_group
from ._timers import TimerEntry, Timers
from ._watchdog import Watchdog

__all__ = ["Attempt", "Job", "Laneway"]

log = logging.getLogger("laneway.runtime")

#: ``Laneway.add_attempt_hook``: a context manager around each attempt's handler call
AttemptHook = Callable[[TurnContext], contextlib.AbstractContextManager[object]]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
T = TypeVar("T")

MAX_SESSION_LEN = 256
_ERRORS: dict[JobState, type[JobError]] = {
    JobState.FAILED: JobFailed,
    JobState.TIMED_OUT: JobTimedOut,
    JobState.CANCELLED: JobCancelled,
    JobState.DEAD: JobDead,
}
_RUNNING, _CLOSING, _CLOSED, _NEW = "running", "closing", "closed", "new"


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    name: str
    fn: Callable[..., Awaitable[Any]]
    lanes: tuple[str, ...]
    limits: Limits
    retry: Retry
    isolation: Literal["task", "process"]
    #: (deadline, idle, queue_wait, cancel_grace), derived from ``limits`` once; None = disabled.
    resolved: tuple[float | None, float | None, float | None, float] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolved", _resolved(self.limits))


def _resolved(limits: Limits) -> tuple[float | None, float | None, float | None, float]:
    return (
        limits.value("deadline"),
        limits.value("idle"),
        limits.value("queue_wait"),
        limits.value("cancel_grace") or 0.0,
    )


class _Job:
    """A live (queued or running) job; the lane table's ticket."""

    __slots__ = (
        "attempts",
        "enqueued_at",
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
        "waiters",
    )

    def __init__(
        self,
        job_id: str,
        session: str,
        spec: HandlerSpec,
        payload: Any,
        order: tuple[int, int],
        now: float,
    ) -> None:
        self.id = job_id
        self.session = session
        self.handler = spec.name
        self.spec = spec
        self.lanes = spec.lanes
        self.limits = spec.resolved
        self.payload = payload
        self.order = order
        self.state = JobState.QUEUED
        self.attempts = 0
        self.lost = 0
        self.enqueued_at = now
        self.queue_timer: TimerEntry | None = None
        self.retry_timer: TimerEntry | None = None
        self.waiters: list[asyncio.Future[Outcome]] = []


class Attempt:
    """One run of a job."""

    __slots__ = (
        "deadline_at",
        "end_waiters",
        "ended",
        "grace_timer",
        "idle",
        "job",
        "last_progress",
        "no_retry",
        "number",
        "output",
        "procs",
        "reason",
        "start_seq",
        "started_at",
        "task",
        "threads",
        "timer",
    )

    def __init__(self, job: _Job, number: int, now: float) -> None:
        deadline, idle, _, _ = job.limits
        self.job = job
        self.number = number
        self.started_at = now
        self.last_progress = now
        self.deadline_at = None if deadline is None else now + deadline
        self.idle = idle
        self.reason: str | None = None
        self.no_retry = False
        self.ended = False
        self.output = False
        self.start_seq = 0
        self.task: asyncio.Task[None] | None = None
        self.timer: TimerEntry | None = None
        self.grace_timer: TimerEntry | None = None
        self.procs: set[asyncio.subprocess.Process] = set()
        self.threads: set[ConcurrentFuture[Any]] = set()
        self.end_waiters: list[asyncio.Future[None]] = []


class Job:
    """A handle on a submitted job."""

    __slots__ = ("_lw", "handler", "id", "session")

    def __init__(self, lw: Laneway, job_id: str, session: str, handler: str) -> None:
        self._lw = lw
        self.id = job_id
        self.session = session
        self.handler = handler

    def __repr__(self) -> str:
        return f"<Job {self.id} session={self.session!r} handler={self.handler!r}>"

    async def wait(self) -> Outcome:
        """The job's outcome, once it is terminal (and committed).

        Bound the wait with ``asyncio.timeout()`` if you need to."""
        return await self._lw._wait(self.id)

    async def result(self) -> Any:
        """The handler's return value, or the matching ``JobError``."""
        outcome = await self.wait()
        if outcome.state is JobState.SUCCEEDED:
            return outcome.result
        raise _ERRORS[outcome.state](outcome)

    async def info(self) -> JobInfo | None:
        return await self._lw.get(self.id)

    async def cancel(self) -> bool:
        return await self._lw.cancel(self.id)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _check_session(session: Any) -> None:
    if not isinstance(session, str) or not session:
        raise InvalidSession(f"session key must be a non-empty string, got {session!r}")
    if len(session) > MAX_SESSION_LEN:
        raise InvalidSession(f"session key is longer than {MAX_SESSION_LEN} characters")
    if not session.isprintable():
        raise InvalidSession(f"session key contains control characters: {session!r}")


class Laneway:
    """Per-session FIFO lanes with shared caps, limits that always free the slot,
    and a store that remembers every accepted job until it is terminal."""

    def __init__(
        self,
        store: str | Store = "memory://",
        *,
        lanes: dict[str, int] | None = None,
        session_limit: int = 1,
        limits: Limits | None = None,
        retry: Retry | None = None,
        poison_after: int = 3,
        max_queued: int = 100_000,
        max_queued_per_session: int = 1_000,
        watchdog_threshold: float | None = 1.0,
        exit_after: float | None = None,
        wait_warn: float = 60.0,
        sync_workers: int = 32,
        process_pool: ProcessPool | None = None,
    ) -> None:
        self.lanes = self._check_lanes(lanes or {})
        self.session_limit = _positive_int("session_limit", session_limit)
        if limits is not None and not isinstance(limits, Limits):
            raise ConfigError(f"limits must be a Limits, got {limits!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigError(f"retry must be a Retry, got {retry!r}")
        self.limits = (limits or Limits()).merged(DEFAULT_LIMITS)
        self.retry = retry or Retry()
        self.poison_after = _positive_int("poison_after", poison_after)
        self.max_queued = _positive_int("max_queued", max_queued)
        self.max_queued_per_session = _positive_int(
            "max_queued_per_session", max_queued_per_session
        )
        for name, value in (("watchdog_threshold", watchdog_threshold), ("exit_after", exit_after)):
            if value is not None and (not isinstance(value, int | float) or value <= 0):
                raise ConfigError(f"{name} must be > 0 seconds or None, got {value!r}")
        if not isinstance(wait_warn, int | float) or wait_warn <= 0:
            raise ConfigError(f"wait_warn must be > 0 seconds, got {wait_warn!r}")
        self.watchdog_threshold = watchdog_threshold
        self.exit_after = exit_after
        self.wait_warn = float(wait_warn)
        self.sync_workers = _positive_int("sync_workers", sync_workers)
        if process_pool is not None and not isinstance(process_pool, ProcessPool):
            raise ConfigError(f"process_pool must be a ProcessPool, got {process_pool!r}")
        self.process_pool = process_pool
        self.store: Store = open_store(store) if isinstance(store, str) else store
        if not isinstance(self.store, Store):
            raise ConfigError(f"store must be a URL or a Store, got {store!r}")

        self._handlers: dict[str, HandlerSpec] = {}
        self._lanes: LaneTable[_Job] = LaneTable(self.lanes, self.session_limit)
        self._jobs: dict[str, _Job] = {}
        self._running: dict[str, Attempt] = {}
        self._queue_index: dict[str, _Job] = {}
        self._admitting: dict[str, int] = {}
        self._admitting_total = 0
        self._zombies: dict[int, Zombie] = {}
        self._abandoned: set[Attempt] = set()
        self._bus = EventBus()
        self._attempt_hooks: list[AttemptHook] = []
        self._state = _NEW
        self._seq = itertools.count(1)
        self._id_prefix = secrets.token_hex(5)
        self._warned: dict[str, float] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: Timers | None = None
        self._watchdog: Watchdog | None = None
        self._idle: asyncio.Event | None = None
        self._maintaining = False
        self.discarded_events = 0
        self._process_runner: Any = None  # set by process isolation
        self._closers: list[Callable[[], Awaitable[None]]] = []  # handlers' clients, run by close()

    # -- configuration ---------------------------------------------------------

    @staticmethod
    def _check_lanes(lanes: Any) -> dict[str, int]:
        if not isinstance(lanes, dict):
            raise ConfigError(f"lanes must be a dict of name -> cap, got {lanes!r}")
        for name, cap in lanes.items():
            if not isinstance(name, str) or not name or name.startswith("session:"):
                raise ConfigError(f"lane names must be non-empty and not 'session:...': {name!r}")
            _positive_int(f"lane {name!r} cap", cap)
        return dict(lanes)

    def handler(
        self,
        name: str,
        *,
        lanes: tuple[str, ...] | list[str] = (),
        limits: Limits | None = None,
        retry: Retry | None = None,
        isolation: Literal["task", "process"] = "task",
    ) -> Callable[[F], F]:
        """Register ``async def fn(ctx, payload)`` as the handler ``name``.

        ``lanes`` names the shared lanes its jobs need; ``limits`` override the
        Laneway's field by field; ``retry=None`` inherits the Laneway's policy.
        """
        wanted = self._check_handler(name, lanes, limits, retry, isolation)

        def register(fn: F) -> F:
            if not inspect.iscoroutinefunction(_unwrap(fn)):
                raise ConfigError(f"handler {name!r} must be an async function")
            if isolation == "process":
                prepare_handler(self, name, fn)
            merged = (limits or Limits()).merged(self.limits)
            self._handlers[name] = HandlerSpec(
                name=name,
                fn=fn,
                lanes=wanted,
                limits=merged,
                retry=retry or self.retry,
                isolation=isolation,
            )
            return fn

        return register

    def _check_handler(
        self, name: Any, lanes: Any, limits: Any, retry: Any, isolation: Any
    ) -> tuple[str, ...]:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"handler name must be a non-empty string, got {name!r}")
        if name in self._handlers:
            raise ConfigError(f"handler {name!r} is already registered")
        if isinstance(lanes, str):
            raise ConfigError(f"lanes must be a tuple of lane names, got the string {lanes!r}")
        wanted = tuple(dict.fromkeys(lanes))
        for lane in wanted:
            if lane not in self.lanes:
                raise ConfigError(f"handler {name!r} needs lane {lane!r}, which is not configured")
        if limits is not None and not isinstance(limits, Limits):
            raise ConfigError(f"limits must be a Limits, got {limits!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigError(f"retry must be a Retry, got {retry!r}")
        if isolation not in ("task", "process"):
            raise ConfigError(f"isolation must be 'task' or 'process', got {isolation!r}")
        return wanted

    @property
    def handlers(self) -> dict[str, HandlerSpec]:
        return dict(self._handlers)

    # -- life ------------------------------------------------------------------

    async def __aenter__(self) -> Laneway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def running(self) -> bool:
        return self._state == _RUNNING

    async def start(self) -> None:
        """Open the store, recover unfinished jobs, start timers and the watchdog."""
        if self._state != _NEW:
            raise Closed("a Laneway can be started once")
        self._loop = asyncio.get_running_loop()
        self._timers = Timers(self._loop)
        self._idle = asyncio.Event()
        self._idle.set()
        try:
            unfinished = await self.store.open()
        except LanewayError:
            self._timers.close()
            raise
        except Exception as exc:
            self._timers.close()
            raise StoreError(f"cannot open store {self.store.url}: {exc}") from exc
        self._state = _RUNNING
        if self.watchdog_threshold is not None:
            self._watchdog = Watchdog(
                self._loop, self.watchdog_threshold, exit_after=self.exit_after
            )
            self._watchdog.start()
        self._recover(unfinished)
        self._schedule_monitor()
        if self.store.maintain_interval:
            self._timers.call_at(self._loop_time() + self.store.maintain_interval, self._maintain)
        self._pump()

    async def close(self, *, grace: float = 0.0) -> None:
        """Stop accepting work; give running turns ``grace`` seconds, then cancel
        them (reason ``shutdown``; they go back to the queue of a durable store)."""
        if self._state != _RUNNING:
            if self._state == _NEW:
                self._state = _CLOSED
            return
        self._state = _CLOSING
        if grace > 0 and self._running:
            await asyncio.wait([self._ended(a) for a in self._running.values()], timeout=grace)
        pending = [self._ended(a) for a in self._running.values()]
        for att in list(self._running.values()):
            self._cancel_attempt(att, "shutdown")
        if pending:
            await asyncio.wait(pending)
        await self._settle()
        self._release_zombies()
        self._shutdown_parts()
        for job in list(self._jobs.values()):
            for fut in job.waiters:
                if not fut.done():
                    fut.set_exception(Closed("the Laneway closed before the job finished"))
        with contextlib.suppress(Exception):
            await self.store.close()
        if self._process_runner is not None:
            await self._process_runner.close()
        await self._run_closers()
        self._state = _CLOSED

    async def _run_closers(self) -> None:
        for closer in self._closers:
            with contextlib.suppress(Exception):
                await closer()

    async def _settle(self) -> None:
        # Let committed-write callbacks run before the store closes.
        for _ in range(3):
            await asyncio.sleep(0)
        if self._background:
            await asyncio.wait(list(self._background), timeout=5.0)

    def _release_zombies(self) -> None:
        """Give abandoned tasks one more cancel, then stop tracking them.

        A task that swallows every cancellation would otherwise make the event
        loop's own shutdown (``asyncio.run``) wait for it forever.
        """
        unregister = getattr(asyncio.tasks, "_unregister_task", None)
        for att in self._abandoned:
            task = att.task
            if task is None or task.done():
                continue
            task.cancel(msg="laneway: closed")
            log.warning(
                "job.zombie: %s still running at close; left behind",
                att.job.id,
                extra={"job_id": att.job.id, "session": att.job.session},
            )
            if unregister is not None:
                unregister(task)
        self._abandoned.clear()

    def _shutdown_parts(self) -> None:
        if self._timers is not None:
            self._timers.close()
        if self._watchdog is not None:
            self._watchdog.stop()
        self._bus.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def join(self) -> None:
        """Wait until no job is queued or running."""
        self._require_running()
        assert self._idle is not None
        await self._idle.wait()

    # -- submitting ------------------------------------------------------------

    async def submit(
        self,
        session: str,
        handler: str,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
        priority: int = 0,
    ) -> Job:
        """Accept a job; returns once it is committed to the store."""
        self._require_running()
        _check_session(session)
        spec = self._handlers.get(handler)
        if spec is None:
            raise UnknownHandler(f"no handler named {handler!r} (have: {sorted(self._handlers)})")
        check_json(payload, "payload")
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 256
        ):
            raise InvalidSession("idempotency_key must be a string of 1..256 characters")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ConfigError(f"priority must be an int, got {priority!r}")
        self._admit(session)
        job_id = f"{self._id_prefix}-{next(self._seq):x}"
        try:
            fut = self.store.add_job(
                job_id=job_id,
                session=session,
                handler=handler,
                payload=payload,
                priority=priority,
                idempotency_key=idempotency_key,
            )
            info, event = fut.result() if fut.done() else await asyncio.shield(fut)
        finally:
            self._admitted(session)
        if event is None:  # an earlier submit with the same idempotency key
            return Job(self, info.id, info.session, info.handler)
        self._bus.publish(event)
        if self._state != _RUNNING:  # closed while committing: it stays queued in the store
            return Job(self, job_id, session, handler)
        self._enqueue(_Job(job_id, session, spec, payload, (-priority, next(self._seq)), 0.0))
        self._pump()
        return Job(self, job_id, session, handler)

    def _admit(self, session: str) -> None:
        pending = self._admitting.get(session, 0)
        if self._lanes.total_queued + self._admitting_total >= self.max_queued:
            raise Overloaded(f"{self.max_queued} jobs are queued (max_queued)", retry_after=1.0)
        if self._lanes.queued_in(session) + pending >= self.max_queued_per_session:
            raise Overloaded(
                f"session {session!r} has {self.max_queued_per_session} jobs queued "
                "(max_queued_per_session)",
                retry_after=1.0,
            )
        self._admitting[session] = pending + 1
        self._admitting_total += 1

    def _admitted(self, session: str) -> None:
        self._admitting_total -= 1
        left = self._admitting[session] - 1
        if left:
            self._admitting[session] = left
        else:
            del self._admitting[session]

    def _enqueue(self, job: _Job, now: float | None = None) -> None:
        if now is None:
            now = self._loop_time()
        job.enqueued_at = now
        job.state = JobState.QUEUED
        self._jobs[job.id] = job
        self._queue_index[job.id] = job
        assert self._idle is not None
        self._idle.clear()
        self._lanes.enqueue(job)
        queue_wait = job.limits[2]
        if queue_wait is not None:
            assert self._timers is not None
            job.queue_timer = self._timers.call_at(now + queue_wait, self._queue_expired, job)

    # -- dispatch --------------------------------------------------------------

    def _pump(self) -> None:
        if self._state != _RUNNING:
            return
        lanes = self._lanes
        while (job := lanes.next_ready()) is not None:
            self._start(job)

    def _start(self, job: _Job) -> None:
        assert self._timers is not None
        assert self._loop is not None
        del self._queue_index[job.id]
        if job.queue_timer is not None:
            self._timers.cancel(job.queue_timer)
            job.queue_timer = None
        job.state = JobState.RUNNING
        job.attempts += 1
        att = Attempt(job, job.attempts, self._loop.time())
        self._running[job.id] = att
        started = self.store.start_attempt(job.id, att.number)
        att.task = self._loop.create_task(self._run(att, started))
        self._arm_limits(att)

    async def _run(self, att: Attempt, started: asyncio.Future[Event | None]) -> None:
        job = att.job
        try:
            event = started.result() if started.done() else await asyncio.shield(started)
            if event is None:
                self._refused(att)
                return
            att.start_seq = event.seq
            self._bus.publish(event)
            ctx = TurnContext(self, att)
            with self._around_attempt(ctx):
                if job.spec.isolation == "process":
                    result = await self._process_runner.run(self, att, ctx)
                else:
                    result = await job.spec.fn(ctx, job.payload)
        except asyncio.CancelledError:
            self._end(att)
        except Exception as exc:
            self._end(att, error=exc)
        except BaseException as exc:
            self._end(att, error=exc)
            raise
        else:
            self._end(att, result=result, ok=True)

    def _refused(self, att: Attempt) -> None:
        # The store did not record the start (it is gone or fenced us out): the
        # attempt never ran; end it like an error so the job is decided once.
        err = StoreError(f"the store refused to start attempt {att.number} of {att.job.id}")
        self._end(att, error=err)

    # -- limits ----------------------------------------------------------------

    def _arm_limits(self, att: Attempt) -> None:
        due = att.deadline_at
        if att.idle is not None:
            idle_due = att.last_progress + att.idle
            due = idle_due if due is None or idle_due < due else due
        if due is not None:
            assert self._timers is not None
            att.timer = self._timers.call_at(due, self._check_limits, att)

    def _check_limits(self, att: Attempt) -> None:
        att.timer = None
        if att.ended or att.reason is not None:
            return
        assert self._timers is not None
        now = self._timers.now()
        if att.deadline_at is not None and now >= att.deadline_at:
            self._expire(att, "deadline")
        # the same sum _arm_limits armed the timer with: "now - last >= idle" can be
        # False at that very instant (rounding), re-arming it for now, forever
        elif att.idle is not None and now >= att.last_progress + att.idle:
            self._expire(att, "idle")
        else:
            self._arm_limits(att)

    def _set_idle(self, att: Attempt, idle: float | None) -> None:
        if att.ended:
            return
        assert self._timers is not None
        att.idle = idle
        att.last_progress = self._loop_time()
        self._timers.cancel(att.timer)
        att.timer = None
        if att.reason is None:
            self._arm_limits(att)

    def _expire(self, att: Attempt, reason: str) -> None:
        job = att.job
        # attempt.*, not job.*: the job may still be retried; its end is logged as job.<state>.
        log.warning(
            "attempt.timed_out: %s of session %r exceeded its %s limit (attempt %d)",
            job.id,
            job.session,
            reason,
            att.number,
            extra={
                "job_id": job.id,
                "session": job.session,
                "reason": reason,
                "attempt": att.number,
                "elapsed_s": round(self._loop_time() - att.started_at, 3),
            },
        )
        self._cancel_attempt(att, reason)

    def _cancel_attempt(self, att: Attempt, reason: str) -> None:
        """Tell the attempt to stop; abandon it ``cancel_grace`` later whatever it does."""
        if att.ended:
            return
        if att.reason is not None:
            att.no_retry = att.no_retry or reason in ("stopped", "shutdown")
            return
        att.reason = reason
        att.no_retry = reason in ("stopped", "shutdown")
        if att.task is not None:
            att.task.cancel(msg=f"laneway: {reason}")
        grace = att.job.limits[3]
        if grace <= 0:
            self._abandon(att)
        else:
            assert self._timers is not None
            att.grace_timer = self._timers.call_at(self._loop_time() + grace, self._abandon, att)

    def _abandon(self, att: Attempt) -> None:
        if att.ended:
            return
        job = att.job
        task = att.task
        if task is not None and not task.done():
            key = id(att)
            self._zombies[key] = Zombie(job.id, job.session, "task", self._loop_time())
            self._abandoned.add(att)
            task.add_done_callback(partial(self._zombie_done, att))
            log.warning(
                "job.zombie: %s ignored cancellation for its grace; abandoned, slots freed",
                job.id,
                extra={"job_id": job.id, "session": job.session, "reason": att.reason},
            )
        self._end(att)

    def _zombie_done(self, att: Attempt, _task: asyncio.Task[None]) -> None:
        self._zombies.pop(id(att), None)
        self._abandoned.discard(att)

    def _queue_expired(self, job: _Job) -> None:
        job.queue_timer = None
        if job.state is JobState.QUEUED and self._lanes.remove(job):
            del self._queue_index[job.id]
            self._timers_cancel_job(job)
            log.warning(
                "job.timed_out: %s waited longer than queue_wait",
                job.id,
                extra={"job_id": job.id, "session": job.session, "reason": "queue_wait"},
            )
            self._terminal(
                job, JobState.TIMED_OUT, reason="queue_wait", error="queue_wait exceeded"
            )
            self._pump()

    # -- endings ---------------------------------------------------------------

    def _end(
        self,
        att: Attempt,
        *,
        result: Any = None,
        error: BaseException | None = None,
        ok: bool = False,
    ) -> None:
        """The attempt is over: free its slots, kill its processes, decide the job."""
        if att.ended:
            return
        att.ended = True
        job = att.job
        timers = self._timers
        assert timers is not None
        if att.timer is not None:
            timers.cancel(att.timer)
            att.timer = None
        if att.grace_timer is not None:
            timers.cancel(att.grace_timer)
            att.grace_timer = None
        del self._running[job.id]
        self._lanes.release(job)
        if att.procs or att.threads:
            self._reap(att)
        self._decide(att, result, error, ok)
        for fut in att.end_waiters:
            if not fut.done():
                fut.set_result(None)
        self._pump()

    def _decide(self, att: Attempt, result: Any, error: BaseException | None, ok: bool) -> None:
        reason = att.reason
        if reason == "shutdown":
            self._retry(att, error="shutdown", reason="shutdown", delay=0.0, requeue=False)
        elif reason in ("deadline", "idle"):
            self._failed(att, JobState.TIMED_OUT, reason, f"{reason} limit exceeded")
        elif reason is not None or (error is None and not ok):
            self._terminal(att.job, JobState.CANCELLED, reason="stopped", error=None)
        elif isinstance(error, WorkerLost):
            self._lost(att, str(error))
        elif error is not None:
            self._failed(att, JobState.FAILED, type(error).__name__, str(error) or repr(error))
        else:
            try:
                check_json(result, "the handler's result")
            except LanewayError as exc:
                self._failed(att, JobState.FAILED, "InvalidPayload", str(exc))
            else:
                self._terminal(att.job, JobState.SUCCEEDED, result=result)

    def _may_retry(self, job: _Job, output: bool, *, no_retry: bool = False) -> bool:
        """Retry while attempts remain and, unless allowed, only if nothing was emitted."""
        retry = job.spec.retry
        return (
            not no_retry
            and job.attempts < retry.max_attempts
            and (not output or retry.retry_after_output)
        )

    def _count_loss(self, job: _Job, output: bool, *, no_retry: bool = False) -> JobState | None:
        """One more attempt was lost: ``dead`` at ``poison_after``, else retry (None)
        or ``failed``."""
        job.lost += 1
        if job.lost >= self.poison_after:
            return JobState.DEAD
        return None if self._may_retry(job, output, no_retry=no_retry) else JobState.FAILED

    def _failed(self, att: Attempt, state: JobState, reason: str, error: str) -> None:
        if self._may_retry(att.job, att.output, no_retry=att.no_retry):
            delay = att.job.spec.retry.delay(att.job.attempts, random.random())
            self._retry(att, error=error, reason=reason, delay=delay, requeue=True)
        else:
            self._terminal(att.job, state, reason=reason, error=error)

    def _lost(self, att: Attempt, error: str) -> None:
        """The attempt's process died under it (isolation="process"): count it as lost."""
        job = att.job
        verdict = self._count_loss(job, att.output, no_retry=att.no_retry)
        if verdict is None:
            delay = job.spec.retry.delay(job.attempts, random.random())
            self._retry(att, error=error, reason="lost", delay=delay, requeue=True, lost=True)
        else:
            self._terminal(job, verdict, reason="lost", error=error, lost=True)

    def _retry(
        self,
        att: Attempt,
        *,
        error: str,
        reason: str,
        delay: float,
        requeue: bool,
        lost: bool = False,
    ) -> None:
        job = att.job
        job.state = JobState.QUEUED
        fut = self.store.retry(
            job.id, att.number, error=error, reason=reason, lost=lost, delay=delay
        )
        _when_done(fut, self._published)
        if not requeue:
            return
        log.info(
            "job.retry: %s attempt %d ended (%s); retrying in %.2fs",
            job.id,
            att.number,
            reason,
            delay,
            extra={
                "job_id": job.id,
                "session": job.session,
                "reason": reason,
                "attempt": att.number,
                "delay": delay,
            },
        )
        self._requeue_head(job, delay)

    def _requeue_head(self, job: _Job, delay: float) -> None:
        """A retried job keeps the head of its session, held until its backoff ends."""
        assert self._timers is not None
        job.state = JobState.QUEUED
        self._queue_index[job.id] = job
        self._lanes.enqueue(job, front=True, held=delay > 0)
        if delay > 0:
            job.retry_timer = self._timers.call_at(self._loop_time() + delay, self._unhold, job)

    def _unhold(self, job: _Job) -> None:
        job.retry_timer = None
        self._lanes.unhold(job.session)
        self._pump()

    def _terminal(
        self,
        job: _Job,
        state: JobState,
        *,
        reason: str | None = None,
        error: str | None = None,
        result: Any = None,
        lost: bool = False,
    ) -> None:
        """Write the job's one terminal state; outcome delivered once committed."""
        job.state = state
        outcome = Outcome(job.id, state, result, error, reason, job.attempts)
        fut = self.store.finish(
            job.id, job.attempts, state, result=result, error=error, reason=reason, lost=lost
        )
        if state is not JobState.SUCCEEDED:
            log.info(
                "job.%s: %s (%s)",
                state.value,
                job.id,
                reason,
                extra={
                    "job_id": job.id,
                    "session": job.session,
                    "state": state.value,
                    "reason": reason,
                    "attempt": job.attempts,
                    "error": error,
                },
            )
        _when_done(fut, partial(self._finished, job, outcome))

    def _finished(self, job: _Job, outcome: Outcome, fut: asyncio.Future[Event | None]) -> None:
        self._published(fut)
        if self._jobs.get(job.id) is job:
            del self._jobs[job.id]
        for waiter in job.waiters:
            if not waiter.done():
                waiter.set_result(outcome)
        job.waiters.clear()
        if not self._jobs and self._idle is not None:
            self._idle.set()

    def _published(self, fut: asyncio.Future[Event | None]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.error("store.write_failed: %s", exc, extra={"error": repr(exc)})
            return
        event = fut.result()
        if event is not None:
            self._bus.publish(event)

    def _reap(self, att: Attempt) -> None:
        """Kill the attempt's process groups; list still-running threads as zombies."""
        for proc in list(att.procs):
            self._spawn(self._kill_and_track(att, proc))
        now = self._loop_time()
        for cf in list(att.threads):
            if cf.done():
                continue
            key = id(cf)
            self._zombies[key] = Zombie(att.job.id, att.job.session, "thread", now)
            cf.add_done_callback(partial(self._thread_done, key))

    def _thread_done(self, key: int, _cf: ConcurrentFuture[Any]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._zombies.pop, key, None)

    async def _kill_and_track(self, att: Attempt, proc: asyncio.subprocess.Process) -> None:
        key = id(proc)
        self._zombies[key] = Zombie(att.job.id, att.job.session, "process", self._loop_time())
        try:
            await kill_group(proc, self._kill_grace(att))
        finally:
            self._zombies.pop(key, None)

    def _kill_grace(self, att: Attempt) -> float:
        return max(0.05, att.job.limits[3] / 2)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        assert self._loop is not None
        task: asyncio.Task[Any] = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _timers_cancel_job(self, job: _Job) -> None:
        assert self._timers is not None
        self._timers.cancel(job.queue_timer)
        self._timers.cancel(job.retry_timer)
        job.queue_timer = job.retry_timer = None

    # -- recovery --------------------------------------------------------------

    def _recover(self, unfinished: list[JobInfo]) -> None:
        """Re-queue what the last owner left: running attempts were lost."""
        now = self._loop_time()
        for info in unfinished:
            spec = self._handlers.get(info.handler)
            if spec is None:
                self.store.finish(
                    info.id,
                    info.attempts,
                    JobState.FAILED,
                    result=None,
                    error=f"no handler named {info.handler!r}",
                    reason="UnknownHandler",
                    lost=info.state is JobState.RUNNING,
                ).add_done_callback(self._published)
                continue
            job = _Job(
                info.id, info.session, spec, info.payload, (-info.priority, next(self._seq)), 0.0
            )
            job.attempts, job.lost = info.attempts, info.lost
            if info.state is JobState.RUNNING and not self._recover_lost(job, info):
                continue
            self._enqueue(job, now)

    def _recover_lost(self, job: _Job, info: JobInfo) -> bool:
        """Decide a job whose attempt was in flight at the crash; True to re-queue it."""
        verdict = self._count_loss(job, info.output)
        log.warning(
            "job.lost: attempt %d of %s was in flight when the last owner stopped",
            job.attempts,
            job.id,
            extra={"job_id": job.id, "session": job.session, "lost": job.lost},
        )
        if verdict is None:
            self.store.retry(
                job.id, job.attempts, error="lost", reason="lost", lost=True, delay=0.0
            ).add_done_callback(self._published)
            return True
        self._jobs[job.id] = job
        assert self._idle is not None
        self._idle.clear()
        self._terminal(
            job, verdict, reason="lost", error="attempt lost: the process died", lost=True
        )
        return False

    # -- control ---------------------------------------------------------------

    async def stop(self, session: str, *, drop_queued: bool = False) -> StopResult:
        """End the session's running turn (within cancel_grace, whatever it does);
        with ``drop_queued`` also cancel its queued jobs."""
        self._require_running()
        _check_session(session)
        cancelled: list[str] = []
        waits: list[asyncio.Future[None]] = []
        for att in [a for a in self._running.values() if a.job.session == session]:
            waits.append(self._ended(att))
            self._cancel_attempt(att, "stopped")
            cancelled.append(att.job.id)
        queue = self._lanes.queue_of(session)
        if queue and self._lanes.is_held(session):  # a turn waiting out its retry backoff
            head = queue.pop(0)
            self._drop(head)
            cancelled.append(head.id)
        dropped: list[str] = []
        if drop_queued:
            for job in queue:
                self._drop(job)
                dropped.append(job.id)
        self._pump()
        if waits:
            await asyncio.wait(waits)
        return StopResult(cancelled=cancelled, dropped=dropped)

    def _drop(self, job: _Job) -> None:
        if self._lanes.remove(job):
            self._queue_index.pop(job.id, None)
            self._timers_cancel_job(job)
            self._terminal(job, JobState.CANCELLED, reason="stopped")

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; True if it was."""
        self._require_running()
        job = self._jobs.get(job_id)
        if job is None or job.state.terminal:
            return False
        att = self._running.get(job_id)
        if att is not None:
            done = self._ended(att)
            self._cancel_attempt(att, "stopped")
            await done
            return True
        if job.state is JobState.QUEUED and self._lanes.remove(job):
            self._queue_index.pop(job.id, None)
            self._timers_cancel_job(job)
            self._terminal(job, JobState.CANCELLED, reason="stopped")
            self._pump()
            return True
        return False

    def _ended(self, att: Attempt) -> asyncio.Future[None]:
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        if att.ended:
            fut.set_result(None)
        else:
            att.end_waiters.append(fut)
        return fut

    async def requeue(self, job_id: str) -> Job:
        """Send a failed, timed_out or dead job back to the tail of its session."""
        self._require_running()
        info = await self.store.get_job(job_id)
        if info is None:
            raise UnknownJob(f"no job {job_id!r}")
        spec = self._handlers.get(info.handler)
        if spec is None:
            raise UnknownHandler(f"no handler named {info.handler!r}")
        done = self.store.requeue(job_id)
        requeued = done.result() if done.done() else await asyncio.shield(done)
        if requeued is None:
            raise LanewayError(
                f"job {job_id} is {info.state.value}; only failed, timed_out and dead jobs "
                "can be requeued"
            )
        new_info, event = requeued
        self._bus.publish(event)
        order = (-info.priority, next(self._seq))
        self._enqueue(_Job(job_id, new_info.session, spec, new_info.payload, order, 0.0))
        self._pump()
        return Job(self, job_id, info.session, info.handler)

    # -- reading ---------------------------------------------------------------

    async def _wait(self, job_id: str) -> Outcome:
        self._require_running()
        job = self._jobs.get(job_id)
        if job is not None:
            assert self._loop is not None
            fut: asyncio.Future[Outcome] = self._loop.create_future()
            job.waiters.append(fut)
            try:
                return await fut
            finally:
                if not fut.done() and fut in job.waiters:
                    job.waiters.remove(fut)
        info = await self.store.get_job(job_id)
        if info is None:
            raise UnknownJob(f"no job {job_id!r}")
        if info.state not in TERMINAL_STATES:
            raise LanewayError(f"job {job_id} is {info.state.value} but not live here")
        return Outcome(job_id, info.state, info.result, info.error, info.reason, info.attempts)

    async def get(self, job_id: str) -> JobInfo | None:
        """The job as the store knows it, with the live state if it is running here."""
        info = await self.store.get_job(job_id)
        job = self._jobs.get(job_id)
        if info is not None and job is not None and info.state is not job.state:
            return _replace_state(info, job)
        return info

    async def jobs(
        self, state: JobState | str | None = None, *, session: str | None = None, limit: int = 100
    ) -> list[JobInfo]:
        """Jobs, newest first, filtered by state and session."""
        if state is not None and not isinstance(state, JobState):
            try:
                state = JobState(state)
            except ValueError:
                raise ConfigError(f"unknown job state {state!r}") from None
        return await self.store.list_jobs(state=state, session=session, limit=limit)

    async def events(self, session: str, after: int = 0) -> AsyncIterator[Event]:
        """The session's events with ``seq > after``: replayed, then live."""
        self._require_running()
        _check_session(session)
        sub = self._bus.subscribe(session)
        last = after
        try:
            while not sub.closed:
                # Replay from the store; live events arriving meanwhile are buffered.
                sub.overflowed = False
                sub.buffer.clear()
                while True:
                    batch = await self.store.read_events(session, after=last, limit=500)
                    for event in batch:
                        last = event.seq
                        yield event
                    if len(batch) < 500:
                        break
                async for event in _follow(sub, last):
                    last = event.seq
                    yield event
        finally:
            sub.unsubscribe()

    def add_listener(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``fn(event)`` on the loop for every committed event of every session
        (metrics, audit logs). It must be quick and not block. Returns a remover."""
        self._bus.listeners.append(fn)
        return lambda: self._bus.listeners.remove(fn)

    def add_attempt_hook(self, hook: AttemptHook) -> Callable[[], None]:
        """Run every attempt inside ``hook(ctx)``, a context manager entered in the
        attempt's own task just before the handler is called (after its
        ``job.started`` event was published) and exited when the handler returns,
        raises or is cancelled. What it sets in ``contextvars`` (a tracing span, a
        logging context) is seen by the handler and everything it awaits. A hook
        must be quick; an exception from entering it fails the attempt like one
        from the handler. A zombie never exits it. Returns a remover."""
        self._attempt_hooks.append(hook)
        return lambda: self._attempt_hooks.remove(hook)

    def _around_attempt(self, ctx: TurnContext) -> contextlib.AbstractContextManager[object]:
        if not self._attempt_hooks:
            return contextlib.nullcontext()
        with contextlib.ExitStack() as stack:  # a hook that fails to enter unwinds the others
            for hook in list(self._attempt_hooks):
                stack.enter_context(hook(ctx))
            return stack.pop_all()

    async def _history(self, att: Attempt, limit: int) -> list[Event]:
        return await self.store.history(att.job.session, before=att.start_seq, limit=limit)

    async def _emit(self, att: Attempt, kind: str, data: Any) -> Event | None:
        if att.ended:
            self.discarded_events += 1
            return None
        att.output = True
        att.last_progress = self._loop_time()
        job = att.job
        fut = self.store.append_event(job.session, job.id, kind, data, attempt=att.number)
        event = fut.result() if fut.done() else await asyncio.shield(fut)
        if event is None:
            self.discarded_events += 1
            return None
        self._bus.publish(event)
        return event

    def loop_health(self) -> tuple[float, int]:
        """``(loop_lag, loop_blocks)`` as in ``snapshot()``, without walking the lanes."""
        wd = self._watchdog
        return (max(wd.lag, wd.blocked_for), wd.blocks) if wd else (0.0, 0)

    def snapshot(self) -> Snapshot:
        """Lanes, queue depths, zombies and loop health, right now."""
        now = self._loop_time() if self._loop is not None else 0.0
        oldest_active: dict[str, float] = {}
        for att in self._running.values():
            for name in (f"session:{att.job.session}", *att.job.lanes):
                age = now - att.started_at
                if age > oldest_active.get(name, -1.0):
                    oldest_active[name] = age
        lanes: list[LaneStats] = []
        for key, active, queued, head in self._lanes.sessions():
            name = f"session:{key}"
            q_age = None if head is None else now - head.enqueued_at
            lanes.append(
                LaneStats(name, self.session_limit, active, queued, oldest_active.get(name), q_age)
            )
        waiting: dict[str, int] = dict.fromkeys(self.lanes, 0)
        oldest_queued: dict[str, float] = {}
        for head in self._lanes.waiting_heads():
            q_age = now - head.enqueued_at
            for lane in head.lanes:
                waiting[lane] += 1
                if q_age > oldest_queued.get(lane, -1.0):
                    oldest_queued[lane] = q_age
        shared = [
            LaneStats(
                name,
                cap,
                self._lanes.active[name],
                waiting[name],
                oldest_active.get(name),
                oldest_queued.get(name),
                behind_session=self._lanes.queued[name] - waiting[name],
            )
            for name, cap in self.lanes.items()
        ]
        loop_lag, loop_blocks = self.loop_health()
        zombies = [
            Zombie(z.job_id, z.session, z.kind, max(0.0, now - z.age_s))
            for z in self._zombies.values()
        ]
        return Snapshot(
            lanes=shared + lanes,
            jobs_queued=self._lanes.total_queued,
            jobs_running=len(self._running),
            zombies=zombies,
            loop_lag=loop_lag,
            loop_blocks=loop_blocks,
        )

    # -- periodic work ---------------------------------------------------------

    def _schedule_monitor(self) -> None:
        assert self._timers is not None
        self._timers.call_at(self._loop_time() + max(1.0, self.wait_warn / 4), self._monitor)

    def _monitor(self) -> None:
        """Log ``lane.wait_exceeded`` for lanes whose head waited past ``wait_warn``."""
        if self._state != _RUNNING:
            return
        now = self._loop_time()
        seen: set[str] = set()
        for job in itertools.islice(self._queue_index.values(), 256):
            if now - job.enqueued_at < self.wait_warn:
                break
            lane = self._lanes.blocking_lane(job)
            if lane is None or lane in seen:
                continue
            seen.add(lane)
            if now - self._warned.get(lane, -1e18) < max(30.0, self.wait_warn):
                continue
            self._warned[lane] = now
            self._log_wait(lane, job, now)
        if len(self._warned) > 10_000:
            self._warned = {k: v for k, v in self._warned.items() if now - v < self.wait_warn}
        self._schedule_monitor()

    def _log_wait(self, lane: str, job: _Job, now: float) -> None:
        if lane.startswith("session:"):
            key = lane[len("session:") :]
            active, limit, queued = (
                self._lanes.active_in(key),
                self.session_limit,
                self._lanes.queued_in(key),
            )
            starts = [a.started_at for a in self._running.values() if a.job.session == key]
        else:
            active, limit, queued = (
                self._lanes.active[lane],
                self.lanes[lane],
                self._lanes.queued[lane],
            )
            starts = [a.started_at for a in self._running.values() if lane in a.job.lanes]
        oldest = round(now - min(starts), 3) if starts else None
        log.warning(
            "lane.wait_exceeded: %s active=%d/%d queued=%d oldest_active_s=%s",
            lane,
            active,
            limit,
            queued,
            oldest,
            extra={
                "lane": lane,
                "active": active,
                "limit": limit,
                "queued": queued,
                "oldest_active_s": oldest,
                "waited_s": round(now - job.enqueued_at, 3),
                "job_id": job.id,
            },
        )

    def _maintain(self) -> None:
        if self._state != _RUNNING:
            return
        assert self._timers is not None
        assert self.store.maintain_interval
        self._timers.call_at(self._loop_time() + self.store.maintain_interval, self._maintain)
        if not self._maintaining:
            self._maintaining = True
            self._spawn(self._maintain_once())

    async def _maintain_once(self) -> None:
        try:
            await self.store.maintain()
        except Exception as exc:
            log.exception("store.maintain_failed", extra={"error": repr(exc)})
        finally:
            self._maintaining = False

    # -- helpers ---------------------------------------------------------------

    def _loop_time(self) -> float:
        loop = self._loop
        return loop.time() if loop is not None else time.monotonic()

    def _require_running(self) -> None:
        if self._state != _RUNNING:
            if self._state == _NEW:
                raise Closed(
                    "this Laneway is not started: use `async with lw:` or `await lw.start()`"
                )
            raise Closed()

    def _executor_submit(self, fn: Callable[..., T], *args: Any) -> ConcurrentFuture[T]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.sync_workers, thread_name_prefix="laneway-sync"
            )
        return self._executor.submit(fn, *args)


def _when_done(fut: asyncio.Future[T], callback: Callable[[asyncio.Future[T]], None]) -> None:
    """Run ``callback(fut)`` now if the write is already committed, else when it is."""
    if fut.done():
        callback(fut)
    else:
        fut.add_done_callback(callback)


def _unwrap(fn: Any) -> Any:
    return inspect.unwrap(fn)


async def _follow(sub: Subscription, last: int) -> AsyncIterator[Event]:
    """Live events in seq order; stops at a gap or overflow (the caller re-reads)."""
    while True:
        await sub.wait()
        if sub.overflowed or not sub.buffer:
            return
        event = sub.buffer.popleft()
        if event.seq <= last:
            continue
        if event.seq != last + 1:
            return
        last = event.seq
        yield event


def _replace_state(info: JobInfo, job: _Job) -> JobInfo:
    from dataclasses import replace

    return replace(info, state=job.state, attempts=job.attempts)
