"""Lane bookkeeping: per-session FIFO lanes plus shared caps, as plain data.

No I/O and no event loop: the dispatcher asks ``next_ready()`` for the next
ticket that may start and tells ``release()`` when it ended. A ticket takes its
session slot and every shared slot it needs in one step, or none of them, so
no ticket ever holds a slot while waiting for another (seed 000's nested-lane
deadlock cannot be expressed).

Fairness: only the head of a session's queue is eligible (strict FIFO per
session); among eligible heads, the smallest ``order`` wins (oldest first,
higher priority first). Eligible heads sit in one heap per lane signature (the
tuple of shared lanes they need), so picking the next ticket costs O(signatures
* log n) even with 100k sessions blocked behind one full shared lane.

A session lane exists only while it has queued or active tickets; drained
lanes are forgotten. A session whose only ticket is one queued (not held)
needs no lane object: that ticket is kept "lone", by its key, and gets a lane
when it starts or a second ticket comes. At 100k sessions with a message each,
that is 100k fewer objects for every full collection to walk.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, Protocol, TypeVar

__all__ = ["LaneTable", "Ticket"]


class Ticket(Protocol):
    @property
    def session(self) -> str: ...
    @property
    def lanes(self) -> tuple[str, ...]: ...
    @property
    def order(self) -> tuple[int, int]: ...


T = TypeVar("T", bound=Ticket)


class _SessionLane(deque[T], Generic[T]):
    """A session's queue (the deque itself: one object per session, not two) and counts."""

    __slots__ = ("active", "held", "key", "listed")

    def __init__(self, key: str) -> None:
        # No deque.__init__: deque.__new__ already made it empty and unbounded,
        # and a lane is made per job that starts at 100k sessions.
        self.key = key
        self.active = 0
        self.held = False  # the head waits out a retry backoff
        #: The tiebreak of the head's entry in a ready list; 0 while none is listed.
        self.listed = 0


# (order[0], order[1], tiebreak, session key): flat, so most comparisons end at one
# int, and the unique tiebreak means a comparison never reaches the key. Plain
# values only, so the collector untracks entries: at 100k sessions 100k heads wait
# here. An entry is live while its session lane's ``listed`` is its tiebreak.
_HeapEntry = tuple[int, int, int, str]


class _Ready:
    """The listed heads of one lane signature, oldest first.

    Heads are mostly listed in order (each new session's head is newer than
    the last), so those go on a FIFO at O(1); the rest (retries keeping their
    old place, priorities) go on a heap. The oldest is the smaller of the two
    fronts.
    """

    __slots__ = ("fifo", "heap")

    def __init__(self) -> None:
        self.fifo: deque[_HeapEntry] = deque()
        self.heap: list[_HeapEntry] = []

    def __bool__(self) -> bool:
        return bool(self.fifo or self.heap)

    def push(self, entry: _HeapEntry) -> None:
        fifo = self.fifo
        if not fifo or fifo[-1] < entry:
            fifo.append(entry)
        else:
            heapq.heappush(self.heap, entry)

    def first(self) -> _HeapEntry | None:
        fifo, heap = self.fifo, self.heap
        if fifo:
            return heap[0] if heap and heap[0] < fifo[0] else fifo[0]
        return heap[0] if heap else None

    def pop(self) -> _HeapEntry:
        fifo, heap = self.fifo, self.heap
        if fifo and (not heap or fifo[0] < heap[0]):
            return fifo.popleft()
        return heapq.heappop(heap)

    def keep(self, wanted: Callable[[_HeapEntry], bool]) -> None:
        self.fifo = deque(e for e in self.fifo if wanted(e))
        self.heap = [e for e in self.heap if wanted(e)]
        heapq.heapify(self.heap)


