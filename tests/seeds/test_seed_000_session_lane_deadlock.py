"""Seed 000: a session lane deadlocked after an LLM call hung (OpenClaw #7630).

The field report: ``enqueueSession(() => enqueueGlobal(...))``; the inner task
never settled, the session lane's active count was never decremented, and
every later message of that session queued forever while other lanes kept
working. Here the hung turn runs inside its session lane *and* a shared lane
of one slot; the deadline (then the cancel grace, if the task ignores its
cancellation) must free both, so the session's later messages run, other
sessions never notice, and a job waiting for the shared lane holds nothing.
"""

from __future__ import annotations

import asyncio

import pytest

from laneway import JobState, Laneway, Limits, Retry, TurnContext
from laneway.testing import hang

from .._helpers import Starts, Stubborn, every_store, lane, load, now
from ..conftest import MakeLaneway

pytestmark = [pytest.mark.looptime, every_store]

DEADLINE = 180.0
GRACE = 5.0


def _build(make_laneway: MakeLaneway, starts: Starts, stubborn: Stubborn) -> Laneway:
    lw = make_laneway(
        lanes={"llm": 1},
        limits=Limits(deadline=DEADLINE, idle=None, cancel_grace=GRACE),
        retry=Retry(max_attempts=1),
    )

    @lw.handler("chat", lanes=("llm",))
    async def chat(ctx: TurnContext, payload: dict[str, str]) -> str:
        starts.start(payload["name"])
        if payload.get("hang") == "cooperative":
            await hang()
        elif payload.get("hang") == "ignoring":
            await stubborn.hang()  # swallows every cancellation
        return payload["name"]

    @lw.handler("cron")
    async def cron(ctx: TurnContext, payload: dict[str, str]) -> str:
        starts.start(payload["name"])
        return payload["name"]

    return lw


@pytest.mark.parametrize(("mode", "freed_after"), [("cooperative", 0.0), ("ignoring", GRACE)])
async def test_a_hung_turn_does_not_deadlock_its_session(
    make_laneway: MakeLaneway, stubborn: Stubborn, mode: str, freed_after: float
) -> None:
    starts = Starts()
    lw = _build(make_laneway, starts, stubborn)
    await lw.start()
    t0 = now()
    hung = await lw.submit("qq:dm:1", "chat", {"name": "a1", "hang": mode})
    # Later messages of the same session pile up behind the hung turn ...
    later = [await lw.submit("qq:dm:1", "chat", {"name": f"a{i}"}) for i in (2, 3, 4)]
    await asyncio.sleep(DEADLINE / 2)
    assert starts.order == ["a1"]
    # ... while other lanes (cron) keep working.
    cron = await lw.submit("cron", "cron", {"name": "cron1"})
    assert await cron.result() == "cron1"
    assert starts.at["cron1"] == pytest.approx(t0 + DEADLINE / 2)

    async with asyncio.timeout(DEADLINE + GRACE + 10):
        outcome = await hung.wait()
        results = [await job.result() for job in later]
    assert outcome.state is JobState.TIMED_OUT
    assert outcome.reason == "deadline"
    assert results == ["a2", "a3", "a4"]
    assert starts.order == ["a1", "cron1", "a2", "a3", "a4"]
    # The next message ran as soon as the slot was freed: at the deadline for a
    # task that unwinds, one cancel grace later for one that swallows the cancel.
    assert starts.at["a2"] == pytest.approx(t0 + DEADLINE + freed_after, abs=0.01)


async def test_a_job_waiting_for_the_shared_lane_holds_no_session_slot(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    starts = Starts()
    lw = _build(make_laneway, starts, stubborn)
    await lw.start()
    t0 = now()
    await lw.submit("alice", "chat", {"name": "a1", "hang": "ignoring"})
    await lw.submit("alice", "chat", {"name": "a2"})
    b1 = await lw.submit("bob", "chat", {"name": "b1"})
    await asyncio.sleep(60)

    snap = lw.snapshot()
    # On the shared lane only bob waits for a slot; a2 waits for alice's own turn.
    assert load(snap, "llm") == (1, 1)
    assert lane(snap, "llm").behind_session == 1
    assert load(snap, "session:alice") == (1, 1)
    # bob waits for the shared lane without holding his own session slot: the
    # nested "session slot held while waiting for the global lane" cannot happen.
    assert load(snap, "session:bob") == (0, 1)
    assert snap.jobs_running == 1
    assert snap.jobs_queued == 2

    async with asyncio.timeout(DEADLINE + GRACE + 10):
        assert await b1.result() == "b1"
    # Oldest waiting head first: alice's a2 (queued before bob's b1) goes first.
    assert starts.order == ["a1", "a2", "b1"]
    assert starts.at["a2"] == pytest.approx(t0 + DEADLINE + GRACE, abs=0.01)
    await lw.join()
    assert [s.name for s in lw.snapshot().lanes] == ["llm"]
