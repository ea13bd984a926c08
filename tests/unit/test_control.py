"""Guarantee 7 (stop works) and the rest of the control surface: cancel,
requeue, join, close, job results and their errors."""

from __future__ import annotations

import asyncio

import pytest

from laneway import (
    Closed,
    JobCancelled,
    JobFailed,
    JobState,
    JobTimedOut,
    Laneway,
    LanewayError,
    Limits,
    NotRequeueable,
    Retry,
    TurnContext,
)
from laneway.stores import MemoryStore
from laneway.testing import hang

from .._helpers import Starts, Stubborn, events_of, every_store, info, now, state
from ..conftest import MakeLaneway

pytestmark = [pytest.mark.looptime, every_store]


def _turns(make_laneway: MakeLaneway, stubborn: Stubborn, starts: Starts, **kw: object) -> Laneway:
    kw.setdefault("limits", Limits(deadline=600, idle=None, cancel_grace=5))
    kw.setdefault("retry", Retry(max_attempts=1))
    lw = make_laneway(**kw)

    @lw.handler("turn")
    async def turn(ctx: TurnContext, payload: str) -> str:
        starts.start(payload)
        if payload.startswith("hang"):
            await hang()
        elif payload.startswith("stubborn"):
            await stubborn.hang()
        elif payload.startswith("fail"):
            raise ValueError(payload)
        elif payload.startswith("slow"):
            await asyncio.sleep(3)
        return payload

    return lw


