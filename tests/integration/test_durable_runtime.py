"""Laneway on ``sqlite:///``: what a restart keeps (jobs, events, idempotency keys)
and how in-flight attempts are counted as lost, retried or quarantined."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from laneway import Event, JobState, Laneway, Retry, TurnContext
from laneway.stores._sqlite import SQLiteStore

Factory = Callable[..., Laneway]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "laneway.db"


@pytest.fixture
async def make(db: Path) -> AsyncIterator[Factory]:
    """Laneways on the same database file (one at a time), closed at teardown."""
    made: list[Laneway] = []

    def factory(**kwargs: Any) -> Laneway:
        kwargs.setdefault("watchdog_threshold", None)
        lw = Laneway(f"sqlite:///{db}", **kwargs)
        made.append(lw)
        return lw

    yield factory
    for lw in made:
        await lw.close()


def echo_handler(lw: Laneway, ran: list[Any] | None = None) -> None:
    @lw.handler("echo")
    async def echo(ctx: TurnContext, payload: Any) -> Any:
        if ran is not None:
            ran.append(payload)
        await ctx.emit("delta", {"echo": payload})
        return payload


def row(db: Path, job_id: str) -> tuple[Any, ...] | None:
    """The job as a separate connection sees it: committed data only."""
    conn = sqlite3.connect(db)
    try:
        found: tuple[Any, ...] | None = conn.execute(
            "SELECT state, attempts FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return found
    finally:
        conn.close()


async def test_submit_returns_after_commit_and_start_is_committed_before_the_handler(
    make: Factory, db: Path
) -> None:
    lw = make()
    seen: list[tuple[Any, ...] | None] = []

    @lw.handler("peek")
    async def peek(ctx: TurnContext, payload: Any) -> None:
        seen.append(row(db, ctx.job_id))

    async with lw:
        job = await lw.submit("alice", "peek", None)
        assert row(db, job.id) is not None
        await job.result()
    assert seen == [("running", 1)]
    assert row(db, job.id) == ("succeeded", 1)


async def test_queued_and_running_jobs_survive_a_restart_in_order(make: Factory) -> None:
    first = make()
    release = asyncio.Event()

    @first.handler("echo")
    async def blocked(ctx: TurnContext, payload: Any) -> Any:
        await release.wait()
        return payload

    await first.start()
    a = await first.submit("alice", "echo", 1)
    b = await first.submit("alice", "echo", 2)
    await asyncio.sleep(0.05)
    await first.close()  # the running turn is cancelled (shutdown) and goes back to the queue

    ran: list[Any] = []
    second = make()
    echo_handler(second, ran)
    async with second:
        await second.join()
        infos = [await second.get(a.id), await second.get(b.id)]
    assert ran == [1, 2]
    assert [(i.state, i.result) for i in infos if i is not None] == [
        (JobState.SUCCEEDED, 1),
        (JobState.SUCCEEDED, 2),
    ]


async def test_events_replay_after_a_restart(make: Factory) -> None:
    first = make()
    echo_handler(first)
    async with first:
        await (await first.submit("alice", "echo", "one")).result()
    second = make()
    echo_handler(second)
    async with second:
        job = await second.submit("alice", "echo", "two")
        await job.result()
        events: list[Event] = []
        async with asyncio.timeout(5):
            async for event in second.events("alice", after=0):
                events.append(event)
                if event.kind == "job.succeeded" and event.job_id == job.id:
                    break
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = ["job.queued", "job.started", "delta", "job.succeeded"]
    assert [e.kind for e in events] == kinds + kinds
    assert [e.data["echo"] for e in events if e.kind == "delta"] == ["one", "two"]


async def test_idempotency_key_survives_a_restart(make: Factory) -> None:
    ran: list[Any] = []
    first = make()
    echo_handler(first, ran)
    async with first:
        job = await first.submit("alice", "echo", "hi", idempotency_key="msg-1")
        await job.result()
    second = make()
    echo_handler(second, ran)
    async with second:
        again = await second.submit("alice", "echo", "hi", idempotency_key="msg-1")
        assert again.id == job.id
        assert await again.result() == "hi"
    assert ran == ["hi"]


async def crashed_mid_attempt(db: Path, *, output: bool = False) -> str:
    """Leave a job whose attempt was running when its owner died."""
    store = SQLiteStore(f"sqlite:///{db}")
    await store.open()
    info, _ = await store.add_job(
        job_id="crashed",
        session="alice",
        handler="echo",
        payload="p",
        priority=0,
        idempotency_key=None,
    )
    await store.start_attempt(info.id, 1)
    if output:
        await store.append_event("alice", info.id, "delta", {"half": True}, attempt=1)
    await store.close()  # no finish: as if the process died here
    return info.id


async def test_a_lost_attempt_is_retried_at_the_head_of_its_session(
    make: Factory, db: Path
) -> None:
    job_id = await crashed_mid_attempt(db)
    ran: list[Any] = []
    lw = make(poison_after=3)
    echo_handler(lw, ran)
    async with lw:
        later = await lw.submit("alice", "echo", "later")
        await lw.join()
        info = await lw.get(job_id)
        assert await later.result() == "later"
    assert ran == ["p", "later"]
    assert info is not None
    assert (info.state, info.attempts, info.lost) == (JobState.SUCCEEDED, 2, 1)


async def test_a_lost_attempt_with_output_is_not_replayed(make: Factory, db: Path) -> None:
    job_id = await crashed_mid_attempt(db, output=True)
    ran: list[Any] = []
    lw = make(retry=Retry(max_attempts=3))
    echo_handler(lw, ran)
    async with lw:
        await lw.join()
        info = await lw.get(job_id)
    assert ran == []
    assert info is not None
    assert (info.state, info.reason) == (JobState.FAILED, "lost")


async def test_crash_loop_ends_dead_then_requeue_runs_it(make: Factory, db: Path) -> None:
    job_id = await crashed_mid_attempt(db)
    ran: list[Any] = []
    lw = make(poison_after=1)
    echo_handler(lw, ran)
    async with lw:
        await lw.join()
        dead = await lw.jobs(state=JobState.DEAD)
        assert [(j.id, j.reason, j.lost) for j in dead] == [(job_id, "lost", 1)]
        assert ran == []
        job = await lw.requeue(job_id)
        assert await job.result() == "p"
        assert await lw.jobs(state=JobState.DEAD) == []
    assert ran == ["p"]
