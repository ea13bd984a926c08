"""The dispatcher: jobs through slots, attempts under limits, verdicts into the store.

How a slot is always freed on time (guarantee 1): every running attempt is
checked on the deadline heap (its first check through a ``DelayLine``, one
per distinct first-check delay). When its deadline or idle limit passes the
attempt is cancelled with a reason, and abandoned ``cancel_grace`` later if
it has not unwound. Either way ``Attempt.end()`` runs exactly once and calls
``attempt_ended()`` here, synchronously: the slots are released, the
attempt's process groups killed, and the policy's verdict written. A task
that swallows its cancellation only keeps itself alive, as a zombie.

Exactly one terminal state per job (guarantee 3): ``_terminal()`` is the only
place that writes one, it runs once per job (the job leaves the live table
when its write commits), and the store refuses a second terminal write.

Slots are decided by a ``SlotSource`` (see ``_slots``): the in-process lane
table, or with a store that claims for many nodes, ``ClaimedSlots`` (see
``_claimed``); runners by the handler's isolation (see ``_runner``); verdicts
by ``_policy.decide``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from .._errors import LanewayError, Overloaded, StoreError, WorkerLost
from .._types import Event, JobInfo, JobState, Outcome, Reason
from ..stores import Store
from ..stores._base import Committed, Write
from ..stores._claiming import ClaimingStore, Lost
from ._attempt import Attempt, JobRecord
from ._claimed import ClaimedSlots
from ._config import Config, HandlerSpec
from ._context import TurnContext
from ._events import EventBus
from ._json import check_result, fallback_reason
from ._policy import SUCCEED, SUSPECT_LANE, SUSPECT_MARKS, Ended, Happened, Verdict, blame, decide
from ._reaper import Reaper
from ._runner import AttemptHook, Runner, around_attempt
from ._slots import SlotSource, local_slots
from ._timers import DelayLine, Timers

__all__ = ["Dispatcher"]

log = logging.getLogger("laneway.runtime")

T = TypeVar("T")


def _live(att: Attempt) -> bool:
    return not att.ended


def _check(att: Attempt) -> None:
    att.line_check()


class Dispatcher:
    """Admission, the live jobs, the running attempts and their endings."""

    def __init__(
        self,
        config: Config,
        store: Store,
        bus: EventBus,
        runners: Mapping[str, Runner],
        loop: asyncio.AbstractEventLoop,
        attempt_hooks: Sequence[AttemptHook] = (),
    ) -> None:
        self.config = config
        self.store = store
        self.bus = bus
        self.runners = runners
        #: The Laneway's list itself: a hook added later applies to later attempts.
        self.attempt_hooks = attempt_hooks
        self.loop = loop
        self.timers = Timers(loop)
        self.max_event_bytes = config.max_event_bytes
        self.reaper = Reaper(loop)
        #: Set when the store decides slots for a cluster (PostgreSQL).
        self.claims = ClaimedSlots(store, config) if isinstance(store, ClaimingStore) else None
        # Crash suspects also take the one slot of a lane of their own: they run alone.
        lanes = {**config.lanes, SUSPECT_LANE: 1}
        self.slots: SlotSource[JobRecord] = self.claims or local_slots(lanes, config.session_limit)
        self._handlers: Mapping[str, HandlerSpec] = {}
        self._order: Callable[[int], tuple[int, int]] = lambda priority: (-priority, 0)
        self.jobs: dict[str, JobRecord] = {}
        self.running: dict[str, Attempt] = {}
        #: Queued jobs in the order they were queued (the monitor reads the oldest).
        self.queued: dict[str, JobRecord] = {}
        self.idle = asyncio.Event()
        self.idle.set()
        self._idle_set = True  # mirrors idle.is_set() without a call per job
        self.accepting = False
        self.discarded_events = 0
        self._admitting: dict[str, int] = {}
        self._admitting_total = 0
        self._lines: dict[float, DelayLine[Attempt]] = {}
        #: The latest verdict write, for a handler's SystemExit to wait on.
        self.last_write: Write[Event | None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- admission ---------------------------------------------------------------

    def check_room(self, session: str) -> bool:
        """Raise ``Overloaded`` unless ``session`` may queue one more job as far as this
        node knows. True if only the store can tell: a cluster near a bound, where the
        submit must be counted in the database (``claims.add_counted``)."""
        config = self.config
        total = self.slots.total_queued + self._admitting_total
        if total >= config.max_queued:
            raise Overloaded(f"{config.max_queued} jobs are queued (max_queued)", retry_after=1.0)
        # No session has more queued than all of them together.
        if total >= config.max_queued_per_session:
            pending = self._admitting.get(session, 0)
            if self.slots.queued_in(session) + pending >= config.max_queued_per_session:
                raise Overloaded(
                    f"session {session!r} has {self.config.max_queued_per_session} jobs queued "
                    "(max_queued_per_session)",
                    retry_after=1.0,
                )
        return self.claims is not None and self.claims.near_bound(session)

    async def admit(self, session: str, write: Write[T]) -> T:
        """Wait for a submit's write, counting it against the bounds meanwhile."""
        if type(write) is Committed:
            return write.value
        self._admitting[session] = self._admitting.get(session, 0) + 1
        self._admitting_total += 1
        try:
            return await _written(write)
        finally:
            self._admitting_total -= 1
            left = self._admitting[session] - 1
            if left:
                self._admitting[session] = left
            else:
                del self._admitting[session]

    def enqueue(self, job: JobRecord, now: float | None = None) -> None:
        job.enqueued_at = self.loop.time() if now is None else now
        job.state = JobState.QUEUED
        self.jobs[job.id] = job
        self.queued[job.id] = job
        if self._idle_set:
            self._idle_set = False
            self.idle.clear()
        self.slots.enqueue(job)
        queue_wait = job.limits.queue_wait
        if queue_wait is not None:
            job.queue_timer = self.timers.call_at(
                job.enqueued_at + queue_wait, self._queue_expired, job
            )

    # -- dispatch ----------------------------------------------------------------

    def pump(self) -> None:
        if not self.accepting:
            return
        next_ready = self.slots.next_ready
        while (job := next_ready()) is not None:
            self._start(job)

    def _start(self, job: JobRecord) -> None:
        del self.queued[job.id]
        if job.queue_timer is not None:
            self.timers.cancel(job.queue_timer)
            job.queue_timer = None
        job.state = JobState.RUNNING
        job.attempts += 1
        now = self.loop.time()
        att = Attempt(self, job, job.attempts, now)
        self.running[job.id] = att
        claimed = self.claims.started(job) if self.claims is not None else None
        started: Write[Event | None] = (
            self.store.start_attempt(job.id, att.number) if claimed is None else Committed(claimed)
        )
        att.task = self.loop.create_task(self._run(att, started))
        first = job.limits.first_check
        if first is not None:
            line = self._lines.get(first)
            if line is None:
                line = self._lines[first] = DelayLine(self.timers, first, _check, _live)
            line.push(att, now)

    async def _run(self, att: Attempt, started: Write[Event | None]) -> None:
        try:
            event = started.value if type(started) is Committed else await _written(started)
            if event is None:
                self._refused(att)
                return
            att.start_seq = event.seq
            if self.bus.watched:
                self.bus.publish(event)
            spec = att.job.spec
            ctx = TurnContext(att)
            if self.attempt_hooks:
                with around_attempt(self.attempt_hooks, ctx):
                    result = await self.runners[spec.isolation].run(att, ctx)
            else:
                result = await self.runners[spec.isolation].run(att, ctx)
        except asyncio.CancelledError as exc:
            self._cancelled(att, exc)
        except WorkerLost as exc:
            att.end(Ended.LOST, error=exc)
        except Exception as exc:
            att.end(Ended.RAISED, error=exc)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: the process is going
            await self._exiting(att, exc)
            raise
        else:
            att.end(Ended.RETURNED, result)

    def _cancelled(self, att: Attempt, exc: asyncio.CancelledError) -> None:
        if att.reason is not None or att.ended:
            att.end(Ended.CANCELLED)
            return
        task = asyncio.current_task()
        if task is None or not task.cancelling():
            # The handler raised CancelledError itself: its own error, not a cancellation.
            att.end(Ended.RAISED, error=exc)
            return
        # Only asyncio tearing the loop down cancels laneway's private tasks: starting
        # more attempts would only make tasks the loop is about to destroy.
        self.accepting = False
        log.warning(
            "job.torn_down: %s attempt %d was cancelled by its event loop, not by laneway",
            att.job.id,
            att.number,
            extra={"job_id": att.job.id, "session": att.job.session},
        )
        att.end(Ended.TORN_DOWN)

    async def _exiting(self, att: Attempt, exc: BaseException) -> None:
        """A handler raised ``SystemExit``/``KeyboardInterrupt``: it gets its own verdict,
        committed before the exception takes the process down; nothing new starts."""
        self.accepting = False
        att.end(Ended.RAISED, error=exc)
        write = self.latest_write()
        if isinstance(write, asyncio.Future):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(write), _EXIT_FLUSH)

    def latest_write(self) -> Write[Event | None] | None:
        return self.last_write

    def _refused(self, att: Attempt) -> None:
        # The store did not record the start (it is gone or fenced us out): the
        # attempt never ran; end it like an error so the job is decided once.
        err = StoreError(f"the store refused to start attempt {att.number} of {att.job.id}")
        att.end(Ended.RAISED, error=err)

    # -- endings (AttemptOwner) --------------------------------------------------

    def attempt_ended(
        self, att: Attempt, ended: Ended, result: Any, error: BaseException | None
    ) -> None:
        job = att.job
        if self.running.get(job.id) is att:  # a zombie may end after its job ran again
            del self.running[job.id]
        self.slots.release(job)
        if job.suspect:  # it ended by itself: not the crash's culprit
            _suspect(job, False)
        first = job.limits.first_check
        if first is not None:
            self._lines[first].dropped()
        if att.procs or att.threads:
            self.reaper.reap(att)
        invalid = ended is Ended.RETURNED and type(result) not in _PLAIN
        if invalid:
            try:
                check_result(result)
                invalid = False
            except LanewayError as exc:
                # Never retried: the handler's side effects already happened once.
                ended, error = Ended.RAISED, exc
        if ended is Ended.RETURNED and att.reason is None:
            verdict = SUCCEED  # what decide() says to this, without building its record
        else:
            verdict = decide(_happened(att, ended, error, no_retry=invalid), job.spec.rules)
        if verdict is SUCCEED:
            self._terminal(job, JobState.SUCCEEDED, result=result)
        else:
            self._apply(job, att.number, verdict, result)
        self.pump()

    def abandoned(self, att: Attempt) -> None:
        self.reaper.abandon(att)

    def kill_process(self, att: Attempt, proc: asyncio.subprocess.Process) -> None:
        self.reaper.kill(att, proc)

    async def emit(self, att: Attempt, kind: str, data: Any) -> Event | None:
        if att.ended:
            self.discarded_events += 1
            return None
        att.output = True
        att.last_progress = self.loop.time()
        job = att.job
        write = self.store.append_event(job.session, job.id, kind, data, attempt=att.number)
        event = write.value if type(write) is Committed else await _written(write)
        if event is None:
            self.discarded_events += 1
            return None
        self.bus.publish(event)
        return event

    async def history(self, att: Attempt, limit: int, before: int | None) -> list[Event]:
        start = att.start_seq
        if before is None:
            before = start
        elif start:
            before = min(before, start)
        return await self.store.history(att.job.session, before=before, limit=limit)

    def run_in_thread(self, att: Attempt, call: Callable[[], T]) -> Awaitable[T]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.config.sync_workers, thread_name_prefix="laneway-sync"
            )
        cf = self._executor.submit(call)
        att.track_thread(cf)
        return asyncio.wrap_future(cf)

    # -- verdicts ----------------------------------------------------------------

    def _apply(self, job: JobRecord, attempt: int, verdict: Verdict, result: Any) -> None:
        if verdict.state is JobState.RUNNING:  # another node owns the attempt now
            return
        if verdict.lost:
            job.lost += 1
        if not verdict.counts_attempt:
            job.attempts = attempt - 1
        if verdict.state is not JobState.QUEUED:
            self._terminal(
                job,
                verdict.state,
                reason=verdict.reason,
                error=verdict.error,
                result=result if verdict.state is JobState.SUCCEEDED else None,
                lost=verdict.lost,
            )
            return
        job.state = JobState.QUEUED
        reason = verdict.reason or "retry"
        write = self.store.retry(
            job.id, attempt, error=verdict.error, reason=reason, lost=verdict.lost,
            delay=verdict.delay, counts_attempt=verdict.counts_attempt,
        )  # fmt: skip
        self.last_write = write
        _when_written(write, self._published)
        if self.accepting:
            log.info(
                "job.retry: %s attempt %d ended (%s); retrying in %.2fs",
                job.id,
                attempt,
                reason,
                verdict.delay,
                extra={
                    "job_id": job.id,
                    "session": job.session,
                    "reason": reason,
                    "attempt": attempt,
                    "delay": verdict.delay,
                },
            )
            self._requeue_head(job, verdict.delay, write)

    def _requeue_head(self, job: JobRecord, delay: float, write: Write[Event | None]) -> None:
        """A retried job keeps the head of its session, held until its backoff ends.

        The backoff counts from the retry's commit: a store that holds the job
        itself (PostgreSQL, from the write on) would refuse it to an earlier unhold,
        and the retry would wait for the next poll instead of its backoff.
        """
        job.state = JobState.QUEUED
        self.queued[job.id] = job
        self.slots.requeue_head(job, held=delay > 0)
        if delay > 0:
            _when_written(write, lambda _event: self._hold(job, delay))

    def _hold(self, job: JobRecord, delay: float) -> None:
        if self.queued.get(job.id) is job and job.state is JobState.QUEUED:  # not stopped
            job.retry_timer = self.timers.call_at(self.loop.time() + delay, self._unhold, job)

    def _unhold(self, job: JobRecord) -> None:
        job.retry_timer = None
        self.slots.unhold(job.session)
        self.pump()

    def _terminal(
        self,
        job: JobRecord,
        state: JobState,
        *,
        reason: str | None = None,
        error: str | None = None,
        result: Any = None,
        lost: bool = False,
    ) -> None:
        """Write the job's one terminal state; outcome delivered once committed."""
        try:
            write = self.store.finish(
                job.id, job.attempts, state, result=result, error=error, reason=reason, lost=lost
            )
        except Exception as exc:  # a store that refuses at the call (an unencodable value)
            self._unrecorded(job, state, lost, exc)
            return
        self.last_write = write
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
        if type(write) is Committed:
            self._finished(job, state, reason, error, result, write.value)
        else:
            write.add_done_callback(
                partial(self._finished_later, job, state, reason, error, result, lost)
            )

    def _finished_later(
        self,
        job: JobRecord,
        state: JobState,
        reason: str | None,
        error: str | None,
        result: Any,
        lost: bool,
        fut: asyncio.Future[Event | None],
    ) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            self._unrecorded(job, state, lost, exc)
            return
        self._finished(job, state, reason, error, result, _committed(fut))

    def _unrecorded(self, job: JobRecord, state: JobState, lost: bool, exc: BaseException) -> None:
        """The store refused or failed a terminal write: nobody is told it happened.

        End the job in a state the store can commit (``failed``, reason
        ``InvalidPayload`` or ``StoreError``); if even that fails, the job stays
        unresolved here and ``running`` in the store, for recovery to decide."""
        why = fallback_reason(exc)
        log.error(
            "job.unrecorded: the store refused %s of %s (%s); recording failed (%s)",
            state.value,
            job.id,
            exc,
            why,
            extra={"job_id": job.id, "session": job.session, "error": repr(exc)},
        )
        if state is JobState.FAILED and job.fallback:
            return
        job.fallback = True
        self._terminal(job, JobState.FAILED, reason=why, error=str(exc), lost=lost)

    def _finished(
        self,
        job: JobRecord,
        state: JobState,
        reason: str | None,
        error: str | None,
        result: Any,
        event: Event | None,
    ) -> None:
        job.state = state
        if event is not None and self.bus.watched:
            self.bus.publish(event)
        jobs = self.jobs
        if jobs.get(job.id) is job:
            del jobs[job.id]
        waiters = job.waiters
        if waiters:
            outcome = Outcome(job.id, state, result, error, reason, job.attempts)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(outcome)
            job.waiters = None
        if not jobs:
            self._idle_set = True
            self.idle.set()

    def _published(self, event: Event | None) -> None:
        if event is not None:
            self.bus.publish(event)

    def publish(self, event: Event) -> None:
        self.bus.publish(event)

    # -- control -----------------------------------------------------------------

    def stop_session(
        self, session: str, drop_queued: bool
    ) -> tuple[list[str], list[str], list[asyncio.Future[None]]]:
        """Cancel the session's running turns (and held retry); with ``drop_queued``
        its queued jobs too. Returns (cancelled ids, dropped ids, attempt endings)."""
        cancelled: list[str] = []
        waits: list[asyncio.Future[None]] = []
        for att in [a for a in self.running.values() if a.job.session == session]:
            waits.append(att.ended_future(self.loop))
            att.cancel(Reason.STOPPED)
            cancelled.append(att.job.id)
        if self.claims is not None:  # the queue is the database's: ``claims.stop`` ends it
            self.pump()
            return cancelled, [], waits
        queue = self.slots.queue_of(session)
        if queue and self.slots.is_held(session):  # a turn waiting out its retry backoff
            head = queue.pop(0)
            self.drop(head)
            cancelled.append(head.id)
        dropped: list[str] = []
        if drop_queued:
            for job in queue:
                self.drop(job)
                dropped.append(job.id)
        self.pump()
        return cancelled, dropped, waits

    def cancel_queued(self, job: JobRecord) -> bool:
        if job.state is JobState.QUEUED and self.drop(job):
            self.pump()
            return True
        return False

    def drop(self, job: JobRecord) -> bool:
        """Take a queued job out of its lane and end it ``cancelled``."""
        if not self.slots.remove(job):
            return False
        self.queued.pop(job.id, None)
        self._cancel_job_timers(job)
        self._terminal(job, JobState.CANCELLED, reason=Reason.STOPPED)
        return True

    def _queue_expired(self, job: JobRecord) -> None:
        job.queue_timer = None
        if job.state is JobState.QUEUED and self.slots.remove(job):
            del self.queued[job.id]
            self._cancel_job_timers(job)
            log.warning(
                "job.timed_out: %s waited longer than queue_wait",
                job.id,
                extra={"job_id": job.id, "session": job.session, "reason": "queue_wait"},
            )
            self._terminal(
                job, JobState.TIMED_OUT, reason=Reason.QUEUE_WAIT, error="queue_wait exceeded"
            )
            self.pump()

    def _cancel_job_timers(self, job: JobRecord) -> None:
        self.timers.cancel(job.queue_timer)
        self.timers.cancel(job.retry_timer)
        job.queue_timer = job.retry_timer = None

    # -- recovery ----------------------------------------------------------------

    def recover(
        self,
        unfinished: Iterable[JobInfo],
        handlers: Mapping[str, HandlerSpec],
        order: Callable[[int], tuple[int, int]],
        bystanders: frozenset[str] | None = None,
    ) -> None:
        """Re-queue what the last owner left; blame its death on one job at most.

        ``bystanders`` (a dead node's attempts that were not alone on it) are never
        blamed; without it, ``blame`` picks the culprit among all that were running."""
        now = self.loop.time()
        infos = list(unfinished)
        running = JobState.RUNNING
        in_flight = [(i.id, i.reason in SUSPECT_MARKS) for i in infos if i.state is running]
        culprit = blame(in_flight)
        for info in infos:
            spec = handlers.get(info.handler)
            if spec is None:
                self._unknown_handler(info)
                continue
            job = self.jobs.get(info.id) or JobRecord(
                info.id, info.session, spec, info.payload, order(info.priority)
            )
            job.attempts, job.lost = info.attempts, info.lost
            _suspect(job, info.reason in SUSPECT_MARKS)
            # A dead node's attempt is blamed only if it was alone on that node.
            blamed = info.id == culprit if bystanders is None else info.id not in bystanders
            if info.state is running and not self._recover_lost(job, info, len(in_flight), blamed):
                continue
            self.enqueue(job, now)

    def _unknown_handler(self, info: JobInfo) -> None:
        write = self.store.finish(
            info.id,
            info.attempts,
            JobState.FAILED,
            result=None,
            error=f"no handler named {info.handler!r}",
            reason="UnknownHandler",
            lost=info.state is JobState.RUNNING,
        )
        _when_written(write, self._published)

    def _recover_lost(self, job: JobRecord, info: JobInfo, in_flight: int, blamed: bool) -> bool:
        """Decide a job whose attempt was in flight at the crash; True to re-queue it."""
        what = Happened(
            Ended.LOST,
            None,
            "WorkerLost",
            "attempt lost: the process died",
            info.output,
            job.attempts,
            job.lost,
            recovered=True,
            blamed=blamed,
        )
        verdict = decide(what, job.spec.rules)
        _log_blame(job, in_flight, blamed)
        if verdict.state is JobState.QUEUED:
            _suspect(job, True)
            attempt = job.attempts
            if verdict.lost:
                job.lost += 1
            if not verdict.counts_attempt:
                job.attempts -= 1
            write = self.store.retry(
                job.id, attempt, error=verdict.error, reason=verdict.reason or Reason.LOST,
                lost=verdict.lost, delay=0.0, counts_attempt=verdict.counts_attempt,
            )  # fmt: skip
            _when_written(write, self._published)
            return True
        self.jobs[job.id] = job
        self._idle_set = False
        self.idle.clear()
        self._apply(job, job.attempts, verdict, None)
        return False

    # -- a cluster's claims (ClaimOwner) -----------------------------------------

    async def start_slots(
        self, handlers: Mapping[str, HandlerSpec], order: Callable[[int], tuple[int, int]]
    ) -> None:
        """Start claiming from the store, if it decides slots (a no-op otherwise)."""
        self._handlers, self._order = handlers, order
        if self.claims is not None:
            await self.claims.start(self, handlers)

    async def close_slots(self) -> None:
        """Stop claiming; give back won jobs that never started, uncounted."""
        if self.claims is None:
            return
        for job, attempt in await self.claims.close():
            self.store.retry(
                job.id, attempt, error=None, reason=Reason.SHUTDOWN, lost=False, delay=0.0,
                counts_attempt=False,
            )  # fmt: skip

    def adopt(self, info: JobInfo) -> JobRecord | None:
        spec = self._handlers.get(info.handler)
        if spec is None:
            return None
        job = JobRecord(info.id, info.session, spec, info.payload, self._order(info.priority))
        job.lost = info.lost
        self.enqueue(job)
        return job

    def settle(self, job: JobRecord, info: JobInfo) -> None:
        self.queued.pop(job.id, None)
        self._cancel_job_timers(job)
        self._finished(job, info.state, info.reason, info.error, info.result, None)

    def events_elsewhere(self, sessions: set[str] | None) -> None:
        self.bus.written_elsewhere(sessions)

    def reaped(self, lost: Sequence[Lost]) -> None:
        bystanders = frozenset(r.job.id for r in lost if r.in_flight > 1)
        self.recover([r.job for r in lost], self._handlers, self._order, bystanders)
        self.pump()

    # -- close -------------------------------------------------------------------

    def shutdown(self) -> None:
        self.timers.close()
        self.reaper.release_all()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