async def test_stop_ends_the_turn_at_once_and_the_next_message_runs(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    starts = Starts()
    lw = _turns(make_laneway, stubborn, starts)
    await lw.start()
    running = await lw.submit("alice", "turn", "hang")
    queued = await lw.submit("alice", "turn", "next")
    await asyncio.sleep(10)
    t_stop = now()
    result = await lw.stop("alice")  # drop_queued=False keeps the queue
    assert now() == pytest.approx(t_stop)
    assert (result.cancelled, result.dropped) == ([running.id], [])
    with pytest.raises(JobCancelled) as cancelled:
        await running.result()
    assert cancelled.value.outcome.reason == "stopped"
    assert await queued.result() == "next"
    assert starts.at["next"] == pytest.approx(t_stop)


async def test_stop_of_an_idle_or_unknown_session_is_a_no_op(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    lw = _turns(make_laneway, stubborn, Starts())
    await lw.start()
    result = await lw.stop("nobody", drop_queued=True)
    assert (result.cancelled, result.dropped) == ([], [])


async def test_cancel_a_queued_or_running_job(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    starts = Starts()
    lw = _turns(make_laneway, stubborn, starts)
    await lw.start()
    running = await lw.submit("alice", "turn", "stubborn")
    queued = await lw.submit("alice", "turn", "never")
    after = await lw.submit("alice", "turn", "after")
    assert await queued.cancel()
    assert await state(lw, queued.id) is JobState.CANCELLED
    t0 = now()
    assert await lw.cancel(running.id)
    assert now() - t0 == pytest.approx(5, abs=0.01)  # returned when the grace ran out
    assert await state(lw, running.id) is JobState.CANCELLED
    assert await after.result() == "after"
    assert "never" not in starts.at
    assert not await lw.cancel(running.id)  # already terminal
    assert not await lw.cancel(after.id)
    assert not await lw.cancel("no-such-job")


async def test_results_raise_the_matching_error(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    lw = _turns(make_laneway, stubborn, Starts(), limits=Limits(deadline=10, idle=None))
    await lw.start()
    ok = await lw.submit("a", "turn", "ok")
    failed = await lw.submit("b", "turn", "fail: no model")
    timed_out = await lw.submit("c", "turn", "hang")
    assert await ok.result() == "ok"
    with pytest.raises(JobFailed, match="no model") as err:
        await failed.result()
    assert (err.value.outcome.state, err.value.outcome.reason) == (JobState.FAILED, "ValueError")
    with pytest.raises(JobTimedOut) as late:
        await timed_out.result()
    assert late.value.outcome.reason == "deadline"
    # A finished job can still be awaited (from the store).
    assert (await ok.wait()).result == "ok"
    assert isinstance(err.value, LanewayError)


async def test_requeue_sends_failed_and_timed_out_jobs_to_the_tail(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    starts = Starts()
    lw = _turns(make_laneway, stubborn, starts, limits=Limits(deadline=10, idle=None))
    fixed = {"on": False}

    @lw.handler("flaky")
    async def flaky(ctx: TurnContext, payload: str) -> str:
        starts.start(payload)
        if not fixed["on"]:
            raise ConnectionError("model down")
        return payload

    await lw.start()
    failed = await lw.submit("alice", "flaky", "flaky")
    await failed.wait()
    with pytest.raises(NotRequeueable, match="only failed, timed_out and dead"):
        await lw.requeue((await lw.submit("bob", "turn", "ok")).id)  # queued/running/succeeded
    blocker = await lw.submit("alice", "turn", "slow")
    behind = await lw.submit("alice", "turn", "behind")
    fixed["on"] = True
    again = await lw.requeue(failed.id)
    assert again.id == failed.id
    assert await again.result() == "flaky"
    assert [await blocker.result(), await behind.result()] == ["slow", "behind"]
    # Requeued to the tail of its session: after what alice queued meanwhile.
    assert starts.order == ["flaky", "ok", "slow", "behind", "flaky"]
    stored = await info(lw, failed.id)
    assert (stored.state, stored.attempts) == (JobState.SUCCEEDED, 1)
    kinds = [e.kind for e in await events_of(lw, "alice") if e.job_id == failed.id]
    assert kinds == [
        "job.queued",
        "job.started",
        "job.failed",
        "job.requeued",  # opens the second run: one terminal event per run
        "job.started",
        "job.succeeded",
    ]
    with pytest.raises(LookupError):
        await lw.requeue("no-such-job")


async def test_join_waits_for_everything_queued_or_running(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    # bob's backoff outlasts alice's two slow turns (6 s), so only a join that waits
    # for the held retry lasts 7 s; short, as PostgreSQL holds it in real seconds.
    lw = _turns(make_laneway, stubborn, Starts(), retry=Retry(max_attempts=2, backoff=14))
    await lw.start()
    t0 = now()
    await lw.join()  # idle: returns at once
    assert now() == t0
    await lw.submit("alice", "turn", "slow")
    await lw.submit("alice", "turn", "slow 2")
    await lw.submit("bob", "turn", "fail")  # retried after a backoff of 7..14 s
    await lw.join()
    assert now() - t0 >= 7
    assert lw.snapshot().jobs_queued == lw.snapshot().jobs_running == 0


async def test_close_while_turns_run_returns_within_the_grace_and_keeps_the_jobs(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    starts = Starts()
    store = MemoryStore()
    lw = _turns(make_laneway, stubborn, starts, store=store)
    await lw.start()
    running = await lw.submit("alice", "turn", "stubborn")
    queued = await lw.submit("alice", "turn", "queued")
    waiter = asyncio.ensure_future(running.wait())
    await asyncio.sleep(1)  # the waiter is waiting
    t0 = now()
    await lw.close(grace=0)
    assert now() - t0 == pytest.approx(5, abs=0.01)
    with pytest.raises(Closed):
        await waiter
    with pytest.raises(Closed):
        await lw.submit("alice", "turn", "too late")
    # Neither job was lost: both wait in the store for the next owner.
    assert [i.state for i in await store.list_jobs(session="alice")] == [JobState.QUEUED] * 2

    successor = make_laneway(store=store)

    @successor.handler("turn")
    async def turn(ctx: TurnContext, payload: str) -> str:
        return payload

    await successor.start()
    await successor.join()
    resumed = [await info(successor, j.id) for j in (running, queued)]
    assert [(i.state, i.attempts) for i in resumed] == [
        # The attempt the shutdown interrupted (no output) was given back, not counted.
        (JobState.SUCCEEDED, 1),
        (JobState.SUCCEEDED, 1),
    ]


async def test_close_with_a_grace_lets_short_turns_finish(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    lw = _turns(make_laneway, stubborn, Starts())
    await lw.start()
    job = await lw.submit("alice", "turn", "slow")
    waiter = asyncio.ensure_future(job.wait())
    await asyncio.sleep(1)
    await lw.close(grace=10)
    assert (await waiter).state is JobState.SUCCEEDED


async def test_using_a_laneway_before_start_or_after_close_is_an_error(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    lw = _turns(make_laneway, stubborn, Starts())
    with pytest.raises(Closed, match="not started"):
        await lw.submit("alice", "turn", "x")
    await lw.start()
    with pytest.raises(Closed):
        await lw.start()
    await lw.close()
    await lw.close()  # idempotent
    for call in (lw.submit("a", "turn", "x"), lw.stop("a"), lw.cancel("x"), lw.join()):
        with pytest.raises(Closed):
            await call


async def test_on_close_hooks_run_after_the_store_closed_and_their_errors_are_ignored(
    make_laneway: MakeLaneway,
) -> None:
    lw = make_laneway()
    order: list[str] = []

    async def broken() -> None:
        order.append("broken")
        raise RuntimeError("client already gone")

    async def client() -> None:
        order.append("client")

    lw.on_close(broken)
    lw.on_close(client)
    await lw.start()
    assert order == []
    await lw.close()
    assert order == ["broken", "client"]


async def test_run_sync_passes_keyword_arguments(make_laneway: MakeLaneway) -> None:
    lw = make_laneway()

    def join(*parts: str, sep: str = "") -> str:
        return sep.join(parts)

    @lw.handler("sync")
    async def sync(ctx: TurnContext, payload: None) -> str:
        return await ctx.run_sync(join, "a", "b", sep="-")

    await lw.start()
    assert await (await lw.submit("s", "sync")).result() == "a-b"


async def test_the_snapshot_names_this_node_and_its_running_turns(
    make_laneway: MakeLaneway, stubborn: Stubborn
) -> None:
    starts = Starts()
    lw = _turns(make_laneway, stubborn, starts)
    await lw.start()
    assert lw.node  # host and process id, on one node
    assert lw.snapshot().node == lw.node
    assert lw.snapshot().running == []
    job = await lw.submit("alice", "turn", "hang")
    await lw.submit("alice", "turn", "next")
    await starts.started("hang")
    await asyncio.sleep(2)
    [turn] = lw.snapshot().running  # the queued one is not running
    assert (turn.job_id, turn.session, turn.handler, turn.attempt) == (job.id, "alice", "turn", 1)
    assert turn.node == lw.node
    assert turn.age_s == pytest.approx(2, abs=0.1)
    await lw.stop("alice", drop_queued=True)
    assert lw.snapshot().running == []
