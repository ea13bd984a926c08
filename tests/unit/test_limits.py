"""Guarantees 1 and 2: every slot is released on time; idle means no progress.

Also ``queue_wait`` and how limits inherit (handler -> Laneway -> defaults).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from laneway import JobState, Laneway, Limits, Retry, TurnContext
from laneway.testing import hang, model_stream

from .._helpers import Starts, Stubborn, events_of, every_store, lane, now, terminal_counts
from ..conftest import MakeLaneway

pytestmark = [pytest.mark.looptime, every_store]


def _hanging(make_laneway: MakeLaneway, stubborn: Stubborn, starts: Starts, **kw: Any) -> Laneway:
    lw = make_laneway(lanes={"llm": 1}, retry=Retry(max_attempts=1), **kw)

    @lw.handler("turn", lanes=("llm",))
    async def turn(ctx: TurnContext, payload: str) -> str:
        starts.start(payload)
        if payload == "cooperative":
            await hang()
        elif payload == "stubborn":
            await stubborn.hang()
        return payload

    return lw


@pytest.mark.parametrize(
    ("limits", "mode", "reason", "freed_at"),
    [
        (Limits(deadline=100, idle=None, cancel_grace=7), "cooperative", "deadline", 100),
        (Limits(deadline=100, idle=None, cancel_grace=7), "stubborn", "deadline", 107),
        (Limits(deadline=None, idle=40, cancel_grace=7), "cooperative", "idle", 40),
        (Limits(deadline=None, idle=40, cancel_grace=7), "stubborn", "idle", 47),
        (Limits(deadline=100, idle=None, cancel_grace=0), "stubborn", "deadline", 100),
    ],
)
async def test_the_slot_is_released_on_time_whatever_the_task_does(
    make_laneway: MakeLaneway,
    stubborn: Stubborn,
    limits: Limits,
    mode: str,
    reason: str,
    freed_at: float,
) -> None:
    starts = Starts()
    lw = _hanging(make_laneway, stubborn, starts, limits=limits)
    await lw.start()
    t0 = now()
    stuck = await lw.submit("alice", "turn", mode)
    same = await lw.submit("alice", "turn", "same session")
    other = await lw.submit("bob", "turn", "same shared lane")
    async with asyncio.timeout(200):
        outcome = await stuck.wait()
        assert await same.result() == "same session"
        assert await other.result() == "same shared lane"
    assert (outcome.state, outcome.reason) == (JobState.TIMED_OUT, reason)
    assert starts.at["same session"] == pytest.approx(t0 + freed_at, abs=0.01)
    assert starts.at["same shared lane"] == pytest.approx(t0 + freed_at, abs=0.01)
    zombies = [(z.job_id, z.kind) for z in lw.snapshot().zombies]
    assert zombies == ([(stuck.id, "task")] if mode == "stubborn" else [])


def _progressing(make_laneway: MakeLaneway, limits: Limits) -> Laneway:
    lw = make_laneway(limits=limits, retry=Retry(max_attempts=1))

    @lw.handler("turn")
    async def turn(ctx: TurnContext, payload: dict[str, Any]) -> int:
        how, every, steps = str(payload["how"]), float(payload["every"]), int(payload["steps"])
        if how == "stream":
            chunks = [str(i) for i in range(steps)]
            source = model_stream(chunks, delay=every)
            idle = payload.get("stream_idle", "inherit")
            items = ctx.stream(source) if idle == "inherit" else ctx.stream(source, idle=idle)
            return len([c async for c in items])
        for _ in range(steps):
            await asyncio.sleep(every)
            if how == "progress":
                ctx.progress()
            elif how == "emit":
                await ctx.emit("tool", {"step": True})
        return steps

    return lw


@pytest.mark.parametrize("how", ["progress", "emit", "stream"])
async def test_progress_resets_the_idle_timer(make_laneway: MakeLaneway, how: str) -> None:
    lw = _progressing(make_laneway, Limits(deadline=None, idle=60))
    await lw.start()
    t0 = now()
    job = await lw.submit("alice", "turn", {"how": how, "every": 50, "steps": 30})
    assert await job.result() == 30
    assert now() - t0 == pytest.approx(1500)


@pytest.mark.parametrize("how", ["silence", "stream"])
async def test_no_progress_for_idle_seconds_times_out(make_laneway: MakeLaneway, how: str) -> None:
    lw = _progressing(make_laneway, Limits(deadline=None, idle=60))
    await lw.start()
    t0 = now()
    job = await lw.submit("alice", "turn", {"how": how, "every": 70, "steps": 3})
    outcome = await job.wait()
    assert (outcome.state, outcome.reason) == (JobState.TIMED_OUT, "idle")
    assert now() - t0 == pytest.approx(60, abs=0.01)


@pytest.mark.parametrize("stream_idle", [None, 200.0])
async def test_a_stream_can_override_the_idle_limit(
    make_laneway: MakeLaneway, stream_idle: float | None
) -> None:
    lw = _progressing(make_laneway, Limits(deadline=None, idle=60))
    await lw.start()
    payload = {"how": "stream", "every": 150, "steps": 4, "stream_idle": stream_idle}
    job = await lw.submit("alice", "turn", payload)
    assert await job.result() == 4


async def test_the_idle_limit_comes_back_after_an_overriding_stream(
    make_laneway: MakeLaneway,
) -> None:
    lw = make_laneway(limits=Limits(deadline=None, idle=60), retry=Retry(max_attempts=1))

    @lw.handler("turn")
    async def turn(ctx: TurnContext, payload: None) -> None:
        async for _ in ctx.stream(model_stream(["a", "b"], delay=150), idle=None):
            pass
        await hang()  # silent again: the handler's own idle limit applies

    await lw.start()
    t0 = now()
    outcome = await (await lw.submit("alice", "turn")).wait()
    assert (outcome.state, outcome.reason) == (JobState.TIMED_OUT, "idle")
    assert now() - t0 == pytest.approx(300 + 60, abs=0.01)


async def test_steady_progress_does_not_escape_the_deadline(make_laneway: MakeLaneway) -> None:
    lw = _progressing(make_laneway, Limits(deadline=100, idle=60))
    await lw.start()
    t0 = now()
    job = await lw.submit("alice", "turn", {"how": "progress", "every": 10, "steps": 30})
    outcome = await job.wait()
    assert (outcome.state, outcome.reason) == (JobState.TIMED_OUT, "deadline")
    assert now() - t0 == pytest.approx(100, abs=0.01)


async def test_the_defaults_are_finite(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(retry=Retry(max_attempts=1))

    @lw.handler("turn")
    async def turn(ctx: TurnContext, payload: None) -> None:
        await hang()

    await lw.start()
    t0 = now()
    outcome = await (await lw.submit("alice", "turn")).wait()
    assert (outcome.state, outcome.reason) == (JobState.TIMED_OUT, "idle")
    assert now() - t0 == pytest.approx(300, abs=0.01)


async def test_handler_limits_override_field_by_field(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(limits=Limits(deadline=100, idle=30), retry=Retry(max_attempts=1))

    @lw.handler("turn", limits=Limits(idle=None))
    async def turn(ctx: TurnContext, payload: None) -> None:
        await hang()

    await lw.start()
    t0 = now()
    outcome = await (await lw.submit("alice", "turn")).wait()
    # idle disabled by the handler; the Laneway's deadline still applies.
    assert (outcome.state, outcome.reason) == (JobState.TIMED_OUT, "deadline")
    assert now() - t0 == pytest.approx(100, abs=0.01)


async def test_queue_wait_expires_a_job_that_waited_too_long(make_laneway: MakeLaneway) -> None:
    starts = Starts()
    lw = make_laneway(lanes={"llm": 1})

    @lw.handler("turn", lanes=("llm",), limits=Limits(queue_wait=10))
    async def turn(ctx: TurnContext, payload: float) -> float:
        starts.start(str(payload))
        await asyncio.sleep(payload)
        return payload

    await lw.start()
    t0 = now()
    long = await lw.submit("alice", "turn", 30.0)
    expired = await lw.submit("bob", "turn", 1.0)
    outcome = await expired.wait()
    assert (outcome.state, outcome.reason, outcome.attempts) == (
        JobState.TIMED_OUT,
        "queue_wait",
        0,
    )
    assert now() - t0 == pytest.approx(10, abs=0.01)
    assert await long.result() == 30.0
    assert starts.order == ["30.0"]
    assert (await terminal_counts(lw, "bob"))[expired.id] == 1
    assert lane(lw.snapshot(), "llm").queued == 0


async def test_queue_wait_stops_counting_once_the_job_starts(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(lanes={"llm": 1})

    @lw.handler("turn", lanes=("llm",), limits=Limits(queue_wait=10))
    async def turn(ctx: TurnContext, payload: float) -> float:
        await asyncio.sleep(payload)
        return payload

    await lw.start()
    first = await lw.submit("alice", "turn", 5.0)
    second = await lw.submit("bob", "turn", 30.0)  # starts at 5 s, runs past 10 s
    assert [await first.result(), await second.result()] == [5.0, 30.0]
    assert [e.kind for e in await events_of(lw, "bob")][-1] == "job.succeeded"
