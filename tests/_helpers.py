"""Small tools the tests share: clocks, gates, start recorders, log checks, subprocesses."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

import laneway
from laneway import Event, JobInfo, JobState, LaneStats, Laneway, Snapshot
from laneway.stores import Store

from ._kits import VirtualTimePostgresStore, VirtualTimeSQLiteStore, postgres_kit_url

T = TypeVar("T")

#: The source tree under test, for subprocesses that must import this laneway.
SRC = str(Path(laneway.__file__).parents[1])

TERMINAL_KINDS = frozenset(
    {"job.succeeded", "job.failed", "job.timed_out", "job.cancelled", "job.dead"}
)


StoreFactory = Callable[[], str | Store]

#: Store kits by name: given the test's fixtures, what makes the store ``make_laneway``
#: opens (a factory, so that two Laneways of one test, a restart, share one database).
STORE_KITS: dict[str, Callable[[pytest.FixtureRequest], StoreFactory]] = {
    "memory": lambda request: lambda: "memory://",
    "sqlite": lambda request: _sqlite_kit(request.getfixturevalue("tmp_path")),
    "postgres": lambda request: _postgres_kit(request.getfixturevalue("postgres_url")),
}


def _sqlite_kit(tmp: Path) -> StoreFactory:
    return lambda: VirtualTimeSQLiteStore(f"sqlite:///{tmp}/laneway.db")


def _postgres_kit(url: str) -> StoreFactory:
    """The session's server, a schema of this test's own (``postgres_url``)."""
    url = postgres_kit_url(url)
    return lambda: VirtualTimePostgresStore(url)


#: Marks of a kit's cases: the PostgreSQL kit's need a server (``-m "not postgres"``).
_KIT_MARKS = {"postgres": (pytest.mark.postgres,)}

#: ``pytestmark = every_store``: run a module's tests once per store kit.
every_store = pytest.mark.parametrize(
    "store_kit",
    [pytest.param(name, marks=_KIT_MARKS.get(name, ())) for name in sorted(STORE_KITS)],
    indirect=True,
)


def skip_backoff_timing_on_server_clock(request: pytest.FixtureRequest) -> None:
    """Skip the postgres kit's case of a test that times retry backoffs on the virtual clock.

    PostgreSQL holds a retry's backoff on the database server's clock (``run_after``,
    cluster-wide), which looptime cannot move: there a backoff lasts real seconds,
    and its length on the virtual clock is arbitrary.
    """
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("store_kit") == "postgres":
        pytest.skip("a PostgreSQL backoff runs on the database server's clock, not the virtual one")


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
