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
committed outcome) and refreshes the cluster's lane counts for the snapshot.
LISTEN/NOTIFY hints only make the next claim come sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from typing import Protocol

from .._types import Event, JobInfo, JobState, Reason
from ..stores._claiming import Claim, ClaimingStore, HintSource, Lost
from ._attempt import Attempt, JobRecord
from ._config import Config, HandlerSpec, ResolvedLimits
from ._policy import SUSPECT_LANE, SUSPECT_MARKS

__all__ = ["ClaimOwner", "ClaimedSlots"]

log = logging.getLogger("laneway.runtime")

_FOLLOW_MAX = 5000  # most local jobs whose fate one tick looks up
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
        self._cluster: dict[str, tuple[int, int]] = {}  # lane -> (cap, busy)
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
        # The store's retry write already put it back at its session's head.
        self._add_local(ticket)
        self._kick.set()

    def unhold(self, session: str) -> None:
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
        return self._pop_local(ticket.id) is not None

    def queued_in(self, session: str) -> int:
        return len(self._per_session.get(session, ()))

    def active_in(self, session: str) -> int:
        return self._active[session]

    def queue_of(self, session: str) -> list[JobRecord]:
        return sorted((j for j in self._local.values() if j.session == session), key=_order)

    def is_held(self, session: str) -> bool:
        return False  # backoffs are held by the database (run_after)

    def sessions(self) -> Iterator[tuple[str, int, int, JobRecord | None]]:
        heads: dict[str, JobRecord] = {}
        for job in self._local.values():
            if job.session not in heads or _order(job) < _order(heads[job.session]):
                heads[job.session] = job
        for key in sorted(set(heads) | set(self._active)):
            yield key, self._active[key], len(self._per_session.get(key, ())), heads.get(key)

    def shared_counts(self) -> Iterator[tuple[str, int, int, int]]:
        queued = Counter(lane for job in self._local.values() for lane in job.lanes)
        for name, cap in self.config.lanes.items():
            _cap, busy = self._cluster.get(name, (cap, self._lane_active[name]))
            yield name, cap, max(busy, self._lane_active[name]), queued[name]

    def waiting_heads(self) -> Iterator[JobRecord]:
        """The jobs this node knows to be queued (the database orders the rest)."""
        return iter(list(self._local.values()))

    def blocking_lane(self, ticket: JobRecord) -> str | None:
        for lane in ticket.lanes:
            cap, busy = self._cluster.get(lane, (1, 0))
            if busy >= cap:
                return lane
        return None

    async def stop_elsewhere(self, session: str | None, job_id: str | None) -> list[str]:
        """Ask the nodes running these turns to stop them; wait (``cancel_grace`` plus
        two polls at most) until they are no longer running. The ids asked."""
        ids = [i for i in await self.store.request_stop(session, job_id) if i not in self._starts]
        grace = ResolvedLimits.of(self.config.limits).cancel_grace
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace + 2 * self.store.poll + 1.0):
                # The owner's poll answers the request; a read now and then sees it.
                while ids and await self._any_running(ids):  # noqa: ASYNC110 - the database is the event
                    await asyncio.sleep(min(0.05, self.store.poll))
        return ids

    async def _any_running(self, ids: list[str]) -> bool:
        return any(info.state is JobState.RUNNING for info in await self.store.jobs_by_id(ids))

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
            if len(won) == free:
                self._kick.set()  # there may be more

    def _take(self, won: Sequence[Claim], *, start: bool = True) -> None:
        owner = self._owner
        assert owner is not None
        for claim in won:
            job_id = claim.job.id
            self._starts[job_id] = claim.event
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
        for step in (self._reap, self._stops, self._follow, self._counts):
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
        self._cluster = {lane: (cap, busy) for lane, cap, busy in await self.store.lane_counts()}

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
