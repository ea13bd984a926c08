"""Seed 002: a worker pool of eight wedged by eight hung calls (Honcho).

The field report: eight LLM calls that never returned held all eight worker
slots; the stale-claim cleanup ran only when a worker was free, so nothing
ever freed one; restarts picked the same poisoned work up again. Here a shared
pool of eight is filled with hung calls: the work queued behind it must drain
once their deadlines pass; timers, queue_wait expiry, stop and cancel must
work while every slot is taken; and a restart must recover the jobs the dead
owner left running, quarantining (``dead``) one that keeps getting lost
instead of wedging again on it.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from laneway import JobState, Laneway, Limits, Retry, TurnContext
from laneway.stores import MemoryStore
from laneway.testing import hang

from .._helpers import (
    Starts,
    Stubborn,
    events_of,
    every_store,
    lane,
    load,
    now,
    terminal_counts,
)
from ..conftest import MakeLaneway

pytestmark = [pytest.mark.looptime, every_store]

DEADLINE = 60.0
GRACE = 5.0


def _pool(make_laneway: MakeLaneway, starts: Starts, stubborn: Stubborn) -> Laneway:
    lw = make_laneway(
        lanes={"llm": 8},
        limits=Limits(deadline=DEADLINE, idle=None, cancel_grace=GRACE),
        retry=Retry(max_attempts=1),
        wait_warn=20.0,
    )

    @lw.handler("call", lanes=("llm",))
    async def call(ctx: TurnContext, payload: dict[str, str]) -> str:
        starts.start(payload["name"])
        if payload.get("hang") == "cooperative":
            await hang()
        elif payload.get("hang") == "ignoring":
            await stubborn.hang()
        return payload["name"]

    @lw.handler("impatient", lanes=("llm",), limits=Limits(queue_wait=10.0))
    async def impatient(ctx: TurnContext, payload: None) -> str:
        return "ran"

    return lw


async def test_queued_work_drains_after_eight_hung_calls(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    starts = Starts()
    lw = _pool(make_laneway, starts, stubborn)
    await lw.start()
    t0 = now()
    hung = [
        await lw.submit(f"hung{i}", "call", {"name": f"h{i}", "hang": mode})
        for i, mode in enumerate(["cooperative", "ignoring"] * 4)
    ]
    behind = [await lw.submit(f"user{i}", "call", {"name": f"u{i}"}) for i in range(16)]
    behind += [await lw.submit(f"hung{i}", "call", {"name": f"n{i}"}) for i in range(8)]
    await asyncio.sleep(1)
    snap = lw.snapshot()
    # 16 heads wait for a slot; the 8 hung sessions' next messages wait for their own turn.
    assert load(snap, "llm") == (8, 16)
    assert lane(snap, "llm").behind_session == 8

    async with asyncio.timeout(DEADLINE + GRACE + 1):
        results = [await job.result() for job in behind]
    assert results == [f"u{i}" for i in range(16)] + [f"n{i}" for i in range(8)]
    outcomes = [await job.wait() for job in hung]
    assert {(o.state, o.reason) for o in outcomes} == {(JobState.TIMED_OUT, "deadline")}
    # The four cooperative calls freed their slots at the deadline (enough to
    # drain the other sessions), the four that swallow the cancel one grace
    # later; nothing waited for a free worker to clean up.
    assert [starts.at[f"u{i}"] for i in range(16)] == pytest.approx([t0 + DEADLINE] * 16)
    assert [starts.at[f"n{i}"] for i in range(8)] == pytest.approx(
        [t0 + DEADLINE, t0 + DEADLINE + GRACE] * 4
    )
    assert lw.snapshot().jobs_running == 0
    for i in range(8):
        assert set((await terminal_counts(lw, f"hung{i}")).values()) == {1}


async def test_liveness_does_not_wait_for_a_free_slot(
    make_laneway: MakeLaneway, stubborn: Stubborn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="laneway.runtime")
    starts = Starts()
    lw = _pool(make_laneway, starts, stubborn)
    await lw.start()
    t0 = now()
    for i in range(8):
        await lw.submit(f"hung{i}", "call", {"name": f"h{i}", "hang": "ignoring"})
    impatient = await lw.submit("q", "impatient")
    doomed = await lw.submit("d", "call", {"name": "doomed"})
    dropped = await lw.submit("hung7", "call", {"name": "dropped"})
    patient = await lw.submit("p", "call", {"name": "patient"})

    # queue_wait expiry is a timer: it fires although no slot ever freed.
    outcome = await impatient.wait()
    assert (outcome.state, outcome.reason) == (JobState.TIMED_OUT, "queue_wait")
    assert now() == pytest.approx(t0 + 10, abs=0.01)
    # The lane monitor is a timer too: the blocked lane is reported while full.
    await asyncio.sleep(20)
    waits = [r for r in caplog.records if r.getMessage().startswith("lane.wait_exceeded: llm")]
    assert waits
    assert waits[0].__dict__["active"] == 8
    # cancel() of a queued job and stop() of a hung session answer at once / within the grace.
    assert await lw.cancel(doomed.id)
    assert (await doomed.wait()).state is JobState.CANCELLED
    t_stop = now()
    result = await lw.stop("hung7", drop_queued=True)
    assert now() - t_stop == pytest.approx(GRACE, abs=0.01)
    assert len(result.cancelled) == 1
    assert result.dropped == [dropped.id]
    # The slot stop freed went to the waiting job, long before any deadline.
    assert await patient.result() == "patient"
    assert starts.at["patient"] == pytest.approx(t_stop + GRACE, abs=0.01)
    assert starts.at["patient"] < t0 + DEADLINE
    assert "doomed" not in starts.at
    assert "dropped" not in starts.at


def _owner(
    make_laneway: MakeLaneway, store: MemoryStore, starts: Starts, wedge: dict[str, bool]
) -> Laneway:
    """A Laneway on ``store`` whose handler hangs while ``wedge["on"]``."""
    lw = make_laneway(
        store=store,
        lanes={"llm": 8},
        limits=Limits(deadline=3600, idle=None),
        retry=Retry(max_attempts=10),
        poison_after=3,
    )

    @lw.handler("call", lanes=("llm",))
    async def call(ctx: TurnContext, payload: dict[str, str]) -> str:
        starts.start(payload["name"])
        if wedge["on"]:
            await hang()
        return payload["name"]

    return lw


async def test_a_restart_recovers_jobs_the_dead_owner_left_running(
    make_laneway: MakeLaneway,
) -> None:
    store, starts, wedge = MemoryStore(), Starts(), {"on": True}
    first = _owner(make_laneway, store, starts, wedge)
    await first.start()
    hung = [await first.submit(f"s{i}", "call", {"name": f"s{i}"}) for i in range(8)]
    queued = [await first.submit(f"s{i}", "call", {"name": f"q{i}"}) for i in range(8)]
    # The first owner's calls hang, then it is never heard from again (as if
    # its process died): the store says eight attempts are running.
    await asyncio.sleep(1)
    assert [i.state for i in await first.jobs(state=JobState.RUNNING, limit=100)] == [
        JobState.RUNNING
    ] * 8

    wedge["on"] = False
    second = _owner(make_laneway, store, starts, wedge)
    await second.start()
    async with asyncio.timeout(10):
        await second.join()
    for job in hung:
        info = await second.get(job.id)
        assert info is not None
        # Eight in flight at the death: none is blamed, none loses an attempt.
        assert (info.state, info.attempts, info.lost) == (JobState.SUCCEEDED, 1, 0)
    for job in queued:
        info = await second.get(job.id)
        assert info is not None
        assert (info.state, info.attempts) == (JobState.SUCCEEDED, 1)
    log = await events_of(second, "s0")
    retries = [e.data for e in log if e.kind == "job.retry"]
    assert [(d["reason"], d["attempt"], d.get("counted")) for d in retries] == [
        ("suspect", 1, False)
    ]
    assert set((await terminal_counts(second, "s0")).values()) == {1}


async def test_a_job_lost_poison_after_times_ends_dead_instead_of_rewedging(
    make_laneway: MakeLaneway,
) -> None:
    store, starts, wedge = MemoryStore(), Starts(), {"on": True}
    owners: list[Laneway] = []
    for _ in range(3):  # three owners in a row die while running the same job
        owner = _owner(make_laneway, store, starts, wedge)
        await owner.start()
        if not owners:
            poison = await owner.submit("alice", "call", {"name": "poison"})
        owners.append(owner)
        await asyncio.sleep(1)
    assert starts.order == ["poison"] * 3

    fourth = _owner(make_laneway, store, starts, wedge)
    await fourth.start()
    info = await fourth.get(poison.id)
    assert info is not None
    assert (info.state, info.reason, info.lost, info.attempts) == (JobState.DEAD, "lost", 3, 3)
    assert [j.id for j in await fourth.jobs(state=JobState.DEAD)] == [poison.id]
    # It did not run again, and the session is not wedged: new work flows.
    wedge["on"] = False
    fresh = await fourth.submit("alice", "call", {"name": "fresh"})
    assert await fresh.result() == "fresh"
    assert starts.order == ["poison"] * 3 + ["fresh"]
    assert (await terminal_counts(fourth, "alice"))[poison.id] == 1
    # A dead job can be sent back once the cause is fixed.
    again = await fourth.requeue(poison.id)
    assert await again.result() == "poison"
