"""Guarantee 3: every accepted job reaches exactly one terminal state and
writes exactly one terminal event, whichever way it ends."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from laneway import Job, JobState, Laneway, Limits, Outcome, Retry, TurnContext
from laneway.testing import hang

from .._helpers import (
    TERMINAL_KINDS,
    Stubborn,
    check_seq,
    events_of,
    every_store,
    info,
    now,
    terminal_counts,
)
from ..conftest import MakeLaneway

pytestmark = [pytest.mark.looptime, every_store]


def _laneway(make_laneway: MakeLaneway, stubborn: Stubborn) -> Laneway:
    lw = make_laneway(
        limits=Limits(deadline=100, idle=None, cancel_grace=5),
        retry=Retry(max_attempts=3, backoff=1),
    )

    @lw.handler("work")
    async def work(ctx: TurnContext, payload: str) -> object:
        if payload == "raise" or (payload == "flaky" and ctx.attempt < 3):
            raise ValueError(f"bad attempt {ctx.attempt}")
        if payload == "hang":
            await hang()
        if payload == "stubborn":
            await stubborn.hang()
        if payload == "slow":
            await asyncio.sleep(60)
        if payload == "bad result":
            return object()
        return payload

    @lw.handler("impatient", limits=Limits(queue_wait=10))
    async def impatient(ctx: TurnContext, payload: None) -> None:
        return None

    @lw.handler("patient", retry=Retry(max_attempts=3, backoff=100))
    async def patient(ctx: TurnContext, payload: None) -> None:
        raise RuntimeError("try again later")

    return lw


# session -> [(handler, payload, expected state, reason, attempts, job.retry events)]
PLAN: dict[str, list[tuple[str, str | None, JobState, str | None, int, int]]] = {
    "ok": [("work", "ok", JobState.SUCCEEDED, None, 1, 0)],
    "raise": [("work", "raise", JobState.FAILED, "ValueError", 3, 2)],
    "flaky": [("work", "flaky", JobState.SUCCEEDED, None, 3, 2)],
    # Never retried: the handler ran and had its effects; only its result was refused.
    "bad result": [("work", "bad result", JobState.FAILED, "InvalidPayload", 1, 0)],
    "deadline": [("work", "hang", JobState.TIMED_OUT, "deadline", 3, 2)],
    "zombie": [("work", "stubborn", JobState.TIMED_OUT, "deadline", 3, 2)],
    "queue_wait": [
        ("work", "slow", JobState.SUCCEEDED, None, 1, 0),
        ("impatient", None, JobState.TIMED_OUT, "queue_wait", 0, 0),
    ],
    "cancel": [
        ("work", "slow", JobState.CANCELLED, "stopped", 1, 0),
        ("work", "ok", JobState.CANCELLED, "stopped", 0, 0),
        ("work", "ok", JobState.SUCCEEDED, None, 1, 0),
    ],
    "stop": [
        ("work", "stubborn", JobState.CANCELLED, "stopped", 1, 0),
        ("work", "ok", JobState.CANCELLED, "stopped", 0, 0),
        ("work", "ok", JobState.CANCELLED, "stopped", 0, 0),
    ],
    "held retry": [
        ("patient", None, JobState.CANCELLED, "stopped", 1, 1),
        ("work", "ok", JobState.SUCCEEDED, None, 1, 0),
    ],
}


async def test_every_job_ends_once_with_one_terminal_event(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    lw = _laneway(make_laneway, stubborn)
    await lw.start()
    jobs: dict[str, list[Job]] = {}
    for session, steps in PLAN.items():
        jobs[session] = [await lw.submit(session, h, p) for h, p, *_ in steps]
    waits = {j.id: asyncio.ensure_future(j.wait()) for js in jobs.values() for j in js}
    await asyncio.sleep(1)
    assert await lw.cancel(jobs["cancel"][1].id)  # queued
    assert await lw.cancel(jobs["cancel"][0].id)  # running
    stopped = await lw.stop("stop", drop_queued=True)
    assert stopped.cancelled == [jobs["stop"][0].id]
    assert stopped.dropped == [j.id for j in jobs["stop"][1:]]
    held = await lw.stop("held retry")  # the turn waiting out its retry backoff
    assert held.cancelled == [jobs["held retry"][0].id]
    # A hang guard, not a bound: with PostgreSQL the backoffs run on the database
    # server's clock, and the virtual clock jumps a poll at a time meanwhile.
    async with asyncio.timeout(1_000_000):
        await lw.join()

    for session, steps in PLAN.items():
        counts = await terminal_counts(lw, session)
        log = await events_of(lw, session)
        check_seq(log)
        for job, (_, _, state, reason, attempts, retries) in zip(jobs[session], steps, strict=True):
            outcome: Outcome = await waits[job.id]
            assert (outcome.state, outcome.reason, outcome.attempts) == (state, reason, attempts)
            stored = await info(lw, job.id)
            assert (stored.state, stored.reason, stored.attempts) == (state, reason, attempts)
            assert counts[job.id] == 1, f"{session}: {counts}"
            mine = Counter(e.kind for e in log if e.job_id == job.id)
            assert [e.kind for e in log if e.job_id == job.id][-1] == f"job.{state.value}"
            assert (mine["job.started"], mine["job.retry"]) == (attempts, retries)


async def test_colliding_stop_cancel_and_deadline_end_a_job_once(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    lw = make_laneway(
        limits=Limits(deadline=100, idle=None, cancel_grace=5), retry=Retry(max_attempts=3)
    )

    @lw.handler("work")
    async def work(ctx: TurnContext, payload: None) -> None:
        await stubborn.hang()

    await lw.start()
    t0 = now()
    job = await lw.submit("alice", "work")
    await asyncio.sleep(102)  # the deadline passed; the task is in its grace
    results = await asyncio.gather(lw.stop("alice"), lw.cancel(job.id), lw.stop("alice"))
    assert now() - t0 == pytest.approx(105, abs=0.01)  # nobody waited past the grace
    assert results[1] is True
    outcome = await job.wait()
    # The deadline came first and gave the reason; the stop forbade a retry.
    assert (outcome.state, outcome.reason, outcome.attempts) == (
        JobState.TIMED_OUT,
        "deadline",
        1,
    )
    assert not await lw.cancel(job.id)
    assert (await lw.stop("alice")).cancelled == []
    log = await events_of(lw, "alice")
    assert [e.kind for e in log if e.kind in TERMINAL_KINDS] == ["job.timed_out"]