_PLAIN = (str, bool, type(None))


def _suspect(job: JobRecord, suspect: bool) -> None:
    job.suspect = suspect
    job.lanes = (*job.spec.lanes, SUSPECT_LANE) if suspect else job.spec.lanes


def _log_blame(job: JobRecord, in_flight: int, blamed: bool) -> None:
    fields = {"job_id": job.id, "session": job.session, "in_flight": in_flight}
    if blamed:
        log.warning(
            "job.blamed: the process died while attempt %d of %s ran %s; loss %d of %d",
            job.attempts,
            job.id,
            "alone" if in_flight == 1 else "as the only crash suspect",
            job.lost + 1,
            job.spec.poison_after,
            extra={**fields, "lost": job.lost + 1, "blamed": True},
        )
    else:
        log.warning(
            "job.suspect: %s was one of %d attempts in flight when the process died; "
            "not blamed, it runs alone among suspects next",
            job.id,
            in_flight,
            extra={**fields, "lost": job.lost, "blamed": False},
        )


#: Seconds a handler's SystemExit waits for its own verdict to commit.
_EXIT_FLUSH = 5.0


def _happened(
    att: Attempt, ended: Ended, error: BaseException | None, *, no_retry: bool = False
) -> Happened:
    job = att.job
    no_retry = no_retry or att.no_retry
    if error is None:
        return Happened(ended, att.reason, None, None, att.output, att.number, job.lost, no_retry)
    return Happened(
        ended,
        att.reason,
        type(error).__name__,
        str(error) or repr(error),
        att.output,
        att.number,
        job.lost,
        no_retry,
    )


async def _written(write: Write[T]) -> T:
    assert isinstance(write, asyncio.Future)
    return write.result() if write.done() else await asyncio.shield(write)


def _committed(fut: asyncio.Future[Event | None]) -> Event | None:
    if fut.cancelled():
        return None
    exc = fut.exception()
    if exc is not None:
        log.error("store.write_failed: %s", exc, extra={"error": repr(exc)})
        return None
    return fut.result()


def _when_written(write: Write[Event | None], then: Callable[[Event | None], None]) -> None:
    if type(write) is Committed:
        then(write.value)
    else:
        assert isinstance(write, asyncio.Future)
        write.add_done_callback(lambda fut: then(_committed(fut)))
