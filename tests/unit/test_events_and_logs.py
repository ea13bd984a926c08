"""The event log (replay, then live, from ``after``) and the lane diagnostics."""

from __future__ import annotations

import asyncio
import logging

import pytest

from laneway import Event, Laneway, Limits, TurnContext
from laneway.testing import hang

from .._helpers import check_seq, events_of, every_store
from ..conftest import MakeLaneway

pytestmark = [pytest.mark.looptime, every_store]


def _chatty(make_laneway: MakeLaneway) -> Laneway:
    lw = make_laneway()

    @lw.handler("chat")
    async def chat(ctx: TurnContext, payload: int) -> int:
        for i in range(payload):
            await asyncio.sleep(1)
            await ctx.emit("delta", {"i": i})
        return payload

    return lw


async def _collect(lw: Laneway, session: str, after: int, until_job: str) -> list[Event]:
    seen: list[Event] = []
    async for event in lw.events(session, after=after):
        seen.append(event)
        if event.job_id == until_job and event.kind.startswith("job.succeeded"):
            break
    return seen


async def test_events_replay_from_after_then_follow_live(make_laneway: MakeLaneway) -> None:
    lw = _chatty(make_laneway)
    await lw.start()
    first = await lw.submit("alice", "chat", 2)
    await first.wait()
    assert len(await events_of(lw, "alice")) == 5  # queued, started, 2 deltas, succeeded
    second_id: list[str] = []
    follower = asyncio.ensure_future(
        _collect_after_submit(lw, second_id)  # subscribes, then the second job is submitted
    )
    await asyncio.sleep(0.5)
    second = await lw.submit("alice", "chat", 3)
    second_id.append(second.id)
    seen = await asyncio.wait_for(follower, timeout=60)
    # Replayed seq 3..5, then the second job live: no gap, no duplicate.
    assert [e.seq for e in seen] == list(range(3, 5 + 6 + 1))
    live = ["job.queued", "job.started", "delta", "delta", "delta", "job.succeeded"]
    assert [e.kind for e in seen][3:] == live
    check_seq(await events_of(lw, "alice"))


async def _collect_after_submit(lw: Laneway, second_id: list[str]) -> list[Event]:
    seen: list[Event] = []
    async for event in lw.events("alice", after=2):
        seen.append(event)
        if second_id and event.job_id == second_id[0] and event.kind == "job.succeeded":
            break
    return seen


async def test_two_followers_see_the_same_log(make_laneway: MakeLaneway) -> None:
    lw = _chatty(make_laneway)
    await lw.start()
    job = await lw.submit("bob", "chat", 4)
    early = asyncio.ensure_future(_collect(lw, "bob", 0, job.id))
    await asyncio.sleep(2.5)  # the second one joins mid-turn and replays what it missed
    late = asyncio.ensure_future(_collect(lw, "bob", 0, job.id))
    a, b = await asyncio.gather(early, late)
    assert [e.seq for e in a] == [e.seq for e in b] == list(range(1, 8))


async def test_a_blocked_lane_is_reported_with_its_numbers(
    make_laneway: MakeLaneway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="laneway.runtime")
    lw = make_laneway(lanes={"llm": 1}, limits=Limits(deadline=1000, idle=None), wait_warn=60)

    @lw.handler("call", lanes=("llm",))
    async def call(ctx: TurnContext, payload: None) -> None:
        await hang()

    await lw.start()
    await lw.submit("amy", "call")
    await lw.submit("amy", "call")  # blocked by amy's own session lane
    await lw.submit("bob", "call")  # blocked by the shared lane
    await asyncio.sleep(50)
    assert not [r for r in caplog.records if r.getMessage().startswith("lane.wait_exceeded")]
    await asyncio.sleep(150)

    records = [r for r in caplog.records if r.getMessage().startswith("lane.wait_exceeded")]
    by_lane: dict[str, list[logging.LogRecord]] = {}
    for record in records:
        by_lane.setdefault(record.__dict__["lane"], []).append(record)
    assert set(by_lane) == {"llm", "session:amy"}
    llm = by_lane["llm"][0].__dict__
    assert (llm["active"], llm["limit"], llm["queued"]) == (1, 1, 2)
    assert 60 <= llm["oldest_active_s"] <= 80
    amy = by_lane["session:amy"][0].__dict__
    assert (amy["active"], amy["limit"], amy["queued"]) == (1, 1, 1)
    # Throttled: a few records over 200 s, not one per monitor tick.
    assert 2 <= len(by_lane["llm"]) <= 3
