"""The shortest useful path: submit, run, result, events."""

from __future__ import annotations

import pytest

from laneway import TurnContext

from ..conftest import MakeLaneway

pytestmark = pytest.mark.looptime


async def test_submit_runs_and_returns_the_result(make_laneway: MakeLaneway) -> None:
    lw = make_laneway()

    @lw.handler("echo")
    async def echo(ctx: TurnContext, payload: dict[str, str]) -> str:
        await ctx.emit("delta", {"text": payload["text"]})
        return payload["text"].upper()

    await lw.start()
    job = await lw.submit("alice", "echo", {"text": "hi"})
    assert await job.result() == "HI"
    kinds = [e.kind for e in await lw.store.read_events("alice")]
    assert kinds == ["job.queued", "job.started", "delta", "job.succeeded"]
