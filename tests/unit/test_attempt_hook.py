"""``Laneway.add_attempt_hook``: a context manager around each attempt's handler
call, in the attempt's own task, so what it sets in contextvars reaches the
handler; exited however the handler ends."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import pytest

from laneway import JobState, Limits, Retry, TurnContext
from laneway.testing import hang

from ..conftest import MakeLaneway

pytestmark = pytest.mark.looptime

current: contextvars.ContextVar[str] = contextvars.ContextVar("current", default="-")


async def test_the_hook_wraps_each_attempt_and_its_contextvars_reach_the_handler(
    make_laneway: MakeLaneway,
) -> None:
    lw = make_laneway(limits=Limits(idle=1, cancel_grace=1), retry=Retry(max_attempts=1))
    log: list[str] = []

    @contextlib.contextmanager
    def hook(ctx: TurnContext) -> Iterator[None]:
        token = current.set(f"{ctx.job_id}#{ctx.attempt}")
        log.append("enter")
        try:
            yield
        finally:
            log.append("exit")
            current.reset(token)

    @lw.handler("chat")
    async def chat(ctx: TurnContext, payload: Any) -> str:
        if payload == "hang":
            await hang()
        return current.get()

    remove = lw.add_attempt_hook(hook)
    await lw.start()
    job = await lw.submit("alice", "chat", "hi")
    assert await job.result() == f"{job.id}#1"
    hung = await lw.submit("alice", "chat", "hang")
    assert (await hung.wait()).state is JobState.TIMED_OUT
    assert log == ["enter", "exit", "enter", "exit"]  # exited on the cancel too
    assert current.get() == "-"  # nothing leaks out of the attempt's task
    remove()
    again = await lw.submit("alice", "chat", "plain")
    assert await again.result() == "-"


async def test_a_hook_that_fails_to_enter_fails_the_attempt(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(retry=Retry(max_attempts=1))
    exited: list[str] = []

    @contextlib.contextmanager
    def fine(ctx: TurnContext) -> Iterator[None]:
        try:
            yield
        finally:
            exited.append("fine")

    def broken(ctx: TurnContext) -> contextlib.AbstractContextManager[None]:
        raise RuntimeError("tracing is down")

    @lw.handler("chat")
    async def chat(ctx: TurnContext, payload: Any) -> str:
        pytest.fail("the handler must not run")

    lw.add_attempt_hook(fine)
    lw.add_attempt_hook(broken)
    await lw.start()
    outcome = await (await lw.submit("alice", "chat", {})).wait()
    assert (outcome.state, outcome.reason) == (JobState.FAILED, "RuntimeError")
    assert exited == ["fine"]  # the hooks entered before are unwound
