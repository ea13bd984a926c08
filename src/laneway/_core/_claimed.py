"""Slots claimed in the database: the ``SlotSource`` of a store shared by many nodes.

With a ``ClaimingStore`` (PostgreSQL) the database decides which job runs
where: per-session FIFO, ``session_limit``, shared caps and oldest head first
hold across every node because every node's claim takes session heads and
slot rows in one transaction. This node only asks for up to its free
capacity, batched (``claim``), and hands each won claim to the dispatcher as
an attempt whose start is already committed (``started``).

Beside the claims, on a task that needs no free slot (guarantee 6), each poll
tick reaps lapsed leases, picks up stop requests made on other nodes, follows
this node's queued jobs that another node took (so their waiters get the
committed outcome), refreshes the cluster's lane counts and other nodes'
running turns for the snapshot, and counts the cluster's queued jobs for
admission. LISTEN/NOTIFY hints only make the next claim come sooner.

Control is the database's too: ``stop`` ends queued jobs and flags running
ones in one write (whichever node accepted or runs them), and a submit near a
queue bound is counted in the database (``near_bound``, ``add_counted``), since
the bounds are the cluster's, not this node's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from .._errors import Overloaded
from .._types import Event, JobInfo, JobState, Reason, RunningJob
from ..stores._claiming import Claim, ClaimingStore, HintSource, Lost, Stops
from ._attempt import Attempt, JobRecord
from ._config import Config, HandlerSpec, ResolvedLimits
from ._policy import SUSPECT_LANE, SUSPECT_MARKS

__all__ = ["ClaimOwner", "ClaimedSlots"]

log = logging.getLogger("laneway.runtime")

_FOLLOW_MAX = 5000  # most local jobs whose fate one tick looks up
#: Admission across nodes. A node lets at most ``_OWN`` submits per session through
#: on its own between two of its counts (poll ticks); beyond that, and whenever the
#: last count plus what this node and the others may have added since could reach
#: ``max_queued_per_session``, a submit is counted in the database. What the other
#: nodes added unseen is at most ``2 * _OWN`` each (their current and previous
#: windows), so a count that leaves ``_OWN * (2 * nodes - 1)`` of room is safe.
_OWN = 16
#: The total is watched more loosely: counted in the database within an eighth of
#: ``max_queued`` (or after that much of this node's own since the last count).
_NEAR_TOTAL = 8
_RUNNING_MAX = 1000  # most turns of other nodes the snapshot lists
# Local jobs of sessions that no hint named, looked up per tick, in turn: a backlog
# of 20,000 queued jobs costs a tick one short read, not a scan of them all.
_SWEEP = 500


class ClaimOwner(Protocol):
    """What the claims need from the dispatcher."""

    @property
    def queued(self) -> dict[str, JobRecord]: ...

    @property
    def running(self) -> dict[str, Attempt]: ...

    def pump(self) -> None: ...

    def adopt(self, info: JobInfo) -> JobRecord | None:
        """A record for a job another node accepted (queued here at once)."""

    def settle(self, job: JobRecord, info: JobInfo) -> None:
        """Another node ended the job: deliver the committed outcome."""

    def publish(self, event: Event) -> None:
        """An event committed by the store for this node's call."""

    def reaped(self, lost: Sequence[Lost]) -> None:
        """Decide attempts taken over from dead nodes."""

    def events_elsewhere(self, sessions: set[str] | None) -> None:
        """Some node wrote events of these sessions (None: maybe any session)."""


