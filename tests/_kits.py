"""Durable stores for tests on looptime's virtual clock: a database round trip takes no
virtual time.

looptime moves its clock to the next timer whenever the loop has nothing to
run. A durable store waits for its database (SQLite's writer thread, a
PostgreSQL socket), so the loop looks idle while a write commits or a query
runs, and the clock would jump: a deadline fires before the start it races
with has committed, asyncpg's own timeouts fire at once. looptime does wait in
real time, without jumping, while an executor future is pending: each call in
flight is paired with one (``in_real_time``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from laneway import Event, JobInfo, JobState
from laneway.stores._postgres import PostgresStore
from laneway.stores._sqlite import SQLiteStore

__all__ = [
    "VirtualTimePostgresStore",
    "VirtualTimeSQLiteStore",
    "in_real_time",
    "postgres_kit_url",
]

T = TypeVar("T")

# The PostgreSQL kit's URL options. The heartbeat (every lease / 3) and the poll
# tick (reap, stop requests, followed jobs, lane counts, a claim) are timers on
# the virtual clock, and each costs real round trips: a test that sleeps a
# virtual hour pays for every tick in real time. A 5 s poll still ticks many
# times in most tests, so ticks race their finishes and claims as production's
# 1 s poll does, at a fraction of its cost; a poll of minutes would almost never
# race anything. The lease lapses on the server's real clock: 2 minutes is
# longer than any test may run (the per-test timeout is 60 s), so it holds
# whether or not the virtual clock reached a heartbeat; close releases it.
_KIT_OPTIONS = {"lease": "2m", "poll": "5s"}


def in_real_time(fut: asyncio.Future[T]) -> asyncio.Future[T]:
    """``fut``, with the loop kept in real time (looptime) until it is done."""
    if not fut.done():
        done = threading.Event()
        fut.add_done_callback(lambda _: done.set())
        asyncio.get_running_loop().run_in_executor(None, done.wait, 60)
    return fut


class VirtualTimeSQLiteStore(SQLiteStore):
    """The SQLite store, its writes (committed by its writer thread) in real time."""

    def add_job(self, **job: Any) -> asyncio.Future[tuple[JobInfo, Event | None]]:
        return in_real_time(super().add_job(**job))

    def start_attempt(self, job_id: str, attempt: int) -> asyncio.Future[Event | None]:
        return in_real_time(super().start_attempt(job_id, attempt))

    def append_event(
        self, session: str, job_id: str | None, kind: str, data: Any, *, attempt: int | None
    ) -> asyncio.Future[Event | None]:
        return in_real_time(super().append_event(session, job_id, kind, data, attempt=attempt))

    def retry(self, job_id: str, attempt: int, **how: Any) -> asyncio.Future[Event | None]:
        return in_real_time(super().retry(job_id, attempt, **how))

    def finish(
        self, job_id: str, attempt: int, state: JobState, **how: Any
    ) -> asyncio.Future[Event | None]:
        return in_real_time(super().finish(job_id, attempt, state, **how))

    def requeue(self, job_id: str) -> asyncio.Future[tuple[JobInfo, Event] | None]:
        return in_real_time(super().requeue(job_id))


class VirtualTimePostgresStore(PostgresStore):
    """The PostgreSQL store, every call of it in real time until it returns or commits.

    Every public method is wrapped (below), so a method added to the store is
    covered too: its coroutine runs as a task, and that task, or the write
    future it returns, is paired with an executor future. That covers every
    round trip the store makes: reads, the lease keeper's, connecting (the
    pool's too, inside a read), and the writer's batches, which run while
    the futures of their writes are pending. What stays on the virtual clock is
    waiting for work: the writer's queue, and the listener's wait for a
    notification or the next poll.
    """


def _paired(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        got = method(*args, **kwargs)
        if inspect.iscoroutine(got):
            got = asyncio.ensure_future(got)
        return in_real_time(got) if isinstance(got, asyncio.Future) else got

    return call


for _name in dir(PostgresStore):
    _method = inspect.getattr_static(PostgresStore, _name)
    if not _name.startswith("_") and inspect.isfunction(_method):
        setattr(VirtualTimePostgresStore, _name, _paired(_method))


def postgres_kit_url(url: str) -> str:
    """``url`` (a ``postgres_url``: its own schema) with the kit's lease and poll."""
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query)) | _KIT_OPTIONS
    return urlunsplit(parts._replace(query=urlencode(options)))
