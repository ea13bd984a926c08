"""Workers that die on their own: the attempt is lost, retry and poison rules apply,
and the pool returns to its size."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from laneway import JobState, ProcessPool, Retry

from ..conftest import MakeLaneway
from . import handlers
from .conftest import eventually, first_event, gone, pool_restored, runner

pytestmark = pytest.mark.slow


async def test_segfaulting_handler_is_lost_retried_then_dead_after_poison_after(
    make_laneway: MakeLaneway,
) -> None:
    lw = make_laneway(
        process_pool=ProcessPool(size=1), poison_after=2, retry=Retry(max_attempts=5, backoff=0)
    )
    lw.handler("segv", isolation="process")(handlers.segfault_quietly)
    await lw.start()
    job = await lw.submit("crash", "segv")
    outcome = await job.wait()
    assert (outcome.state, outcome.reason, outcome.attempts) == (JobState.DEAD, "lost", 2)
    assert outcome.error is not None
    assert "SIGSEGV" in outcome.error
    info = await lw.get(job.id)
    assert info is not None
    assert info.lost == 2
    kinds = [e.kind for e in await lw.store.read_events("crash")]
    assert kinds.count("job.retry") == 1
    assert kinds[-1] == "job.dead"
    assert runner(lw).stats["lost"] == 2
    await pool_restored(lw, 1)
    # The pool still works after the crashes.
    lw.handler("noop", isolation="process")(handlers.noop)
    assert await (await lw.submit("after", "noop", 7)).result() == 7


async def test_a_lost_attempt_is_retried_and_can_succeed(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=1), retry=Retry(max_attempts=3, backoff=0))
    lw.handler("flaky", isolation="process")(handlers.crash_first)  # os._exit(3) on attempt 1
    await lw.start()
    job = await lw.submit("flaky", "flaky")
    assert await job.result() == "attempt 2"
    retry = next(e for e in await lw.store.read_events("flaky") if e.kind == "job.retry")
    assert retry.data["reason"] == "lost"
    assert "exit code 3" in retry.data["error"]
    info = await lw.get(job.id)
    assert info is not None
    assert info.lost == 1


async def test_a_lost_attempt_after_output_is_not_retried(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=1), retry=Retry(max_attempts=3, backoff=0))
    lw.handler("segv", isolation="process")(handlers.segfault)  # emits, then crashes
    await lw.start()
    outcome = await (await lw.submit("s", "segv")).wait()
    assert (outcome.state, outcome.reason, outcome.attempts) == (JobState.FAILED, "lost", 1)


async def test_worker_killed_from_outside_is_lost_and_replaced(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=2), retry=Retry(max_attempts=1))
    lw.handler("wait", isolation="process")(handlers.wait_to_be_killed)
    await lw.start()
    job = await lw.submit("victim", "wait")
    pid = (await first_event(lw, "victim", "pid")).data
    os.kill(pid, signal.SIGKILL)
    outcome = await asyncio.wait_for(job.wait(), 5.0)
    assert (outcome.state, outcome.reason) == (JobState.FAILED, "lost")
    assert outcome.error is not None
    assert "SIGKILL" in outcome.error
    assert gone(pid)
    await pool_restored(lw, 2, pid)


async def test_idle_worker_that_dies_is_replaced(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=2))
    lw.handler("noop", isolation="process")(handlers.noop)
    await lw.start()
    assert await (await lw.submit("a", "noop", 1)).result() == 1
    pids = await pool_restored(lw, 2)
    os.kill(pids[0], signal.SIGKILL)
    await pool_restored(lw, 2, pids[0])
    assert runner(lw).stats["died"] == 1
    for i in range(4):  # no job lands on the dead worker
        assert await (await lw.submit(f"b{i}", "noop", i)).result() == i


async def test_workers_are_recycled_after_max_jobs(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=1, max_jobs=2))
    lw.handler("who", isolation="process")(handlers.whoami)
    await lw.start()
    pids = [(await (await lw.submit("a", "who")).result())["pid"] for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3]
    assert runner(lw).stats["recycled"] >= 1
    await eventually(lambda: gone(pids[0]), 3.0, "the recycled worker to exit")


async def test_workers_are_recycled_above_max_rss(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=1, max_rss_mb=1))  # any Python is bigger
    lw.handler("who", isolation="process")(handlers.whoami)
    await lw.start()
    first = (await (await lw.submit("a", "who")).result())["pid"]
    second = (await (await lw.submit("a", "who")).result())["pid"]
    assert first != second
    assert runner(lw).stats["recycled"] >= 1


async def test_close_kills_every_worker(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=2))
    lw.handler("noop", isolation="process")(handlers.noop)
    lw.handler("wait", isolation="process")(handlers.wait_to_be_killed)
    await lw.start()
    await (await lw.submit("a", "noop", 1)).result()
    await lw.submit("b", "wait")
    await first_event(lw, "b", "pid")
    pids = await pool_restored(lw, 2)
    await lw.close()
    assert all(gone(pid) for pid in pids)
