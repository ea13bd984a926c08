"""Small tools the tests share: clocks, gates, start recorders, log checks, subprocesses."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

import laneway
from laneway import Event, JobInfo, JobState, LaneStats, Laneway, Snapshot
from laneway.stores import Store
from laneway.stores._sqlite import SQLiteStore

T = TypeVar("T")

#: The source tree under test, for subprocesses that must import this laneway.
SRC = str(Path(laneway.__file__).parents[1])

TERMINAL_KINDS = frozenset(
    {"job.succeeded", "job.failed", "job.timed_out", "job.cancelled", "job.dead"}
)


class VirtualTimeSQLiteStore(SQLiteStore):
    """The SQLite store, for tests on looptime's virtual clock: a commit takes no virtual time.

    looptime moves its clock to the next timer whenever the loop has nothing to
    run. A write is committed by the store's writer thread, so the loop looks idle
    while it waits, and the clock would jump (a deadline firing before the start
    it races with has committed). looptime does wait in real time, without moving
    its clock, for executor futures: each write in flight is paired with one.
    """

    def add_job(self, **job: Any) -> asyncio.Future[tuple[JobInfo, Event | None]]:
        return _in_real_time(super().add_job(**job))

    def start_attempt(self, job_id: str, attempt: int) -> asyncio.Future[Event | None]:
        return _in_real_time(super().start_attempt(job_id, attempt))

    def append_event(
        self, session: str, job_id: str | None, kind: str, data: Any, *, attempt: int | None
    ) -> asyncio.Future[Event | None]:
        return _in_real_time(super().append_event(session, job_id, kind, data, attempt=attempt))

    def retry(self, job_id: str, attempt: int, **how: Any) -> asyncio.Future[Event | None]:
        return _in_real_time(super().retry(job_id, attempt, **how))

    def finish(
        self, job_id: str, attempt: int, state: JobState, **how: Any
    ) -> asyncio.Future[Event | None]:
        return _in_real_time(super().finish(job_id, attempt, state, **how))

    def requeue(self, job_id: str) -> asyncio.Future[tuple[JobInfo, Event] | None]:
        return _in_real_time(super().requeue(job_id))


def _in_real_time(fut: asyncio.Future[T]) -> asyncio.Future[T]:
    if not fut.done():
        committed = threading.Event()
        fut.add_done_callback(lambda _: committed.set())
        asyncio.get_running_loop().run_in_executor(None, committed.wait, 60)
    return fut


#: Store kits by name: what ``make_laneway`` opens, given the test's directory. The
#: ``store_kit`` fixture picks one; a PostgreSQL kit is one more line here.
STORE_KITS: dict[str, Callable[[Path], str | Store]] = {
    "memory": lambda tmp: "memory://",
    "sqlite": lambda tmp: VirtualTimeSQLiteStore(f"sqlite:///{tmp}/laneway.db"),
}

#: ``pytestmark = every_store``: run a module's tests once per store kit.
every_store = pytest.mark.parametrize("store_kit", sorted(STORE_KITS), indirect=True)


def now() -> float:
    """The running loop's clock (virtual under looptime)."""
    return asyncio.get_running_loop().time()


@dataclass
class Starts:
    """Records when and in which order handlers started (and finished)."""

    order: list[str] = field(default_factory=list)
    at: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    _seen: dict[str, asyncio.Event] = field(default_factory=dict)

    def start(self, name: str) -> None:
        self.order.append(name)
        self.at[name] = now()
        self._event(name).set()

    async def started(self, name: str) -> None:
        """Wait until ``name`` has started (a durable store commits the start first)."""
        await self._event(name).wait()

    def _event(self, name: str) -> asyncio.Event:
        return self._seen.setdefault(name, asyncio.Event())

    def end(self, name: str) -> None:
        self.ended[name] = now()


async def settle(times: int = 5) -> None:
    """Let callbacks scheduled with call_soon run (commit callbacks, wake-ups)."""
    for _ in range(times):
        await asyncio.sleep(0)


async def events_of(lw: Laneway, session: str) -> list[Event]:
    return await lw.store.read_events(session, after=0, limit=100_000)


async def terminal_counts(lw: Laneway, session: str) -> Counter[str | None]:
    """How many terminal ``job.<state>`` events each job of ``session`` has."""
    return Counter(e.job_id for e in await events_of(lw, session) if e.kind in TERMINAL_KINDS)


async def info(lw: Laneway, job_id: str) -> JobInfo:
    """The job as ``lw.get`` reports it (fails the test if unknown)."""
    found = await lw.get(job_id)
    assert found is not None, f"no job {job_id}"
    return found


async def state(lw: Laneway, job_id: str) -> JobState:
    return (await info(lw, job_id)).state


def lane(snap: Snapshot, name: str) -> LaneStats:
    """The snapshot's stats of lane ``name`` (fails the test if it is not listed)."""
    for stats in snap.lanes:
        if stats.name == name:
            return stats
    raise AssertionError(f"lane {name!r} not in {[s.name for s in snap.lanes]}")


def load(snap: Snapshot, name: str) -> tuple[int, int]:
    """(active, queued) of lane ``name``."""
    stats = lane(snap, name)
    return stats.active, stats.queued


def check_seq(events: list[Event]) -> None:
    """A session log's seq rises by exactly one per event."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


class Stubborn:
    """Turns that swallow every cancellation until released (seed 001's phantom).

    ``await stubborn.hang()`` catches ``CancelledError`` and keeps waiting, so
    only abandonment can free its slot. ``release()`` lets every such turn
    finish (late), returning ``value``; the ``stubborn`` fixture releases them
    at teardown so the test loop can close.
    """

    def __init__(self) -> None:
        self._release: asyncio.Event | None = None
        self.swallowed = 0
        self.running = 0

    def _event(self) -> asyncio.Event:
        if self._release is None:
            self._release = asyncio.Event()
        return self._release

    async def hang(self) -> None:
        release = self._event()
        self.running += 1
        try:
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    self.swallowed += 1
        finally:
            self.running -= 1

    def release(self) -> None:
        self._event().set()


def run_python(code: str, *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports laneway from ``SRC``."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": SRC},
        check=False,
    )


def gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (an unreaped zombie runs nothing: gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] in (b"Z", b"X")


async def all_gone(pids: list[int], within: float = 5.0) -> bool:
    """Wait (real time) until none of ``pids`` runs; False if some still do after ``within``."""
    end = time.monotonic() + within
    while not all(gone(p) for p in pids):
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.01)
    return True
