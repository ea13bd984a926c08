"""Laneway on ``postgresql://`` on one node with today's dispatcher: jobs run,
commit before ``submit`` returns, keep their events, and survive a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from laneway import JobState, Laneway, Retry, TurnContext

from .._helpers import SRC
from ._db import fetch

Factory = Callable[..., Laneway]


@pytest.fixture
async def make(postgres_url: str) -> AsyncIterator[Factory]:
    made: list[Laneway] = []

    def factory(url: str = postgres_url, **kwargs: Any) -> Laneway:
        kwargs.setdefault("watchdog_threshold", None)
        lw = Laneway(url, **kwargs)
        made.append(lw)
        return lw

    yield factory
    for lw in made:
        await lw.close()


def register(lw: Laneway) -> None:
    @lw.handler("echo", lanes=("llm",))
    async def echo(ctx: TurnContext, payload: Any) -> Any:
        rows = await fetch(
            lw.store.url, "SELECT state, attempts FROM jobs WHERE id = $1", ctx.job_id
        )
        await ctx.emit("delta", {"seen": [tuple(r) for r in rows]})
        return payload


async def test_jobs_run_end_to_end_and_commit_before_submit_returns(
    make: Factory, postgres_url: str
) -> None:
    lw = make(lanes={"llm": 2})
    register(lw)
    async with lw:
        jobs = [await lw.submit(f"s{i % 3}", "echo", {"n": i}) for i in range(9)]
        committed = await fetch(
            postgres_url, "SELECT id FROM jobs WHERE id = ANY($1)", [j.id for j in jobs]
        )
        assert len(committed) == 9
        results = [await j.result() for j in jobs]
    assert results == [{"n": i} for i in range(9)]
    events = await fetch(
        postgres_url, "SELECT kind, data FROM events WHERE job_id = $1 ORDER BY seq", jobs[0].id
    )
    assert [e["kind"] for e in events] == ["job.queued", "job.started", "delta", "job.succeeded"]
    # The start was committed before the handler ran.
    assert '"seen":[["running",1]]' in events[2]["data"]


@pytest.mark.slow
async def test_a_retry_runs_after_its_backoff_not_at_the_next_poll(
    make: Factory, postgres_url: str
) -> None:
    """The database holds the retry from its write on; the node's own unhold must
    not come before that, or the claim finds it held and waits for the poll."""
    lw = make(postgres_url.replace("poll=1s", "poll=20s"), retry=Retry(max_attempts=2, backoff=0.5))
    starts: list[float] = []

    @lw.handler("flaky")
    async def flaky(ctx: TurnContext, payload: None) -> str:
        starts.append(time.monotonic())
        if ctx.attempt == 1:
            raise RuntimeError("try again")
        return "ok"

    async with lw:
        outcome = await (await lw.submit("s", "flaky", None)).wait()
    assert (outcome.state, outcome.attempts) == (JobState.SUCCEEDED, 2)
    # Backoff 0.25..0.5 s; a retry left to the poll would wait 10..20 s.
    assert 0.2 <= starts[1] - starts[0] < 5


async def test_queued_jobs_survive_a_restart_and_run_in_order(make: Factory) -> None:
    first = make()
    ran: list[int] = []
    started = asyncio.Event()

    @first.handler("later")
    async def blocked(ctx: TurnContext, payload: Any) -> None:
        started.set()
        await asyncio.Event().wait()  # until close() cancels it: back to the queue

    async with first:
        ids = [(await first.submit("alice", "later", {"n": n})).id for n in range(3)]
        await started.wait()
    again = make()

    @again.handler("later")
    async def later(ctx: TurnContext, payload: Any) -> None:
        ran.append(payload["n"])

    async with again:
        await again.join()
        infos = [await again.get(job_id) for job_id in ids]
    assert ran == [0, 1, 2]
    assert [i.state if i else None for i in infos] == [JobState.SUCCEEDED] * 3


_CRASHER = """
import asyncio, sys
from laneway import Laneway

async def main(url):
    lw = Laneway(url, watchdog_threshold=None)

    @lw.handler("turn")
    async def turn(ctx, payload):
        print("running", flush=True)
        await asyncio.Event().wait()

    async with lw:
        await lw.submit("alice", "turn", None)
        await asyncio.Event().wait()

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.slow
async def test_a_node_killed_mid_turn_gets_its_attempt_back_when_restarted_by_name(
    make: Factory, postgres_url: str, tmp_path: Path
) -> None:
    url = f"{postgres_url}&node=pod-0"
    script = tmp_path / "crasher.py"
    script.write_text(_CRASHER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), url,
        env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"running\n"
    proc.send_signal(signal.SIGKILL)
    await proc.wait()

    lw = make(url)  # the lease (30 s) is still live: the name says the old owner is gone
    done = asyncio.Event()

    @lw.handler("turn")
    async def turn(ctx: TurnContext, payload: Any) -> int:
        done.set()
        return ctx.attempt

    async with lw:
        await asyncio.wait_for(done.wait(), 10)
        await lw.join()
        [info] = await lw.jobs(session="alice")
    assert (info.state, info.attempts, info.lost) == (JobState.SUCCEEDED, 2, 1)
