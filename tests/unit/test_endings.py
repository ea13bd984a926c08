"""Endings: close() drains within shutdown_grace, a shutdown never replays
output or counts against the job, outcomes are reported only once committed,
requeue opens a new run, and the timers (the lane monitor) survive a raising
log handler."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from laneway import Closed, JobState, Laneway, Limits, Retry, TurnContext
from laneway.stores import MemoryStore, Store, open_store

from .._helpers import TERMINAL_KINDS, events_of, info, now
from ..conftest import MakeLaneway

pytestmark = pytest.mark.looptime

LIMITS = Limits(deadline=600, idle=None, cancel_grace=1)


def _laneway(make_laneway: MakeLaneway, **kw: Any) -> Laneway:
    kw.setdefault("limits", LIMITS)
    kw.setdefault("retry", Retry(max_attempts=3, backoff=1))
    lw = make_laneway(**kw)

    @lw.handler("turn")
    async def turn(ctx: TurnContext, payload: dict[str, Any]) -> str:
        if payload.get("emit"):
            await ctx.emit("delta", {"text": "hello"})
        await asyncio.sleep(payload["for"])
        return "done"

    return lw


async def test_close_lets_running_turns_finish_within_shutdown_grace(
    make_laneway: MakeLaneway,
) -> None:
    lw = _laneway(make_laneway, shutdown_grace=30)
    await lw.start()
    job = await lw.submit("alice", "turn", {"for": 20, "emit": True})
    waiter = asyncio.ensure_future(job.wait())
    await asyncio.sleep(1)
    t0 = now()
    closing = asyncio.ensure_future(lw.close())
    await asyncio.sleep(0)
    assert lw.closing
    with pytest.raises(Closed):  # refused at once, while the turn still runs
        await lw.submit("alice", "turn", {"for": 1})
    await closing
    assert now() - t0 == pytest.approx(19, abs=0.01)
    outcome = await waiter
    assert (outcome.state, outcome.attempts) == (JobState.SUCCEEDED, 1)


async def test_past_the_grace_a_turn_without_output_goes_back_uncounted(
    make_laneway: MakeLaneway,
) -> None:
    store = MemoryStore()
    lw = _laneway(make_laneway, store=store, shutdown_grace=5)
    await lw.start()
    job = await lw.submit("alice", "turn", {"for": 100})
    await asyncio.sleep(1)
    t0 = now()
    await lw.close()
    assert now() - t0 == pytest.approx(5, abs=0.01)
    stored = await store.get_job(job.id)
    assert stored is not None
    assert (stored.state, stored.attempts, stored.reason) == (JobState.QUEUED, 0, "shutdown")
    retry = [e.data for e in await events_of(lw, "alice") if e.kind == "job.retry"]
    assert retry == [
        {"attempt": 1, "reason": "shutdown", "error": "shutdown", "delay": 0.0, "counted": False}
    ]

    successor = _laneway(make_laneway, store=store)
    await successor.start()
    again = await info(successor, job.id)
    assert again.state is JobState.RUNNING
    assert again.attempts == 1  # the interrupted attempt was not one of its attempts


@pytest.mark.parametrize(("retry_after_output", "state"), [(False, "failed"), (True, "queued")])
async def test_past_the_grace_a_turn_with_output_is_not_replayed(
    make_laneway: MakeLaneway, retry_after_output: bool, state: str
) -> None:
    store = MemoryStore()
    retry = Retry(max_attempts=3, retry_after_output=retry_after_output)
    lw = _laneway(make_laneway, store=store, shutdown_grace=5, retry=retry)
    await lw.start()
    job = await lw.submit("alice", "turn", {"for": 100, "emit": True})
    await asyncio.sleep(1)
    await lw.close()
    stored = await store.get_job(job.id)
    assert stored is not None
    assert (stored.state.value, stored.reason) == (state, "shutdown")


async def test_a_second_close_ends_the_grace_at_once(make_laneway: MakeLaneway) -> None:
    lw = _laneway(make_laneway, shutdown_grace=30)
    await lw.start()
    await lw.submit("alice", "turn", {"for": 100})
    await asyncio.sleep(1)
    t0 = now()
    first = asyncio.ensure_future(lw.close())
    await asyncio.sleep(2)
    await lw.close()  # a second SIGTERM
    await first
    assert now() - t0 == pytest.approx(2, abs=0.01)


# -- outcomes only once committed ------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
    else:
        yield open_store(f"sqlite:///{tmp_path / 'results.db'}")


@pytest.mark.parametrize("result", [10**5000, {1: 2}, (1, 2)], ids=["huge-int", "int-key", "tuple"])
async def test_a_result_the_store_cannot_keep_is_told_as_the_store_records_it(
    make_laneway: MakeLaneway, store: Store, result: Any
) -> None:
    lw = make_laneway(store=store, limits=LIMITS, retry=Retry(max_attempts=3))
    runs = Counter[str]()

    @lw.handler("odd")
    async def odd(ctx: TurnContext, payload: None) -> Any:
        runs[ctx.job_id] += 1
        return result

    await lw.start()
    job = await lw.submit("alice", "odd")
    outcome = await job.wait()
    stored = await lw.store.get_job(job.id)
    assert stored is not None
    assert (outcome.state, outcome.reason) == (stored.state, stored.reason)
    same = outcome.result == stored.result  # (a failing assert must not print 10**5000)
    assert same, "the waiter was told another result than the store keeps"
    assert (stored.state, stored.reason) == (JobState.FAILED, "InvalidPayload")
    assert runs[job.id] == 1  # never run again: its side effects happened once
    terminal = [e for e in await events_of(lw, "alice") if e.kind in TERMINAL_KINDS]
    assert [e.kind for e in terminal] == ["job.failed"]


async def test_a_terminal_write_the_store_refuses_is_never_reported(
    make_laneway: MakeLaneway, tmp_path: Path
) -> None:
    db = tmp_path / "gone.db"
    lw = make_laneway(store=f"sqlite:///{db}", limits=LIMITS)
    release = asyncio.Event()

    @lw.handler("turn")
    async def turn(ctx: TurnContext, payload: None) -> str:
        await release.wait()
        return "done"

    await lw.start()
    job = await lw.submit("alice", "turn")
    waiter = asyncio.ensure_future(job.wait())
    await asyncio.sleep(0.1)
    db.unlink()  # the database vanishes under the running store
    with pytest.raises(Exception, match="deleted or replaced"):
        await lw.store.ping()
    release.set()
    await asyncio.sleep(1)
    assert not waiter.done()  # not told "succeeded": nothing could be committed
    await lw.close()
    with pytest.raises(Closed):
        await waiter
    assert not db.exists()  # and nothing made a new, empty database


# -- requeue opens a new run ----------------------------------------------------------------


async def test_requeue_opens_a_new_run_with_one_terminal_event_per_run(
    make_laneway: MakeLaneway,
) -> None:
    lw = make_laneway(limits=LIMITS, retry=Retry(max_attempts=2, backoff=0.1))
    fail = {"on": True}

    @lw.handler("flaky")
    async def flaky(ctx: TurnContext, payload: None) -> str:
        if fail["on"]:
            raise RuntimeError("down")
        return "up"

    await lw.start()
    job = await lw.submit("alice", "flaky")
    assert (await job.wait()).state is JobState.FAILED
    await lw.requeue(job.id)
    assert (await job.wait()).state is JobState.FAILED
    fail["on"] = False
    await lw.requeue(job.id)
    assert (await job.wait()).state is JobState.SUCCEEDED

    kinds = [e.kind for e in await events_of(lw, "alice") if e.job_id == job.id]
    runs: list[list[str]] = [[]]
    for kind in kinds:
        if kind == "job.requeued":
            runs.append([])
        runs[-1].append(kind)
    assert [sum(k in TERMINAL_KINDS for k in run) for run in runs] == [1, 1, 1]
    assert [run[-1] for run in runs] == ["job.failed", "job.failed", "job.succeeded"]
    requeued = [e.data for e in await events_of(lw, "alice") if e.kind == "job.requeued"]
    assert [(d["requeued_from"], d["attempts"]) for d in requeued] == [("failed", 2)] * 2


# -- the timers outlive a raising log handler --------------------------------------------


class _Raising(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def handle(self, record: logging.LogRecord) -> bool:
        self.calls += 1
        raise RuntimeError("the log pipeline is down")


async def test_the_lane_monitor_keeps_warning_when_a_log_handler_raises(
    make_laneway: MakeLaneway,
) -> None:
    lw = make_laneway(lanes={"llm": 1}, wait_warn=10, limits=Limits(deadline=1000, idle=None))

    @lw.handler("hold", lanes=("llm",))
    async def hold(ctx: TurnContext, payload: float) -> str:
        await asyncio.sleep(payload)
        return "held"

    raising = _Raising()
    runtime = logging.getLogger("laneway")  # every laneway logger, the timers' too
    runtime.addHandler(raising)
    try:
        await lw.start()
        await lw.submit("a", "hold", 500.0)
        waiting = await lw.submit("b", "hold", 1.0)
        await asyncio.sleep(200)
        first = raising.calls
        await asyncio.sleep(200)
        assert first >= 2  # warned, raised, and was armed again
        assert raising.calls > first
        # Deadlines live on the same heap: they still fire.
        assert (await waiting.wait()).state is JobState.SUCCEEDED
    finally:
        runtime.removeHandler(raising)