class LaneTable(Generic[T]):
    """Queued and active tickets per session lane and shared lane."""

    def __init__(self, shared: Mapping[str, int], session_limit: int = 1) -> None:
        self.session_limit = session_limit
        self.limits: dict[str, int] = dict(shared)
        self.active: dict[str, int] = dict.fromkeys(shared, 0)
        self.queued: dict[str, int] = dict.fromkeys(shared, 0)
        self._sessions: dict[str, _SessionLane[T]] = {}
        #: Sessions whose one ticket is queued alone, and that ticket's listed tiebreak.
        self._lone: dict[str, T] = {}
        self._lone_listed: dict[str, int] = {}
        self._ready: dict[tuple[str, ...], _Ready] = {}
        self._tiebreak = itertools.count(1)
        self.total_queued = 0
        self.total_active = 0
        self._stale = 0  # heap entries known to be stale, for compaction
        # False once a scan found nothing startable; only listing a head or
        # freeing a slot can change that, so until then next_ready() is O(1).
        self._maybe_ready = False

    # -- queries ---------------------------------------------------------------

    def __len__(self) -> int:
        """Number of session lanes currently remembered."""
        return len(self._sessions) + len(self._lone)

    def queued_in(self, session: str) -> int:
        lane = self._sessions.get(session)
        if lane is None:
            return 1 if session in self._lone else 0
        return len(lane)

    def active_in(self, session: str) -> int:
        lane = self._sessions.get(session)
        return lane.active if lane is not None else 0

    def queue_of(self, session: str) -> list[T]:
        lane = self._sessions.get(session)
        if lane is None:
            lone = self._lone.get(session)
            return [] if lone is None else [lone]
        return list(lane)

    def is_held(self, session: str) -> bool:
        lane = self._sessions.get(session)
        return lane is not None and lane.held

    def sessions(self) -> Iterator[tuple[str, int, int, T | None]]:
        """(key, active, queued count, head ticket) for every remembered session lane."""
        for key, lane in self._sessions.items():
            yield key, lane.active, len(lane), lane[0] if lane else None
        for key, lone in self._lone.items():
            yield key, 0, 1, lone

    def shared_counts(self) -> Iterator[tuple[str, int, int, int]]:
        """(name, cap, active, queued) for every shared lane."""
        for name, cap in self.limits.items():
            yield name, cap, self.active[name], self.queued[name]

    def waiting_heads(self) -> Iterator[T]:
        """Queued tickets that wait only for shared slots: heads of sessions with room
        and no retry backoff. Every other queued ticket waits for its own session's
        turn first, so counting it against a shared lane would overstate that lane."""
        limit = self.session_limit
        for lane in self._sessions.values():
            if lane and lane.active < limit and not lane.held:
                yield lane[0]
        yield from self._lone.values()  # a lone waiting job is never held

    def blocking_lane(self, ticket: T) -> str | None:
        """Which lane keeps ``ticket`` (a queued one) from starting, if any."""
        lane = self._sessions.get(ticket.session)
        if lane is None:
            if self._lone.get(ticket.session) is not ticket:
                return None
        elif lane.active >= self.session_limit or lane.held or lane[0] is not ticket:
            return f"session:{ticket.session}"
        for name in ticket.lanes:
            if self.active[name] >= self.limits[name]:
                return name
        return None

    # -- changes ---------------------------------------------------------------

    def enqueue(self, ticket: T, *, front: bool = False, held: bool = False) -> None:
        """Queue a ticket at the tail of its session (or the head, for a retry).

        ``held`` keeps a head ticket from starting until ``unhold()``.
        """
        key = ticket.session
        queued = self.queued
        for name in ticket.lanes:
            queued[name] += 1
        self.total_queued += 1
        lane = self._sessions.get(key)
        if lane is None:
            if not held and key not in self._lone:
                self._lone[key] = ticket
                self._lone_listed[key] = self._push(ticket, key)
                return
            lane = self._lane(key)
        if front:
            self._unlist(lane)  # the head changes
            lane.appendleft(ticket)
            lane.held = held
        else:
            lane.append(ticket)
            if len(lane) > 1:  # not the head: nothing to list
                return
        self._list(lane)

    def requeue_head(self, ticket: T, *, held: bool) -> None:
        """Put a retried ticket back at the head of its session (held: until ``unhold``)."""
        self.enqueue(ticket, front=True, held=held)

    def unhold(self, session: str) -> None:
        lane = self._sessions.get(session)
        if lane is not None and lane.held:
            lane.held = False
            self._list(lane)

    def remove(self, ticket: T) -> bool:
        """Take a queued ticket out (cancel, queue_wait expiry). False if not queued."""
        lane = self._sessions.get(ticket.session)
        if lane is None:
            return self._remove_lone(ticket)
        was_head = bool(lane) and lane[0] is ticket
        try:
            lane.remove(ticket)
        except ValueError:
            return False
        for name in ticket.lanes:
            self.queued[name] -= 1
        self.total_queued -= 1
        if was_head:
            lane.held = False
            self._unlist(lane)
        self._forget_or_list(lane)
        if self._stale > 1024 and self._stale > self.total_queued:
            self._compact()
        return True

    def next_ready(self) -> T | None:
        """Claim every slot the oldest eligible head needs, or return None."""
        if not self._maybe_ready:
            return None
        best = self._best()
        if best is None:
            self._maybe_ready = False
            return None
        key = best.pop()[3]
        lane = self._sessions.get(key)
        if lane is None:  # a lone ticket: it gets its lane now, to count it active
            ticket = self._lone.pop(key)
            del self._lone_listed[key]
            lane = self._sessions[key] = _SessionLane(key)
        else:
            ticket = lane.popleft()
            lane.listed = 0
        lane.active += 1
        active, queued, limits = self.active, self.queued, self.limits
        room = True
        for name in ticket.lanes:
            active[name] += 1
            queued[name] -= 1
            if active[name] >= limits[name]:
                room = False
        self.total_queued -= 1
        self.total_active += 1
        if lane and lane.active < self.session_limit:
            self._list(lane)
        if not room and len(self._ready) == 1:
            # The only signature just filled up: nothing can start until a release.
            self._maybe_ready = False
        return ticket

    def release(self, ticket: T) -> None:
        """Free the slots an active ticket held."""
        lane = self._sessions[ticket.session]
        lane.active -= 1
        active = self.active
        for name in ticket.lanes:
            active[name] -= 1
        self.total_active -= 1
        self._maybe_ready = True
        if lane:
            self._list(lane)
        elif lane.active == 0:
            del self._sessions[lane.key]

    # -- internals -------------------------------------------------------------

    def _best(self) -> _Ready | None:
        """The signature whose oldest listed head is oldest among those with room."""
        best: _Ready | None = None
        oldest: _HeapEntry | None = None
        active, limits = self.active, self.limits
        for sig, ready in self._ready.items():
            if not (ready.fifo or ready.heap):
                continue
            for name in sig:
                if active[name] >= limits[name]:
                    break
            else:
                first = self._prune(ready)
                if first is not None and (oldest is None or first < oldest):
                    best, oldest = ready, first
        return best

    def _live(self, entry: _HeapEntry) -> bool:
        lane = self._sessions.get(entry[3])
        if lane is None:
            return self._lone_listed.get(entry[3]) == entry[2]
        return lane.listed == entry[2] and lane.active < self.session_limit and not lane.held

    def _prune(self, ready: _Ready) -> _HeapEntry | None:
        """Drop stale entries from the front; the oldest eligible one, if any."""
        sessions, limit, lone = self._sessions, self.session_limit, self._lone_listed
        fifo, heap = ready.fifo, ready.heap
        while fifo or heap:
            first = (heap[0] if heap and heap[0] < fifo[0] else fifo[0]) if fifo else heap[0]
            lane = sessions.get(first[3])
            if lane is None:
                if lone.get(first[3]) == first[2]:
                    return first  # a lone ticket is its session's head, never held
            elif lane.listed == first[2]:
                if lane.active < limit and not lane.held:
                    return first
                lane.listed = 0
            ready.pop()
        return None

    def _list(self, lane: _SessionLane[T]) -> None:
        if not lane or lane.listed or lane.active >= self.session_limit or lane.held:
            return
        lane.listed = self._push(lane[0], lane.key)

    def _push(self, head: T, key: str) -> int:
        """List ``head`` as its session's ready head; the tiebreak of its entry."""
        sig = head.lanes
        ready = self._ready.get(sig)
        if ready is None:
            ready = self._ready[sig] = _Ready()
        order = head.order
        tiebreak = next(self._tiebreak)
        ready.push((order[0], order[1], tiebreak, key))
        if not self._maybe_ready:
            # Only a head whose shared lanes have room can start now.
            active, limits = self.active, self.limits
            for name in sig:
                if active[name] >= limits[name]:
                    return tiebreak
            self._maybe_ready = True
        return tiebreak

    def _lane(self, key: str) -> _SessionLane[T]:
        """A new lane for ``key``, holding its lone ticket (still listed) if it had one."""
        lane = self._sessions[key] = _SessionLane(key)
        lone = self._lone.pop(key, None)
        if lone is not None:
            lane.append(lone)
            lane.listed = self._lone_listed.pop(key)
        return lane

    def _remove_lone(self, ticket: T) -> bool:
        key = ticket.session
        if self._lone.get(key) is not ticket:
            return False
        del self._lone[key], self._lone_listed[key]
        for name in ticket.lanes:
            self.queued[name] -= 1
        self.total_queued -= 1
        self._stale += 1
        if self._stale > 1024 and self._stale > self.total_queued:
            self._compact()
        return True

    def _unlist(self, lane: _SessionLane[T]) -> None:
        """The head's entry (if any) goes stale: the head changes or leaves."""
        if lane.listed:
            lane.listed = 0
            self._stale += 1

    def _compact(self) -> None:
        for ready in self._ready.values():
            ready.keep(self._live)
        self._stale = 0

    def _forget_or_list(self, lane: _SessionLane[T]) -> None:
        if lane.active == 0 and not lane:
            del self._sessions[lane.key]
        else:
            self._list(lane)
