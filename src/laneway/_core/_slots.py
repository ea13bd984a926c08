"""Where slots are decided: the ``SlotSource`` seam between the dispatcher and the lanes.

The dispatcher never counts slots itself. It hands every queued job to a
slot source, asks ``next_ready()`` for jobs whose session slot and shared
slots were all just taken for it, and tells ``release()`` when an attempt
ended. Everything lane-shaped (FIFO per session, caps, oldest head first,
retry holds) lives behind this protocol.

Today's source is the in-process ``LaneTable`` (one owner per store: memory
and sqlite), which satisfies the protocol as it is. A store that claims work
for many nodes (PostgreSQL) plugs in here as another ``SlotSource``: its
``enqueue``/``requeue_head``/``remove``/``release`` become claim-table writes
(or no-ops where the store's own write already did it), ``next_ready()``
hands out jobs its claim transactions won for this node, and it calls the
``wake`` callback it was made with when new claims are ready, so the
dispatcher pumps again. The counters serve the snapshot and admission.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol, TypeVar

from ._lanes import LaneTable, Ticket

__all__ = ["SlotSource", "local_slots"]

T = TypeVar("T", bound=Ticket)


class SlotSource(Protocol[T]):
    """Queued tickets and the slots they take; the dispatcher's only view of lanes."""

    @property
    def total_queued(self) -> int: ...

    def enqueue(self, ticket: T) -> None:
        """Queue a new ticket at the tail of its session."""

    def requeue_head(self, ticket: T, *, held: bool) -> None:
        """A retried ticket goes back to its session's head; ``held`` until ``unhold``."""

    def unhold(self, session: str) -> None:
        """The session head's retry backoff is over."""

    def next_ready(self) -> T | None:
        """A ticket whose every slot was just taken for it, or None."""

    def release(self, ticket: T) -> None:
        """The ticket's attempt ended: free its slots."""

    def remove(self, ticket: T) -> bool:
        """Take a queued ticket out (cancel, stop, queue_wait); False if not queued."""

    def queued_in(self, session: str) -> int: ...

    def active_in(self, session: str) -> int: ...

    def queue_of(self, session: str) -> list[T]: ...

    def is_held(self, session: str) -> bool: ...

    def sessions(self) -> Iterator[tuple[str, int, int, T | None]]:
        """(key, active, queued, head) of every non-idle session lane."""

    def shared_counts(self) -> Iterator[tuple[str, int, int, int]]:
        """(name, cap, active, queued) of every shared lane."""

    def waiting_heads(self) -> Iterator[T]:
        """Queued tickets that wait only for shared slots (their session has room)."""

    def blocking_lane(self, ticket: T) -> str | None:
        """The lane that keeps a queued ticket from starting, if any."""


def local_slots(
    shared: Mapping[str, int], session_limit: int, wake: Callable[[], None] | None = None
) -> LaneTable[T]:
    """The in-process slot source. ``wake`` is unused: it only changes on our calls."""
    return LaneTable(shared, session_limit)
