"""``Laneway`` and ``Job``: the public face of the runtime.

The facade validates calls, registers handlers with their runners, and runs
the life cycle (open the store, recover, serve, drain, close). The work is
done beside it: ``_dispatch`` (slots, attempts, verdicts), ``_attempt``
(limits of one run), ``_policy`` (what an ending means), ``_reaper``
(zombies), ``_monitor`` (snapshot, blocked-lane warnings), ``_config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

from .._errors import (
    Closed,
    ConfigError,
    JobCancelled,
    JobDead,
    JobError,
    JobFailed,
    JobNotLive,
    JobTimedOut,
    LanewayError,
    NotRequeueable,
    StoreError,
    UnknownHandler,
    UnknownJob,
)
from .._types import (
    TERMINAL_STATES,
    Event,
    JobInfo,
    JobState,
    Limits,
    Outcome,
    ProcessPool,
    Reason,
    Retry,
    Snapshot,
    StopResult,
)
from ..stores import Store, open_store
from ..stores._base import Committed, written
from ._attempt import JobRecord
from ._config import (
    Config,
    HandlerSpec,
    Isolation,
    check_handler,
    check_handler_fn,
    check_session,
    check_submit,
    make_config,
)
from ._dispatch import Dispatcher
from ._events import EventBus, Subscription
from ._json import check_json
from ._monitor import WaitMonitor, build_snapshot
from ._runner import AttemptHook, Runner, runner_factory
from ._watchdog import Watchdog

__all__ = ["Job", "Laneway"]

log = logging.getLogger("laneway.runtime")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_ERRORS: dict[JobState, type[JobError]] = {
    JobState.FAILED: JobFailed,
    JobState.TIMED_OUT: JobTimedOut,
    JobState.CANCELLED: JobCancelled,
    JobState.DEAD: JobDead,
}
_RUNNING, _CLOSING, _CLOSED, _NEW = "running", "closing", "closed", "new"


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
        max_event_bytes: int = 1_048_576,
        shutdown_grace: float = 30.0,
    ) -> None:
        self.config: Config = make_config(
            lanes=lanes,
            session_limit=session_limit,
            limits=limits,
            retry=retry,
            poison_after=poison_after,
            max_queued=max_queued,
            max_queued_per_session=max_queued_per_session,
            watchdog_threshold=watchdog_threshold,
            exit_after=exit_after,
            wait_warn=wait_warn,
            sync_workers=sync_workers,
            process_pool=process_pool,
            max_event_bytes=max_event_bytes,
            shutdown_grace=shutdown_grace,
        )
        self.store: Store = open_store(store) if isinstance(store, str) else store
        if not isinstance(self.store, Store):
            raise ConfigError(f"store must be a URL or a Store, got {store!r}")
        self._handlers: dict[str, HandlerSpec] = {}
        self._runners: dict[str, Runner] = {}
        self._bus = EventBus()
        self._attempt_hooks: list[AttemptHook] = []
        self._state = _NEW
        self._seq = itertools.count(1)
        self._id_prefix = secrets.token_hex(5)
        self._dispatch: Dispatcher | None = None
        self._watchdog: Watchdog | None = None
        self._monitor = WaitMonitor(self.config.wait_warn, self.config.session_limit)
        self._maintaining = False
        self._closers: list[Callable[[], Awaitable[object]]] = []
        self._hurry = asyncio.Event()
        self._closed = asyncio.Event()
        self._local_node = f"{socket.gethostname()}-{os.getpid()}"

    # -- configuration -----------------------------------------------------------

    @property
    def lanes(self) -> dict[str, int]:
        return dict(self.config.lanes)

    @property
    def session_limit(self) -> int:
        return self.config.session_limit

    @property
    def limits(self) -> Limits:
        return self.config.limits

    @property
    def retry(self) -> Retry:
        return self.config.retry

    @property
    def poison_after(self) -> int:
        return self.config.poison_after

    @property
    def process_pool(self) -> ProcessPool | None:
        return self.config.process_pool

    @property
    def max_event_bytes(self) -> int:
        return self.config.max_event_bytes

    def handler(
        self,
        name: str,
        *,
        lanes: tuple[str, ...] | list[str] = (),
        limits: Limits | None = None,
        retry: Retry | None = None,
        isolation: Isolation = "task",
    ) -> Callable[[F], F]:
        """Register ``async def fn(ctx, payload)`` as the handler ``name``.

        ``lanes`` names the shared lanes its jobs need; ``limits`` override the
        Laneway's field by field; ``retry=None`` inherits the Laneway's policy.
        """
        wanted = check_handler(self.config, self._handlers, name, lanes, limits, retry, isolation)

        def register(fn: F) -> F:
            check_handler_fn(name, fn)
            self.runner(isolation).register(name, fn)
            self._handlers[name] = HandlerSpec(
                name=name,
                fn=fn,
                lanes=wanted,
                limits=(limits or Limits()).merged(self.config.limits),
                retry=retry or self.config.retry,
                isolation=isolation,
                poison_after=self.config.poison_after,
            )
            return fn

        return register

    @property
    def handlers(self) -> dict[str, HandlerSpec]:
        return dict(self._handlers)

    def runner(self, isolation: Isolation) -> Runner:
        """The runner of ``isolation`` handlers (made on first use)."""
        r = self._runners.get(isolation)
        if r is None:
            r = self._runners[isolation] = runner_factory(isolation)(self.config)
        return r

    def on_close(self, fn: Callable[[], Awaitable[object]]) -> None:
        """Await ``fn()`` when this Laneway closes (after the store): for clients
        that handlers share. Its errors are ignored."""
        self._closers.append(fn)

    # -- life --------------------------------------------------------------------

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
        loop = asyncio.get_running_loop()
        d = Dispatcher(self.config, self.store, self._bus, self._runners, loop, self._attempt_hooks)
        try:
            unfinished = await self.store.open()
        except LanewayError:
            d.timers.close()
            raise
        except Exception as exc:
            d.timers.close()
            raise StoreError(f"cannot open store {self.store.url}: {exc}") from exc
        self._dispatch = d
        self._state = _RUNNING
        d.accepting = True
        if self.config.watchdog_threshold is not None:
            self._watchdog = Watchdog(
                loop, self.config.watchdog_threshold, exit_after=self.config.exit_after
            )
            self._watchdog.start()
        d.recover(unfinished, self._handlers, self._order)
        await d.start_slots(self._handlers, self._order)
        d.timers.call_at(loop.time() + self._monitor.interval, self._scan)
        if self.store.maintain_interval:
            d.timers.call_at(loop.time() + self.store.maintain_interval, self._maintain)
        d.pump()

    async def close(self, *, grace: float | None = None) -> None:
        """Stop accepting work (``submit`` raises ``Closed``); give running turns
        ``grace`` seconds (default ``shutdown_grace``), then cancel them with
        reason ``shutdown``. A turn that emitted nothing goes back to its
        session's head, not counted as an attempt (it runs after a restart of a
        durable store); a turn with output ends ``failed`` (reason ``shutdown``)
        unless ``retry_after_output``. A second ``close()`` or ``drain_now()``
        during the grace ends it at once."""
        if self._state == _CLOSING:
            self.drain_now()
            await self._closed.wait()
            return
        if self._state != _RUNNING:
            if self._state == _NEW:
                self._state = _CLOSED
            return
        d = self._live()
        self._state = _CLOSING
        d.accepting = False
        await d.close_slots()
        await _drain(d, self.config.shutdown_grace if grace is None else grace, self._hurry)
        await _settle(d)
        d.shutdown()
        if self._watchdog is not None:
            self._watchdog.stop()
        self._bus.close()
        # Closing the store flushes the writes still in flight (a turn that ended in
        # the grace) and delivers their outcomes; only jobs still open are Closed.
        with contextlib.suppress(Exception):
            await self.store.close()
        for job in list(d.jobs.values()):
            for fut in job.waiters or ():
                if not fut.done():
                    fut.set_exception(Closed("the Laneway closed before the job finished"))
        for r in self._runners.values():
            await r.close()
        for closer in self._closers:
            with contextlib.suppress(Exception):
                await closer()
        self._state = _CLOSED
        self._closed.set()

    def drain_now(self) -> None:
        """End a ``close()``'s grace at once (a second SIGTERM): running turns are
        cancelled with reason ``shutdown`` under the same rules."""
        self._hurry.set()

    @property
    def closing(self) -> bool:
        """``close()`` has begun: readiness fails and submits are refused."""
        return self._state in (_CLOSING, _CLOSED)

    async def join(self) -> None:
        """Wait until no job is queued or running."""
        await self._require_running().idle.wait()

    # -- submitting --------------------------------------------------------------

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
        d = self._require_running()
        check_session(session)
        spec = self._handlers.get(handler)
        if spec is None:
            raise UnknownHandler(f"no handler named {handler!r} (have: {sorted(self._handlers)})")
        check_json(payload, "payload")
        if idempotency_key is not None or type(priority) is not int:
            check_submit(idempotency_key, priority)
        counted = d.check_room(session)
        job_id = f"{self._id_prefix}-{next(self._seq):x}"
        # Near a bound of a cluster's queue, the store counts (and may refuse) instead.
        add = self.store.add_job if not counted or d.claims is None else d.claims.add_counted
        write = add(
            job_id=job_id,
            session=session,
            handler=handler,
            payload=payload,
            priority=priority,
            idempotency_key=idempotency_key,
        )
        # A committed write needs no await (and no coroutine for admit()).
        info, event = write.value if type(write) is Committed else await d.admit(session, write)
        if event is None:  # an earlier submit with the same idempotency key
            return Job(self, info.id, info.session, info.handler)
        if self._bus.watched:
            self._bus.publish(event)
        # Else closed while committing: it stays queued in the store. A node's claim that
        # committed beside the submit may have taken the job (and adopted it) already.
        if self._state == _RUNNING and job_id not in d.jobs:
            d.enqueue(JobRecord(job_id, session, spec, payload, (-priority, next(self._seq))))
            d.pump()
        return Job(self, job_id, session, handler)

    def _order(self, priority: int) -> tuple[int, int]:
        return (-priority, next(self._seq))

    # -- control -----------------------------------------------------------------

    async def stop(self, session: str, *, drop_queued: bool = False) -> StopResult:
        """End the session's running turn (within cancel_grace, whatever it does);
        with ``drop_queued`` also cancel its queued jobs."""
        d = self._require_running()
        check_session(session)
        # Its queue and its turns on every node: written first, so no slot this stop
        # frees can start a queued job it drops (the write never flags this node's own
        # turns, which it ends itself just below).
        elsewhere_stop = (
            d.claims.stop(session, None, drop_queued=drop_queued) if d.claims is not None else None
        )
        cancelled, dropped, waits = d.stop_session(session, drop_queued)
        if waits:
            await asyncio.wait(waits)
        await _committed(d, [*cancelled, *dropped])
        if elsewhere_stop is not None:
            more, elsewhere = await elsewhere_stop
            more = [job_id for job_id in more if job_id not in cancelled]
            await _committed(d, [*more, *elsewhere])
            cancelled += more
            dropped += elsewhere
        return StopResult(cancelled=cancelled, dropped=dropped)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; True if it was."""
        d = self._require_running()
        job = d.jobs.get(job_id)
        att = d.running.get(job_id)
        if d.claims is not None and att is None:
            # Queued in the database (whoever accepted it) or running on another node:
            # the store decides which, in one write that no claim can interleave with.
            cancelled, dropped = await d.claims.stop(None, job_id, drop_queued=True)
            return bool(cancelled or dropped)
        if job is None or job.state.terminal:
            return False
        if att is not None:
            done = att.ended_future(d.loop)
            att.cancel(Reason.STOPPED)
            await done
            await _committed(d, [job_id])
            return True
        if not d.cancel_queued(job):
            return False
        await _committed(d, [job_id])
        return True

    async def requeue(self, job_id: str) -> Job:
        """Send a failed, timed_out or dead job back to the tail of its session."""
        d = self._require_running()
        info = await self.store.get_job(job_id)
        if info is None:
            raise UnknownJob(f"no job {job_id!r}")
        spec = self._handlers.get(info.handler)
        if spec is None:
            raise UnknownHandler(f"no handler named {info.handler!r}")
        requeued = await written(self.store.requeue(job_id))
        if requeued is None:
            raise NotRequeueable(
                f"job {job_id} is {info.state.value}; only failed, timed_out and dead jobs "
                "can be requeued"
            )
        new_info, event = requeued
        self._bus.publish(event)
        d.enqueue(
            JobRecord(job_id, new_info.session, spec, new_info.payload, self._order(info.priority))
        )
        d.pump()
        return Job(self, job_id, info.session, info.handler)

    # -- reading -----------------------------------------------------------------

    async def _wait(self, job_id: str) -> Outcome:
        d = self._require_running()
        job = d.jobs.get(job_id)
        if job is not None:
            fut: asyncio.Future[Outcome] = d.loop.create_future()
            if job.waiters is None:
                job.waiters = []
            job.waiters.append(fut)
            try:
                return await fut
            finally:
                if not fut.done() and job.waiters and fut in job.waiters:
                    job.waiters.remove(fut)
        info = await self.store.get_job(job_id)
        if info is None:
            raise UnknownJob(f"no job {job_id!r}")
        if info.state not in TERMINAL_STATES:
            raise JobNotLive(f"job {job_id} is {info.state.value} but not live here")
        return Outcome(job_id, info.state, info.result, info.error, info.reason, info.attempts)

    async def get(self, job_id: str) -> JobInfo | None:
        """The job as the store knows it, with the live state if it is running here."""
        info = await self.store.get_job(job_id)
        d = self._dispatch
        job = d.jobs.get(job_id) if d is not None else None
        if info is not None and job is not None and info.state is not job.state:
            return replace(info, state=job.state, attempts=job.attempts)
        return info

    async def jobs(
        self,
        state: JobState | str | None = None,
        *,
        session: str | None = None,
        prefix: str | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[JobInfo]:
        """Jobs, newest first, filtered by state and by session or session-key
        ``prefix``; ``before`` (a job id) gives the page after that job."""
        if state is not None and not isinstance(state, JobState):
            try:
                state = JobState(state)
            except ValueError:
                raise ConfigError(f"unknown job state {state!r}") from None
        return await self.store.list_jobs(
            state=state, session=session, prefix=prefix, before=before, limit=limit
        )

    async def events(self, session: str, after: int = 0) -> AsyncIterator[Event]:
        """The session's events with ``seq > after``: replayed, then live."""
        self._require_running()
        check_session(session)
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
        return self._bus.add_listener(fn)

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

    @property
    def discarded_events(self) -> int:
        """Events emitted after their attempt ended (or refused by the store)."""
        return self._dispatch.discarded_events if self._dispatch is not None else 0

    def loop_health(self) -> tuple[float, int]:
        """``(loop_lag, loop_blocks)`` as in ``snapshot()``, without walking the lanes."""
        wd = self._watchdog
        return (max(wd.lag, wd.blocked_for), wd.blocks) if wd else (0.0, 0)

    @property
    def node(self) -> str:
        """This node's name: the store's (PostgreSQL's ``node``), else host and process id."""
        return self.store.node or self._local_node

    def snapshot(self) -> Snapshot:
        """Lanes, queue depths, zombies, loop health and the running turns (which node
        runs each), right now."""
        d = self._dispatch
        if d is None:
            return Snapshot([], 0, 0, [], *self.loop_health(), node=self.node)
        now = d.loop.time()
        return build_snapshot(
            now,
            d.slots,
            d.running.values(),
            self.config.session_limit,
            d.reaper.zombies_at(now),
            self.loop_health(),
            self.node,
            d.claims.running_elsewhere(time.time()) if d.claims is not None else (),
        )

    # -- periodic work -----------------------------------------------------------

    def _scan(self) -> None:
        if self._state != _RUNNING:
            return
        d = self._live()
        now = d.loop.time()
        try:
            self._monitor.scan(now, d.queued.values(), d.slots, d.running)
        finally:
            d.timers.call_at(now + self._monitor.interval, self._scan)

    def _maintain(self) -> None:
        if self._state != _RUNNING:
            return
        d = self._live()
        assert self.store.maintain_interval
        d.timers.call_at(d.loop.time() + self.store.maintain_interval, self._maintain)
        if not self._maintaining:
            self._maintaining = True
            d.reaper.spawn(self._maintain_once())

    async def _maintain_once(self) -> None:
        try:
            await self.store.maintain()
        except Exception as exc:
            log.exception("store.maintain_failed", extra={"error": repr(exc)})
        finally:
            self._maintaining = False

    # -- helpers -----------------------------------------------------------------

    def _live(self) -> Dispatcher:
        assert self._dispatch is not None
        return self._dispatch

    def _require_running(self) -> Dispatcher:
        if self._state != _RUNNING or self._dispatch is None:
            if self._state == _NEW:
                raise Closed(
                    "this Laneway is not started: use `async with lw:` or `await lw.start()`"
                )
            raise Closed()
        return self._dispatch


async def _drain(d: Dispatcher, grace: float, hurry: asyncio.Event) -> None:
    """Let running turns finish for ``grace`` seconds (or until ``hurry``), then
    cancel them (``shutdown``)."""
    if grace > 0 and d.running and not hurry.is_set():
        ended = [a.ended_future(d.loop) for a in d.running.values()]
        ends = asyncio.ensure_future(_all_done(ended))
        hurried: asyncio.Future[Any] = asyncio.ensure_future(hurry.wait())
        waits: list[asyncio.Future[Any]] = [ends, hurried]
        try:
            await asyncio.wait(waits, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurried.cancel()
            ends.cancel()
    pending = [a.ended_future(d.loop) for a in d.running.values()]
    for att in list(d.running.values()):
        att.cancel(Reason.SHUTDOWN)
    if pending:
        await asyncio.wait(pending)


async def _all_done(futs: list[asyncio.Future[None]]) -> None:
    for fut in futs:
        await fut


async def _settle(d: Dispatcher) -> None:
    # Let committed-write callbacks run before the store closes.
    for _ in range(3):
        await asyncio.sleep(0)
    await d.reaper.settle()


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


#: How long stop() and cancel() wait for the endings they caused to be committed.
#: A store that cannot commit them is readiness's to report, not a reason to hang.
_COMMIT_WAIT = 5.0


async def _committed(d: Dispatcher, job_ids: list[str]) -> None:
    """Return once the endings of ``job_ids`` are committed (so ``get()`` shows them)."""
    waits: list[asyncio.Future[Outcome]] = []
    for job_id in job_ids:
        job = d.jobs.get(job_id)
        if job is None:
            continue
        fut: asyncio.Future[Outcome] = d.loop.create_future()
        if job.waiters is None:
            job.waiters = []
        job.waiters.append(fut)
        waits.append(fut)
    if waits:
        await asyncio.wait(waits, timeout=_COMMIT_WAIT)
