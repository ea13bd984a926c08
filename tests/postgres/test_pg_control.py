"""Control across nodes: stop, cancel and requeue from any node, whichever node
accepted the job or runs it; a cancel that races another node's claim of the
same job ends it exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from laneway import JobState, Laneway, Limits, Overloaded, Retry, TurnContext
from laneway.stores._postgres import PostgresStore

from ._db import connect, fetch

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

Factory = Callable[..., Laneway]

GRACE, POLL = 0.5, 0.2


@pytest.fixture
async def make(postgres_url: str) -> AsyncIterator[Factory]:
    made: list[Laneway] = []

    def factory(options: str = "", **kwargs: Any) -> Laneway:
        kwargs.setdefault("watchdog_threshold", None)
        kwargs.setdefault("limits", Limits(cancel_grace=GRACE))
        kwargs.setdefault("shutdown_grace", GRACE)  # turns left running end at close
        lw = Laneway(f"{postgres_url}&poll={int(POLL * 1000)}ms{options}", **kwargs)
        made.append(lw)
        return lw

    yield factory
    for lw in made:
        await lw.close()


def handlers(lw: Laneway, ran: list[str], *names: str) -> None:
    """Each name a handler that records its job and waits until cancelled, or until
    ``payload["n"]`` 20 ms steps have passed."""
    for name in names:

        @lw.handler(name)
        async def run(ctx: TurnContext, payload: Any) -> str:
            ran.append(ctx.job_id)
            for _ in range((payload or {}).get("n", 10**9)):
                await asyncio.sleep(0.02)
            return "done"


async def until(check: Callable[[], Any], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.02)


async def state_of(url: str, job_id: str) -> tuple[str, str | None]:
    [row] = await fetch(url, "SELECT state, reason FROM jobs WHERE id = $1", job_id)
    return row[0], row[1]


async def endings(url: str, job_id: str) -> list[str]:
    rows = await fetch(
        url,
        "SELECT kind FROM events WHERE job_id = $1 AND kind NOT IN"
        " ('job.queued', 'job.started', 'job.retry', 'job.requeued') ORDER BY seq",
        job_id,
    )
    return [row[0] for row in rows]


async def lock_waits(url: str) -> int:
    """Writer connections (of any node) waiting for a row lock."""
    rows = await fetch(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'laneway-writer' AND wait_event_type = 'Lock'",
    )
    return int(rows[0][0])


async def test_stop_drop_queued_ends_the_sessions_queued_jobs_of_every_node(
    make: Factory, postgres_url: str
) -> None:
    ran: list[str] = []
    a, b = make(), make()
    handlers(a, ran, "work")
    handlers(b, ran, "work")
    async with a, b:
        first = await b.submit("s", "work")
        async with asyncio.timeout(10):
            while not ran:
                await asyncio.sleep(0.02)
        queued_b = [await b.submit("s", "work") for _ in range(2)]  # B accepted these
        queued_a = await a.submit("s", "work")
        began = time.monotonic()
        result = await a.stop("s", drop_queued=True)
        assert time.monotonic() - began < GRACE + 2 * POLL + 1.0
        assert result.cancelled == [first.id]
        assert result.dropped == [j.id for j in [*queued_b, queued_a]]
        async with asyncio.timeout(5):  # B's waiters get the committed outcome
            outcomes = [await j.wait() for j in queued_b]
        assert {(o.state, o.reason) for o in outcomes} == {(JobState.CANCELLED, "stopped")}
        for job in [first, *queued_b, queued_a]:
            assert await state_of(postgres_url, job.id) == ("cancelled", "stopped")
            assert await endings(postgres_url, job.id) == ["job.cancelled"]
        await asyncio.sleep(3 * POLL)
        assert ran == [first.id]  # none of the dropped jobs ever started


async def test_cancel_of_a_job_queued_by_another_node(make: Factory, postgres_url: str) -> None:
    ran: list[str] = []
    a, b = make(), make()
    handlers(b, ran, "work")  # only B runs it: A cannot claim
    async with a, b:
        first = await b.submit("s", "work")
        second = await b.submit("s", "work")  # queued behind the first
        await until(lambda: _ran(ran))
        assert await a.cancel(second.id) is True
        assert await a.cancel(second.id) is False  # once
        async with asyncio.timeout(5):
            outcome = await second.wait()
        assert (outcome.state, outcome.reason) == (JobState.CANCELLED, "stopped")
        assert await endings(postgres_url, second.id) == ["job.cancelled"]
        assert await a.cancel(first.id) is True  # running on B
        assert await state_of(postgres_url, first.id) == ("cancelled", "stopped")
        assert ran == [first.id]


async def _ran(ran: list[str]) -> bool:
    return bool(ran)


async def test_a_cancel_racing_another_nodes_claim_ends_the_job_once(
    make: Factory, postgres_url: str
) -> None:
    """A cancels a job it accepted while B's claim of it is in flight: the claim
    transaction is held open (it waits for a row lock the test holds) and A's cancel
    queues behind it. Whatever the order, the job ends once, cancelled."""
    ran_a: list[str] = []
    ran_b: list[str] = []
    a, b = make("&capacity=1"), make("&capacity=1")
    handlers(a, ran_a, "hold_a", "work")
    handlers(b, ran_b, "hold_b", "work")
    async with a, b:
        await a.submit("a", "hold_a")
        hold_b = await b.submit("b", "hold_b")
        await until(lambda: _both(ran_a, ran_b))  # both nodes are full
        job = await a.submit("s", "work")
        blocker = await connect(postgres_url)
        cancelling: asyncio.Task[bool] | None = None
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job.id)
            freeing = asyncio.create_task(b.cancel(hold_b.id))  # B now claims ``job``...
            await until(lambda: _waits(postgres_url, 1))  # ...and its claim waits on us
            cancelling = asyncio.create_task(a.cancel(job.id))
            await until(lambda: _waits(postgres_url, 2))  # A's cancel waits on B's claim
            await tx.rollback()  # the claim commits first; then the cancel
            began = time.monotonic()
            async with asyncio.timeout(GRACE + 2 * POLL + 5):
                assert await cancelling is True
            assert time.monotonic() - began < GRACE + 2 * POLL + 1.0
            await freeing
        finally:
            if cancelling is not None and not cancelling.done():
                cancelling.cancel()
            await blocker.close()
        async with asyncio.timeout(5):
            outcome = await job.wait()
        assert (outcome.state, outcome.reason) == (JobState.CANCELLED, "stopped")
        assert await state_of(postgres_url, job.id) == ("cancelled", "stopped")
        assert await endings(postgres_url, job.id) == ["job.cancelled"]
        assert job.id not in ran_a  # B won the claim; it may have started, once
        assert ran_b.count(job.id) <= 1


async def _both(ran_a: list[str], ran_b: list[str]) -> bool:
    return bool(ran_a and ran_b)


async def _waits(url: str, n: int) -> bool:
    return await lock_waits(url) >= n


async def test_requeue_on_another_node_runs_the_job_once_more(
    make: Factory, postgres_url: str
) -> None:
    ran: list[str] = []
    a, b = make(retry=Retry(max_attempts=1)), make(retry=Retry(max_attempts=1))
    for lw in (a, b):

        @lw.handler("work")
        async def work(ctx: TurnContext, payload: Any) -> str:
            ran.append(ctx.job_id)
            if len(ran) == 1:
                raise RuntimeError("the first run fails")
            return "done"

    async with b:
        job = await b.submit("s", "work")
        async with asyncio.timeout(10):
            first = await job.wait()
        assert first.state is JobState.FAILED
        async with a:
            again = await a.requeue(job.id)  # it ended on B; A did not know it
            async with asyncio.timeout(10):
                outcome = await again.wait()
            assert outcome.state is JobState.SUCCEEDED
            await asyncio.sleep(3 * POLL)
    assert ran == [job.id, job.id]
    assert await endings(postgres_url, job.id) == ["job.failed", "job.succeeded"]


def blocked(lw: Laneway, release: asyncio.Event, ran: list[str]) -> None:
    """``block`` holds the one ``llm`` slot until ``release``; ``work`` needs it too."""

    @lw.handler("block", lanes=("llm",))
    async def block(ctx: TurnContext, payload: Any) -> None:
        ran.append(ctx.job_id)
        await release.wait()

    @lw.handler("work", lanes=("llm",))
    async def work(ctx: TurnContext, payload: Any) -> None:
        ran.append(ctx.job_id)


@pytest.mark.parametrize(
    ("bounds", "sessions"),
    [
        ({"max_queued_per_session": 3}, ["s", "s", "s", "s"]),
        ({"max_queued": 3}, ["p", "q", "r", "t"]),
    ],
    ids=["max_queued_per_session", "max_queued"],
)
async def test_queue_bounds_hold_across_nodes(
    make: Factory, bounds: dict[str, int], sessions: list[str]
) -> None:
    release = asyncio.Event()
    ran: list[str] = []
    a, b = make(lanes={"llm": 1}, **bounds), make(lanes={"llm": 1}, **bounds)
    blocked(a, release, ran)
    blocked(b, release, ran)
    async with a, b:
        await a.submit("x", "block")
        await until(lambda: _ran(ran))  # nothing else can start: the queue only grows
        accepted = [
            await node.submit(s, "work") for node, s in zip([a, b, a], sessions, strict=False)
        ]
        for node in (b, a):  # the 4th, on either node
            with pytest.raises(Overloaded):
                await node.submit(sessions[3], "work")
        release.set()
        async with asyncio.timeout(10):  # nothing accepted is lost
            outcomes = [await job.wait() for job in accepted]
        assert {o.state for o in outcomes} == {JobState.SUCCEEDED}
        again = await b.submit(sessions[3], "work")  # room again
        async with asyncio.timeout(10):
            assert (await again.wait()).state is JobState.SUCCEEDED


async def test_the_snapshot_shows_which_node_runs_what(make: Factory) -> None:
    ran: list[str] = []
    a, b = make("&node=node-a"), make("&node=node-b")
    handlers(a, ran, "on_a")
    handlers(b, ran, "on_b")
    async with a, b:
        job_a = await a.submit("s", "on_a")  # only A has the handler
        job_b = await b.submit("t", "on_b")
        await until(lambda: _both_ran(ran))

        async def seen() -> bool:
            return all(len(lw.snapshot().running) == 2 for lw in (a, b))

        await until(seen)  # the other node's turn shows after a poll tick
        for lw in (a, b):
            snap = lw.snapshot()
            assert snap.node == lw.node == ("node-a" if lw is a else "node-b")
            by_job = {r.job_id: (r.session, r.handler, r.attempt, r.node) for r in snap.running}
            assert by_job == {
                job_a.id: ("s", "on_a", 1, "node-a"),
                job_b.id: ("t", "on_b", 1, "node-b"),
            }


async def _both_ran(ran: list[str]) -> bool:
    return len(ran) == 2


async def test_counted_submits_in_one_batch_stop_at_the_bound(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:

        def add(i: int, key: str | None = None) -> Any:
            return store.add_job_counted(
                job_id=f"j{i}", session="s", handler="h", payload=None, priority=0,
                idempotency_key=key, max_per_session=3, max_total=None,
            )  # fmt: skip

        answers = await asyncio.gather(*(add(i, "k" if i == 0 else None) for i in range(5)))
        assert [(refused, before) for refused, before, _a in answers] == [
            (None, 0), (None, 1), (None, 2),
            ("max_queued_per_session", 3), ("max_queued_per_session", 3),
        ]  # fmt: skip
        refused, _before, again = await add(9, "k")  # a retried submit gets its job
        assert refused is None
        assert again is not None
        assert again[0].id == "j0"
        assert again[1] is None
        rows = await fetch(postgres_url, "SELECT count(*) FROM jobs WHERE session = 's'")
        assert rows[0][0] == 3
    finally:
        await store.close()
