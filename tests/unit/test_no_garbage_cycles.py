"""Finished jobs are freed by reference counting, not left for the cyclic GC.

A cycle per job (job <-> attempt once was one) keeps every finished job alive
until a full collection; at tens of thousands of jobs the collector then costs
more than the dispatching.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from laneway import TurnContext

from ..conftest import MakeLaneway


@pytest.fixture
def collector_paused() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def test_jobs_leave_no_garbage_cycles(
    make_laneway: MakeLaneway, collector_paused: None
) -> None:
    lw = make_laneway(lanes={"llm": 4})

    @lw.handler("chat", lanes=("llm",))
    async def chat(ctx: TurnContext, payload: Any) -> str:
        await ctx.emit("delta", {"text": "hi"})
        return "ok"

    await lw.start()
    await (await lw.submit("warm", "chat")).wait()
    gc.collect()
    for i in range(300):
        await lw.submit(f"s{i % 30}", "chat")
    await lw.join()
    assert gc.collect() == 0
