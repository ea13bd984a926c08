"""Seed 003: one stalled session froze a whole gateway (OpenClaw #84903).

The field report: one agent's hung model call and its synchronous retry storm
degraded the event loop until every other session stopped answering; even
after recovery the loop stayed blocked. Two halves here: a session that hangs
(asynchronously) must not delay two hundred others beyond the shared cap they
asked for; and a handler that blocks the loop itself must be *reported*
within the watchdog threshold, with the blocking code's stack.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import pytest

from laneway import JobState, Limits, TurnContext

from .._helpers import Stubborn, every_store, now, settle, state
from ..conftest import MakeLaneway

pytestmark = [pytest.mark.looptime, every_store]

SESSIONS = 200
CAP = 64
TURN = 0.5


async def test_one_hung_session_does_not_slow_two_hundred_others(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    lw = make_laneway(lanes={"llm": CAP}, limits=Limits(deadline=900, idle=None))

    @lw.handler("chat", lanes=("llm",))
    async def chat(ctx: TurnContext, payload: dict[str, bool]) -> str:
        if payload["stall"]:
            await stubborn.hang()
        await asyncio.sleep(TURN)
        await ctx.emit("delta", {"text": "ok"})
        return ctx.session

    await lw.start()
    stalled = await lw.submit("stalled", "chat", {"stall": True})
    stalled_next = await lw.submit("stalled", "chat", {"stall": False})
    t0 = now()
    jobs = [await lw.submit(f"user{i}", "chat", {"stall": False}) for i in range(SESSIONS)]
    done_at: dict[str, float] = {}

    async def finish(job_id: str, wait: asyncio.Future[object]) -> None:
        await wait
        done_at[job_id] = now()

    async with asyncio.timeout(60):
        await asyncio.gather(*(finish(j.id, asyncio.ensure_future(j.result())) for j in jobs))
    # The stalled session holds one slot of the shared lane and nothing else:
    # the others go through the remaining CAP - 1 slots in back-to-back rounds.
    rounds = math.ceil(SESSIONS / (CAP - 1))
    assert max(done_at.values()) - t0 == pytest.approx(rounds * TURN, abs=0.01)
    assert sorted(done_at.values())[: CAP - 1] == pytest.approx([t0 + TURN] * (CAP - 1))
    # Meanwhile the stalled session is still stalled, and only it.
    assert await state(lw, stalled.id) is JobState.RUNNING
    assert await state(lw, stalled_next.id) is JobState.QUEUED
    assert lw.snapshot().jobs_running == 1
    await lw.close()  # within the cancel grace, in virtual time


def parse_transcript_blocking(seconds: float) -> None:
    """Synchronous work on the loop thread (a retry storm, a CPU-bound parse)."""
    time.sleep(seconds)


@pytest.mark.slow
@pytest.mark.looptime(False)
async def test_a_handler_blocking_the_loop_is_reported_with_its_stack(
    make_laneway: MakeLaneway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="laneway.watchdog")
    lw = make_laneway(watchdog_threshold=0.2)

    @lw.handler("parse")
    async def parse(ctx: TurnContext, payload: None) -> str:
        parse_transcript_blocking(0.6)
        return "parsed"

    await lw.start()
    assert lw.snapshot().loop_blocks == 0
    job = await lw.submit("alice", "parse")
    assert await job.result() == "parsed"
    await asyncio.sleep(0.1)
    await settle()

    blocked = [r for r in caplog.records if r.name == "laneway.watchdog"]
    blocked = [r for r in blocked if r.getMessage().startswith("loop.blocked")]
    assert len(blocked) == 1
    stack = blocked[0].__dict__["stack"]
    assert "parse_transcript_blocking" in stack
    assert "time.sleep(seconds)" in stack
    assert blocked[0].__dict__["blocked_s"] >= 0.2
    assert lw.snapshot().loop_blocks == 1
