"""Property tests of the lane bookkeeping (``LaneTable``) alone, no event loop.

A hypothesis state machine drives random enqueue / next_ready / release /
remove / retry-at-the-front / hold / unhold sequences against a plain model
and checks, after every step: caps never exceeded (session and shared),
strict FIFO per session (front-enqueued retries aside), no ticket both queued
and active, counters consistent, drained sessions forgotten, and that
``next_ready`` picks the oldest eligible head and never returns None while
some head could start; and which queued tickets wait only for shared slots.
"""

from __future__ import annotations

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from laneway._core._lanes import LaneTable

SHARED = {"a": 2, "b": 1}
SESSIONS = ("s0", "s1", "s2", "s3")
SIGNATURES = ((), ("a",), ("b",), ("a", "b"))


class T:
    """A ticket: compared by identity, like the runtime's jobs."""

    __slots__ = ("lanes", "n", "order", "session")

    def __init__(self, n: int, session: str, lanes: tuple[str, ...], priority: int) -> None:
        self.n = n
        self.session = session
        self.lanes = lanes
        self.order = (-priority, n)

    def __repr__(self) -> str:
        return f"T{self.n}({self.session}, {self.lanes}, {self.order})"


class LaneTableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table: LaneTable[T] = LaneTable(SHARED, 1)
        self.limit = 1
        self.queues: dict[str, list[T]] = {}
        self.held: set[str] = set()
        self.active: list[T] = []
        self.started: list[T] = []
        self.seq = itertools.count()

    @initialize(limit=st.integers(min_value=1, max_value=2))
    def configure(self, limit: int) -> None:
        self.limit = limit
        self.table = LaneTable(SHARED, limit)

    # -- the model's view --------------------------------------------------------

    def _active_in(self, session: str) -> int:
        return sum(1 for t in self.active if t.session == session)

    def _room(self, lanes: tuple[str, ...]) -> bool:
        return all(sum(name in t.lanes for t in self.active) < SHARED[name] for name in lanes)

    def _eligible_heads(self) -> list[T]:
        heads = []
        for session, queue in self.queues.items():
            if not queue or session in self.held or self._active_in(session) >= self.limit:
                continue
            if self._room(queue[0].lanes):
                heads.append(queue[0])
        return heads

    def _queued(self) -> list[T]:
        return [t for q in self.queues.values() for t in q]

    # -- rules -------------------------------------------------------------------

    @rule(
        session=st.sampled_from(SESSIONS),
        lanes=st.sampled_from(SIGNATURES),
        priority=st.integers(min_value=0, max_value=2),
    )
    def enqueue(self, session: str, lanes: tuple[str, ...], priority: int) -> None:
        ticket = T(next(self.seq), session, lanes, priority)
        self.table.enqueue(ticket)
        self.queues.setdefault(session, []).append(ticket)

    @rule()
    def next_ready(self) -> None:
        eligible = self._eligible_heads()
        got = self.table.next_ready()
        if not eligible:
            assert got is None
            return
        assert got is not None, f"None while {eligible} could start"
        assert got is min(eligible, key=lambda t: t.order)
        queue = self.queues[got.session]
        assert queue[0] is got
        queue.pop(0)
        self.active.append(got)
        self.started.append(got)

    @precondition(lambda self: bool(self.active))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        ticket = data.draw(st.sampled_from(self.active))
        self.table.release(ticket)
        self.active.remove(ticket)

    @precondition(lambda self: bool(self.active))
    @rule(data=st.data(), held=st.booleans())
    def retry_at_the_front(self, data: st.DataObject, held: bool) -> None:
        """What the runtime does with a retried attempt: release, then requeue at the head."""
        ticket = data.draw(st.sampled_from(self.active))
        self.table.release(ticket)
        self.active.remove(ticket)
        self.table.enqueue(ticket, front=True, held=held)
        self.queues.setdefault(ticket.session, []).insert(0, ticket)
        if held:
            self.held.add(ticket.session)
        else:
            self.held.discard(ticket.session)

    @precondition(lambda self: bool(self._queued()))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        ticket = data.draw(st.sampled_from(self._queued()))
        queue = self.queues[ticket.session]
        if queue[0] is ticket:
            self.held.discard(ticket.session)  # the held head went away
        queue.remove(ticket)
        assert self.table.remove(ticket)
        assert not self.table.remove(ticket)  # not queued any more

    @precondition(lambda self: bool(self.active))
    @rule(data=st.data())
    def remove_an_active_ticket_is_refused(self, data: st.DataObject) -> None:
        assert not self.table.remove(data.draw(st.sampled_from(self.active)))

    @rule(session=st.sampled_from(SESSIONS))
    def unhold(self, session: str) -> None:
        self.table.unhold(session)
        self.held.discard(session)

    # -- invariants --------------------------------------------------------------

    @invariant()
    def caps_are_never_exceeded(self) -> None:
        for name, cap in SHARED.items():
            using = sum(name in t.lanes for t in self.active)
            assert self.table.active[name] == using <= cap
        for session in SESSIONS:
            assert self.table.active_in(session) == self._active_in(session) <= self.limit

    @invariant()
    def each_session_queue_is_fifo(self) -> None:
        for session in SESSIONS:
            assert self.table.queue_of(session) == self.queues.get(session, [])
            assert self.table.queued_in(session) == len(self.queues.get(session, []))

    @invariant()
    def no_ticket_is_both_queued_and_active(self) -> None:
        queued = {id(t) for t in self._queued()}
        assert not queued & {id(t) for t in self.active}

    @invariant()
    def counters_add_up(self) -> None:
        queued = self._queued()
        assert self.table.total_queued == len(queued)
        assert self.table.total_active == len(self.active)
        for name in SHARED:
            assert self.table.queued[name] == sum(name in t.lanes for t in queued)

    @invariant()
    def only_heads_with_session_room_wait_for_shared_lanes(self) -> None:
        # What the snapshot shows as queued on a shared lane: a busy session's
        # later messages wait for their own turn, not for the shared slots.
        expected = [
            q[0]
            for s, q in self.queues.items()
            if q and s not in self.held and self._active_in(s) < self.limit
        ]
        got = list(self.table.waiting_heads())
        assert sorted(id(t) for t in got) == sorted(id(t) for t in expected)

    @invariant()
    def drained_sessions_are_forgotten(self) -> None:
        busy = {t.session for t in self.active} | {s for s, q in self.queues.items() if q}
        assert len(self.table) == len(busy)
        assert {key for key, _, _, _ in self.table.sessions()} == busy

    @invariant()
    def starts_keep_submission_order_per_session(self) -> None:
        # Tickets start in the order they were enqueued, except a ticket that
        # was put back at the front (a retry), which starts again first.
        for session in SESSIONS:
            mine = [t.n for t in self.started if t.session == session]
            firsts = list(dict.fromkeys(mine))
            assert firsts == sorted(firsts)


LaneTableMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None
)
TestLaneTable = LaneTableMachine.TestCase
