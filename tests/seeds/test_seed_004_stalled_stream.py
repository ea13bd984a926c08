"""Seed 004: a CLI stream that never yielded again, and a /stop that could not stop it.

The field report: the Claude CLI's response stream went silent mid-turn; the
session lock stayed held, queued messages backed up, and /stop did nothing
because the task sat in an uncancellable await. The fix it describes: an idle
timeout per stream *item* (not per turn), retry only if nothing was streamed
yet, and a stop registry whose done-callback cannot remove a newer task's
entry. Each of those is pinned here against the public API.

The live repro at the end runs the real thing: the built-in ``cli`` model on
a fake agent CLI that prints two lines, then blocks on a socket with SIGTERM
ignored, as does a child it started (real processes, so real time).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from laneway import Event, JobState, Laneway, Limits, Retry, TurnContext
from laneway.handlers import register_cli
from laneway.testing import fake_agent_cli, hang, model_stream

from .._helpers import (
    Starts,
    Stubborn,
    all_gone,
    events_of,
    every_store,
    gone,
    now,
    state,
    terminal_counts,
)
from ..conftest import MakeLaneway

pytestmark = [pytest.mark.looptime, every_store]

IDLE = 60.0
GRACE = 5.0


def _streaming(make_laneway: MakeLaneway, retry: Retry) -> Laneway:
    lw = make_laneway(limits=Limits(deadline=7200, idle=IDLE, cancel_grace=GRACE), retry=retry)
    attempts: dict[str, int] = {}

    @lw.handler("cli")
    async def cli(ctx: TurnContext, payload: dict[str, int]) -> int:
        attempts[ctx.job_id] = ctx.attempt
        stall = payload["stall_after"] if ctx.attempt <= payload.get("stall_attempts", 1) else None
        chunks = [f"c{i}" for i in range(payload["chunks"])]
        n = 0
        async for chunk in ctx.stream(model_stream(chunks, delay=50, stall_after=stall)):
            await ctx.emit("delta", {"text": chunk})
            n += 1
        return n

    return lw


async def test_an_hour_of_steady_streaming_is_healthy(make_laneway: MakeLaneway) -> None:
    lw = _streaming(make_laneway, Retry(max_attempts=1))
    await lw.start()
    t0 = now()
    job = await lw.submit("alice", "cli", {"chunks": 72, "stall_after": -1, "stall_attempts": 0})
    assert await job.result() == 72
    assert now() - t0 == pytest.approx(3600)


async def test_a_stream_that_goes_silent_times_out_idle_and_is_not_retried(
    make_laneway: MakeLaneway,
) -> None:
    lw = _streaming(make_laneway, Retry(max_attempts=3, backoff=1))
    await lw.start()
    t0 = now()
    job = await lw.submit("alice", "cli", {"chunks": 72, "stall_after": 3, "stall_attempts": 9})
    outcome = await job.wait()
    assert (outcome.state, outcome.reason, outcome.attempts) == (JobState.TIMED_OUT, "idle", 1)
    # Three items at 50 s intervals, then silence: idle fires 60 s after the last item.
    assert now() - t0 == pytest.approx(150 + IDLE, abs=0.01)
    deltas = [e.data["text"] for e in await events_of(lw, "alice") if e.kind == "delta"]
    assert deltas == ["c0", "c1", "c2"]  # a half-streamed reply is not streamed twice


async def test_a_stream_silent_before_any_output_is_retried(make_laneway: MakeLaneway) -> None:
    lw = _streaming(make_laneway, Retry(max_attempts=3, backoff=1))
    await lw.start()
    job = await lw.submit("alice", "cli", {"chunks": 2, "stall_after": 0})
    outcome = await job.wait()
    assert (outcome.state, outcome.result, outcome.attempts) == (JobState.SUCCEEDED, 2, 2)
    kinds = [e.kind for e in await events_of(lw, "alice")]
    assert kinds == [
        "job.queued",
        "job.started",
        "job.retry",
        "job.started",
        "delta",
        "delta",
        "job.succeeded",
    ]


def _flaky(make_laneway: MakeLaneway, retry: Retry) -> Laneway:
    lw = make_laneway(retry=retry)

    @lw.handler("turn")
    async def turn(ctx: TurnContext, payload: dict[str, bool]) -> str:
        if payload["emit_first"]:
            await ctx.emit("delta", {"attempt": ctx.attempt})
        if ctx.attempt == 1:
            raise RuntimeError("connection reset")
        return f"attempt {ctx.attempt}"

    return lw


@pytest.mark.parametrize(
    ("emit_first", "after_output", "attempts", "state"),
    [
        (False, False, 2, JobState.SUCCEEDED),  # nothing streamed yet: safe to retry
        (True, False, 1, JobState.FAILED),  # output already streamed: no retry
        (True, True, 2, JobState.SUCCEEDED),  # unless the handler says it is safe
    ],
)
async def test_retry_only_without_output(
    make_laneway: MakeLaneway, emit_first: bool, after_output: bool, attempts: int, state: JobState
) -> None:
    lw = _flaky(make_laneway, Retry(max_attempts=3, backoff=0.5, retry_after_output=after_output))
    await lw.start()
    job = await lw.submit("alice", "turn", {"emit_first": emit_first})
    outcome = await job.wait()
    assert (outcome.state, outcome.attempts) == (state, attempts)
    if state is JobState.FAILED:
        assert (outcome.reason, outcome.error) == ("RuntimeError", "connection reset")
    deltas = [e.data for e in await events_of(lw, "alice") if e.kind == "delta"]
    assert len(deltas) == (attempts if emit_first else 0)


async def test_stop_of_an_uncancellable_turn_returns_within_the_grace(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    starts = Starts()
    lw = make_laneway(limits=Limits(cancel_grace=GRACE))

    @lw.handler("cli")
    async def cli(ctx: TurnContext, payload: str) -> str:
        starts.start(payload)
        if payload == "stuck":
            await stubborn.hang()  # an await that swallows cancellation
        return payload

    await lw.start()
    stuck = await lw.submit("alice", "cli", "stuck")
    following = await lw.submit("alice", "cli", "next")
    await asyncio.sleep(30)
    t_stop = now()
    result = await lw.stop("alice")
    assert now() - t_stop == pytest.approx(GRACE, abs=0.01)
    assert (result.cancelled, result.dropped) == ([stuck.id], [])
    outcome = await stuck.wait()
    assert (outcome.state, outcome.reason) == (JobState.CANCELLED, "stopped")
    assert await following.result() == "next"
    assert starts.at["next"] == pytest.approx(t_stop + GRACE, abs=0.01)
    assert stubborn.swallowed == 1


async def test_a_stop_leaves_alone_the_next_turn_that_starts_in_its_grace(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    """The next message starts once the stopped turn is abandoned, while ``stop`` is
    still finishing; no later look at the stop may end it (a cluster-wide stop
    once flagged it too, and its node's next poll cancelled it)."""
    lw = make_laneway(limits=Limits(deadline=900, idle=None, cancel_grace=GRACE))

    @lw.handler("cli")
    async def cli(ctx: TurnContext, payload: str) -> str:
        if payload == "stuck":
            await stubborn.hang()
        await asyncio.sleep(300)  # several polls of any store
        return payload

    await lw.start()
    stuck = await lw.submit("alice", "cli", "stuck")
    following = await lw.submit("alice", "cli", "next")
    await asyncio.sleep(1)
    result = await lw.stop("alice")
    assert (result.cancelled, result.dropped) == ([stuck.id], [])
    outcome = await following.wait()
    assert (outcome.state, outcome.result) == (JobState.SUCCEEDED, "next")
    assert (await stuck.wait()).state is JobState.CANCELLED


async def test_a_stopped_turns_late_end_does_not_touch_the_next_turn(
    make_laneway: MakeLaneway,
) -> None:
    """The register/done-callback race: stop, submit at once, old task ends later."""
    lw = make_laneway(limits=Limits(deadline=900, cancel_grace=GRACE))
    late: list[object] = []

    @lw.handler("cli")
    async def cli(ctx: TurnContext, payload: str) -> str:
        if payload == "old":
            try:
                await hang()
            except asyncio.CancelledError:
                await asyncio.sleep(20)  # swallows the stop, ends on its own later
            late.append(await ctx.emit("delta", {"text": "old, late"}))
            return "old"
        await asyncio.sleep(100)
        return "new"

    await lw.start()
    old = await lw.submit("alice", "cli", "old")
    await asyncio.sleep(1)
    await lw.stop("alice")  # returns after the grace; the old task lives on
    new = await lw.submit("alice", "cli", "new")
    await asyncio.sleep(1)
    assert [z.job_id for z in lw.snapshot().zombies] == [old.id]
    assert await state(lw, new.id) is JobState.RUNNING

    await asyncio.sleep(30)  # the old task has ended by itself meanwhile
    assert late == [None]
    assert lw.snapshot().zombies == []
    # The new turn is still running and still registered: stop finds and ends it.
    assert await state(lw, new.id) is JobState.RUNNING
    t_stop = now()
    result = await lw.stop("alice")
    assert result.cancelled == [new.id]
    assert now() == pytest.approx(t_stop)
    assert (await new.wait()).state is JobState.CANCELLED
    assert (await old.wait()).state is JobState.CANCELLED
    counts = await terminal_counts(lw, "alice")
    assert (counts[old.id], counts[new.id]) == (1, 1)


async def test_a_zombie_attempt_ending_late_does_not_touch_its_own_retry(
    make_laneway: MakeLaneway,
) -> None:
    """The same race within one job: attempt 1 is a zombie while attempt 2 runs."""
    lw = make_laneway(
        limits=Limits(deadline=900, idle=10, cancel_grace=GRACE),
        retry=Retry(max_attempts=2, backoff=0),
    )
    starts = Starts()
    late: list[object] = []

    @lw.handler("cli")
    async def cli(ctx: TurnContext, payload: None) -> str:
        starts.start(f"attempt{ctx.attempt}")
        if ctx.attempt == 1:
            try:
                await hang()  # silent: the idle limit fires at 10 s
            except asyncio.CancelledError:
                await asyncio.sleep(20)  # swallowed; ends on its own at 30 s
            late.append(await ctx.emit("delta", {"text": "attempt 1, late"}))
            return "attempt 1"
        for _ in range(100):
            await asyncio.sleep(5)
            ctx.progress()
        return "attempt 2"

    await lw.start()
    t0 = now()
    job = await lw.submit("alice", "cli")
    await asyncio.sleep(35)
    assert starts.at["attempt2"] == pytest.approx(t0 + 10 + GRACE, abs=0.01)
    assert late == [None]  # attempt 1 ended (late) and was fenced out
    assert lw.snapshot().zombies == []
    assert await state(lw, job.id) is JobState.RUNNING
    result = await lw.stop("alice")
    assert result.cancelled == [job.id]
    outcome = await job.wait()
    assert (outcome.state, outcome.reason, outcome.attempts) == (JobState.CANCELLED, "stopped", 2)
    assert now() - t0 == pytest.approx(35, abs=0.01)
    assert [e.kind for e in await events_of(lw, "alice")] == [
        "job.queued",
        "job.started",
        "job.retry",
        "job.started",
        "job.cancelled",
    ]


LIVE_IDLE = 1.0
LIVE_GRACE = 1.0  # TERM, then KILL half of it later


class _Clock:
    """When each event reached the bus (real time), by job and kind."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, Event]] = []

    def __call__(self, event: Event) -> None:
        self.seen.append((time.monotonic(), event))

    def at(self, job_id: str, kind: str) -> list[float]:
        return [t for t, e in self.seen if e.job_id == job_id and e.kind == kind]

    def pids(self, job_id: str) -> list[int]:
        texts = [e.data["text"] for _, e in self.seen if e.job_id == job_id and e.kind == "delta"]
        return [int(t.split()[1]) for t in texts]


async def _live(make_laneway: MakeLaneway, idle: float) -> tuple[Laneway, _Clock]:
    lw = make_laneway(
        limits=Limits(deadline=60, idle=idle, cancel_grace=LIVE_GRACE),
        retry=Retry(max_attempts=3, backoff=0.05),
    )
    register_cli(lw, command=fake_agent_cli())
    clock = _Clock()
    lw.add_listener(clock)
    await lw.start()
    return lw, clock


async def _both_lines(clock: _Clock, job_id: str) -> list[int]:
    async with asyncio.timeout(10):
        while len(clock.pids(job_id)) < 2:
            await asyncio.sleep(0.01)
    pids = clock.pids(job_id)
    assert not any(gone(p) for p in pids)  # the CLI and its child, both alive and silent
    return pids


@pytest.mark.slow
@pytest.mark.looptime(False)
async def test_live_a_silent_cli_times_out_idle_dies_and_the_next_message_runs(
    make_laneway: MakeLaneway,
) -> None:
    lw, clock = await _live(make_laneway, LIVE_IDLE)
    stuck = await lw.submit("alice", "cli", {"text": "/hang"})
    following = await lw.submit("alice", "cli", {"text": "hello again"})
    pids = await _both_lines(clock, stuck.id)
    outcome = await stuck.wait()
    assert (outcome.state, outcome.reason, outcome.attempts) == (JobState.TIMED_OUT, "idle", 1)
    last_line = clock.at(stuck.id, "delta")[-1]
    ended = clock.at(stuck.id, "job.timed_out")[0]
    # Idle after the last line, then TERM (ignored) and KILL half a grace later.
    assert LIVE_IDLE <= ended - last_line < LIVE_IDLE + LIVE_GRACE + 1.0
    assert await all_gone(pids, within=LIVE_GRACE)
    assert await following.result() == "hello\nagain"
    assert clock.at(following.id, "job.started")[0] >= ended
    kinds = [e.kind for e in await events_of(lw, "alice") if e.job_id == stuck.id]
    assert kinds == ["job.queued", "job.started", "delta", "delta", "job.timed_out"]  # no replay


@pytest.mark.slow
@pytest.mark.looptime(False)
async def test_live_stop_during_the_silence_ends_the_turn_within_the_grace(
    make_laneway: MakeLaneway,
) -> None:
    lw, clock = await _live(make_laneway, 60.0)
    stuck = await lw.submit("alice", "cli", {"text": "/hang"})
    following = await lw.submit("alice", "cli", {"text": "next"})
    pids = await _both_lines(clock, stuck.id)
    t0 = time.monotonic()
    result = await lw.stop("alice")
    assert time.monotonic() - t0 < LIVE_GRACE + 0.5
    assert result.cancelled == [stuck.id]
    assert (await stuck.wait()).state is JobState.CANCELLED
    assert await all_gone(pids, within=LIVE_GRACE)
    assert await following.result() == "next"
    assert clock.at(following.id, "job.started")[0] - t0 < LIVE_GRACE + 0.5
