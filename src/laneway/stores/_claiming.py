"""The contract of a store that decides slots itself, for many nodes at once.

A store that offers these methods (PostgreSQL) replaces the in-process lane
table: the dispatcher asks it for claims instead of counting slots, and its
reaper, wake-up hints and lease-loss callbacks keep the node in step with the
cluster. Plain protocols, so the core needs no database driver to import.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from .._types import Event, JobInfo

__all__ = ["Claim", "ClaimingStore", "HintSource", "Hints", "Lost", "Stops"]


class Claim(Protocol):
    """A job the store started for this node: its attempt and committed ``job.started``."""

    @property
    def job(self) -> JobInfo: ...

    @property
    def attempt(self) -> int: ...

    @property
    def event(self) -> Event: ...


class Lost(Protocol):
    """An attempt taken over from a node whose lease lapsed; ``in_flight`` it had running."""

    @property
    def job(self) -> JobInfo: ...

    @property
    def in_flight(self) -> int: ...


class Stops(Protocol):
    """What a stop did: queued jobs it ended (committed, with their terminal events)
    and the running jobs it flagged for their owner nodes to cancel."""

    @property
    def ended(self) -> Sequence[tuple[JobInfo, Event]]: ...

    @property
    def flagged(self) -> Sequence[str]: ...


class Hints(Protocol):
    """What woke a waiter: work became runnable, or sessions got events."""

    work: bool
    sessions: set[str]
    all_sessions: bool
    polled: bool


class HintSource(Protocol):
    async def wait(self) -> Hints: ...


@runtime_checkable
class ClaimingStore(Protocol):
    """A store whose database decides slots for every node sharing it."""

    on_lease_lost: list[Callable[[], None]]

    @property
    def poll(self) -> float: ...

    @property
    def capacity(self) -> int: ...

    async def set_lanes(self, caps: Mapping[str, int], *, session_limit: int = 1) -> None: ...

    def claim(
        self,
        capacity: int,
        handler_lanes: Mapping[str, Sequence[str]],
        reason_lanes: Mapping[str, str] | None = None,
    ) -> Awaitable[Sequence[Claim]]:
        """Start up to ``capacity`` jobs; a job queued with a reason in ``reason_lanes``
        also needs a slot of that lane (crash suspects: the suspects' lane)."""

    async def reap(self) -> Sequence[Lost]: ...

    async def listen(self) -> HintSource: ...

    async def jobs_by_id(self, ids: Sequence[str], *, moved: bool = False) -> list[JobInfo]:
        """The jobs with these ids; with ``moved``, only those no longer queued."""

    def stop_jobs(
        self, session: str | None, job_id: str | None, *, drop_queued: bool
    ) -> Awaitable[Stops]: ...

    async def stop_requests(self) -> list[str]: ...

    def add_job_counted(
        self,
        *,
        job_id: str,
        session: str,
        handler: str,
        payload: object,
        priority: int,
        idempotency_key: str | None,
        max_per_session: int,
        max_total: int | None,
    ) -> Awaitable[tuple[str | None, int, tuple[JobInfo, Event | None] | None]]: ...

    async def queued_counts(self, at_least: int | None) -> tuple[int, dict[str, int], int]: ...

    async def running_jobs(self, limit: int) -> list[tuple[str, str, str, int, str, float]]: ...

    async def lane_counts(self) -> list[tuple[str, int, int]]:
        """(lane, cap, slots busy with other nodes' attempts) of every shared lane."""
