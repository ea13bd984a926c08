"""What the console follows besides the snapshot: running turns from committed
events, where each job's events begin, and the watchdog's loop.blocked reports."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from laneway import TurnContext
from laneway.gateway._activity import Activity

from ..conftest import MakeLaneway

pytestmark = pytest.mark.looptime


async def test_running_turns_and_their_last_output_follow_the_events(
    make_laneway: MakeLaneway,
) -> None:
    lw = make_laneway()
    go, emitted = asyncio.Event(), asyncio.Event()

    @lw.handler("chat")
    async def chat(ctx: TurnContext, payload: Any) -> str:
        await ctx.emit("delta", {"text": "a"})
        emitted.set()
        await go.wait()
        return "done"

    activity = Activity(keep_queued=2)
    activity.watch(lw)
    await lw.start()
    job = await lw.submit("alice", "chat", {})
    assert activity.queued_seq(job.id) == 1  # its job.queued is the session's first event
    await emitted.wait()
    turn = activity.turns[job.id]
    assert (turn.session, turn.attempt) == ("alice", 1)
    events = {e.kind: e for e in await lw.store.read_events("alice")}
    assert turn.started_at == events["job.started"].at
    assert turn.last_output_at == events["delta"].at
    go.set()
    await job.wait()
    assert job.id not in activity.turns
    later = [await lw.submit("bob", "chat", {}) for _ in range(2)]
    assert activity.queued_seq(job.id) is None  # only the latest keep_queued are kept
    assert activity.queued_seq(later[1].id) is not None
    activity.close()


def test_loop_blocked_reports_are_kept_newest_last_and_bounded() -> None:
    activity = Activity(keep_blocks=2)
    activity.watch_logs()
    log = logging.getLogger("laneway.watchdog")
    try:
        for n in range(3):
            log.warning("loop.blocked: %d", n, extra={"blocked_s": float(n), "stack": f"s{n}"})
        log.warning("something else")
    finally:
        activity.close()
    assert [(b.blocked_s, b.stack) for b in activity.blocks] == [(1.0, "s1"), (2.0, "s2")]