class ClaimedSlots:
    """Jobs this node queued or won; the database holds the lanes themselves."""

    def __init__(self, store: ClaimingStore, config: Config) -> None:
        self.store = store
        self.config = config
        self.capacity = store.capacity
        self._owner: ClaimOwner | None = None
        self._handler_lanes: dict[str, tuple[str, ...]] = {}
        self._local: dict[str, JobRecord] = {}  # queued, as far as this node knows
        self._per_session: dict[str, dict[str, JobRecord]] = {}  # the local jobs by session
        self._hinted: set[str] | None = set()  # sessions with news since the last follow
        self._sweep = 0
        self._elsewhere: dict[str, JobRecord] = {}  # running on another node
        self._starts: dict[str, Event] = {}  # won, job.started committed
        self._ready: deque[JobRecord] = deque()
        self._active: Counter[str] = Counter()
        self._lane_active: Counter[str] = Counter()
        self._held: set[str] = set()  # sessions whose head waits out a retry backoff here
        self._elsewhere_busy: Counter[str] = Counter()  # other nodes' slots, per poll tick
        # Queued jobs in the database at the last count, and submits let through since.
        self._queued_total = 0
        self._queued_near: dict[str, int] = {}  # sessions near max_queued_per_session
        self._nodes = 1  # live nodes at the last count
        self._added_total = 0
        self._added: Counter[str] = Counter()
        self._running: list[tuple[str, str, str, int, str, float]] = []  # other nodes' turns
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._hints: HintSource | None = None
        self._tick: asyncio.Task[None] | None = None
        self._claiming: Awaitable[Sequence[Claim]] | None = None

    # -- life ----------------------------------------------------------------------

    async def start(self, owner: ClaimOwner, handlers: Mapping[str, HandlerSpec]) -> None:
        self._owner = owner
        self._handler_lanes = {name: spec.lanes for name, spec in handlers.items()}
        # Crash suspects run alone cluster-wide: the lane's one slot is a database row too.
        lanes = {**self.config.lanes, SUSPECT_LANE: 1}
        await self.store.set_lanes(lanes, session_limit=self.config.session_limit)
        self._hints = await self.store.listen()
        self.store.on_lease_lost.append(self._lease_lost)
        await self._queued()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._claims()), loop.create_task(self._ticks())]
        self._kick.set()

    async def close(self) -> list[tuple[JobRecord, int]]:
        """Stop claiming; returns the won jobs that never started (to give back)."""
        tasks = [*self._tasks, *([self._tick] if self._tick is not None else [])]
        while not all(task.done() for task in tasks):
            # Again until done: Python 3.11's wait_for (in the listener) can swallow one.
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=0.1)
        self._tasks = []
        claiming, self._claiming = self._claiming, None
        if claiming is not None:  # it commits whatever we do: take what it won, to give back
            with contextlib.suppress(Exception):
                self._take(await claiming, start=False)
        won = [(job, self._starts[job.id].data["attempt"]) for job in self._ready]
        self._ready.clear()
        return won

    # -- the SlotSource protocol -----------------------------------------------------

    @property
    def total_queued(self) -> int:
        return len(self._local) + len(self._ready)

    def enqueue(self, ticket: JobRecord) -> None:
        if ticket.id in self._starts:  # a won claim of a job this node had not seen
            self._ready.append(ticket)
            return
        self._add_local(ticket)
        self._kick.set()

    def requeue_head(self, ticket: JobRecord, *, held: bool) -> None:
        # The store's retry write already put it back at its session's head (and the
        # database holds it for its backoff); remembered here for stop and the snapshot.
        self._add_local(ticket)
        if held:
            self._held.add(ticket.session)
        self._kick.set()

    def unhold(self, session: str) -> None:
        self._held.discard(session)
        self._kick.set()

    def next_ready(self) -> JobRecord | None:
        if not self._ready:
            return None
        job = self._ready.popleft()
        self._active[job.session] += 1
        for lane in job.lanes:
            self._lane_active[lane] += 1
        return job

    def started(self, ticket: JobRecord) -> Event | None:
        return self._starts.pop(ticket.id, None)

    def release(self, ticket: JobRecord) -> None:
        left = self._active[ticket.session] - 1
        if left > 0:
            self._active[ticket.session] = left
        else:
            del self._active[ticket.session]
        for lane in ticket.lanes:
            self._lane_active[lane] -= 1
        self._kick.set()  # the next claim rides in the batch after this finish

    def remove(self, ticket: JobRecord) -> bool:
        if ticket.session in self._held and self._head(ticket.session) is ticket:
            self._held.discard(ticket.session)  # a held retry stopped: its backoff is moot
        return self._pop_local(ticket.id) is not None

    def queued_in(self, session: str) -> int:
        return len(self._per_session.get(session, ()))

    def active_in(self, session: str) -> int:
        return self._active[session]

    def queue_of(self, session: str) -> list[JobRecord]:
        return sorted((j for j in self._local.values() if j.session == session), key=_order)

    def is_held(self, session: str) -> bool:
        return session in self._held

    def sessions(self) -> Iterator[tuple[str, int, int, JobRecord | None]]:
        heads = self._heads()
        for key in sorted(set(heads) | set(self._active)):
            yield key, self._active[key], len(self._per_session.get(key, ())), heads.get(key)

    def shared_counts(self) -> Iterator[tuple[str, int, int, int]]:
        queued = Counter(lane for job in self._local.values() for lane in job.lanes)
        for name, cap in self.config.lanes.items():
            yield name, cap, self._busy(name, cap), queued[name]

    def waiting_heads(self) -> Iterator[JobRecord]:
        """Of the jobs this node knows to be queued, those that wait only for shared
        slots: heads of sessions with room and no backoff (as the in-process lanes)."""
        limit = self.config.session_limit
        return iter([job for job in self._heads().values() if self._has_room(job.session, limit)])

    def blocking_lane(self, ticket: JobRecord) -> str | None:
        session = ticket.session
        head = self._head(session)
        if head is not ticket or not self._has_room(session, self.config.session_limit):
            return f"session:{session}"
        for lane in ticket.lanes:
            cap = self.config.lanes.get(lane, 1)
            if self._busy(lane, cap) >= cap:
                return lane
        return None

    def _busy(self, lane: str, cap: int) -> int:
        """Busy slots of ``lane``: this node's, exact, and the others' as last read."""
        return min(cap, self._lane_active[lane] + self._elsewhere_busy[lane])

    def _heads(self) -> dict[str, JobRecord]:
        return {key: min(jobs.values(), key=_order) for key, jobs in self._per_session.items()}

    def _head(self, session: str) -> JobRecord | None:
        # One session's jobs only: the monitor asks this of up to 256 queued jobs a scan,
        # and a backlog holds tens of thousands of local jobs.
        jobs = self._per_session.get(session)
        return min(jobs.values(), key=_order) if jobs else None

    def _has_room(self, session: str, limit: int) -> bool:
        return self._active[session] < limit and session not in self._held

    def stop(
        self, session: str | None, job_id: str | None, *, drop_queued: bool
    ) -> Awaitable[tuple[list[str], list[str]]]:
        """Stop across the cluster: the database ends the queued jobs (whichever node
        accepted them) and flags the running ones; wait (``cancel_grace`` plus two
        polls at most) until those no longer run. Returns (cancelled, dropped) ids:
        running turns and retries waiting out a backoff, and queued jobs.

        The write is queued at the call, so it commits ahead of the finishes of turns
        the caller stops next: the session's queued jobs are gone before a slot they
        free could start one of them."""
        return self._stopped(self.store.stop_jobs(session, job_id, drop_queued=drop_queued))

    async def _stopped(self, written: Awaitable[Stops]) -> tuple[list[str], list[str]]:
        owner = self._owner
        assert owner is not None
        stops = await written
        cancelled: list[str] = []
        dropped: list[str] = []
        for info, event in stops.ended:
            owner.publish(event)
            job = self._pop_local(info.id) or self._elsewhere.pop(info.id, None)
            if job is not None:
                owner.settle(job, info)
            (cancelled if info.attempts > 0 else dropped).append(info.id)
        flagged = [i for i in stops.flagged if i not in self._starts]
        for i in flagged:  # ours: at once, not at the next tick
            att = owner.running.get(i)
            if att is not None:
                att.cancel(Reason.STOPPED)
        grace = ResolvedLimits.of(self.config.limits).cancel_grace
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace + 2 * self.store.poll + 1.0):
                # The owner's poll answers the flag; a read now and then sees it.
                while flagged and await self._any_running(flagged):  # noqa: ASYNC110 - the database is the event
                    await asyncio.sleep(min(0.05, self.store.poll))
        return cancelled + flagged, dropped

    async def _any_running(self, ids: list[str]) -> bool:
        return any(info.state is JobState.RUNNING for info in await self.store.jobs_by_id(ids))

    # -- admission across the cluster -------------------------------------------------

    def near_bound(self, session: str) -> bool:
        """True if only the database can tell whether ``session`` may queue one more
        job (a bound is near); else the submit is let through and counted here."""
        bound = self.config.max_queued_per_session
        added = self._added[session]
        others = 2 * _OWN * (self._nodes - 1)  # what other nodes may have added unseen
        # A session the last count did not list had fewer than ``_session_floor()``
        # (when that is not above 0 the count lists none: any session may be near).
        floor = self._session_floor()
        known = self._queued_near.get(session, floor - 1 if floor > 0 else bound)
        if added >= _OWN or known + added + others >= bound or self._total_near():
            return True
        self._added[session] = added + 1
        self._added_total += 1
        return False

    def _session_floor(self) -> int:
        """Sessions with this many queued jobs are listed by each count."""
        return self.config.max_queued_per_session - _OWN * (2 * self._nodes - 1)

    def add_counted(
        self, *, job_id: str, session: str, handler: str, payload: Any, priority: int,
        idempotency_key: str | None,
    ) -> asyncio.Future[tuple[JobInfo, Event | None]]:  # fmt: skip
        """Submit with the bounds counted in the database; ``Overloaded`` past one."""
        config = self.config
        write = self.store.add_job_counted(
            job_id=job_id, session=session, handler=handler, payload=payload,
            priority=priority, idempotency_key=idempotency_key,
            max_per_session=config.max_queued_per_session,
            max_total=config.max_queued if self._total_near() else None,
        )  # fmt: skip
        return asyncio.ensure_future(self._counted(write, session))

    async def _counted(
        self,
        write: Awaitable[tuple[str | None, int, tuple[JobInfo, Event | None] | None]],
        session: str,
    ) -> tuple[JobInfo, Event | None]:
        refused, queued, answer = await write
        # What the database counted holds until the next tick; this node's submits let
        # through meanwhile stay counted on top of it (an overcount, on the safe side).
        self._queued_near[session] = queued + (answer is not None)
        config = self.config
        if refused == "max_queued_per_session":
            raise Overloaded(
                f"session {session!r} has {config.max_queued_per_session} jobs queued "
                "(max_queued_per_session)",
                retry_after=1.0,
            )
        if refused is not None or answer is None:
            raise Overloaded(f"{config.max_queued} jobs are queued (max_queued)", retry_after=1.0)
        return answer

    def _total_near(self) -> bool:
        bound = self.config.max_queued
        margin = max(_OWN * (2 * self._nodes - 1), bound // _NEAR_TOTAL)
        return self._queued_total >= bound - margin or self._added_total >= margin // 2

    async def _queued(self) -> None:
        """Count the queued jobs in the database (and the sessions near their bound)."""
        added_total, added = self._added_total, Counter(self._added)
        at_least = self._session_floor()
        total, near, nodes = await self.store.queued_counts(at_least if at_least > 0 else None)
        self._queued_total, self._queued_near, self._nodes = total, near, max(1, nodes)
        # What was let through before the count is in it; what came during stays counted.
        self._added_total -= added_total
        self._added -= added

    # -- claims ----------------------------------------------------------------------

    async def _claims(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            free = self.capacity - sum(self._active.values()) - len(self._ready)
            if free <= 0:
                continue
            claiming = self._claiming = asyncio.ensure_future(
                self.store.claim(free, self._handler_lanes, _SUSPECTS)
            )
            try:
                # Shielded: a claim cut off by close() still commits; close() collects it.
                won = await asyncio.shield(claiming)
                self._claiming = None
            except Exception as exc:
                self._claiming = None
                log.warning("store.claim_failed: %s", exc, extra={"error": repr(exc)})
                await asyncio.sleep(self.store.poll)
                self._kick.set()
                continue
            self._take(won)
            # There may be more: all it asked for came, or (a claim takes one head per
            # session) a session it won from has room for another of its jobs.
            if len(won) == free or (won and self.config.session_limit > 1):
                self._kick.set()

    def _take(self, won: Sequence[Claim], *, start: bool = True) -> None:
        owner = self._owner
        assert owner is not None
        for claim in won:
            job_id = claim.job.id
            self._starts[job_id] = claim.event
            self._held.discard(claim.job.session)  # its head started: no backoff left
            job = self._pop_local(job_id) or self._elsewhere.pop(job_id, None)
            if job is None:
                job = owner.adopt(claim.job)  # enqueues it, and so readies it
            else:
                owner.queued.setdefault(job_id, job)
                self._ready.append(job)
            if job is None:
                del self._starts[job_id]
                continue
            job.attempts = claim.attempt - 1  # the dispatcher counts the start
        if won and start:
            owner.pump()

    # -- the poll tick -----------------------------------------------------------------

    async def _ticks(self) -> None:
        assert self._hints is not None
        loop = asyncio.get_running_loop()
        last = -1e18
        while True:
            hints = await self._hints.wait()
            self._kick.set()  # a hint, or a poll: either way, look for work
            if hints.all_sessions or hints.sessions:
                assert self._owner is not None
                self._owner.events_elsewhere(None if hints.all_sessions else hints.sessions)
                if hints.all_sessions:
                    self._hinted = None
                elif self._hinted is not None:
                    self._hinted.update(hints.sessions)
            tick = self._tick
            if loop.time() - last >= self.store.poll * 0.5 and (tick is None or tick.done()):
                last = loop.time()
                self._tick = loop.create_task(self._tick_once())

    async def _tick_once(self) -> None:
        steps = (self._reap, self._stops, self._follow, self._counts, self._queued, self._others)
        for step in steps:
            try:
                await step()
            except Exception as exc:
                log.warning("store.tick_failed: %s", exc, extra={"error": repr(exc)})

    async def _reap(self) -> None:
        lost = await self.store.reap()
        if not lost:
            return
        assert self._owner is not None
        for r in lost:
            self._elsewhere.pop(r.job.id, None)
        self._owner.reaped(lost)

    async def _stops(self) -> None:
        assert self._owner is not None
        running = self._owner.running
        for job_id in await self.store.stop_requests():
            att = running.get(job_id)
            if att is not None:
                att.cancel(Reason.STOPPED)

    async def _follow(self) -> None:
        elsewhere = list(self._elsewhere)[:_FOLLOW_MAX]
        if elsewhere:
            for info in await self.store.jobs_by_id(elsewhere):
                self._followed(info)
        local = self._to_follow(_FOLLOW_MAX - len(elsewhere))
        if local:  # most of a backlog is still queued: only what moved comes back
            for info in await self.store.jobs_by_id(local, moved=True):
                self._followed(info)

    def _to_follow(self, most: int) -> list[str]:
        """Local jobs of the sessions hints named (every one after a ``*``), then the
        next turn of the sweep through the rest, which covers what a lost hint hid."""
        hinted, self._hinted = self._hinted, set()
        if hinted is None:
            return list(self._local)[:most]
        ids = [i for s in hinted for i in self._per_session.get(s, ())][:most]
        keys = list(self._local)
        if len(keys) > _SWEEP:
            start = self._sweep % len(keys)
            self._sweep = start + _SWEEP
            keys = (keys[start:] + keys[:start])[:_SWEEP]
        chosen = set(ids)
        ids += [i for i in keys if i not in chosen][: max(0, most - len(ids))]
        return ids

    def _followed(self, info: JobInfo) -> None:
        owner = self._owner
        assert owner is not None
        if info.id in self._starts:
            return  # won by this node meanwhile
        if info.state is JobState.RUNNING and info.id in self._local:
            job = self._pop_local(info.id)
            assert job is not None
            job.state = JobState.RUNNING
            owner.queued.pop(job.id, None)
            self._elsewhere[job.id] = job
        elif info.state is JobState.QUEUED and info.id in self._elsewhere:
            self._add_local(self._elsewhere.pop(info.id))
        elif info.state.terminal:
            job = self._pop_local(info.id) or self._elsewhere.pop(info.id, None)
            if job is not None:
                owner.settle(job, info)

    async def _counts(self) -> None:
        counts = await self.store.lane_counts()
        self._elsewhere_busy = Counter({lane: busy for lane, _cap, busy in counts})

    async def _others(self) -> None:
        self._running = await self.store.running_jobs(_RUNNING_MAX)

    def running_elsewhere(self, now: float) -> list[RunningJob]:
        """Other nodes' turns as of the last tick (``now``: wall-clock seconds)."""
        owner = self._owner
        mine = owner.running if owner is not None else {}
        return [
            RunningJob(job_id, session, handler, attempt, node, max(0.0, now - started))
            for job_id, session, handler, attempt, node, started in self._running
            if job_id not in mine
        ]

    def _lease_lost(self) -> None:
        """Another node owns our attempts now: cancel them at once, decide nothing."""
        assert self._owner is not None
        for att in list(self._owner.running.values()):
            self._elsewhere[att.job.id] = att.job
            att.cancel(Reason.LOST)

    # -- bookkeeping --------------------------------------------------------------------

    def _add_local(self, job: JobRecord) -> None:
        if job.id not in self._local:
            self._local[job.id] = job
            self._per_session.setdefault(job.session, {})[job.id] = job

    def _pop_local(self, job_id: str) -> JobRecord | None:
        job = self._local.pop(job_id, None)
        if job is not None:
            mine = self._per_session[job.session]
            del mine[job_id]
            if not mine:
                del self._per_session[job.session]
        return job


#: A job queued with a suspect's reason also needs the suspects' lane.
_SUSPECTS = dict.fromkeys(sorted(SUSPECT_MARKS), SUSPECT_LANE)


def _order(job: JobRecord) -> tuple[int, int]:
    return job.order
