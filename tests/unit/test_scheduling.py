"""Who runs when: FIFO per session, oldest head first across sessions,
priority, isolation (guarantee 4), retries (guarantee 5), bounded queues
(guarantee 9), and idle session lanes forgotten."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from laneway import Job, JobState, Laneway, Limits, Overloaded, Retry, TurnContext

from .._helpers import (
    Starts,
    Stubborn,
    events_of,
    every_store,
    info,
    lane,
    now,
    skip_backoff_timing_on_server_clock,
)
from ..conftest import MakeLaneway

pytestmark = pytest.mark.looptime


def _recording(make_laneway: MakeLaneway, starts: Starts, **kw: object) -> Laneway:
    """Handlers that record their start and sleep ``payload[1]`` seconds."""
    lw = make_laneway(lanes={"llm": 1, "tools": 1}, **kw)
    gate = asyncio.Event()

    async def run(payload: tuple[str, float]) -> str:
        name, seconds = payload
        starts.start(name)
        if seconds < 0:
            await gate.wait()
        await asyncio.sleep(max(0.0, seconds))
        starts.end(name)
        return name

    @lw.handler("llm", lanes=("llm",))
    async def llm(ctx: TurnContext, payload: tuple[str, float]) -> str:
        return await run(payload)

    @lw.handler("both", lanes=("llm", "tools"))
    async def both(ctx: TurnContext, payload: tuple[str, float]) -> str:
        return await run(payload)

    @lw.handler("free")
    async def free(ctx: TurnContext, payload: tuple[str, float]) -> str:
        return await run(payload)

    lw.gate = gate  # type: ignore[attr-defined]
    return lw


@every_store
async def test_a_session_runs_strictly_in_order_one_at_a_time(make_laneway: MakeLaneway) -> None:
    starts = Starts()
    lw = _recording(make_laneway, starts)
    await lw.start()
    rng = random.Random(7)
    names = [f"m{i}" for i in range(30)]
    jobs = [await lw.submit("alice", "free", (n, rng.choice([0, 0.5, 3]))) for n in names]
    assert [await j.result() for j in jobs] == names
    assert starts.order == names
    for before, after in itertools.pairwise(names):
        assert starts.at[after] >= starts.ended[before]


@every_store
async def test_session_limit_allows_that_many_at_once_still_in_order(
    make_laneway: MakeLaneway,
) -> None:
    starts = Starts()
    lw = _recording(make_laneway, starts, session_limit=2)
    await lw.start()
    t0 = now()
    jobs = [await lw.submit("alice", "free", (f"m{i}", 10)) for i in range(5)]
    await asyncio.sleep(1)
    assert lane(lw.snapshot(), "session:alice").active == 2
    await asyncio.gather(*(j.result() for j in jobs))
    # In order as the store recorded the starts; two turns started at one instant
    # may enter their handlers either way round once a durable store commits them.
    started = [e.job_id for e in await events_of(lw, "alice") if e.kind == "job.started"]
    assert started == [j.id for j in jobs]
    assert sorted(starts.order) == [f"m{i}" for i in range(5)]
    assert [starts.at[f"m{i}"] - t0 for i in range(5)] == pytest.approx([0, 0, 10, 10, 20])


@every_store
async def test_the_oldest_waiting_head_goes_first_across_sessions(
    make_laneway: MakeLaneway,
) -> None:
    starts = Starts()
    lw = _recording(make_laneway, starts)
    await lw.start()
    await lw.submit("blocker", "llm", ("blocker", -1))
    plan = [("zed", "both", "z1"), ("amy", "llm", "a1"), ("yan", "both", "y1")]
    plan += [("amy", "both", "a2"), ("zed", "llm", "z2"), ("yan", "llm", "y2")]
    jobs = [await lw.submit(s, h, (n, 1)) for s, h, n in plan]
    await asyncio.sleep(5)
    assert starts.order == ["blocker"]
    lw.gate.set()  # type: ignore[attr-defined]
    await asyncio.gather(*(j.result() for j in jobs))
    # Neither by session name, nor round-robin by session, nor by which
    # shared lanes a job needs: by how long each head has waited.
    assert starts.order == ["blocker", "z1", "a1", "y1", "a2", "z2", "y2"]


@every_store
async def test_a_blocked_session_does_not_hold_up_other_sessions(
    make_laneway: MakeLaneway,
) -> None:
    starts = Starts()
    lw = make_laneway(lanes={"llm": 2})

    @lw.handler("llm", lanes=("llm",))
    async def llm(ctx: TurnContext, payload: tuple[str, float]) -> None:
        starts.start(payload[0])
        await asyncio.sleep(payload[1])

    await lw.start()
    t0 = now()
    await lw.submit("amy", "llm", ("a1", 10))
    await lw.submit("amy", "llm", ("a2", 1))  # older, but its session is busy
    bob = await lw.submit("bob", "llm", ("b1", 1))
    await bob.wait()
    assert starts.at["b1"] == pytest.approx(t0)
    await lw.join()
    assert starts.at["a2"] == pytest.approx(t0 + 10)


@every_store
async def test_priority_orders_heads_but_never_reorders_a_session(
    make_laneway: MakeLaneway,
) -> None:
    starts = Starts()
    lw = _recording(make_laneway, starts)
    await lw.start()
    await lw.submit("blocker", "llm", ("blocker", -1))
    await lw.submit("amy", "llm", ("a-low", 1), priority=0)
    await lw.submit("amy", "llm", ("a-urgent", 1), priority=9)
    await lw.submit("bob", "llm", ("b-high", 1), priority=5)
    await lw.submit("cat", "llm", ("c-mid", 1), priority=1)
    lw.gate.set()  # type: ignore[attr-defined]
    await lw.join()
    # Across sessions the higher priority head wins; amy's urgent message
    # still waits for her earlier one (per-session FIFO is strict).
    assert starts.order == ["blocker", "b-high", "c-mid", "a-low", "a-urgent"]


@every_store
async def test_a_full_shared_lane_delays_only_the_jobs_that_need_it(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    starts = Starts()
    lw = make_laneway(lanes={"llm": 2, "tools": 1}, limits=Limits(deadline=600, idle=None))

    @lw.handler("tool", lanes=("tools",))
    async def tool(ctx: TurnContext, payload: str) -> None:
        starts.start(payload)
        await stubborn.hang()

    @lw.handler("llm", lanes=("llm",))
    async def llm(ctx: TurnContext, payload: str) -> None:
        starts.start(payload)
        await asyncio.sleep(1)

    await lw.start()
    t0 = now()
    await lw.submit("hung", "tool", "hung")
    await lw.submit("waiting", "tool", "waits for tools")
    jobs = [await lw.submit(f"s{i}", "llm", f"s{i}") for i in range(10)]
    await asyncio.gather(*(j.wait() for j in jobs))
    # Ten one-second turns through two slots: five rounds, unaffected by the
    # hung "tools" turn and the job queued behind it.
    assert now() - t0 == pytest.approx(5)
    assert "waits for tools" not in starts.at
    await lw.stop("hung")
    await starts.started("waits for tools")
    assert starts.at["waits for tools"] == pytest.approx(t0 + 5 + 5)  # + the cancel grace


@every_store
@pytest.mark.parametrize("max_attempts", [1, 4])
async def test_retries_stop_at_max_attempts(make_laneway: MakeLaneway, max_attempts: int) -> None:
    lw = make_laneway(retry=Retry(max_attempts=max_attempts, backoff=0.1))
    runs: list[int] = []

    @lw.handler("turn")
    async def turn(ctx: TurnContext, payload: None) -> None:
        runs.append(ctx.attempt)
        raise ConnectionError("model unavailable")

    await lw.start()
    outcome = await (await lw.submit("alice", "turn")).wait()
    assert (outcome.state, outcome.attempts, outcome.reason) == (
        JobState.FAILED,
        max_attempts,
        "ConnectionError",
    )
    assert runs == list(range(1, max_attempts + 1))


@every_store
async def test_backoff_grows_with_jitter_up_to_max_backoff(
    make_laneway: MakeLaneway, request: pytest.FixtureRequest
) -> None:
    skip_backoff_timing_on_server_clock(request)
    lw = make_laneway(retry=Retry(max_attempts=6, backoff=2, max_backoff=10))
    starts: list[float] = []

    @lw.handler("turn")
    async def turn(ctx: TurnContext, payload: None) -> None:
        starts.append(now())
        raise ConnectionError("model unavailable")

    await lw.start()
    job = await lw.submit("alice", "turn")
    await job.wait()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    bases = [2, 4, 8, 10, 10]  # backoff * 2**(n-1), capped at max_backoff
    assert len(gaps) == len(bases)
    for gap, base in zip(gaps, bases, strict=True):
        assert base / 2 - 0.01 <= gap <= base + 0.01, (gaps, bases)
    announced = [e.data["delay"] for e in await events_of(lw, "alice") if e.kind == "job.retry"]
    assert gaps == pytest.approx(announced, abs=0.01)


@every_store
async def test_a_retried_job_keeps_the_head_of_its_session(make_laneway: MakeLaneway) -> None:
    starts = Starts()
    # A short backoff: PostgreSQL holds it on the server's clock, in real seconds.
    lw = make_laneway(retry=Retry(max_attempts=2, backoff=2))

    @lw.handler("turn")
    async def turn(ctx: TurnContext, payload: str) -> str:
        starts.start(f"{payload}#{ctx.attempt}")
        if payload == "first" and ctx.attempt == 1:
            raise ConnectionError("reset")
        await asyncio.sleep(1)
        return payload

    await lw.start()
    first = await lw.submit("alice", "turn", "first")
    second = await lw.submit("alice", "turn", "second")
    other = await lw.submit("bob", "turn", "other")
    assert [await first.result(), await second.result(), await other.result()] == [
        "first",
        "second",
        "other",
    ]
    # bob ran during alice's backoff; alice's second message waited for the retry.
    assert starts.order == ["first#1", "other#1", "first#2", "second#1"]
    assert starts.at["first#2"] >= starts.at["first#1"] + 1
    assert starts.at["second#1"] >= starts.at["first#2"] + 1


def _gated(make_laneway: MakeLaneway, **kw: object) -> tuple[Laneway, asyncio.Event]:
    lw = make_laneway(**kw)
    gate = asyncio.Event()

    @lw.handler("turn")
    async def turn(ctx: TurnContext, payload: int) -> int:
        await gate.wait()
        return payload

    return lw, gate


@every_store
async def test_queues_are_bounded_and_nothing_accepted_is_lost(make_laneway: MakeLaneway) -> None:
    lw, gate = _gated(make_laneway, max_queued=5, max_queued_per_session=2)
    await lw.start()

    async def running_first(session: str, payload: int) -> Job:
        # A session's first job starts at once; with a store that decides slots
        # (PostgreSQL) the start commits a round trip after submit returns.
        job = await lw.submit(session, "turn", payload)
        await asyncio.sleep(1)
        assert (await info(lw, job.id)).state is JobState.RUNNING
        return job

    accepted = [await running_first("amy", 0)]
    accepted += [await lw.submit("amy", "turn", i) for i in range(1, 3)]  # 1 running + 2 queued
    with pytest.raises(Overloaded, match="max_queued_per_session") as per_session:
        await lw.submit("amy", "turn", 3)
    assert per_session.value.retry_after > 0
    accepted += [await running_first("bob", 3)]
    accepted += [await lw.submit("bob", "turn", i) for i in range(4, 6)]  # 4 queued
    accepted += [await running_first("cat", 6), await lw.submit("cat", "turn", 7)]  # 5 queued
    with pytest.raises(Overloaded, match="max_queued"):
        await lw.submit("dan", "turn", 8)
    assert lw.snapshot().jobs_queued == 5
    gate.set()
    assert [await j.result() for j in accepted] == list(range(8))
    # Room again once the queue drained.
    assert await (await lw.submit("dan", "turn", 9)).result() == 9


@every_store
async def test_concurrent_submits_respect_the_bound(make_laneway: MakeLaneway) -> None:
    lw, gate = _gated(make_laneway, max_queued=10, max_queued_per_session=1000)
    await lw.start()
    first = await lw.submit("amy", "turn", -1)  # running; everything else queues behind it
    # With a store that decides slots (PostgreSQL) the start commits after submit returns.
    while (await info(lw, first.id)).state is not JobState.RUNNING:
        await asyncio.sleep(0.1)
    results = await asyncio.gather(
        *(lw.submit("amy", "turn", i) for i in range(25)), return_exceptions=True
    )
    accepted = [r for r in results if not isinstance(r, BaseException)]
    assert len(accepted) == 10
    assert all(isinstance(r, Overloaded) for r in results if isinstance(r, BaseException))
    gate.set()
    assert len([await j.result() for j in accepted]) == 10


@pytest.mark.slow
async def test_drained_session_lanes_are_forgotten(make_laneway: MakeLaneway) -> None:
    # Lane bookkeeping at scale, on the memory store only: 100,000 sequential commits
    # would be a benchmark, not a test (tests/contract covers the stores).
    lw = make_laneway(lanes={"llm": 64}, max_queued=200_000)

    @lw.handler("noop", lanes=("llm",))
    async def noop(ctx: TurnContext, payload: None) -> None:
        return None

    await lw.start()
    for i in range(100_000):
        await lw.submit(f"user-{i}", "noop")
    d = lw._dispatch
    assert d is not None
    assert len(d.slots.queue_of("user-99999")) == 1
    await lw.join()
    assert not list(d.slots.sessions())
    assert [s.name for s in lw.snapshot().lanes] == ["llm"]
    assert not d.jobs
    assert not d.running
    assert not d.queued
