"""The store contract: what the runtime needs from a job store.

Writes are *enqueued when called* and applied in call order. Each returns a
``Write``: an ``asyncio.Future`` that resolves once the write is committed
(durable stores batch many writes into one transaction), or a ``Committed``
when the write was committed before the call returned (the memory store), so
no future is made where nothing has to wait. Both can be awaited and answer
``done()``/``result()``; the runtime reads a ``Committed`` without awaiting.
The runtime relies on the call order: a job's finish is always written
before the next job of its session starts, so a crash between the two
cannot reorder a session.

Fencing: every write about a running attempt names the attempt number. A
store refuses (returns ``None``) a write whose attempt is not the job's
current running attempt, so a zombie's or a dead worker's late write can
never overwrite a newer attempt or a terminal state.

Recovery: ``open()`` takes ownership and returns every unfinished job in
acceptance order; jobs still marked ``running`` were in flight when the last
owner died, and the runtime decides who is blamed (``_policy.blame``): the
suspect mark it needs is the job's ``reason`` (see ``retry``), so every store
persists it by persisting ``reason``.

Requeue opens a new *run* of the same job: ``attempts`` and ``lost`` carry on
(never reset), ``job.requeued`` opens the run, and each run has exactly one
terminal event.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeAlias, TypeVar

from .._types import Event, JobInfo, JobState

__all__ = ["Committed", "Store", "Write", "namespace_of", "written"]

T = TypeVar("T")


class Committed(Generic[T]):
    """A write that was committed before the call returned: a done, future-like value."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, T]:
        yield from ()  # a generator that returns at once
        return self.value

    def done(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return False

    def cancel(self, msg: Any = None) -> bool:
        return False

    def result(self) -> T:
        return self.value

    def exception(self) -> BaseException | None:
        return None

    def add_done_callback(self, fn: Callable[[Committed[T]], object]) -> None:
        fn(self)


Write: TypeAlias = "asyncio.Future[T] | Committed[T]"


async def written(write: Write[T]) -> T:
    """The committed value of a write; a caller cancelled meanwhile leaves the write be."""
    if type(write) is Committed:
        return write.value
    assert isinstance(write, asyncio.Future)
    return write.result() if write.done() else await asyncio.shield(write)


def namespace_of(prefix: str) -> str | None:
    """``prefix`` if it names a namespace (``"name/"``), else ``None``."""
    return prefix if prefix.endswith("/") and prefix.count("/") == 1 else None


class Store(abc.ABC):
    """A job store. Subclasses: ``MemoryStore``, ``SQLiteStore``."""

    #: The URL the store was opened from, for messages.
    url: str = ""
    #: Seconds between ``maintain()`` calls (heartbeat, retention); None = never.
    maintain_interval: float | None = None
    #: This node's name among the nodes sharing the store; empty for a store that
    #: one process owns (the runtime then names the node by host and process id).
    node: str = ""

    # -- life ------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> list[JobInfo]:
        """Take ownership; return unfinished (queued or running) jobs in acceptance order."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush pending writes and release ownership."""

    async def ping(self) -> None:  # noqa: B027 - optional hook
        """Raise ``StoreError`` if the store cannot be reached (readiness)."""

    async def maintain(self) -> None:  # noqa: B027 - optional hook
        """Periodic upkeep: extend the ownership lease, apply retention."""

    # -- writes (enqueued now, committed when the future resolves) -----------

    @abc.abstractmethod
    def add_job(
        self,
        *,
        job_id: str,
        session: str,
        handler: str,
        payload: Any,
        priority: int,
        idempotency_key: str | None,
    ) -> Write[tuple[JobInfo, Event | None]]:
        """Accept a job and its ``job.queued`` event.

        If ``idempotency_key`` was used before in this session, nothing is
        written and the earlier job is returned with ``None`` for the event.
        """

    @abc.abstractmethod
    def start_attempt(self, job_id: str, attempt: int) -> Write[Event | None]:
        """Mark the job running as attempt ``attempt``; write ``job.started``."""

    @abc.abstractmethod
    def append_event(
        self, session: str, job_id: str | None, kind: str, data: Any, *, attempt: int | None
    ) -> Write[Event | None]:
        """Append a handler event; fenced by ``attempt`` when given."""

    @abc.abstractmethod
    def retry(
        self,
        job_id: str,
        attempt: int,
        *,
        error: str | None,
        reason: str,
        lost: bool,
        delay: float,
        counts_attempt: bool = True,
    ) -> Write[Event | None]:
        """Put a running (or recovered) job back to ``queued``; write ``job.retry``.

        ``reason`` is kept on the job until its next retry or its end (through
        ``start_attempt``): recovery reads a ``lost`` or ``suspect`` reason on a
        job found ``running`` as "it was a crash suspect running alone". With
        ``counts_attempt=False`` the attempt is given back: the job's attempt
        count goes back to ``attempt - 1`` (a shutdown, a crash bystander), and
        the ``job.retry`` event says ``"counted": false``.
        """

    @abc.abstractmethod
    def finish(
        self,
        job_id: str,
        attempt: int,
        state: JobState,
        *,
        result: Any,
        error: str | None,
        reason: str | None,
        lost: bool,
    ) -> Write[Event | None]:
        """Write the terminal state and its ``job.<state>`` event, exactly once.

        ``attempt`` is the job's current attempt count (0 for a job that never
        started). Returns ``None`` if the job is already terminal or the
        attempt is stale.
        """

    @abc.abstractmethod
    def requeue(self, job_id: str) -> Write[tuple[JobInfo, Event] | None]:
        """Send a failed, timed_out or dead job back to ``queued`` (None if not allowed)."""

    # -- reads -----------------------------------------------------------------

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> JobInfo | None: ...

    @abc.abstractmethod
    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        session: str | None = None,
        prefix: str | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[JobInfo]:
        """Jobs, newest first: of one ``session``, or of the sessions whose key
        starts with ``prefix``; ``before`` (a job id) continues a listing after
        that job (nothing if it is unknown).

        A namespace prefix (``"name/"``: one slash, at the end) is answered from
        an index, without reading other namespaces' jobs.
        """

    @abc.abstractmethod
    async def read_events(self, session: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        """Events of a session with ``seq > after``, oldest first."""

    @abc.abstractmethod
    async def history(self, session: str, *, before: int, limit: int) -> list[Event]:
        """The last ``limit`` events of a session with ``seq < before``, oldest first."""
