"""Limits against process-isolated turns: the worker dies at the limit, others flow on."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from laneway import JobState, Limits, ProcessPool, Retry, TurnContext

from ..conftest import MakeLaneway
from . import handlers
from .conftest import eventually, first_event, gone, pool_restored, runner, session_members

pytestmark = pytest.mark.slow


async def quick(ctx: TurnContext, payload: int) -> int:
    return payload


async def test_blocking_handler_is_killed_at_its_deadline_while_200_sessions_flow(
    make_laneway: MakeLaneway,
) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=2), retry=Retry(max_attempts=1))
    lw.handler("sleep", isolation="process", limits=Limits(deadline=1.0))(handlers.sleep_blocking)
    lw.handler("noop", isolation="process")(handlers.noop)
    lw.handler("quick")(quick)
    await lw.start()
    assert await (await lw.submit("warm", "noop", 1)).result() == 1  # the pool is up

    began = time.monotonic()
    stuck = await lw.submit("stuck", "sleep", {"seconds": 30})
    pid = (await first_event(lw, "stuck", "pid")).data
    latencies: list[float] = []

    async def one(session: str, i: int) -> None:
        t = time.monotonic()
        assert await (await lw.submit(session, "quick", i)).result() == i
        latencies.append(time.monotonic() - t)

    async def traffic() -> None:
        # 200 sessions, a wave every 80 ms, spanning the kill at the deadline.
        for wave in range(20):
            await asyncio.gather(*(one(f"s{wave * 10 + i}", i) for i in range(10)))
            await asyncio.sleep(0.08)

    flow = asyncio.create_task(traffic())
    outcome = await stuck.wait()
    elapsed = time.monotonic() - began
    await flow

    assert outcome.state is JobState.TIMED_OUT
    assert outcome.reason == "deadline"
    assert 0.9 <= elapsed < 2.5, elapsed
    await eventually(lambda: gone(pid), 3.0, "the killed worker to be gone")
    latencies.sort()
    assert len(latencies) == 200
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert p99 < 0.1, f"p99 {p99 * 1000:.1f} ms"
    assert runner(lw).stats["cancelled"] == 1
    await pool_restored(lw, 2, pid)


async def test_cpu_bound_handler_is_killed_at_its_deadline(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=1), retry=Retry(max_attempts=1))
    lw.handler("spin", isolation="process", limits=Limits(deadline=0.5))(handlers.busy_loop)
    await lw.start()
    began = time.monotonic()
    job = await lw.submit("cpu", "spin")
    pid = (await first_event(lw, "cpu", "pid")).data
    outcome = await job.wait()
    assert (outcome.state, outcome.reason) == (JobState.TIMED_OUT, "deadline")
    assert time.monotonic() - began < 2.0
    await eventually(lambda: gone(pid), 3.0, "the spinning worker to be gone")
    await pool_restored(lw, 1, pid)


async def test_silent_stream_in_a_worker_hits_the_idle_limit(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=1), retry=Retry(max_attempts=1))
    lw.handler("chat", isolation="process", limits=Limits(idle=0.5))(handlers.chatty)
    await lw.start()
    began = time.monotonic()
    # Three words 0.1 s apart, then a stall of 30 s: silent, so idle ends it.
    job = await lw.submit("s", "chat", {"words": ["a", "b", "c", "d"], "delay": 0.1, "stall": 3})
    outcome = await job.wait()
    assert (outcome.state, outcome.reason) == (JobState.TIMED_OUT, "idle")
    assert 0.7 <= time.monotonic() - began < 2.5
    deltas = [e.data["text"] for e in await lw.store.read_events("s") if e.kind == "delta"]
    assert deltas == ["a", "b", "c"]


async def test_stop_kills_the_worker_and_the_subprocesses_it_started(
    make_laneway: MakeLaneway,
) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=1))
    lw.handler("tool", isolation="process")(handlers.spawn_sleep)
    await lw.start()
    job = await lw.submit("alice", "tool")
    worker = (await first_event(lw, "alice", "pid")).data
    sleeps = await eventually(lambda: session_members(worker, b"sleep"), 5.0, "sleep to start")
    assert os.getpgid(sleeps[0]) != worker  # its own group, like run_process in task mode

    lw.handler("who", isolation="process")(handlers.whoami)
    following = await lw.submit("alice", "who")  # queued behind the stuck turn

    began = time.monotonic()
    result = await lw.stop("alice")
    assert result.cancelled == [job.id]
    assert time.monotonic() - began < 1.0
    outcome = await job.wait()
    assert (outcome.state, outcome.reason) == (JobState.CANCELLED, "stopped")
    await eventually(lambda: gone(worker) and gone(sleeps[0]), 3.0, "worker and sleep gone")
    # The next message runs, in the replacement worker.
    assert (await asyncio.wait_for(following.result(), 5.0))["pid"] != worker
    await pool_restored(lw, 1, worker)


async def test_late_events_of_a_killed_worker_are_discarded(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=1), retry=Retry(max_attempts=1))
    lw.handler("ticks", isolation="process", limits=Limits(deadline=0.5))(handlers.emit_forever)
    await lw.start()
    job = await lw.submit("t", "ticks")
    outcome = await job.wait()
    assert (outcome.state, outcome.reason) == (JobState.TIMED_OUT, "deadline")
    events = await lw.store.read_events("t", limit=1_000_000)
    pid = next(e.data for e in events if e.kind == "pid")
    terminal = next(e for e in events if e.kind == "job.timed_out")
    ticks = [e for e in events if e.kind == "tick"]
    assert len(ticks) > 10  # it really was emitting when it was killed
    assert ticks[-1].data == len(ticks)  # none lost or reordered before the kill
    assert all(e.seq < terminal.seq for e in ticks)
    await asyncio.sleep(0.3)
    assert await lw.store.read_events("t", after=terminal.seq) == []
    assert gone(pid) or await eventually(lambda: gone(pid), 3.0)


async def test_demo_block_in_process_isolation_leaves_other_sessions_alone(
    make_laneway: MakeLaneway,
) -> None:
    demo = pytest.importorskip("laneway.handlers.demo")
    lw = make_laneway(process_pool=ProcessPool(size=1), retry=Retry(max_attempts=1))
    demo.register_demo(lw, name="demo")
    demo.register_demo(lw, name="demo-isolated", isolation="process")
    assert lw.handlers["demo-isolated"].isolation == "process"
    await lw.start()
    began = time.monotonic()
    blocked = await lw.submit("bob", "demo-isolated", {"text": "/block 30"})
    await asyncio.sleep(0.3)  # the worker is blocked by now; our loop is not
    reply = await asyncio.wait_for((await lw.submit("alice", "demo", {"text": "hi"})).result(), 5)
    assert "hi" in reply
    await lw.stop("bob")
    outcome = await blocked.wait()
    assert (outcome.state, outcome.reason) == (JobState.CANCELLED, "stopped")
    assert time.monotonic() - began < 5
