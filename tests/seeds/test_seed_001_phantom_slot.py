"""Seed 001: a phantom lane slot that no recovery released (tulgey#238).

The field report: a session-lane task whose promise never settled held its
slot forever; later enqueues saw the lane "full" and returned silently; the
first fix (bump a generation) also dropped a healthy sibling's completion on a
multi-slot lane. Here the turn swallows every cancellation. After its deadline
and cancel grace its slot must be free, the job terminal (``timed_out``), the
task listed as a zombie until it really ends, its late result and late events
discarded; a healthy sibling on the same shared lane must be untouched, and
everybody waiting on the queue must be woken.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from laneway import Event, JobState, Laneway, Limits, Retry, TurnContext

from .._helpers import Starts, Stubborn, events_of, every_store, lane, now, settle, terminal_counts
from ..conftest import MakeLaneway

pytestmark = [pytest.mark.looptime, every_store]

DEADLINE = 600.0
GRACE = 5.0


def _register(lw: Laneway, starts: Starts, stubborn: Stubborn, late: list[Event | None]) -> None:
    @lw.handler("phantom", lanes=("llm",), limits=Limits(deadline=DEADLINE))
    async def phantom(ctx: TurnContext, payload: dict[str, str]) -> str:
        starts.start(payload["name"])
        await ctx.emit("delta", {"text": "thinking"})
        await stubborn.hang()  # catches CancelledError and keeps waiting
        late.append(await ctx.emit("delta", {"text": "late"}))
        return "late result"

    @lw.handler("turn", lanes=("llm",), limits=Limits(deadline=3 * DEADLINE))
    async def turn(ctx: TurnContext, payload: dict[str, Any]) -> str:
        starts.start(payload["name"])
        for _ in range(payload.get("steps", 0)):
            await asyncio.sleep(300)
            await ctx.emit("delta", {"text": payload["name"]})
        starts.end(payload["name"])
        return f"{payload['name']} ok"


def _laneway(make_laneway: MakeLaneway, slots: int) -> Laneway:
    return make_laneway(
        lanes={"llm": slots},
        limits=Limits(idle=None, cancel_grace=GRACE),
        retry=Retry(max_attempts=1),
    )


async def test_a_phantom_slot_is_reclaimed_and_its_late_work_discarded(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    starts, late = Starts(), list[Event | None]()
    lw = _laneway(make_laneway, 1)
    _register(lw, starts, stubborn, late)
    await lw.start()
    t0 = now()
    phantom = await lw.submit("wa:dm:1", "phantom", {"name": "p"})
    queued = [await lw.submit("wa:dm:1", "turn", {"name": "same-session"})]
    queued.append(await lw.submit("wa:dm:2", "turn", {"name": "other-session"}))
    # Everybody waits before the slot is reclaimed: these waiters must be woken.
    waiters = [asyncio.create_task(job.wait()) for job in (phantom, *queued)]

    async with asyncio.timeout(DEADLINE + GRACE + 1):
        outcomes = await asyncio.gather(*waiters)
    assert now() == pytest.approx(t0 + DEADLINE + GRACE, abs=0.01)
    assert [o.state for o in outcomes] == [JobState.TIMED_OUT, *[JobState.SUCCEEDED] * 2]
    assert outcomes[0].reason == "deadline"
    assert starts.order == ["p", "same-session", "other-session"]

    # The task is still alive: a zombie, holding no slot.
    snap = lw.snapshot()
    assert [(z.job_id, z.session, z.kind) for z in snap.zombies] == [
        (phantom.id, "wa:dm:1", "task")
    ]
    assert lane(snap, "llm").active == 0
    assert snap.jobs_running == 0
    assert stubborn.running == 1
    assert stubborn.swallowed == 1
    info = await lw.get(phantom.id)
    assert info is not None
    assert info.state is JobState.TIMED_OUT

    # It finally ends: its late event and late result go nowhere.
    stubborn.release()
    await settle()
    assert stubborn.running == 0
    assert late == [None]
    assert lw.snapshot().zombies == []
    assert lw.discarded_events >= 1
    kinds = [(e.job_id, e.kind, e.data) for e in await events_of(lw, "wa:dm:1")]
    assert (phantom.id, "delta", {"text": "late"}) not in kinds
    assert (phantom.id, "delta", {"text": "thinking"}) in kinds
    assert (await terminal_counts(lw, "wa:dm:1"))[phantom.id] == 1
    info = await lw.get(phantom.id)
    assert info is not None
    assert (info.state, info.result, info.reason) == (JobState.TIMED_OUT, None, "deadline")


async def test_reclaiming_a_phantom_leaves_a_healthy_sibling_intact(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    starts, late = Starts(), list[Event | None]()
    lw = _laneway(make_laneway, 2)
    _register(lw, starts, stubborn, late)
    await lw.start()
    t0 = now()
    phantom = await lw.submit("a", "phantom", {"name": "p"})
    # The sibling shares the lane and outlives the phantom's abandonment.
    sibling = await lw.submit("b", "turn", {"name": "sibling", "steps": 3})
    behind = await lw.submit("c", "turn", {"name": "behind"})

    async with asyncio.timeout(DEADLINE + GRACE + 1):
        assert await behind.result() == "behind ok"
    # The phantom's slot went to the waiting job at deadline + grace, not at
    # the sibling's end: only the stalled slot was reclaimed.
    assert starts.at["behind"] == pytest.approx(t0 + DEADLINE + GRACE, abs=0.01)
    assert "sibling" not in starts.ended
    assert lane(lw.snapshot(), "llm").active == 1

    async with asyncio.timeout(DEADLINE):
        outcome = await sibling.wait()
    assert (outcome.state, outcome.result, outcome.reason) == (
        JobState.SUCCEEDED,
        "sibling ok",
        None,
    )
    assert starts.ended["sibling"] == pytest.approx(t0 + 900, abs=0.01)
    deltas = [e.data for e in await events_of(lw, "b") if e.kind == "delta"]
    assert deltas == [{"text": "sibling"}] * 3
    assert (await phantom.wait()).state is JobState.TIMED_OUT
    assert [z.job_id for z in lw.snapshot().zombies] == [phantom.id]
