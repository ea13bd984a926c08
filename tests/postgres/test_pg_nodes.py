"""Two nodes in one process on one database: what one node sees of the other's work.

Events, stops, cancels and the snapshot cross nodes; a node that loses its
lease cancels its own attempts at once and its late finish is refused; a cut
connection or a killed LISTEN connection loses nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from laneway import JobState, Laneway, Limits, TurnContext

from ._db import fetch

Factory = Callable[..., Laneway]


@pytest.fixture
async def make(postgres_url: str) -> AsyncIterator[Factory]:
    made: list[Laneway] = []

    def factory(options: str = "", **kwargs: Any) -> Laneway:
        kwargs.setdefault("watchdog_threshold", None)
        kwargs.setdefault("lanes", {"llm": 4})
        kwargs.setdefault("limits", Limits(cancel_grace=0.5))
        lw = Laneway(f"{postgres_url}&poll=200ms{options}", **kwargs)
        made.append(lw)
        return lw

    yield factory
    for lw in made:
        await lw.close()


def streaming(lw: Laneway, ran: list[str], swallow: bool = False) -> None:
    """``work``: streams a delta every 50 ms until ``payload['n']`` deltas (or forever)."""

    @lw.handler("work", lanes=("llm",))
    async def work(ctx: TurnContext, payload: Any) -> str:
        ran.append(ctx.job_id)
        for _ in range(payload.get("n", 10**9)):
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if not swallow:
                    raise
            await ctx.emit("delta", {"t": time.time()})
        return "done"


def holding(lw: Laneway) -> None:
    @lw.handler("hold")
    async def hold(ctx: TurnContext, payload: Any) -> None:
        await asyncio.Event().wait()


async def _busy_b(make: Factory) -> tuple[Laneway, Laneway, list[str], list[str]]:
    """Node A runs ``work``; node B (capacity 1) is full with a ``hold`` turn."""
    ran_a: list[str] = []
    ran_b: list[str] = []
    a, b = make(), make("&capacity=1")
    streaming(a, ran_a)
    streaming(b, ran_b)
    holding(b)
    await b.start()
    await b.submit("held", "hold", None)
    async with asyncio.timeout(10):
        while b.snapshot().jobs_running < 1:
            await asyncio.sleep(0.02)
    await a.start()
    return a, b, ran_a, ran_b


@pytest.mark.slow
async def test_events_stop_and_snapshot_cross_nodes(make: Factory) -> None:
    _a, b, ran_a, ran_b = await _busy_b(make)
    job = await b.submit("s", "work", {})  # only A has room for it
    kinds: list[str] = []
    async with asyncio.timeout(15):
        async for event in b.events("s"):  # B follows what A writes
            kinds.append(event.kind)
            if kinds.count("delta") >= 3:
                break
    assert kinds[:2] == ["job.queued", "job.started"]
    assert ran_a == [job.id]
    assert not ran_b
    llm = next(lane for lane in b.snapshot().lanes if lane.name == "llm")
    assert (llm.limit, llm.active) == (4, 1)  # A's turn, seen from B
    began = time.monotonic()
    result = await b.stop("s")  # from the node that does not run it
    assert result.cancelled == [job.id]
    assert time.monotonic() - began < 0.5 + 0.2 * 2 + 1.0  # cancel_grace + poll, and slack
    async with asyncio.timeout(5):
        outcome = await job.wait()
    assert (outcome.state, outcome.reason) == (JobState.CANCELLED, "stopped")


@pytest.mark.slow
async def test_cancel_from_another_node(make: Factory) -> None:
    a, b, ran_a, _ = await _busy_b(make)
    job = await b.submit("s", "work", {})
    async with asyncio.timeout(10):
        while not ran_a:
            await asyncio.sleep(0.02)
    assert await a.cancel(job.id) is True  # A runs it: a local cancel
    job2 = await b.submit("s", "work", {})
    async with asyncio.timeout(10):
        while len(ran_a) < 2:
            await asyncio.sleep(0.02)
    assert await b.cancel(job2.id) is True  # B asks A, and returns once it ended
    rows = await fetch(a.store.url, "SELECT state, reason FROM jobs WHERE id = $1", job2.id)
    assert tuple(rows[0]) == ("cancelled", "stopped")


@pytest.mark.slow
async def test_a_node_that_loses_its_lease_cancels_at_once_and_its_late_finish_is_refused(
    make: Factory, postgres_url: str
) -> None:
    ran_a: list[str] = []
    ran_b: list[str] = []
    a = make("&lease=1s")
    streaming(a, ran_a, swallow=True)  # ignores the cancel: finishes late, as a zombie
    await a.start()
    job = await a.submit("s", "work", {"n": 40})  # two seconds of streaming
    async with asyncio.timeout(10):
        while not ran_a:
            await asyncio.sleep(0.02)
    b = make("&lease=1s")
    streaming(b, ran_b)
    # A pauses past its lease (as if partitioned): its row is gone, B reaps its turn.
    await fetch(
        postgres_url,
        "DELETE FROM nodes WHERE epoch = (SELECT epoch FROM jobs WHERE id = $1)",
        job.id,
    )
    await b.start()  # B, or A itself once it re-registered, reaps the turn and runs it again
    # Generous: if A reaps its own turn, the rerun waits out its zombie's cancel grace.
    async with asyncio.timeout(40):
        while (await fetch(postgres_url, "SELECT state FROM jobs WHERE id = $1", job.id))[0][
            0
        ] != "succeeded":
            await asyncio.sleep(0.05)
    await asyncio.sleep(2.5)  # A's zombie has had time to try its late writes
    ends = await fetch(
        postgres_url,
        "SELECT count(*) FROM events WHERE job_id = $1 AND kind = 'job.succeeded'",
        job.id,
    )
    assert ends[0][0] == 1
    assert a.snapshot().jobs_running == 0  # A cancelled it when it saw the lease gone
    assert len(ran_a + ran_b) == 2
    rows = await fetch(postgres_url, "SELECT attempts FROM jobs WHERE id = $1", job.id)
    assert rows[0][0] == 2


@pytest.mark.slow
async def test_a_cut_connection_mid_attempt_loses_nothing(make: Factory, postgres_url: str) -> None:
    ran: list[str] = []
    a = make()
    streaming(a, ran)
    async with a:
        job = await a.submit("s", "work", {"n": 20})
        async with asyncio.timeout(10):
            while not ran:
                await asyncio.sleep(0.02)
        await fetch(
            postgres_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND datname = current_database()"
            " AND application_name = 'laneway-writer'",
        )
        async with asyncio.timeout(20):
            outcome = await job.wait()
    assert outcome.state is JobState.SUCCEEDED
    ends = await fetch(
        postgres_url, "SELECT count(*) FROM events WHERE job_id = $1 AND kind LIKE 'job.s%'", job.id
    )
    assert ends[0][0] == 2  # job.started and job.succeeded, once each


@pytest.mark.slow
async def test_jobs_start_within_poll_after_the_listen_connection_is_killed(
    make: Factory, postgres_url: str
) -> None:
    ran: list[str] = []
    a = make()
    streaming(a, ran)
    b = make("&capacity=1")
    streaming(b, [])
    holding(b)
    async with a, b:
        await b.submit("held", "hold", None)
        async with asyncio.timeout(10):
            while b.snapshot().jobs_running < 1:
                await asyncio.sleep(0.02)
        await fetch(
            postgres_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND query LIKE 'LISTEN%'",
        )
        began = time.monotonic()
        await b.submit("s", "work", {"n": 1})  # A must notice it without a notification
        async with asyncio.timeout(5):
            while not ran:
                await asyncio.sleep(0.01)
        assert time.monotonic() - began < 0.2 + 1.0


@pytest.mark.slow
async def test_a_chatty_session_does_not_starve_another(make: Factory) -> None:
    ran: list[str] = []
    a = make(lanes={"llm": 2})
    streaming(a, ran)
    async with a:
        chatty = [await a.submit("chatty", "work", {"n": 2}) for _ in range(100)]
        before = len(ran)  # chatty's turns run while its 100 submits commit
        quiet = await a.submit("quiet", "work", {"n": 1})
        async with asyncio.timeout(10):
            await quiet.wait()
        # Beside chatty's turn of the moment, not after its queue of ~100 jobs.
        assert ran.index(quiet.id) <= before + 1
        for job in chatty:
            await job.cancel()
